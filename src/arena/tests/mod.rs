//! Unit and property tests of the heap and directory, on arenas in a private temp directory:
//! the helpers they share here, the tests by subject in the files below (no file is named
//! after an arena module, which it would hide from the tests' `use super::*`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::layout as l;
use super::undo::Tx;
use super::*;
use crate::Error;
use crate::ErrorCode;

mod api;
mod chains;
mod crash;
mod model;
mod parking;
mod waiters;

/// A private backing directory under the system temp dir, removed on drop.
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nodeshm-unit-")
            .tempdir()
            .unwrap();
        TempDir(dir.path().to_path_buf(), dir)
    }
    fn options(&self, size: u64) -> Options {
        Options::new(size).dir(&self.0)
    }
}

/// Heap blocks and bytes taken by directory slot chunks (kept for good once carved).
fn slot_chunks(arena: &Arena) -> (u64, u64) {
    let chunks = arena.region.load(l::SLOTS).unwrap() / l::SLOTS_PER_CHUNK;
    (chunks, chunks * (l::SLOTS_PER_CHUNK * l::ENTRY_SIZE + 16))
}

/// The live entry of `name`, found without the lock as readers do: (entry, generation).
fn live_entry(arena: &Arena, name: &str) -> (u64, u32) {
    let key = name.as_bytes();
    match directory::lookup_fast(&arena.region, key, directory::hash(key)) {
        directory::Fast::Hit(slot) => (slot.at, slot.state().generation()),
        other => panic!("{name} is not found without the lock: {other:?}"),
    }
}

/// Makes `name` an entry whose last holder died between dropping its last reference and
/// removing it (a zombie): returns (entry, generation).
fn zombie(arena: &Arena, name: &str, bytes: u64) -> (u64, u32) {
    let b = arena.allocate(name, bytes).unwrap();
    let (entry, generation) = live_entry(arena, name);
    assert!(directory::drop_reference(&arena.region, entry, generation).unwrap());
    arena.held.lock().remove(&b.offset());
    (entry, generation)
}

/// Allocates `count` names `{prefix}{i}` of `size(i)` bytes and releases every `every`-th
/// (from the first) once all exist: a heap with holes and, for the small ones, parked blocks. The rest stay
/// referenced until the arena goes.
fn holes(arena: &Arena, prefix: &str, count: u64, size: impl Fn(u64) -> u64, every: usize) {
    let blocks: Vec<_> = (0..count)
        .map(|i| arena.allocate(&format!("{prefix}{i}"), size(i)).unwrap())
        .collect();
    for b in blocks.into_iter().step_by(every) {
        arena.deallocate(b).unwrap();
    }
}

/// One metadata update, as the tests drive it.
type Update<'a> = dyn Fn(&mut Tx) -> crate::Result<()> + 'a;

/// Runs `update` as a process killed at its logged write `stop_after` would leave it (no
/// commit, no drop), then recovers as the next locker does; whether the update got to its end.
fn interrupted(arena: &Arena, stop_after: u64, update: &Update) -> bool {
    let r = arena.region;
    let mut tx = Tx::begin(&r);
    tx.limit = Some(stop_after);
    let done = update(&mut tx).is_ok();
    std::mem::forget(tx);
    lock::recover(&r).unwrap();
    done
}

/// Checks that `arena` verifies and holds the names and figures it held `before` (`what`
/// names the case in a failure).
fn assert_as_before(arena: &Arena, before: &(Vec<EntryInfo>, Stats), what: &str) {
    arena.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(arena.entries().unwrap(), before.0, "{what}");
    let (now, then) = (arena.stats().unwrap(), &before.1);
    assert_eq!(
        (now.used, now.live_blocks, now.free),
        (then.used, then.live_blocks, then.free),
        "{what}"
    );
}

/// Runs `update` stopped after each of its first 120 writes, as a killed process leaves it.
/// After each stop no committed name `{prefix}{i}` (`i < count`) looks missing to a lock-free
/// reader, and the recovery gives back the entries and the directory's extent as they were, in
/// a directory that verifies. True when some run completed (every stopping point was tried).
fn killed_at_every_write(arena: &Arena, prefix: &str, count: u64, update: &Update) -> bool {
    let r = arena.region;
    let before = arena.entries().unwrap();
    let extent = r.load(l::EXTENT).unwrap();
    let mut completed = false;
    for stop_after in 1..120u64 {
        let mut tx = Tx::begin(&r);
        tx.limit = Some(stop_after);
        completed |= update(&mut tx).is_ok();
        std::mem::forget(tx); // killed here: no commit, no rollback yet
        for i in 0..count {
            let k = format!("{prefix}{i}");
            assert!(
                !matches!(
                    directory::lookup_fast(&r, k.as_bytes(), directory::hash(k.as_bytes())),
                    directory::Fast::Miss { .. }
                ),
                "{k} missing, stopped after write {stop_after}"
            );
        }
        lock::recover(&r).unwrap();
        arena
            .verify()
            .unwrap_or_else(|e| panic!("stopped at write {stop_after}: {e}"));
        assert_eq!(arena.entries().unwrap(), before, "{stop_after}");
        assert_eq!(r.load(l::EXTENT).unwrap(), extent, "{stop_after}");
    }
    completed
}
