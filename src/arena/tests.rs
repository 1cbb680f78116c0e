//! Unit and property tests of the heap and directory, on arenas in a private temp directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::layout as l;
use super::region::Tx;
use super::*;
use crate::Error;
use crate::ErrorCode;

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

#[test]
fn same_name_same_block_and_refcounts() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let a = arena.allocate("table", 1000).unwrap();
    let b = arena.allocate("table", 1000).unwrap();
    assert!(a.created() && !b.created());
    assert_eq!(a.offset(), b.offset());
    assert_eq!(a.offset() % 64, 0);
    let entries = arena.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].name.as_str(),
            entries[0].size,
            entries[0].refcount
        ),
        ("table", 1000, 2)
    );
    arena.deallocate(a).unwrap();
    assert_eq!(arena.lookup("table").unwrap().unwrap().refcount, 1);
    arena.deallocate(b).unwrap();
    assert!(arena.lookup("table").unwrap().is_none());
    let err = arena.deallocate(b).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotHeld, "{err}");
    let report = arena.verify().unwrap();
    assert_eq!(report.free_blocks, 1);
    assert_eq!((report.used_blocks, report.used_bytes), slot_chunks(&arena));
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

#[test]
fn size_mismatch_names_both_sizes() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let _a = arena.allocate("x", 128).unwrap();
    let err = arena.allocate("x", 256).unwrap_err();
    match &err {
        Error::SizeMismatch {
            existing,
            requested,
            ..
        } => assert_eq!((*existing, *requested), (128, 256)),
        other => panic!("expected SizeMismatch, got {other}"),
    }
    assert!(err.to_string().contains("128") && err.to_string().contains("256"));
}

#[test]
fn out_of_space_reports_the_numbers() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let stats = arena.stats().unwrap();
    let err = arena.allocate("big", 2 << 20).unwrap_err();
    match err {
        Error::OutOfSpace {
            requested,
            largest_free,
            free,
            capacity,
        } => {
            assert!(requested > 2 << 20);
            assert_eq!(capacity, stats.capacity);
            assert_eq!(free, stats.free);
            assert!(largest_free <= free && largest_free > 0);
        }
        other => panic!("expected OutOfSpace, got {other}"),
    }
    // A failed allocate changes nothing.
    assert_eq!(arena.stats().unwrap(), stats);
}

#[test]
fn bad_arguments_are_errors() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    assert_eq!(
        arena.allocate("", 8).unwrap_err().code(),
        ErrorCode::InvalidName
    );
    assert_eq!(
        arena.allocate(&"n".repeat(256), 8).unwrap_err().code(),
        ErrorCode::InvalidName
    );
    assert!(arena.allocate(&"n".repeat(255), 8).is_ok());
    assert_eq!(
        arena.allocate("zero", 0).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        arena.allocate_aligned("odd", 8, 48).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        arena
            .allocate_aligned("huge", 8, 1 << 20)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidArgument
    );
    let p = arena.allocate_aligned("page", 10, 4096).unwrap();
    assert_eq!(p.offset() % 4096, 0);
    assert_eq!(p.as_ptr() as usize % 4096, 0);
    let outside = 0x10usize as *const u8;
    assert_eq!(
        arena.deallocate_ptr(outside).unwrap_err().code(),
        ErrorCode::NotHeld
    );
    assert_eq!(
        Arena::create("a", &dir.options(1 << 20))
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        Arena::create("tiny", &dir.options(4096))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        Arena::create("a/b", &dir.options(1 << 20))
            .unwrap_err()
            .code(),
        ErrorCode::InvalidName
    );
}

#[test]
fn reused_memory_is_zeroed() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let a = arena.allocate("dirty", 4096).unwrap();
    for w in a.as_atomic_u64() {
        w.store(u64::MAX, Ordering::Relaxed);
    }
    let offset = a.offset();
    arena.deallocate(a).unwrap();
    let b = arena.allocate("clean", 4096).unwrap();
    assert_eq!(b.offset(), offset, "the freed block is reused");
    assert!(b
        .as_atomic_u64()
        .iter()
        .all(|w| w.load(Ordering::Relaxed) == 0));
}

#[test]
fn stats_track_use_and_high_water() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let empty = arena.stats().unwrap();
    assert_eq!((empty.used, empty.live_blocks), (0, 0));
    assert_eq!(empty.free, empty.capacity);
    let a = arena.allocate("a", 10_000).unwrap();
    let s = arena.stats().unwrap();
    assert_eq!((s.live_blocks, s.requested), (1, 10_000));
    let slots = slot_chunks(&arena).1;
    assert!(s.used >= 10_000 + slots && s.used < 10_000 + 512 + slots);
    assert_eq!(arena.actual_size().unwrap(), s.used);
    arena.deallocate(a).unwrap();
    let s2 = arena.stats().unwrap();
    assert_eq!((s2.used, s2.high_water), (slots, s.used));
}

#[test]
fn many_names_stay_consistent() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(64 << 20)).unwrap();
    let blocks: Vec<_> = (0..20_000)
        .map(|i| arena.allocate(&format!("n{i}"), 64 + i % 300).unwrap())
        .collect();
    assert_eq!(arena.stats().unwrap().live_blocks, 20_000);
    arena.verify().unwrap();
    for (i, b) in blocks.into_iter().enumerate() {
        if i % 2 == 0 {
            arena.deallocate(b).unwrap();
        }
    }
    arena.verify().unwrap();
    for i in (1..20_000).step_by(2) {
        let b = arena
            .find(&format!("n{i}"))
            .unwrap()
            .expect("odd names live");
        arena.deallocate(b).unwrap();
        arena.deallocate_offset(b.offset()).unwrap();
    }
    let report = arena.verify().unwrap();
    let (chunks, bytes) = slot_chunks(&arena);
    assert_eq!((report.used_blocks, report.used_bytes), (chunks, bytes));
    assert!(report.parked_blocks > 0, "small blocks wait for reuse");
    arena.coalesce().unwrap();
    let report = arena.verify().unwrap();
    assert_eq!(report.parked_blocks, 0);
    assert!(report.free_blocks <= chunks + 1);
}

