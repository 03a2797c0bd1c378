"""The TCP forwarder that runs inside ambassador containers (see the ambassador issue).

backends: pools and ordering (pure); metrics: counters (pure); forward: the
asyncio forwarder (Listener, Ambassador); sources: static and Consul backends;
main: the command line (`python -m portlink.ambassador`)."""
