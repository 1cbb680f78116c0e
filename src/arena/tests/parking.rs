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
    let head = (0..l::PARK_CLASSES)
        .map(|c| recycle::head_of(c, 0))
        .find(|&h| r.load(h).unwrap() != 0)
        .expect("one list holds the removed block");
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

/// The parked lists of the one class that has parked blocks: each list's slots, head first,
/// and their blocks.
fn park_lists(arena: &Arena) -> Vec<Vec<(u64, u64)>> {
    let r = &arena.region;
    let classes: Vec<usize> = (0..l::PARK_CLASSES)
        .filter(|&c| (0..l::PARK_LISTS).any(|i| r.load(recycle::head_of(c, i)).unwrap() != 0))
        .collect();
    assert_eq!(classes.len(), 1, "parked blocks of one size");
    (0..l::PARK_LISTS)
        .map(|list| {
            let mut e = r.load(recycle::head_of(classes[0], list)).unwrap();
            let mut slots = Vec::new();
            while e != 0 {
                let slot = directory::read_slot(r, e).unwrap();
                slots.push((e, slot.block()));
                e = slot.next();
            }
            slots
        })
        .collect()
}

/// Processes that made their names in turns (so that their blocks interleave) and each
/// release theirs in the order made leave one list each, in address order; the next names of
/// that size then take the blocks in address order, one sweep over the memory, where a single
/// last-in-first-out list gave one process's blocks, then another's. With 2 processes and with
/// 4 (as many as the lists).
#[test]
fn parked_blocks_are_taken_in_address_order() {
    for processes in [2, 4] {
        let dir = TempDir::new();
        let options = dir.options(4 << 20).unlink(Unlink::OnLastDetach);
        let mut handles = vec![Arena::create("order", &options).unwrap()];
        while handles.len() < processes {
            handles.push(Arena::attach_with("order", &options).unwrap());
        }
        let mut made: Vec<Vec<_>> = (0..processes).map(|_| Vec::new()).collect();
        let mut turn = 0usize;
        for i in 0..600 {
            // Turns of 1 to 3 names, as ranks racing for the lock take them.
            if i % 3 == 0 || i % 7 == 0 {
                turn = (turn + 1 + i % 2) % processes;
            }
            made[turn].push(handles[turn].allocate(&format!("made-{i}"), 64).unwrap());
        }
        assert!(
            made.iter().all(|m| m.len() > 300 / processes),
            "{processes}"
        );
        // Each releases its own in the order made, the processes taking turns.
        let mut made: Vec<_> = made.into_iter().map(Vec::into_iter).collect();
        loop {
            let mut any = false;
            for (who, blocks) in made.iter_mut().enumerate() {
                if let Some(block) = blocks.next() {
                    handles[who].deallocate(block).unwrap();
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        let lists = park_lists(&handles[0]);
        let parked: usize = lists.iter().map(Vec::len).sum();
        assert_eq!(parked, 600);
        for list in &lists {
            assert!(
                list.windows(2).all(|w| w[0].1 < w[1].1),
                "{processes} processes: a list in address order: {list:?}"
            );
        }
        let taken: Vec<u64> = (0..600)
            .map(|i| {
                handles[0]
                    .allocate(&format!("new-{i}"), 64)
                    .unwrap()
                    .offset()
            })
            .collect();
        assert!(
            taken.windows(2).all(|w| w[0] < w[1]),
            "{processes} processes: taken in address order: {taken:?}"
        );
        handles[0].verify().unwrap();
    }
}

/// A list's tail that another process damaged (pointing at a live entry, or at a parked slot
/// that is not the last of its list) is reported by `verify`, and a removal that would link
/// after it fails with `Corrupted` instead of writing through it.
#[test]
fn a_damaged_park_tail_is_an_error() {
    let dir = TempDir::new();
    let arena = Arena::create("t", &dir.options(1 << 20)).unwrap();
    let live = arena.allocate("live", 64).unwrap();
    let (first, second) = (
        arena.allocate("first", 64).unwrap(),
        arena.allocate("second", 64).unwrap(),
    );
    // Made after the blocks that get parked: their removal would link after the tail.
    let mut later = [0, 1].map(|i| Some(arena.allocate(&format!("later{i}"), 64).unwrap()));
    arena.deallocate(first).unwrap();
    arena.deallocate(second).unwrap();
    let lists = park_lists(&arena);
    assert_eq!(lists[0].len(), 2, "{lists:?}");
    let r = arena.region;
    let tail = (0..l::PARK_CLASSES)
        .map(|c| recycle::tail_of(c, 0))
        .find(|&t| r.load(t).unwrap() == lists[0][1].0)
        .expect("the list's tail word");
    for (i, bad) in [live_entry(&arena, "live").0, lists[0][0].0]
        .into_iter()
        .enumerate()
    {
        r.store(tail, bad).unwrap();
        assert_eq!(arena.verify().unwrap_err().code(), ErrorCode::Corrupted);
        let err = arena.deallocate(later[i].take().unwrap()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Corrupted, "{err}");
        assert_eq!(arena.lookup("live").unwrap().unwrap().refcount, 1);
        assert_eq!(
            park_lists(&arena)[0].len(),
            2,
            "nothing linked after a bad tail"
        );
        r.store(tail, lists[0][1].0).unwrap();
    }
    arena.verify().unwrap();
    // The names whose removal failed were left without references, and go when met.
    assert!(arena.lookup("later0").unwrap().is_none());
    assert!(arena.lookup("later1").unwrap().is_none());
    arena.deallocate(live).unwrap();
    arena.verify().unwrap();
}
