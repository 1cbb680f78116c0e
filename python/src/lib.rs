//! `nodeshm._native`: the Rust side of the `nodeshm` Python package. The public API, its
//! docstrings and the NumPy arrays live in `nodeshm/__init__.py`; this module hands it blocks as
//! (address, size) with an owner that keeps the mapping alive, and raises the error classes of
//! `nodeshm/_errors.py` with their fields.
//!
//! Every class is `unsendable`: handles, blocks and locks belong to the thread that made them
//! (the arena's user lock must be released by the thread that took it).
//!
//! | file | what |
//! |---|---|
//! | `errors.rs` | `nodeshm::Error` to the Python error classes, bad keywords to `InvalidArgument` |
//! | `block.rs` | blocks, the user lock, the operations allocators and arenas share |
//! | `manager.rs` | the resource manager and its allocators (MPI) |
//! | `arena.rs` | an arena without MPI |

mod arena;
mod block;
mod errors;
mod manager;

use pyo3::prelude::*;

use arena::PyArena;
use block::{Block, Lock};
use manager::{PyAllocator, PyManager};

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Block>()?;
    m.add_class::<Lock>()?;
    m.add_class::<PyAllocator>()?;
    m.add_class::<PyManager>()?;
    m.add_class::<PyArena>()?;
    Ok(())
}