/// A removed small block stays with its slot for the next name of its size: reused at the
/// same offset, zeroed, and counted as free meanwhile.
#[test]
fn removed_small_blocks_are_parked_zeroed_and_reused() {
    let dir = TempDir::new();
    let arena = Arena::create("k", &dir.options(1 << 20)).unwrap();
    let a = arena.allocate("first", 200).unwrap();
    for w in a.as_atomic_u64() {
        w.store(u64::MAX, Ordering::Relaxed);
    }
    let (offset, in_use) = (a.offset(), arena.stats().unwrap().used);
    arena.deallocate(a).unwrap();
    let report = arena.verify().unwrap();
    assert_eq!(report.parked_blocks, 1);
    let s = arena.stats().unwrap();
    assert_eq!(s.used, slot_chunks(&arena).1, "parked bytes are not in use");
    assert_eq!(s.free, s.capacity - s.used);
    // Another size does not take it; the same size (another name of that length) does.
    let other = arena.allocate("other", 500).unwrap();
    assert_ne!(other.offset(), offset);
    let b = arena.allocate("again", 200).unwrap();
    assert_eq!(b.offset(), offset, "the parked block is reused");
    assert!(b
        .as_atomic_u64()
        .iter()
        .all(|w| w.load(Ordering::Relaxed) == 0));
    assert_eq!(arena.lookup("again").unwrap().unwrap().size, 200);
    assert!(arena.lookup("first").unwrap().is_none());
    assert_eq!(arena.verify().unwrap().parked_blocks, 0);
    arena.deallocate(other).unwrap();
    let s = arena.stats().unwrap();
    assert_eq!(s.used, in_use, "only 'again' in use");
    arena.deallocate(b).unwrap();
    arena.verify().unwrap();
}

