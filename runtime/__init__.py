"""Images, containers run by runc, state store, daemon, HTTP API and CLI."""
