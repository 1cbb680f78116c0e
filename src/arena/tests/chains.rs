//! The directory: hashing, spread over the chains, growth and shrinking (interrupted at every
//! write too), versions, filters, and damaged extents and chains.

use super::*;

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

/// A stored name is compared word by word, its short tail masked: every length from 1 to 40
/// matches itself, and no name that differs in one byte (any position) or in length. The
/// first 16 bytes come from the slot: a name of up to 16 bytes reads nothing else, a longer
/// one only its block's words past them.
#[test]
fn stored_names_compare_in_every_byte() {
    let dir = TempDir::new();
    let arena = Arena::create("compare", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    let text: String = (0..41u8).map(|i| char::from(b'a' + i % 26)).collect();
    for len in 1..=40 {
        let name = &text[..len];
        let block = arena.allocate(name, 8).unwrap();
        let slot = directory::read_slot(&r, live_entry(&arena, name).0).unwrap();
        let read = std::cell::RefCell::new(Vec::new());
        let equal = |other: &[u8]| {
            directory::names_equal(
                |at| {
                    read.borrow_mut().push(at);
                    r.load(at).ok()
                },
                &slot,
                other,
            )
        };
        assert_eq!(equal(name.as_bytes()), Some(true), "{name}");
        let expected: Vec<u64> = (16..len as u64)
            .step_by(8)
            .map(|at| slot.block() + at)
            .collect();
        assert_eq!(
            *read.borrow(),
            expected,
            "words of the block read for {name}"
        );
        for at in 0..len {
            let mut other = name.as_bytes().to_vec();
            other[at] ^= 0x20;
            assert_eq!(equal(&other), Some(false), "{name} with byte {at} changed");
        }
        assert_eq!(
            equal(&name.as_bytes()[..len - 1]),
            Some(false),
            "{name} shortened"
        );
        assert_eq!(
            equal(&text.as_bytes()[..len + 1]),
            Some(false),
            "{name} lengthened"
        );
        arena.deallocate(block).unwrap();
    }
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
    // No name went yet, so every filter is exact: inserts set a name's bit, and the splits
    // that moved names between heads rebuilt both heads' filters from the names they kept.
    let mut tags: HashMap<u64, u64> = HashMap::new();
    directory::each_entry(&r, |head, slot| {
        *tags.entry(head).or_default() |= directory::tag(slot.hash());
        Ok(true)
    })
    .unwrap();
    let groups = directory::extent(&r).unwrap().groups();
    let g = *r.geometry();
    for head in (0..groups * l::GROUP_WORDS).filter(|w| w % l::GROUP_WORDS != 0) {
        let head = g.buckets_offset + head * 8;
        let filter = r.load(head).unwrap() & !(l::MAX_ARENA_SIZE - 1);
        let want = tags.get(&head).copied().unwrap_or(0);
        assert_eq!(filter, want, "the filter of the chain head at {head}");
    }
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

/// A slot keeps its name's first 16 bytes and its hash beside the block's copy of the name:
/// a slot whose copy or hash was damaged holds a name that lookups no longer find (never
/// another's), and `verify` reports it.
#[test]
fn a_slot_that_disagrees_with_its_name_is_an_error() {
    let dir = TempDir::new();
    let arena = Arena::create("head", &dir.options(1 << 20)).unwrap();
    let r = arena.region;
    let block = arena.allocate("table-of-fluxes", 64).unwrap();
    let (entry, _) = live_entry(&arena, "table-of-fluxes");
    let h = directory::hash(b"table-of-fluxes");
    for (word, damage) in [
        (l::E_NAME_HEAD, 1u64 << 8),
        (l::E_NAME_HEAD + 8, 1u64 << 40),
        (l::E_HASH, 1u64 << 3),
    ] {
        let good = r.load(entry + word).unwrap();
        r.store(entry + word, good ^ damage).unwrap();
        assert!(
            matches!(
                directory::lookup_fast(&r, b"table-of-fluxes", h),
                directory::Fast::Miss { .. }
            ),
            "word {word} damaged"
        );
        let err = arena.verify().unwrap_err();
        assert!(
            matches!(&err, Error::Corrupted(m) if m.contains("disagrees with its name")),
            "word {word}: {err}"
        );
        r.store(entry + word, good).unwrap();
        arena.verify().unwrap();
    }
    arena.deallocate(block).unwrap();
}

/// A lock-free reader that meets a chain being updated waits for the update without the lock,
/// and leaves it to the lock when the update does not end: a bounded wait, after which the
/// name is still found.
#[test]
fn a_chain_waiter_waits_a_bounded_time_then_leaves_it_to_the_lock() {
    use std::time::{Duration, Instant};
    let dir = TempDir::new();
    let arena = Arena::create("wait", &dir.options(1 << 20)).unwrap();
    let b = arena.allocate("a", 64).unwrap();
    let r = arena.region;
    let h = directory::hash(b"a");
    assert!(directory::wait_for_chain(&r, h), "no update: no wait");
    // Every chain "being updated" by a holder that never ends its update.
    let groups = r.geometry().groups();
    for group in 0..groups {
        r.bump_version(group);
    }
    assert!(matches!(
        directory::lookup_fast(&r, b"a", h),
        directory::Fast::Busy
    ));
    let start = Instant::now();
    assert!(!directory::wait_for_chain(&r, h));
    let waited = start.elapsed();
    assert!(
        waited >= directory::WAIT_FOR_CHAIN && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    let found = arena.find("a").unwrap().expect("found under the lock");
    arena.deallocate(found).unwrap();
    for group in 0..groups {
        r.bump_version(group);
    }
    assert!(directory::wait_for_chain(&r, h));
    arena.deallocate(b).unwrap();
    arena.verify().unwrap();
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