/// Memory parked in small blocks is merged back when a large block needs it.
#[test]
fn a_large_block_gets_the_memory_of_parked_ones() {
    let dir = TempDir::new();
    let arena = Arena::create("m", &dir.options(1 << 20)).unwrap();
    let mut small = Vec::new();
    loop {
        match arena.allocate(&format!("s{}", small.len()), 900) {
            Ok(b) => small.push(b),
            Err(Error::OutOfSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(small.len() > 500, "{} blocks", small.len());
    for b in small {
        arena.deallocate(b).unwrap();
    }
    assert!(arena.verify().unwrap().parked_blocks > 500);
    // Larger than any block the heap has left; room for it lies between the directory's slot
    // chunks, which stay where they are.
    assert!(arena.stats().unwrap().largest_free < 20_000);
    let big = arena.allocate("big", 20_000).unwrap();
    let report = arena.verify().unwrap();
    assert_eq!(report.parked_blocks, 0, "all merged back for it");
    arena.deallocate(big).unwrap();
    arena.verify().unwrap();
}

/// A park list that points at a live entry or outside the heap is reported, not followed.
#[test]
fn a_damaged_park_list_is_an_error() {
    let dir = TempDir::new();
    let arena = Arena::create("d", &dir.options(1 << 20)).unwrap();
    let live = arena.allocate("live", 64).unwrap();
    let gone = arena.allocate("gone", 64).unwrap();
    arena.deallocate(gone).unwrap();
    let r = arena.region;
    let class = (0..l::PARK_CLASSES as u64)
        .find(|c| r.load(l::PARKED + c * 8).unwrap() != 0)
        .expect("one list holds the removed block");
    let head = l::PARKED + class * 8;
    let parked = r.load(head).unwrap();
    for bad in [12_345_678u64, 8, parked + 8] {
        r.store(head, bad).unwrap();
        let err = arena.verify().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Corrupted, "{err}");
        let err = arena.allocate("gone", 64).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Corrupted, "{err}");
    }
    // Pointing at the live entry: a slot with references is not parked.
    r.store(head, live_entry(&arena, "live").0).unwrap();
    assert_eq!(arena.verify().unwrap_err().code(), ErrorCode::Corrupted);
    r.store(head, parked).unwrap();
    arena.verify().unwrap();
    arena.deallocate(live).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { name: u8, size: u64, align_log2: u8 },
    Free { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..40, 1u64..20_000, 4u8..13).prop_map(|(name, size, align_log2)| Op::Alloc { name, size, align_log2 }),
        2 => (0usize..1000).prop_map(|pick| Op::Free { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random allocate/free sequences against a model: blocks never overlap, stay inside the
    /// arena, keep their alignment, names map to one block, and freeing everything leaves one
    /// free block.
    #[test]
    fn heap_matches_model(ops in proptest::collection::vec(op(), 1..300)) {
        let dir = TempDir::new();
        let arena = Arena::create("p", &dir.options(256 << 10)).unwrap();
        let heap_start = arena.region.header(l::HEAP_OFFSET);
        // name -> (offset, size, references held)
        let mut model: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for op in ops {
            match op {
                Op::Alloc { name, size, align_log2 } => {
                    let name = format!("b{name}");
                    let align = 1u64 << align_log2;
                    match (arena.allocate_aligned(&name, size, align), model.get_mut(&name)) {
                        (Ok(b), Some(m)) => {
                            prop_assert_eq!((b.offset(), b.len()), (m.0, m.1));
                            m.2 += 1;
                        }
                        (Ok(b), None) => {
                            prop_assert!(b.created());
                            prop_assert_eq!(b.offset() % align, 0);
                            prop_assert!(b.offset() >= heap_start && b.offset() + size <= arena.size());
                            for (other, &(o, s, _)) in &model {
                                prop_assert!(b.offset() + size <= o || o + s <= b.offset(), "{} overlaps {}", name, other);
                            }
                            model.insert(name, (b.offset(), size, 1));
                        }
                        (Err(Error::SizeMismatch { existing, .. }), Some(m)) => prop_assert_eq!(existing, m.1),
                        (Err(Error::InvalidArgument(_)), Some(m)) => prop_assert!(m.0 % align != 0),
                        (Err(Error::OutOfSpace { .. }), None) => {}
                        (r, m) => prop_assert!(false, "unexpected {:?} with model {:?}", r.map(|b| b.offset()), m),
                    }
                }
                Op::Free { pick } => {
                    if model.is_empty() { continue; }
                    let name = model.keys().nth(pick % model.len()).unwrap().clone();
                    let m = model.get_mut(&name).unwrap();
                    arena.deallocate_offset(m.0).unwrap();
                    m.2 -= 1;
                    if m.2 == 0 { model.remove(&name); }
                }
            }
            let report = arena.verify().unwrap();
            prop_assert_eq!(report.used_blocks, model.len() as u64 + slot_chunks(&arena).0);
        }
        for (_, (offset, _, refs)) in model.drain() {
            for _ in 0..refs { arena.deallocate_offset(offset).unwrap(); }
        }
        let report = arena.verify().unwrap();
        let (chunks, bytes) = slot_chunks(&arena);
        prop_assert_eq!((report.used_blocks, report.used_bytes), (chunks, bytes));
        prop_assert_eq!(report.free_bytes + report.parked_bytes + bytes, heap::capacity(&arena.region));
        // Parked blocks merged back: the heap is whole again.
        arena.coalesce().unwrap();
        let report = arena.verify().unwrap();
        prop_assert_eq!((report.parked_blocks, report.parked_bytes), (0, 0));
        prop_assert!(report.free_blocks <= chunks + 1);
        prop_assert_eq!(report.free_bytes + bytes, heap::capacity(&arena.region));
    }
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

/// An update abandoned halfway (as by a killed process) is undone by `roll_back`, at every
/// possible stopping point.
#[test]
fn rollback_undoes_an_interrupted_update_at_any_point() {
    let dir = TempDir::new();
    let arena = Arena::create("r", &dir.options(1 << 20)).unwrap();
    holes(&arena, "k", 50, |i| 100 + i * 7, 3);
    let r = arena.region;
    // Two entries whose last holder died before removing them: a small one (its block is
    // parked on removal) and a large one (freed to the heap).
    let small = zombie(&arena, "zs", 100);
    let large = zombie(&arena, "zl", 5000);
    // A freed block between two in use, which a smaller request splits into a tail of a
    // smaller class (the heap's last large block, carved, keeps its class).
    let hole = arena.allocate("hole", 5000).unwrap();
    let fence = arena.allocate("fence", 5000).unwrap();
    arena.deallocate(hole).unwrap();
    let before = (arena.entries().unwrap(), arena.stats().unwrap());
    let key = b"interrupted";
    let updates: [(&str, &Update); 5] = [
        ("insert into a parked block", &|tx| {
            directory::insert(tx, key, directory::hash(key), 300, 64).map(drop)
        }),
        ("insert carved from the last block", &|tx| {
            directory::insert(tx, key, directory::hash(key), 8000, 64).map(drop)
        }),
        ("insert into a freed block, split", &|tx| {
            directory::insert(tx, key, directory::hash(key), 3000, 64).map(drop)
        }),
        ("remove and park", &|tx| {
            directory::remove_dead(tx, small.0, small.1)
        }),
        ("remove and free", &|tx| {
            directory::remove_dead(tx, large.0, large.1)
        }),
    ];
    // The first insert really takes a parked block, the first removal really parks one.
    for (i, change) in [(0, -1i64), (3, 1)] {
        let parked = recycle::count_parked(&r).unwrap().0 as i64;
        let mut tx = Tx::begin(&r);
        updates[i].1(&mut tx).unwrap();
        let now = recycle::count_parked(&r).unwrap().0 as i64;
        assert_eq!(now - parked, change, "{}", updates[i].0);
        std::mem::forget(tx);
        lock::recover(&r).unwrap();
    }
    for (what, update) in updates {
        let mut completed = false;
        for stop_after in 1..80u64 {
            completed |= interrupted(&arena, stop_after, update);
            assert_as_before(
                &arena,
                &before,
                &format!("{what}, stopped at write {stop_after}"),
            );
        }
        assert!(completed, "{what}: every stopping point was tried");
    }
    arena.deallocate(fence).unwrap();
    arena.verify().unwrap();
}

/// A carve whose tail lies above the pristine mark stores the tail's words without logging
/// them. Interrupted at every logged write, in a fresh arena each time (the first attempt
/// raises the mark for good, and later ones would take the logged path), the rollback leaves a
/// well-formed heap, and the memory those words went to is zero when it is handed out again.
#[test]
fn an_interrupted_carve_of_fresh_memory_leaves_it_zero_at_any_point() {
    let dir = TempDir::new();
    let key = b"interrupted";
    let (mut completed, mut fresh_then_stopped) = (false, false);
    for stop_after in 1..40u64 {
        let arena = Arena::create(&format!("f{stop_after}"), &dir.options(1 << 20)).unwrap();
        let _held: Vec<_> = (0..5)
            .map(|i| arena.allocate(&format!("n{i}"), 100).unwrap())
            .collect();
        let before = (arena.entries().unwrap(), arena.stats().unwrap());
        let r = arena.region;
        let mark = r.load(l::PRISTINE_FROM).unwrap();
        let done = interrupted(&arena, stop_after, &|tx| {
            directory::insert(tx, key, directory::hash(key), 300, 64).map(drop)
        });
        completed |= done;
        fresh_then_stopped |= !done && r.load(l::PRISTINE_FROM).unwrap() > mark;
        assert_as_before(&arena, &before, &format!("stopped at write {stop_after}"));
        // Larger than the interrupted block: it covers where the tail's words went.
        let next = arena.allocate("after", 8000).unwrap();
        assert!(
            next.as_atomic_u64()
                .iter()
                .all(|w| w.load(Ordering::Relaxed) == 0),
            "stopped at write {stop_after}: stale bytes handed out"
        );
        arena.verify().unwrap();
    }
    assert!(completed, "every stopping point was tried");
    assert!(
        fresh_then_stopped,
        "some attempt stored the tail unlogged and was then interrupted"
    );
}

/// The counters that updates keep outside the undo log are whatever a process killed after its
/// commit point left; the recovery recounts them from the directory and the park lists.
#[test]
fn a_recovery_recounts_the_unlogged_counters() {
    let dir = TempDir::new();
    let arena = Arena::create("c", &dir.options(1 << 20)).unwrap();
    holes(&arena, "n", 40, |i| 10 + i * 30, 4);
    let _zombie = zombie(&arena, "z", 77);
    let stats = arena.stats().unwrap();
    let report = arena.verify().unwrap();
    assert!(report.parked_blocks > 0 && stats.live_blocks == 31);
    let r = arena.region;
    for off in [l::LIVE_BLOCKS, l::REQUESTED, l::PARKED_BYTES] {
        r.store(off, 0xdead_beef).unwrap();
    }
    assert!(
        arena.verify().is_err(),
        "the scrambled counters are noticed"
    );
    lock::recover(&r).unwrap();
    assert_eq!(arena.stats().unwrap(), stats);
    assert_eq!(arena.verify().unwrap(), report);
}

/// A request just below the arena's one free block fits, even though it rounds up to a larger
/// TLSF class than the block's.
#[test]
fn nearly_whole_arena_fits_in_one_block() {
    let dir = TempDir::new();
    let arena = Arena::create("w", &dir.options(257 << 20)).unwrap();
    let largest = arena.stats().unwrap().largest_free;
    let b = arena.allocate("all", 256 << 20).unwrap();
    assert!(largest > 256 << 20);
    arena.deallocate(b).unwrap();
    // What the directory's first slot chunk left of the one free block.
    let largest = arena.stats().unwrap().largest_free;
    let request = largest - 256; // minus the entry, name and alignment padding
    let b = arena.allocate_aligned("max", request, 16).unwrap();
    assert_eq!(b.len(), request);
}

#[test]
fn persisted_blocks_outlive_the_handle() {
    let dir = TempDir::new();
    let options = dir.options(1 << 20).unlink(Unlink::Never);
    let arena = Arena::create("keep", &options).unwrap();
    let b = arena.allocate("published", 100).unwrap();
    let c = arena.allocate("private", 100).unwrap();
    arena.persist(b).unwrap();
    assert_eq!(arena.persist(b).unwrap_err().code(), ErrorCode::NotHeld);
    assert_eq!(arena.deallocate(b).unwrap_err().code(), ErrorCode::NotHeld);
    let _ = c;
    drop(arena);
    let again = Arena::attach_with("keep", &options).unwrap();
    let names: Vec<String> = again
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["published"],
        "the persisted block stays, the other was released on drop"
    );
    again.unlink().unwrap();
}

/// A crafted undo log that would restore words inside the lock (a write-what-where for anyone
/// who can make the lock look abandoned) is refused as a whole: nothing is written, the caller
/// gets `Corrupted`, and so does every later locker.
#[test]
fn an_undo_log_pointing_into_the_lock_is_refused() {
    let dir = TempDir::new();
    let arena = Arena::create(
        "u",
        &dir.options(1 << 20)
            .lock_timeout(std::time::Duration::from_millis(200)),
    )
    .unwrap();
    let keep = arena.allocate("kept", 64).unwrap();
    let r = arena.region;
    let heap_word = keep.offset();
    // A valid first entry, then one aimed at the mutex.
    r.store(l::UNDO_ENTRIES, heap_word).unwrap();
    r.store(l::UNDO_ENTRIES + 8, 0xdead).unwrap();
    r.store(l::UNDO_ENTRIES + 16, l::LOCK + 16).unwrap();
    r.store(l::UNDO_ENTRIES + 24, 0x4141_4141).unwrap();
    r.store(l::UNDO_LEN, 2).unwrap();
    let lock_before: Vec<u64> = (0..8).map(|i| r.header(l::LOCK + i * 8)).collect();
    let err = r.roll_back().unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::Corrupted, "{err}");
    assert!(err.to_string().contains("no update changes"), "{err}");
    let lock_after: Vec<u64> = (0..8).map(|i| r.header(l::LOCK + i * 8)).collect();
    assert_eq!(lock_before, lock_after, "the mutex was written");
    assert_ne!(
        r.load(heap_word).unwrap(),
        0xdead,
        "a valid entry was applied anyway"
    );
    // The same through the lock: a holder that "died" (FUTEX_OWNER_DIED in the lock word).
    // SAFETY: test only; the lock word is the first u32 of glibc's mutex, no thread holds it.
    unsafe {
        let word = arena.mutex(l::LOCK).cast::<std::sync::atomic::AtomicU32>();
        (*word).store(0x4000_0000, std::sync::atomic::Ordering::SeqCst);
    }
    for _ in 0..2 {
        // A new name: the update takes the lock (finding "kept" would not).
        let err = arena.allocate("other", 64).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Corrupted, "{err}");
    }
    assert_eq!(r.header(l::LOCK + 16), lock_before[2]);
    assert_eq!(
        arena.stats().unwrap_err().code(),
        crate::ErrorCode::Corrupted
    );
    drop(arena); // releasing what it holds fails quietly; the handle still goes
}

/// An update may write only heap metadata, directory and heap words.
#[test]
fn updates_cannot_write_locks_or_geometry() {
    let dir = TempDir::new();
    let arena = Arena::create("w", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    for off in [
        l::LOCK,
        l::USER_LOCK + 8,
        l::BUCKET_COUNT,
        l::HEAP_END,
        l::UNDO_LEN,
        l::SIZE,
    ] {
        let mut tx = Tx::begin(&r);
        let err = tx.set(off, 1).unwrap_err();
        assert_eq!(
            err.code(),
            crate::ErrorCode::Corrupted,
            "offset {off}: {err}"
        );
    }
    let mut tx = Tx::begin(&r);
    tx.set(l::USED, r.header(l::USED)).unwrap();
    tx.commit();
    arena.verify().unwrap();
}

/// Safe copy-in and copy-out of `Pod` values, and atomics for blocks of any length.
#[test]
fn typed_access_without_unsafe() {
    let dir = TempDir::new();
    let arena = Arena::create("t", &dir.options(1 << 20)).unwrap();
    let table = arena.allocate("table", 100 * 8).unwrap();
    let values: Vec<f64> = (0..100).map(|i| i as f64 * 0.25).collect();
    table.write_at(0, &values).unwrap();
    let mut back = vec![0f64; 100];
    table.read_at(0, &mut back).unwrap();
    assert_eq!(back, values);
    table.write_at(97, &[-1.0f64, -2.0, -3.0]).unwrap();
    assert_eq!(table.to_vec::<f64>().unwrap()[97..], [-1.0, -2.0, -3.0]);
    // u16 elements at an odd index: byte-granular copies.
    table.write_at(3, &[0xabcdu16]).unwrap();
    let mut one = [0u16];
    table.read_at(3, &mut one).unwrap();
    assert_eq!(one, [0xabcd]);
    let err = table.write_at(98, &[0f64; 3]).unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("block of 800 bytes"), "{err}");
    assert!(table.read_at(usize::MAX, &mut back).is_err());
    // A 3-byte block: no whole word, still safe access.
    let tiny = arena.allocate("tiny", 3).unwrap();
    tiny.as_atomic_u8()[2].store(7, Ordering::Relaxed);
    assert_eq!(tiny.to_vec::<u8>().unwrap(), [0, 0, 7]);
    assert!(tiny.as_atomic_u64().is_empty() && tiny.as_atomic_u32().is_empty());
}

/// A process killed after dropping a block's last reference (lock-free) but before removing
/// the entry (under the lock) leaves an entry without references: the directory still
/// verifies, readers do not hand it out, and the first locked operation that meets the name
/// removes it.
#[test]
fn an_entry_left_without_references_is_removed_when_met() {
    let dir = TempDir::new();
    let arena = Arena::create("z", &dir.options(1 << 20)).unwrap();
    // What the killed process did: its last reference dropped, nothing else.
    zombie(&arena, "zombie", 100);
    arena.verify().unwrap();
    assert_eq!(arena.stats().unwrap().live_blocks, 1, "still listed");
    // A lock-free reader does not trust it and asks under the lock, which removes it.
    assert!(arena.find("zombie").unwrap().is_none());
    assert_eq!(arena.stats().unwrap().live_blocks, 0, "removed when met");
    arena.verify().unwrap();
    // Made again with another size: the dead entry goes, a new one is created.
    let again = arena.allocate("zombie", 300).unwrap();
    assert!(again.created());
    let entries = arena.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].size, entries[0].refcount), (300, 1));
    arena.deallocate(again).unwrap();
    arena.verify().unwrap();
    assert_eq!(arena.stats().unwrap().live_blocks, 0);
}

