//! Errors both ways: a `nodeshm::Error` becomes an instance of its `nodeshm._errors` class,
//! and bad keywords from Python become `InvalidArgument`.

use std::time::Duration;

use nodeshm::Error;
use pyo3::prelude::*;

/// The Python exception for `e`: an instance of the `nodeshm._errors` class of its kind, with
/// `.code` and the variant's fields as attributes (the failing rank's error, for collective
/// calls, with `.rank` and `.failed_ranks`).
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match build_error(py, &e) {
        Ok(err) => err,
        Err(fallback) => fallback,
    }
}

pub(crate) fn build_error(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let root = e.root();
    let class = match root {
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::InvalidName { .. } => "InvalidName",
        Error::SizeMismatch { .. } => "SizeMismatch",
        Error::OutOfSpace { .. } => "OutOfSpace",
        Error::NotHeld { .. } => "NotHeld",
        Error::Timeout { .. } => "Timeout",
        Error::NotAnArena { .. } => "NotAnArena",
        Error::Incompatible { .. } => "Incompatible",
        Error::NoSpaceInBacking { .. } => "NoSpaceInBacking",
        Error::Io { .. } => "IoError",
        Error::AlreadyExists(_) => "AlreadyExists",
        Error::Binding(_) => "Binding",
        Error::Mpi(_) => "MpiError",
        Error::Unsupported(_) => "Unsupported",
        Error::Corrupted(_) => "Corrupted",
        Error::Placement(_) => "Placement",
        Error::Untrusted { .. } => "Untrusted",
        Error::MpiFinalized(_) => "MpiFinalized",
        Error::Internal(_) | Error::Collective { .. } => "InternalError",
    };
    let module = py.import("nodeshm._errors")?;
    let exc = module.getattr(class)?.call1((e.to_string(),))?;
    exc.setattr("code", e.code() as i32)?;
    if let Error::Collective {
        rank, failed_ranks, ..
    } = e
    {
        exc.setattr("rank", *rank)?;
        exc.setattr("failed_ranks", *failed_ranks)?;
    }
    match root {
        Error::InvalidName { name, reason } => {
            exc.setattr("name", name)?;
            exc.setattr("reason", reason)?;
        }
        Error::SizeMismatch {
            name,
            existing,
            requested,
        } => {
            exc.setattr("name", name)?;
            exc.setattr("existing", *existing)?;
            exc.setattr("requested", *requested)?;
        }
        Error::OutOfSpace {
            requested,
            largest_free,
            free,
            capacity,
        } => {
            exc.setattr("requested", *requested)?;
            exc.setattr("largest_free", *largest_free)?;
            exc.setattr("free", *free)?;
            exc.setattr("capacity", *capacity)?;
        }
        Error::NoSpaceInBacking {
            dir,
            requested,
            available,
        } => {
            exc.setattr("dir", dir.display().to_string())?;
            exc.setattr("requested", *requested)?;
            exc.setattr("available", *available)?;
        }
        Error::Timeout { what, waited, .. } => {
            exc.setattr("what", what)?;
            exc.setattr("waited", waited.as_secs_f64())?;
        }
        Error::NotAnArena { path, reason } | Error::Incompatible { path, reason } => {
            exc.setattr("path", path.display().to_string())?;
            exc.setattr("reason", reason)?;
        }
        Error::Untrusted {
            path, owner, uid, ..
        } => {
            exc.setattr("path", path.display().to_string())?;
            exc.setattr("owner", *owner)?;
            exc.setattr("uid", *uid)?;
        }
        _ => {}
    }
    Ok(PyErr::from_value(exc))
}

pub(crate) trait OrPy<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrPy<T> for nodeshm::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

pub(crate) fn invalid(what: String) -> Error {
    Error::InvalidArgument(what)
}

pub(crate) fn seconds(s: f64, what: &str) -> nodeshm::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| invalid(format!("{what} {s} is not a duration")))
}
