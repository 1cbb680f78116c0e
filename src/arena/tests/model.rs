//! Random allocate and free sequences checked against a model of the heap.

use super::*;

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