/// An insert stopped after any of its writes (as by a killed process) is never handed out by
/// a lock-free lookup, before or after the recovery rolls it back, and never makes another
/// name look missing.
#[test]
fn an_interrupted_insert_is_invisible_to_lock_free_readers() {
    let dir = TempDir::new();
    let arena = Arena::create("p", &dir.options(1 << 20)).unwrap();
    let kept = arena.allocate("kept", 64).unwrap();
    let r = arena.region;
    let key = b"half";
    let h = directory::hash(key);
    for stop_after in 1..40u64 {
        let mut tx = Tx::begin(&r);
        tx.limit = Some(stop_after);
        let _ = directory::insert(&mut tx, key, h, 200, 64);
        std::mem::forget(tx); // killed here: no commit, no rollback yet
        assert!(
            !matches!(directory::lookup_fast(&r, key, h), directory::Fast::Hit(_)),
            "stopped after write {stop_after}: a lock-free reader got the uncommitted entry"
        );
        // Another name is never reported missing meanwhile: found, or (when its chain shares
        // the group) left to the lock, where the recovery runs first.
        let kept_key = b"kept";
        assert!(!matches!(
            directory::lookup_fast(&r, kept_key, directory::hash(kept_key)),
            directory::Fast::Miss { .. }
        ));
        lock::recover(&r).unwrap();
        let k = arena.find("kept").unwrap().unwrap();
        arena.deallocate(k).unwrap();
        assert!(arena.find("half").unwrap().is_none());
        assert_eq!(arena.lookup("kept").unwrap().unwrap().refcount, 1);
        arena
            .verify()
            .unwrap_or_else(|e| panic!("after stopping at write {stop_after}: {e}"));
    }
    arena.deallocate(kept).unwrap();
}

