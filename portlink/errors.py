"""Errors a user can act on. The daemon maps each class to an HTTP status and the
CLI prints the message as it is, with no traceback."""


class PortlinkError(Exception):
    """Base class: the message names the problem and, where there is one, the fix."""

    status = 500


class InvalidArgument(PortlinkError):
    status = 400


class NotFound(PortlinkError):
    status = 404


class Conflict(PortlinkError):
    status = 409


class RuntimeFailure(PortlinkError):
    """A step of the runtime failed (runc, mount, netlink); what was made was rolled back."""

    status = 500


class InvalidValue(InvalidArgument, ValueError):
    """A value that does not parse (portlink.parse): an InvalidArgument for the
    daemon, a ValueError for code that knows only the standard library's errors
    (the ambassador's command line)."""
