"""Re-export of portlink.errors for the runtime's modules."""

from portlink.errors import Conflict, InvalidArgument, NotFound, PortlinkError, RuntimeFailure

__all__ = ["Conflict", "InvalidArgument", "NotFound", "PortlinkError", "RuntimeFailure"]