/// Inserting and removing a name move its chain group's version, so a lock-free miss seen
/// before either is not trusted afterwards (the lock-free insert shortcut relies on it).
#[test]
fn updates_move_their_chains_version() {
    let dir = TempDir::new();
    let arena = Arena::create("v", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    let key = b"versioned";
    let h = directory::hash(key);
    let directory::Fast::Miss { version, extent } = directory::lookup_fast(&r, key, h) else {
        panic!("a new arena has no such name");
    };
    assert_eq!(version % 2, 0);
    let b = arena.allocate("versioned", 64).unwrap();
    assert!(
        !directory::still_missing(&r, h, version, extent),
        "the insert moved it"
    );
    let directory::Fast::Hit(_) = directory::lookup_fast(&r, key, h) else {
        panic!("found without the lock after the insert");
    };
    arena.deallocate(b).unwrap();
    let directory::Fast::Miss { version: after, .. } = directory::lookup_fast(&r, key, h) else {
        panic!("gone after the last reference");
    };
    assert!(
        after >= version + 4,
        "insert and removal each moved it twice"
    );
    arena.verify().unwrap();
}

/// Names are read 8 bytes a step (the tail of a long name from its last 8 bytes, a short name
/// in pieces): the hash must be the FNV-1a over words that a byte-by-byte reading gives, for
/// every tail length, so that arenas hashed before keep their chains.
#[test]
fn names_hash_as_read_byte_by_byte() {
    fn reference(name: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ name.len() as u64;
        for piece in name.chunks(8) {
            let mut w = !0u64;
            for (k, &b) in piece.iter().enumerate() {
                w &= !(0xffu64 << (8 * k));
                w |= u64::from(b) << (8 * k);
            }
            h ^= w;
            h = h.wrapping_mul(0x0100_0000_01b3);
            h ^= h >> 29;
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
    let text: Vec<u8> = (0..255u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    for len in 1..=255 {
        let name = &text[..len];
        assert_eq!(directory::hash(name), reference(name), "length {len}");
        let s = std::str::from_utf8(name).unwrap();
        assert_eq!(directory::checked_hash(s).unwrap(), reference(name));
    }
    // A NUL is found in any position of any word, the tail included.
    for len in 1..=20 {
        for at in 0..len {
            let mut name = text[..len].to_vec();
            name[at] = 0;
            let s = String::from_utf8(name).unwrap();
            assert!(matches!(
                directory::checked_hash(&s),
                Err(Error::InvalidName { .. })
            ));
        }
    }
}

/// Threads of one handle share its reference map (and its spin lock): many of them allocating,
/// finding and releasing the same few names, each name removed and made anew at the offset of
/// its parked block thousands of times, never record a reference under another generation
/// (which would make a later release fail as `Corrupted`) nor lose or invent one.
#[test]
fn threads_of_one_handle_share_its_references() {
    let dir = TempDir::new();
    let arena = Arena::create("threads", &dir.options(1 << 20)).unwrap();
    let kept = arena.allocate("kept", 64).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let arena = &arena;
            s.spawn(move || {
                for i in 0..4_000 {
                    let name = format!("shared-{}", (i + t) % 3);
                    let b = arena.allocate(&name, 64).unwrap();
                    if let Some(f) = arena.find(&name).unwrap() {
                        assert_eq!(f.offset(), b.offset());
                        arena.deallocate(f).unwrap();
                    }
                    let k = arena
                        .find("kept")
                        .unwrap()
                        .expect("held by the main thread");
                    arena.deallocate(k).unwrap();
                    arena.deallocate(b).unwrap();
                }
            });
        }
    });
    assert_eq!(arena.held.lock().len(), 1, "only kept is still held");
    assert_eq!(arena.lookup("kept").unwrap().unwrap().refcount, 1);
    assert_eq!(arena.stats().unwrap().live_blocks, 1);
    arena.deallocate(kept).unwrap();
    assert!(arena.held.lock().is_empty());
    assert_eq!(arena.stats().unwrap().live_blocks, 0);
    arena.verify().unwrap();
}

/// A name's chain is chosen in two steps (the group of heads sharing a cache line with their
/// version from the hash's low bits, the head within it from the high bits): together they
/// must spread names as evenly as one uniform choice among all heads, once the directory has
/// grown to all of them.
#[test]
fn names_spread_over_the_chains_like_random_choices() {
    let dir = TempDir::new();
    let arena = Arena::create("spread", &dir.options(64 << 20).expected_names(1 << 14)).unwrap();
    let names = 20_000u64;
    let blocks: Vec<_> = (0..names)
        .map(|i| arena.allocate(&format!("probe-{i}"), 16).unwrap())
        .collect();
    let mut per_chain: HashMap<u64, u64> = HashMap::new();
    directory::each_entry(&arena.region, |head, _| {
        *per_chain.entry(head).or_default() += 1;
        Ok(true)
    })
    .unwrap();
    let info = arena.info();
    assert_eq!(
        info.chains_in_use, info.bucket_count,
        "grown to the whole directory"
    );
    let chains = info.bucket_count as f64;
    assert_eq!(chains, ((1 << 14) / 8 * 7) as f64);
    let expected_used = chains * (1.0 - (-(names as f64) / chains).exp());
    let used = per_chain.len() as f64;
    assert!(
        (used - expected_used).abs() < 0.02 * expected_used,
        "{used} chains used, {expected_used:.0} expected of random choices"
    );
    let longest = per_chain.values().max().copied().unwrap();
    assert!(longest <= 10, "longest chain {longest}");
    for b in blocks {
        arena.deallocate(b).unwrap();
    }
}

/// The directory grows with the names, `CHAINS_PER_NAME` chains per name (from 56), and keeps
/// every name findable, with and without the lock, while groups split; it stops at its size;
/// it shrinks back as the names go, keeping the rest findable while groups merge.
#[test]
fn the_directory_grows_with_the_names() {
    let dir = TempDir::new();
    let arena = Arena::create("grow", &dir.options(64 << 20).expected_names(1 << 12)).unwrap();
    let r = arena.region;
    let full = arena.info().bucket_count;
    assert_eq!(arena.info().chains_in_use, 8 * l::GROUP_HEADS);
    let mut blocks = Vec::new();
    for i in 0..6000u64 {
        blocks.push(arena.allocate(&format!("grow-{i}"), 16).unwrap());
        let chains = arena.info().chains_in_use;
        let want = (i + 1) * directory::CHAINS_PER_NAME;
        assert!(
            chains >= want.min(full) && chains <= (want + l::GROUP_HEADS).max(56).min(full),
            "{chains} chains for {} names",
            i + 1
        );
        if i % 97 == 0 || i < 200 {
            arena.verify().unwrap();
            for j in (0..=i).step_by(7) {
                let key = format!("grow-{j}");
                let h = directory::hash(key.as_bytes());
                assert!(
                    matches!(
                        directory::lookup_fast(&r, key.as_bytes(), h),
                        directory::Fast::Hit(_)
                    ),
                    "{key} after {} names",
                    i + 1
                );
            }
        }
    }
    assert_eq!(arena.info().chains_in_use, full);
    for (i, b) in blocks.into_iter().enumerate() {
        if i % 2 == 0 {
            arena.deallocate(b).unwrap();
        } else {
            let again = arena.find(&format!("grow-{i}")).unwrap().unwrap();
            assert_eq!(again.offset(), b.offset());
            arena.deallocate(again).unwrap();
            arena.deallocate(b).unwrap();
        }
    }
    // Names are released in order, so the rest must stay findable as groups merge.
    let mut rest: Vec<_> = (0..6000u64)
        .map(|i| arena.allocate(&format!("again-{i}"), 16).unwrap())
        .collect();
    assert_eq!(arena.info().chains_in_use, full);
    let mut step = 0;
    while let Some(b) = rest.pop() {
        arena.deallocate(b).unwrap();
        let (names, chains) = (rest.len() as u64, arena.info().chains_in_use);
        assert!(
            chains <= (names * 16 + 3 * l::GROUP_HEADS).max(56),
            "{chains} chains for {names} names"
        );
        step += 1;
        if step % 101 == 0 || names < 50 {
            arena.verify().unwrap();
            for j in (0..names).step_by(11) {
                let key = format!("again-{j}");
                let h = directory::hash(key.as_bytes());
                assert!(matches!(
                    directory::lookup_fast(&r, key.as_bytes(), h),
                    directory::Fast::Hit(_)
                ));
            }
        }
    }
    assert_eq!(arena.info().chains_in_use, 56, "back to its first size");
    arena.verify().unwrap();
}

/// A removal that merges groups back, stopped after any of its writes (as by a killed
/// process), is rolled back to the directory as it was, and no name goes missing for
/// lock-free readers meanwhile.
#[test]
fn an_interrupted_merge_is_rolled_back_at_any_point() {
    let dir = TempDir::new();
    let arena = Arena::create("merge", &dir.options(8 << 20)).unwrap();
    let r = arena.region;
    let blocks: Vec<_> = (0..10u64)
        .map(|i| arena.allocate(&format!("m-{i}"), 32).unwrap())
        .collect();
    // Many more names, removed without merging: the directory stays grown for 10 names.
    let gone: Vec<_> = (0..200u64)
        .map(|i| zombie(&arena, &format!("gone-{i}"), 32))
        .collect();
    for (entry, generation) in gone {
        let mut tx = Tx::begin(&r);
        directory::remove_dead(&mut tx, entry, generation).unwrap();
        tx.commit();
    }
    assert!(arena.info().chains_in_use > 16 * 10);
    let (entry, generation) = zombie(&arena, "victim", 32);
    let extent = r.load(l::EXTENT).unwrap();
    let merge = |tx: &mut Tx| {
        directory::remove_dead(tx, entry, generation)?;
        directory::shrink(tx)?;
        match r.load(l::EXTENT)? {
            now if now != extent => Ok(()),
            _ => Err(Error::Corrupted("test: no merge".into())),
        }
    };
    assert!(
        killed_at_every_write(&arena, "m-", blocks.len() as u64, &merge),
        "every stopping point was tried, and the last merged"
    );
    for b in blocks {
        arena.deallocate(b).unwrap();
    }
    arena.verify().unwrap();
}

/// An insert that splits a group, stopped after any of its writes (as by a killed process),
/// is rolled back to the directory as it was: same extent, every name in its chain, none
/// found missing without the lock meanwhile.
#[test]
fn an_interrupted_split_is_rolled_back_at_any_point() {
    let dir = TempDir::new();
    let arena = Arena::create("split", &dir.options(4 << 20)).unwrap();
    // Exactly as many names as the chains in use take: the next insert splits group 0.
    let names = arena.info().chains_in_use / directory::CHAINS_PER_NAME;
    let blocks: Vec<_> = (0..names)
        .map(|i| arena.allocate(&format!("s-{i}"), 32).unwrap())
        .collect();
    let key = b"splitter";
    let split = |tx: &mut Tx| directory::insert(tx, key, directory::hash(key), 32, 64).map(drop);
    assert!(
        killed_at_every_write(&arena, "s-", names, &split),
        "every stopping point was tried"
    );
    // And done for real, the split holds.
    let b = arena.allocate("splitter", 32).unwrap();
    assert_eq!(
        arena.info().chains_in_use,
        names * directory::CHAINS_PER_NAME + l::GROUP_HEADS
    );
    arena.verify().unwrap();
    for (i, x) in blocks.into_iter().enumerate() {
        assert!(arena.find(&format!("s-{i}")).unwrap().is_some_and(|f| {
            let same = f.offset() == x.offset();
            arena.deallocate(f).unwrap();
            same
        }));
        arena.deallocate(x).unwrap();
    }
    arena.deallocate(b).unwrap();
}

/// A damaged extent is an error under the lock that says what it holds, and never sends a
/// lookup outside the directory.
#[test]
fn a_damaged_extent_is_an_error() {
    let dir = TempDir::new();
    let arena = Arena::create("extent", &dir.options(1 << 20)).unwrap();
    let kept = arena.allocate("kept", 64).unwrap();
    let r = arena.region;
    for bad in [u64::MAX, 40 << 32, (3 << 32) | 8, 30 << 32] {
        r.store(l::EXTENT, bad).unwrap();
        let key = b"other";
        let _ = directory::lookup_fast(&r, key, directory::hash(key));
        let err = arena.allocate("other", 64).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupted(m) if m.contains("groups are in use")),
            "{bad:#x}: {err}"
        );
        assert!(arena.verify().is_err());
        assert_eq!(arena.info().chains_in_use, 0);
    }
    r.store(l::EXTENT, 3 << 32).unwrap();
    arena.verify().unwrap();
    arena.deallocate(kept).unwrap();
}

