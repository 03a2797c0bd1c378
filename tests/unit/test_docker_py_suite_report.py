"""bench/docker_py_suite's report: counts per module from pytest's junit XML and
the failures' first error lines, a 501 counted as unsupported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "docker_py_suite.py"
spec = importlib.util.spec_from_file_location("docker_py_suite", BENCH)
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="docker-py">
<testcase classname="tests.integration.api_container_test.CreateContainerTest" name="test_create" time="0.1"/>
<testcase classname="tests.integration.api_container_test.CreateContainerTest" name="test_pause" time="0.1">
<failure message="docker.errors.APIError: 501 Server Error for http+docker://localhost/v1.41/containers/x/pause: Not Implemented (&quot;pause is not supported by portlink's Docker API&quot;)">tests/integration/api_container_test.py:10: in test_pause
    self.client.pause(c)
E   docker.errors.APIError: 501 Server Error: Not Implemented ("pause is not supported by portlink's Docker API")</failure>
</testcase>
<testcase classname="tests.integration.api_container_test.CreateContainerTest" name="test_shape" time="0.1">
<failure message="AssertionError: assert 1 == 2">tests/integration/api_container_test.py:20: in test_shape
E   AssertionError: assert 1 == 2
E    +  where 1 = len(x)</failure>
</testcase>
<testcase classname="tests.integration.models_volumes_test.VolumesTest" name="test_get" time="0.1">
<skipped type="pytest.skip" message="API version is too low">skip</skipped>
</testcase>
<testcase classname="tests.integration.models_volumes_test.VolumesTest" name="test_list" time="0.1">
<error message="failed on setup with &quot;Failed: Timeout &gt;60.0s&quot;">Failed: Timeout &gt;60.0s</error>
</testcase>
</testsuite></testsuites>
"""


def test_counts_per_module_and_failure_classes(tmp_path):
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    per_module, failures = suite.parse_junit(p)
    assert per_module == {
        "api_container_test": {"passed": 1, "failed": 2, "skipped": 0, "errors": 0},
        "models_volumes_test": {"passed": 0, "failed": 0, "skipped": 1, "errors": 1},
    }
    assert [(f["id"], f["kind"], f["class"]) for f in failures] == [
        ("api_container_test::CreateContainerTest::test_pause", "failed", "unsupported"),
        ("api_container_test::CreateContainerTest::test_shape", "failed", "other"),
        ("models_volumes_test::VolumesTest::test_list", "errors", "other"),
    ]
    # the first `E` line, not the traceback's location
    assert failures[1]["first"] == "AssertionError: assert 1 == 2"
    assert failures[2]["first"] == "Failed: Timeout >60.0s"
