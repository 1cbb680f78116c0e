"""The exceptions nodeshm raises: one class per kind of error, each with ``.code`` (the C API's
``NODESHM_E*`` value) and the fields of its kind as attributes.

A collective call that fails raises the same class on every rank, with ``.rank`` (the first rank
that failed) and ``.failed_ranks``.
"""


class Error(Exception):
    """Base class of every nodeshm error."""

    code = 0
    #: For collective calls: the first rank that failed, and how many did (else None).
    rank = None
    failed_ranks = None


class InvalidArgument(Error, ValueError):
    """An argument is out of range or malformed (code 1)."""


class InvalidName(Error, ValueError):
    """A block, allocator or arena name is malformed (code 2): ``.name``, ``.reason``."""


class SizeMismatch(Error):
    """The block exists with another byte size (code 3): ``.name``, ``.existing``,
    ``.requested`` (bytes)."""


class OutOfSpace(Error, MemoryError):
    """The arena is full (code 4): ``.requested``, ``.largest_free``, ``.free``, ``.capacity``
    (bytes)."""


class NotHeld(Error):
    """Releasing a block this process does not hold (code 5)."""


class Timeout(Error, TimeoutError):
    """A wait ran past its timeout (code 6): ``.what``, ``.waited`` (seconds)."""


class NotAnArena(Error):
    """A file that is not an arena (code 7): ``.path``, ``.reason``."""


class Incompatible(Error):
    """An arena of another layout version (code 8): ``.path``, ``.reason``."""


class NoSpaceInBacking(Error, MemoryError):
    """The backing directory cannot hold the arena (code 9): ``.dir``, ``.requested``,
    ``.available`` (bytes)."""


class IoError(Error, OSError):
    """An operating-system call failed (code 10)."""


class AlreadyExists(Error):
    """The name is taken (code 11)."""


class Binding(Error):
    """A rank's CPU binding does not fit the scope (code 12)."""


class MpiError(Error):
    """An MPI call failed (code 13)."""


class Unsupported(Error):
    """Not available in this build or on this system (code 14)."""


class Corrupted(Error):
    """Arena metadata is damaged (code 15)."""


class Placement(Error):
    """The memory placement asked for cannot be honoured (code 16)."""


class InternalError(Error):
    """A bug in nodeshm (code 17)."""


class Untrusted(Error, PermissionError):
    """The arena belongs to another user (code 18): ``.path``, ``.owner``, ``.uid``."""


class MpiFinalized(Error):
    """MPI is not running (code 19)."""
