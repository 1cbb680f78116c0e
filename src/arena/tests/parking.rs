//! Parked blocks: a removed small block waits with its slot for the next name of its size,
//! and goes back to the heap when a larger block needs the memory.

use super::*;

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
