"""Consul: the catalog portlink registers into and discovers from."""