/// Every chain head announces its names in its filter, through inserts, splits, removals and
/// merges; a lookup of a name whose bit is clear misses without reading a slot (here the
/// chain's first link is made unreadable and the miss is still reported); and a filter that
/// lost a name's bit (damage) is an error of `verify`.
#[test]
fn chain_heads_announce_their_names() {
    let dir = TempDir::new();
    let arena = Arena::create("filter", &dir.options(8 << 20).expected_names(1 << 12)).unwrap();
    let r = arena.region;
    let announced = |name: &str| {
        let h = directory::hash(name.as_bytes());
        let head = r.load(directory::head_of(&r, h).unwrap()).unwrap();
        head & directory::tag(h) != 0
    };
    let mut blocks: Vec<_> = (0..3000)
        .map(|i| arena.allocate(&format!("f-{i}"), 16).unwrap())
        .collect();
    assert!((0..3000).all(|i| announced(&format!("f-{i}"))));
    arena.verify().unwrap();
    // Most names go: the directory merges back; the rest stay announced and findable.
    for b in blocks.drain(100..) {
        arena.deallocate(b).unwrap();
    }
    assert!((0..100).all(|i| announced(&format!("f-{i}"))));
    for i in 0..100 {
        live_entry(&arena, &format!("f-{i}"));
    }
    arena.verify().unwrap();

    // A missing name whose bit is clear on a non-empty chain: its lookup reads no slot, so an
    // unreadable first link does not change its answer.
    let kept = live_entry(&arena, "f-0").0;
    let head = directory::head_of(&r, directory::hash(b"f-0")).unwrap();
    let word = r.load(head).unwrap();
    let absent = (0..10_000)
        .map(|i| format!("absent-{i}"))
        .find(|n| {
            let h = directory::hash(n.as_bytes());
            directory::head_of(&r, h).unwrap() == head && word & directory::tag(h) == 0
        })
        .expect("a name of that chain with a clear bit");
    let h = directory::hash(absent.as_bytes());
    let filter = word & !(l::MAX_ARENA_SIZE - 1);
    r.store(head, filter | 8).unwrap();
    assert!(matches!(
        directory::lookup_fast(&r, absent.as_bytes(), h),
        directory::Fast::Miss { .. }
    ));
    // With the bit set, the lookup reads the (now unreadable) link and leaves it to the lock.
    r.store(head, filter | directory::tag(h) | 8).unwrap();
    assert_eq!(
        directory::lookup_fast(&r, absent.as_bytes(), h),
        directory::Fast::Busy
    );
    r.store(head, word).unwrap();

    // Damage: the head loses the bit of a name on its chain.
    let tag = directory::tag(directory::hash(b"f-0"));
    r.store(head, word & !tag).unwrap();
    let err = arena.verify().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupted(m) if m.contains("does not announce")),
        "{err}"
    );
    r.store(head, word).unwrap();
    arena.verify().unwrap();
    assert_eq!(live_entry(&arena, "f-0").0, kept);
    for b in blocks {
        arena.deallocate(b).unwrap();
    }
}

