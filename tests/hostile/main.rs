//! Damaged and hostile arenas: a mutation test (thousands of damaged copies of a valid arena,
//! each put through every operation in a child process with a time and an address-space limit),
//! and attaching a file another user planted; damage while processes work on an arena
//! (`in_use.rs`). Nothing here may panic, abort, raise a signal or hang: bad data is an error.

mod in_use;
#[path = "../support/mod.rs"]
mod support;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeshm::arena::{inspect, open_for_reading, Arena, Options, Unlink, HEADER_SIZE};
use nodeshm::ErrorCode;

/// How many damaged copies the mutation test tries (NODESHM_MUTANTS and NODESHM_MUTANT_SEED
/// run other and more of them).
const MUTANTS: usize = 4000;
/// A child taking longer than this counts as a hang.
const CHILD_LIMIT: Duration = Duration::from_secs(10);
/// Address space a child may use: a `Vec::with_capacity` from a damaged count aborts within it.
const CHILD_ADDRESS_SPACE: u64 = 2 << 30;
const ARENA_SIZE: u64 = 256 << 10;
const BLOCKS: usize = 20;
/// Names added so that the golden arena's 32 directory slots are all taken.
const FILLERS: usize = 11;

/// The number in environment variable `name`, if it is set and parses (the knobs that run
/// more or other mutants and rounds than CI does).
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// A small deterministic generator (xorshift64*): the same mutants on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A valid arena with `BLOCKS` named blocks (some freed again, so the heap has free blocks and
/// the directory has chains), written to `dir/name` and returned as bytes.
fn golden(dir: &Path, name: &str) -> Vec<u8> {
    let options = Options::new(ARENA_SIZE)
        .dir(dir)
        .unlink(Unlink::Never)
        .expected_names(16)
        .label("SHARED::mutants node 0");
    let arena = Arena::create(name, &options).unwrap();
    for i in 0..BLOCKS + 6 {
        let block = arena
            .allocate(&format!("block-{i}"), 40 + 72 * i as u64)
            .unwrap();
        if i < BLOCKS {
            arena.persist(block).unwrap();
        } else {
            arena.deallocate(block).unwrap();
        }
    }
    // NODESHM_MUTANT_NAMES=N: N more names of sizes 16-208, a third of them released again in
    // a scattered order, so that the damage also lands in a directory split over several
    // levels and in parked blocks spread over several lists and classes.
    let many: usize = env_number("NODESHM_MUTANT_NAMES").unwrap_or(0);
    let mut released = Vec::new();
    for i in 0..many {
        let block = arena
            .allocate(&format!("many-{i}"), 16 + (i as u64 * 48) % 208)
            .unwrap();
        if i % 3 == 0 {
            released.push((i * 7919 % (many + 1), block));
        } else {
            arena.persist(block).unwrap();
        }
    }
    released.sort_by_key(|&(order, _)| order);
    for (_, block) in released {
        arena.deallocate(block).unwrap();
    }
    let _kept = arena.allocate("kept-by-test", 100).unwrap();
    // Every slot of the directory's first chunk in use (20 kept, 1 held, and these), so that
    // the child's new name carves a second chunk from the top of the heap (with
    // NODESHM_MUTANT_NAMES, the extra names have filled more chunks already).
    for i in 0..FILLERS {
        let filler = arena.allocate(&format!("filler-{i}"), 16).unwrap();
        arena.persist(filler).unwrap();
    }
    arena.verify().unwrap();
    drop(arena);
    std::fs::read(dir.join(name)).unwrap()
}

