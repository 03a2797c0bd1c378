"""The DNS server for containers (see the links/DNS issue)."""
