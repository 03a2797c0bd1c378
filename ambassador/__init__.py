"""The TCP forwarder that runs inside ambassador containers (see the ambassador issue)."""