/// One damaged copy of `golden`: what was changed, for the report.
fn mutate(m: &mut [u8], words: &[usize], rng: &mut Rng, kind: usize) -> String {
    let word_at = |rng: &mut Rng| words[rng.below(words.len() as u64) as usize];
    let set = |m: &mut [u8], at: usize, v: u64| m[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    let what = match kind % 10 {
        0 => {
            let at = rng.below(HEADER_SIZE) as usize;
            let bit = rng.below(8);
            m[at] ^= 1 << bit;
            format!("header byte {at} bit {bit}")
        }
        1 => {
            let at = word_at(rng) + rng.below(8) as usize;
            m[at] = rng.next() as u8;
            format!("metadata byte {at}")
        }
        2 => {
            let at = word_at(rng);
            set(m, at, at as u64);
            format!("word {at} points to itself")
        }
        3 => {
            let at = word_at(rng);
            set(m, at, u64::MAX);
            format!("word {at} = u64::MAX")
        }
        4 => {
            let at = word_at(rng);
            set(m, at, 0xffff_ffff_ffff_fff0);
            format!("word {at} = 0xfffffffffffffff0")
        }
        5 => {
            let at = word_at(rng);
            set(m, at, 1 << (40 + rng.below(23)));
            format!("word {at} = a huge count")
        }
        6 => {
            let at = word_at(rng);
            set(m, at, 0);
            format!("word {at} = 0")
        }
        7 => {
            let (at, to) = (word_at(rng), word_at(rng));
            set(m, at, to as u64);
            format!("word {at} points to word {to}")
        }
        8 => {
            let at = word_at(rng);
            set(m, at, rng.next());
            format!("word {at} = random")
        }
        _ => {
            let at = word_at(rng);
            let old = u64::from_ne_bytes(m[at..at + 8].try_into().unwrap());
            let v = old.wrapping_add(rng.below(64)).wrapping_sub(32);
            set(m, at, v);
            format!("word {at} moved by a few bytes")
        }
    };
    what
}

/// Child: every operation on the damaged arena at `path`; errors are fine, nothing else is.
fn role_exercise() {
    let path = PathBuf::from(support::role_arg());
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut outcome = Vec::new();
    let mut note = |what: &str, r: Result<(), nodeshm::Error>| {
        outcome.push(match r {
            Ok(()) => format!("{what}:ok"),
            Err(e) => format!("{what}:{:?}", e.code()),
        })
    };
    // Inspection as the command line does it: pread, never a mapping.
    let dirfd = std::fs::File::open(dir).unwrap();
    match open_for_reading(std::os::fd::AsFd::as_fd(&dirfd), name.as_ref()) {
        Ok((file, _)) => note("inspect", inspect(&file, &path, 1000).map(|_| ())),
        Err(_) => note(
            "inspect",
            Err(nodeshm::Error::Internal("not openable".into())),
        ),
    }
    let options = Options::new(0)
        .dir(dir)
        .attach_timeout(Duration::from_millis(5))
        .lock_timeout(Duration::from_millis(50));
    match Arena::attach_with(name, &options) {
        Err(e) => note("attach", Err(e)),
        Ok(arena) => {
            note("attach", Ok(()));
            let _ = arena.info();
            note("stats", arena.stats().map(|_| ()));
            note("entries", arena.entries().map(|_| ()));
            note("lookup", arena.lookup("block-3").map(|_| ()));
            match arena.find("block-7") {
                Ok(Some(b)) => {
                    let _ = b
                        .as_atomic_u64()
                        .first()
                        .map(|w| w.load(std::sync::atomic::Ordering::Relaxed));
                    note("find", arena.deallocate(b));
                }
                r => note("find", r.map(|_| ())),
            }
            match arena.allocate("block-11", 40 + 72 * 11) {
                Ok(b) => note("allocate-existing", arena.deallocate(b)),
                Err(e) => note("allocate-existing", Err(e)),
            }
            match arena.allocate("a-new-name", 3000) {
                Ok(b) => {
                    // Writing the whole block must stay inside the arena.
                    for w in b.as_atomic_u64() {
                        w.store(!0, std::sync::atomic::Ordering::Relaxed);
                    }
                    note("allocate-new", arena.deallocate(b));
                }
                Err(e) => note("allocate-new", Err(e)),
            }
            // A small new name takes a parked block when one of its class is parked; the
            // release of its last reference parks it again.
            match arena.allocate("a-small-name", 48) {
                Ok(b) => note("allocate-small", arena.deallocate(b)),
                Err(e) => note("allocate-small", Err(e)),
            }
            note("coalesce", arena.coalesce());
            note("verify", arena.verify().map(|_| ()));
            note(
                "lock_user",
                arena.lock_user(Duration::from_millis(50)).map(|_| ()),
            );
            drop(arena);
        }
    }
    println!("outcome {}", outcome.join(" "));
}

enum Outcome {
    Clean(String),
    Panic(String),
    Abort(String),
    Signal(i32, String),
    Hang,
}

fn run_child(path: &Path) -> Outcome {
    wait_child(spawn_child(&format!("exercise:{}", path.display())))
}

/// This binary as a child playing `role` (`name:argument`), under the address-space limit.
fn spawn_child(role: &str) -> support::KillOnDrop {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(support::ROLE_ENV, role)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches no state of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = nix::libc::rlimit {
                rlim_cur: CHILD_ADDRESS_SPACE,
                rlim_max: CHILD_ADDRESS_SPACE,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    support::KillOnDrop(cmd.spawn().expect("spawning a child"))
}

/// How `child` ended, waiting at most [`CHILD_LIMIT`] (then it is killed: a hang).
fn wait_child(mut child: support::KillOnDrop) -> Outcome {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHILD_LIMIT {
            return Outcome::Hang;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    let _ = child.0.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
    let text = format!("{out}{err}");
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Clean(out),
        (Some(101), _) => Outcome::Panic(text),
        (_, Some(6)) => Outcome::Abort(text),
        (_, Some(sig)) => Outcome::Signal(sig, text),
        (Some(code), None) => Outcome::Panic(format!("exit {code}: {text}")),
        (None, None) => Outcome::Signal(0, text),
    }
}

fn mutation_test_of_damaged_arenas() {
    let dir = support::TempDir::new("mutants");
    let golden_name = "nodeshm-golden";
    let golden = golden(&dir.0, golden_name);
    std::fs::remove_file(dir.0.join(golden_name)).unwrap();
    // Metadata words: the header, and every word the valid arena has written (user data is
    // all zero here, so the non-zero words are block headers, entries, names and links).
    let words: Vec<usize> = (0..golden.len() / 8)
        .map(|i| i * 8)
        .filter(|&at| (at as u64) < HEADER_SIZE || golden[at..at + 8].iter().any(|&b| b != 0))
        .collect();
    assert!(words.len() > 200, "{} metadata words", words.len());
    let seed = env_number("NODESHM_MUTANT_SEED").unwrap_or(0x6e6f_6465_7368_6d31);
    let mutants: usize = env_number("NODESHM_MUTANTS").unwrap_or(MUTANTS);
    // Damage rarely comes alone (a stray write or a torn page changes neighbouring words too):
    // every fourth mutant is damaged in two or three places, every mutant in
    // NODESHM_MUTANT_DAMAGES places if set.
    let fixed_damages: Option<usize> = env_number("NODESHM_MUTANT_DAMAGES");
    let damages = |i: usize| fixed_damages.unwrap_or(if i % 4 == 3 { 2 + i / 4 % 2 } else { 1 });
    let mut rng = Rng(seed);
    let path = dir.0.join("nodeshm-mutant");
    let (mut clean, mut errors_seen) = (0usize, 0usize);
    let mut bad = Vec::new();
    let started = Instant::now();
    for i in 0..mutants {
        let mut bytes = golden.clone();
        let what: Vec<String> = (0..damages(i))
            .map(|d| mutate(&mut bytes, &words, &mut rng, i + d))
            .collect();
        let what = what.join(", ");
        std::fs::write(&path, &bytes).unwrap();
        match run_child(&path) {
            Outcome::Clean(out) => {
                clean += 1;
                if out.contains(":Corrupted")
                    || out.contains(":NotAnArena")
                    || out.contains(":Incompatible")
                    || out.contains(":Timeout")
                {
                    errors_seen += 1;
                }
            }
            Outcome::Panic(t) => bad.push(format!("panic on mutant {i} ({what}): {t}")),
            Outcome::Abort(t) => bad.push(format!("abort on mutant {i} ({what}): {t}")),
            Outcome::Signal(s, t) => bad.push(format!("signal {s} on mutant {i} ({what}): {t}")),
            Outcome::Hang => bad.push(format!("hang on mutant {i} ({what})")),
        }
    }
    let _ = std::fs::remove_file(&path);
    let count = |kind: &str| bad.iter().filter(|b| b.starts_with(kind)).count();
    println!(
        "mutation test: {mutants} mutants (seed {seed:#x}, {}) of a {ARENA_SIZE}-byte arena with {BLOCKS} \
         blocks and {} metadata words in {:.1} s: {clean} clean ({errors_seen} of them reported damage as an error), {} panics, \
         {} aborts, {} signals, {} hangs",
        fixed_damages.map_or("every fourth damaged in 2 or 3 places".into(), |n| format!(
            "each damaged in {n} places"
        )),
        words.len(),
        started.elapsed().as_secs_f64(),
        count("panic"),
        count("abort"),
        count("signal"),
        count("hang")
    );
    assert_none_misbehaved(&bad, "mutants");
}

/// Fails, with the first few of them, if any child in `bad` panicked, aborted, raised a
/// signal or hung (`who`: what the children were).
fn assert_none_misbehaved(bad: &[String], who: &str) {
    assert!(
        bad.is_empty(),
        "{} {who} misbehaved; the first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(5)].join("\n---\n")
    );
}

/// A file another user planted (mode 0666) under a name this user then attaches: refused, and
/// the error names both uids.
fn a_file_planted_by_another_user_is_refused() {
    if !support::is_root() {
        println!("skipped: needs root (creates a file as user nobody)");
        return;
    }
    let dir = support::TempDir::new("planted");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let name = format!("nodeshm-planted-{}", std::process::id());
    // A real arena, made by `nobody`: the most convincing plant there is.
    let status = Command::new(std::env::current_exe().unwrap())
        .env(
            support::ROLE_ENV,
            format!("plant:{}", dir.0.join(&name).display()),
        )
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(status.success(), "the planting child failed");
    let meta = std::fs::metadata(dir.0.join(&name)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    let options = Options::new(0)
        .dir(&dir.0)
        .attach_timeout(Duration::from_millis(100));
    let err = Arena::attach_with(&name, &options).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Untrusted, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("uid 65534") && msg.contains("(uid 0)"),
        "{msg}"
    );
    // Naming the user as trusted lets it through.
    let trusted = Arena::attach_with(&name, &options.clone().trust_uid(65534)).unwrap();
    assert_eq!(trusted.info().label, "planted");
    drop(trusted);
    // A symlink to it is never followed, and neither is a FIFO opened (no hang).
    std::os::unix::fs::symlink(dir.0.join(&name), dir.0.join("nodeshm-link")).unwrap();
    let err = Arena::attach_with("nodeshm-link", &options).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArena, "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    nix::unistd::mkfifo(
        &dir.0.join("nodeshm-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    let err = Arena::attach_with("nodeshm-fifo", &options).unwrap_err();
    assert!(err.to_string().contains("a FIFO"), "{err}");
}

/// Child run as `nobody`: creates an arena any user may write, and leaves it.
fn role_plant() {
    let path = PathBuf::from(support::role_arg());
    let options = Options::new(64 << 10)
        .dir(path.parent().unwrap())
        .mode(0o666)
        .unlink(Unlink::Never)
        .label("planted");
    let arena = Arena::create(path.file_name().unwrap().to_str().unwrap(), &options).unwrap();
    drop(arena);
}

/// Names and sizes no arena accepts: clear errors, also in debug builds (no overflow panic).
fn bad_arguments_are_errors() {
    let dir = support::TempDir::new("badargs");
    let err = Arena::create("nodeshm-x", &Options::new(u64::MAX).dir(&dir.0)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains("256.0 TiB") || err.to_string().contains("TiB"),
        "{err}"
    );
    for mode in [0o1600, 0o400, 0o200, 0o7777] {
        let err =
            Arena::create("nodeshm-x", &Options::new(1 << 20).dir(&dir.0).mode(mode)).unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::InvalidArgument,
            "mode {mode:o}: {err}"
        );
    }
    let arena = Arena::create("nodeshm-y", &Options::new(1 << 20).dir(&dir.0)).unwrap();
    let err = arena.allocate("a\0b", 8).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidName, "{err}");
    let err = arena.allocate("huge", u64::MAX - 8).unwrap_err();
    assert!(
        matches!(
            err.code(),
            ErrorCode::InvalidArgument | ErrorCode::OutOfSpace
        ),
        "{err}"
    );
}

fn main() {
    support::main(
        &[
            ("exercise", role_exercise),
            ("plant", role_plant),
            ("churn", in_use::role_churn),
        ],
        &[
            (
                "mutation_test_of_damaged_arenas",
                mutation_test_of_damaged_arenas,
            ),
            (
                "a_file_planted_by_another_user_is_refused",
                a_file_planted_by_another_user_is_refused,
            ),
            ("bad_arguments_are_errors", bad_arguments_are_errors),
            ("damage_while_in_use", in_use::damage_while_in_use),
        ],
    );
}