/// A chain that loops (damage) ends a lock-free lookup after a bounded walk, which leaves the
/// name to the lock, where the walk with cycle detection reports it.
#[test]
fn a_looping_chain_ends_the_lock_free_walk() {
    let dir = TempDir::new();
    let arena = Arena::create("loop", &dir.options(1 << 20)).unwrap();
    let b = arena.allocate("a", 64).unwrap();
    let r = arena.region;
    let (entry, _) = live_entry(&arena, "a");
    let h = directory::hash(b"a");
    // The slot now points at itself, and its hash no longer matches its name's.
    r.store(entry + l::E_NEXT, entry).unwrap();
    r.store(entry + l::E_HASH, !h).unwrap();
    assert_eq!(directory::lookup_fast(&r, b"a", h), directory::Fast::Busy);
    let err = arena.find("a").unwrap_err();
    assert!(
        matches!(&err, Error::Corrupted(m) if m.contains("does not end")),
        "{err}"
    );
    r.store(entry + l::E_NEXT, 0).unwrap();
    r.store(entry + l::E_HASH, h).unwrap();
    arena.deallocate(b).unwrap();
    arena.verify().unwrap();
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

/// A waiter that may give up (a lock-free reader whose missing name may be being created by
/// the holder) leaves the wait as soon as it is told to, without running its update; one that
/// is never told to waits for the holder and then runs it.
#[test]
fn a_waiter_gives_up_when_asked_and_otherwise_gets_the_lock() {
    use std::sync::atomic::{AtomicBool, AtomicU32};
    let dir = TempDir::new();
    let arena = Arena::create("give-up", &dir.options(1 << 20)).unwrap();
    let (inside, release) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            arena
                .locked(|_| {
                    inside.store(true, Ordering::Release);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while !release.load(Ordering::Acquire) {
                        assert!(std::time::Instant::now() < deadline, "never released");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok(())
                })
                .unwrap()
        });
        while !inside.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let asked = AtomicU32::new(0);
        let ran = AtomicBool::new(false);
        let outcome = arena
            .locked_unless(
                || (asked.fetch_add(1, Ordering::Relaxed) == 2).then_some("the name appeared"),
                |_| {
                    ran.store(true, Ordering::Relaxed);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(outcome, Err("the name appeared"));
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "asked after each failed try"
        );
        assert!(
            !ran.load(Ordering::Relaxed),
            "the update of a waiter that gave up ran"
        );
        // Released while the second waiter spins or sleeps: it gets the lock and runs.
        let releaser = s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            release.store(true, Ordering::Release);
        });
        let outcome = arena
            .locked_unless(|| None::<()>, |_| Ok(ran.swap(true, Ordering::Relaxed)))
            .unwrap();
        assert_eq!(outcome, Ok(false));
        releaser.join().unwrap();
        holder.join().unwrap();
    });
    arena.verify().unwrap();
}

/// Waiters only read the holder word while it names a holder (so as not to take the lock's
/// line from the holder), but the word is a hint: one left set over a free lock, by a holder
/// killed at the wrong instant or by damage, must not keep anyone from the lock.
#[test]
fn a_stale_holder_word_does_not_keep_the_lock() {
    let dir = TempDir::new();
    let arena = Arena::create("stale-holder", &dir.options(1 << 20)).unwrap();
    arena
        .region
        .word32(l::LOCK_HOLDER)
        .store(u32::MAX, Ordering::Release);
    // Taken while spinning (within the rounds that only read the word, plus one that tries),
    // not left to the kernel's timed wait after the spin.
    let mut asked = 0;
    let outcome = arena
        .locked_unless(
            || {
                asked += 1;
                None::<()>
            },
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!(outcome, Ok(()));
    assert!(
        asked < 8,
        "the free lock was tried only after {asked} rounds"
    );
    let b = arena.allocate("after", 64).unwrap();
    arena.deallocate(b).unwrap();
    assert_eq!(
        arena.region.word32(l::LOCK_HOLDER).load(Ordering::Acquire),
        0
    );
    arena.verify().unwrap();
}
