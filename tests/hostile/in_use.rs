//! Damage while the arena is in use: processes keep allocating, finding and releasing names
//! while another one writes bad values over the metadata under them. The mutation test damages
//! an arena at rest; here the damage lands in the middle of lock-free lookups, updates under the
//! lock and recoveries. Errors are the expected outcome; a panic, an abort, a signal or a hang
//! is a failure.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Options, MUTEX_BYTES};

use crate::support;
use crate::{
    assert_none_misbehaved, env_number, golden, mutate, spawn_child, wait_child, Outcome, Rng,
};

/// Rounds of [`damage_while_in_use`], each on a fresh arena (NODESHM_IN_USE_ROUNDS runs more).
const ROUNDS: usize = 40;
/// How long the processes of a round work.
const CHURN: Duration = Duration::from_millis(250);
/// Processes working on the arena in each round.
const WORKERS: usize = 2;

/// Child: works on the arena at `path` for [`CHURN`] (names of its own and the arena's, their
/// data, the checks, the user lock, bursts of names that split and merge the directory).
/// Counts what succeeded and what returned an error.
pub fn role_churn() {
    let path = PathBuf::from(support::role_arg());
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let options = Options::new(0)
        .dir(dir)
        .attach_timeout(Duration::from_millis(100))
        .lock_timeout(Duration::from_millis(50));
    let arena = match Arena::attach_with(name, &options) {
        Ok(arena) => arena,
        Err(e) => {
            println!("outcome attach:{:?}", e.code());
            return;
        }
    };
    let (mut ok, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < CHURN {
        i += 1;
        let own = i % 8;
        let result = (|| -> nodeshm::Result<()> {
            let block = arena.allocate(&format!("churn-{own}"), 64 + own * 48)?;
            for word in block.as_atomic_u64() {
                word.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(found) = arena.find(&format!("block-{}", i % 20))? {
                arena.deallocate(found)?;
            }
            arena.deallocate(block)?;
            if i % 64 == 0 {
                arena.verify()?;
                arena.stats()?;
                arena.entries()?;
            }
            if i % 97 == 0 {
                drop(arena.lock_user(Duration::from_millis(50))?);
            }
            // A burst of names grows the directory (splits) and their release shrinks it again
            // (merges) and parks their blocks: those updates too meet the damage.
            if i % 256 == 0 {
                let burst = (0..64)
                    .map(|k| arena.allocate(&format!("burst-{}-{k}", std::process::id()), 24))
                    .collect::<nodeshm::Result<Vec<_>>>()?;
                for block in burst.into_iter().rev() {
                    arena.deallocate(block)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => ok += 1,
            Err(_) => errors += 1,
        }
    }
    drop(arena);
    println!("outcome churn ok {ok} errors {errors}");
}

/// [`ROUNDS`] rounds: [`WORKERS`] processes work on a valid arena while this one writes a
/// bad value (the mutation test's kinds) over a metadata word at random moments: once in a
/// third of the rounds (the damage that lands in the middle of a call, and what the workers do
/// with the arena after it), up to 3 times in another third, and every 300 us in the last
/// third. Only the mutexes' bytes are left alone ([`MUTEX_BYTES`]: glibc's own while a process
/// is inside a pthread call). Every worker must end on its own, within the time limit, with
/// exit status 0.
pub fn damage_while_in_use() {
    let dir = support::TempDir::new("in-use");
    let rounds = env_number("NODESHM_IN_USE_ROUNDS").unwrap_or(ROUNDS);
    let mut rng = Rng(0x696e_2d75_7365);
    let (mut damages, mut worked, mut failed_calls) = (0usize, 0u64, 0u64);
    let mut unlinked_early = 0usize;
    let mut bad = Vec::new();
    for round in 0..rounds {
        let name = format!("nodeshm-in-use-{round}");
        let path = dir.0.join(&name);
        let golden = golden(&dir.0, &name);
        let in_mutex = |at: usize| {
            MUTEX_BYTES
                .iter()
                .any(|&(start, len)| (at as u64) + 8 > start && (at as u64) < start + len)
        };
        let words: Vec<usize> = (0..golden.len() / 8)
            .map(|i| i * 8)
            .filter(|&at| golden[at..at + 8].iter().any(|&b| b != 0) && !in_mutex(at))
            .collect();
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| spawn_child(&format!("churn:{}", path.display())))
            .collect();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // The mutation test's kinds of damage, each applied to one word of a scratch copy and
        // written over the live arena (the scratch copy is then put back as it was).
        let mut scratch = golden.clone();
        let (count, pause) = match round % 3 {
            0 => (1, None),
            1 => (1 + rng.below(3), None),
            _ => (u64::MAX, Some(Duration::from_micros(300))),
        };
        let start = Instant::now();
        for _ in 0..count {
            let pause = pause.unwrap_or_else(|| {
                Duration::from_micros(rng.below(CHURN.as_micros() as u64 / count))
            });
            std::thread::sleep(pause);
            if start.elapsed() >= CHURN {
                break;
            }
            let at = words[rng.below(words.len() as u64) as usize];
            let kind = rng.below(10) as usize;
            mutate(&mut scratch, &[at], &mut rng, kind);
            file.write_at(&scratch[at..at + 8], at as u64).unwrap();
            scratch.copy_from_slice(&golden);
            damages += 1;
        }
        for worker in workers {
            match wait_child(worker) {
                Outcome::Clean(out) => {
                    let counts: Vec<u64> = out
                        .split_whitespace()
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    if let [ok, errors] = counts[..] {
                        worked += ok;
                        failed_calls += errors;
                    }
                }
                Outcome::Panic(t) => bad.push(format!("panic in round {round}: {t}")),
                Outcome::Abort(t) => bad.push(format!("abort in round {round}: {t}")),
                Outcome::Signal(s, t) => bad.push(format!("signal {s} in round {round}: {t}")),
                Outcome::Hang => bad.push(format!("hang in round {round}")),
            }
        }
        // A worker may have removed the name already: a damaged unlink-policy word makes an
        // attacher apply a policy the arena was not made with (it removes only the file it
        // attached, by identity, and every mapping stays valid).
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => unlinked_early += 1,
            Err(e) => panic!("removing {}: {e}", path.display()),
        }
    }
    println!(
        "damage while in use: {rounds} rounds of {WORKERS} processes, {damages} damaged words: \
         {worked} rounds of calls succeeded, {failed_calls} returned an error; the name removed \
         by a worker in {unlinked_early} rounds; {} failures",
        bad.len()
    );
    assert!(worked > 0, "the workers never got to work");
    assert_none_misbehaved(&bad, "workers");
}
