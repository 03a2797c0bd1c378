"""portlink: a container runtime built around networking."""

__version__ = "0.1.0"
