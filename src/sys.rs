//! Helpers for tools built on nodeshm (its command line uses them): not part of the allocator
//! API, and free to change between minor versions.

pub use crate::arena::shm::{backing_space, process_alive, process_start_time};

/// Formats a byte count for messages: "64.0 MiB (67108864 bytes)".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
    }
}
