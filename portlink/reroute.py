"""What an ambassador does with open connections whose backend left the set:
the one definition, shared by the forwarder (`ambassador/`) and the runtime
that starts ambassador containers (`runtime/ambassadors.py`), which may not
import each other.

Two defaults, both documented and tested: the forwarder run by hand
(`python -m portlink.ambassador`) keeps such connections unless told
otherwise; an ambassador container the runtime starts (`portlink run
--ambassador`, a cross-host link) drains them."""

POLICIES = ("keep", "drain", "close")
DEFAULT_POLICY = "keep"              # python -m portlink.ambassador --policy
AMBASSADOR_POLICY = "drain"          # portlink run --ambassador, cross-host links
DRAIN_DEADLINE = 10.0                # seconds a drained connection may live on
