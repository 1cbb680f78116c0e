"""Type stubs for nodeshm (see the module and method docstrings for what each does)."""

from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Shape = Union[int, Sequence[int]]
_DType = npt.DTypeLike

class Error(Exception):
    code: int
    rank: Optional[int]
    failed_ranks: Optional[int]

class InvalidArgument(Error, ValueError): ...

class InvalidName(Error, ValueError):
    name: str
    reason: str

class SizeMismatch(Error):
    name: str
    existing: int
    requested: int

class OutOfSpace(Error, MemoryError):
    requested: int
    largest_free: int
    free: int
    capacity: int

class NotHeld(Error): ...

class Timeout(Error, TimeoutError):
    what: str
    waited: float

class NotAnArena(Error):
    path: str
    reason: str

class Incompatible(Error):
    path: str
    reason: str

class NoSpaceInBacking(Error, MemoryError):
    dir: str
    requested: int
    available: int

class IoError(Error, OSError): ...
class AlreadyExists(Error): ...
class Binding(Error): ...
class MpiError(Error): ...
class Unsupported(Error): ...
class Corrupted(Error): ...
class Placement(Error): ...
class InternalError(Error): ...

class Untrusted(Error, PermissionError):
    path: str
    owner: int
    uid: int

class MpiFinalized(Error): ...

class _Lock(ContextManager["_Lock"]):
    owner_died: bool

class _Blocks:
    def allocate(self, name: str, shape: _Shape, dtype: _DType = ...) -> np.ndarray: ...
    def find(self, name: str, dtype: _DType = ..., shape: Optional[_Shape] = ...) -> Optional[np.ndarray]: ...
    def deallocate(self, array: np.ndarray) -> None: ...
    def stats(self) -> Dict[str, int]: ...
    def entries(self) -> List[Tuple[str, int, int, int]]: ...
    def actual_size(self) -> int: ...
    def coalesce(self) -> None: ...
    def lock(self) -> _Lock: ...

class Allocator(_Blocks):
    @property
    def name(self) -> str: ...
    @property
    def comm(self) -> Any: ...  # mpi4py.MPI.Comm
    def get_or_init(
        self, name: str, shape: _Shape, dtype: _DType, init: Callable[[np.ndarray], Any]
    ) -> np.ndarray: ...
    @property
    def placement(self) -> str: ...
    @property
    def shm_path(self) -> str: ...
    @property
    def scope_instance(self) -> str: ...

class ResourceManager:
    def __init__(self, comm: Any) -> None: ...
    def make_resource(
        self,
        name: str,
        size: int,
        scope: str = ...,
        unlink: str = ...,
        mode: int = ...,
        dir: Optional[str] = ...,
        numa: str = ...,
        huge_pages: str = ...,
        prefault: bool = ...,
        attach_timeout: float = ...,
        lock_timeout: float = ...,
        expected_names: Optional[int] = ...,
    ) -> Allocator: ...
    def allocators(self) -> List[str]: ...
    def get_allocator(self, name: str) -> Optional[Allocator]: ...
    def remove_allocator(self, name: str) -> Optional[Allocator]: ...
    @property
    def job_token(self) -> int: ...

class Arena(_Blocks):
    @staticmethod
    def create(
        name: str,
        size: int,
        unlink: str = ...,
        mode: int = ...,
        dir: Optional[str] = ...,
        huge_pages: str = ...,
        lock_timeout: float = ...,
        expected_names: Optional[int] = ...,
    ) -> "Arena": ...
    @staticmethod
    def attach(name: str, timeout: float = ..., dir: Optional[str] = ..., lock_timeout: float = ...) -> "Arena": ...
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
