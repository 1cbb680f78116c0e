//! The block API: names, sizes, errors with their figures, zeroing, statistics, persistence,
//! typed access, and threads sharing one handle.

use super::*;

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

const HOLE: u64 = 60_000;

/// Leaves `arena` with every directory slot taken and, free, a block that holds exactly a
/// block of `HOLE` bytes named "exact" (aligned to 16), heading the list of its size class;
/// with `second`, a smaller free block of that class after it; and a tail too small for a
/// chunk of slots. Returns the blocks it holds.
fn every_slot_taken(arena: &Arena, second: bool) -> Vec<Block<'_>> {
    let mut held = Vec::new();
    let exact = arena.allocate_aligned("exact", HOLE, 16).unwrap();
    held.push(arena.allocate_aligned("s1", 16, 16).unwrap());
    let smaller = arena.allocate_aligned("smaller", HOLE - 512, 16).unwrap();
    held.push(arena.allocate_aligned("s2", 16, 16).unwrap());
    // The heap's tail keeps room for the small names below, not for a chunk of slots.
    const TAIL: u64 = 1600;
    let rest = arena.stats().unwrap().largest_free;
    held.push(
        arena
            .allocate_aligned("f", rest - 16 - 16 - TAIL, 16)
            .unwrap(),
    );
    assert_eq!(arena.stats().unwrap().largest_free, TAIL);
    if second {
        arena.deallocate(smaller).unwrap();
    } else {
        held.push(smaller);
    }
    arena.deallocate(exact).unwrap();
    let live = arena.stats().unwrap().live_blocks;
    for i in live..l::SLOTS_PER_CHUNK {
        held.push(arena.allocate_aligned(&format!("t{i}"), 16, 16).unwrap());
    }
    assert_eq!(
        arena.region.load(l::SLOT_FREE).unwrap(),
        0,
        "every slot taken"
    );
    held
}

/// A name whose block fits gets it even when every slot is taken and the chunk of slots it
/// needs would fit that same block: the block is placed first, and the chunk goes where it
/// still fits (here, the other free block of the class).
#[test]
fn a_chunk_of_slots_does_not_take_the_room_of_the_block() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let held = every_slot_taken(&arena, true);
    let slots = arena.region.load(l::SLOTS).unwrap();
    let big = arena.allocate_aligned("exact", HOLE, 16).unwrap();
    assert_eq!(
        arena.region.load(l::SLOTS).unwrap(),
        slots + l::SLOTS_PER_CHUNK
    );
    arena.verify().unwrap();
    arena.deallocate(big).unwrap();
    for b in held {
        arena.deallocate(b).unwrap();
    }
    assert_eq!(arena.stats().unwrap().live_blocks, 0);
    arena.verify().unwrap();
}

/// When the block fits but the chunk of slots does not fit beside it, the name fails with
/// figures that count both, and nothing changes. Once a small name goes (its slot parked with
/// its block), the retry that merges parked blocks back frees that slot, and the name fits.
#[test]
fn no_room_for_slots_reports_the_block_and_the_chunk() {
    let dir = TempDir::new();
    let arena = Arena::create("a", &dir.options(1 << 20)).unwrap();
    let mut held = every_slot_taken(&arena, false);
    let stats = arena.stats().unwrap();
    let chunk = l::SLOTS_PER_CHUNK * l::ENTRY_SIZE;
    match arena.allocate_aligned("exact", HOLE, 16).unwrap_err() {
        Error::OutOfSpace {
            requested,
            free,
            capacity,
            ..
        } => {
            assert!(requested > HOLE + chunk, "{requested}");
            assert_eq!((free, capacity), (stats.free, stats.capacity));
        }
        other => panic!("expected OutOfSpace, got {other}"),
    }
    assert_eq!(arena.stats().unwrap(), stats);
    arena.verify().unwrap();
    arena.deallocate(held.pop().unwrap()).unwrap();
    held.push(arena.allocate_aligned("exact", HOLE, 16).unwrap());
    for b in held {
        arena.deallocate(b).unwrap();
    }
    arena.verify().unwrap();
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
    // The slot chunks were carved from the heap's end, so the names' blocks, freed and merged,
    // are one free block again, not fragments between chunks.
    assert_eq!(report.free_blocks, 1, "{report:?}");
    assert_eq!(report.largest_free + 16, report.free_bytes);
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

/// A new chunk of directory slots is due (every slot taken) when a request needs nearly all of
/// the largest free block: the chunk comes from another block, not from the top of that one.
#[test]
fn a_slot_chunk_leaves_the_room_a_large_request_needs() {
    let dir = TempDir::new();
    let arena = Arena::create("k", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    // A 16 KiB hole below the heap's large block.
    let hole = arena.allocate("hole", 16 << 10).unwrap();
    let _fence = arena.allocate("fence", 64).unwrap();
    arena.deallocate(hole).unwrap();
    // Every slot taken.
    let mut small = Vec::new();
    while r.load(l::SLOT_FREE).unwrap() != 0 {
        small.push(arena.allocate(&format!("s{}", small.len()), 64).unwrap());
    }
    let largest = arena.stats().unwrap().largest_free;
    let request = largest - 256; // minus the name and alignment padding
    let big = arena.allocate_aligned("big", request, 16).unwrap();
    assert_eq!(big.len(), request);
    let report = arena.verify().unwrap();
    assert!(report.free_blocks >= 1, "{report:?}");
    arena.deallocate(big).unwrap();
    for b in small {
        arena.deallocate(b).unwrap();
    }
    arena.verify().unwrap();
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
