//! MPI-3 shared windows through `mpi::ffi`, for comparison: `MPI_Win_allocate_shared` with all
//! memory on the node leader and `MPI_Win_shared_query` on the others.

use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator;

/// One shared window; freed (collectively) on drop.
pub struct SharedWindow {
    win: ffi::MPI_Win,
    pub base: *mut u8,
    pub size: usize,
}

impl SharedWindow {
    /// Collective over `comm` (one node): `size` bytes on rank 0, mapped by all.
    pub fn allocate(comm: &SimpleCommunicator, size: usize) -> SharedWindow {
        let mine = if comm.rank() == 0 { size } else { 0 };
        let mut base: *mut u8 = std::ptr::null_mut();
        // SAFETY: reading the MPI library's constant; handle types differ between MPIs (a
        // pointer in Open MPI, an integer in MPICH), so the null handle comes from the library.
        let mut win = unsafe { ffi::RSMPI_WIN_NULL };
        // SAFETY: valid communicator and info handle; `base` and `win` are writable out
        // parameters of the right types (baseptr is a pointer to a pointer).
        let rc = unsafe {
            ffi::MPI_Win_allocate_shared(
                mine as ffi::MPI_Aint,
                1,
                ffi::RSMPI_INFO_NULL,
                comm.as_raw(),
                (&mut base as *mut *mut u8).cast(),
                &mut win,
            )
        };
        assert_eq!(rc, 0, "MPI_Win_allocate_shared failed");
        let mut qsize: ffi::MPI_Aint = 0;
        let mut disp: std::os::raw::c_int = 0;
        let mut shared: *mut u8 = std::ptr::null_mut();
        // SAFETY: `win` was just created; the out parameters are writable.
        let rc = unsafe {
            ffi::MPI_Win_shared_query(
                win,
                0,
                &mut qsize,
                &mut disp,
                (&mut shared as *mut *mut u8).cast(),
            )
        };
        assert_eq!(rc, 0, "MPI_Win_shared_query failed");
        SharedWindow {
            win,
            base: shared,
            size: qsize as usize,
        }
    }
}

impl Drop for SharedWindow {
    fn drop(&mut self) {
        // SAFETY: the window is live and every rank drops it at the same point (collective).
        unsafe { ffi::MPI_Win_free(&mut self.win) };
    }
}
