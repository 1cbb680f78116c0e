//! The `nodeshm` command line on a node shared with hostile users and damaged files: planted
//! links, FIFOs and directories, a FIFO held open by a process that maps an arena, a file resized
//! while it is read, a sparse file with a huge directory in a small tmpfs, the backing directory
//! spelled another way, a non-arena given to `stat`, a damaged arena, and 1,000 arenas at once.
//! Every command must finish in bounded time with a clear result, and never by a signal.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use nodeshm::arena::{Arena, Options, Unlink, HEADER_SIZE};

const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodeshm")
}

/// Runs `nodeshm --dir DIR args` with a deadline: (exit code, stdout + stderr). A signal or a
/// time-out fails the test.
fn nodeshm(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("--dir").arg(dir).args(args);
    let started = Instant::now();
    let out = run(&mut cmd);
    assert!(
        started.elapsed() < LIMIT,
        "nodeshm {args:?} took {:?}",
        started.elapsed()
    );
    out
}

fn run(cmd: &mut Command) -> (i32, String) {
    let (status, text) = support::run_status(cmd, LIMIT);
    let status = status.unwrap_or_else(|| panic!("{cmd:?} hung:\n{text}"));
    assert!(
        status.signal().is_none(),
        "{cmd:?} died of signal {:?}:\n{text}",
        status.signal()
    );
    (status.code().unwrap_or(-1), text)
}

fn options(dir: &Path, size: u64) -> Options {
    Options::new(size).dir(dir).unlink(Unlink::Never)
}

/// Symlinks, FIFOs and directories named like arenas are reported as what they are; nothing
/// blocks on the FIFO and no link is followed.
fn planted_links_fifos_and_directories() {
    let tmp = support::TempDir::new("planted-cli");
    let dir = &tmp.0;
    let real = Arena::create("nodeshm-real", &options(dir, 1 << 20)).unwrap();
    std::os::unix::fs::symlink(dir.join("nodeshm-real"), dir.join("nodeshm-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("nodeshm-passwd")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("nodeshm-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::create_dir(dir.join("nodeshm-dir")).unwrap();
    let (code, out) = nodeshm(dir, &["ls"]);
    assert_eq!(code, 0, "{out}");
    for (name, what) in [
        ("nodeshm-link", "symbolic link"),
        ("nodeshm-passwd", "symbolic link"),
        ("nodeshm-fifo", "a FIFO"),
        ("nodeshm-dir", "a directory"),
    ] {
        let row = out.lines().position(|l| l.contains(name)).expect(name);
        let detail = out.lines().nth(row + 1).unwrap_or_default();
        assert!(
            out.lines().nth(row).unwrap().starts_with("foreign") && detail.contains(what),
            "{name}: {out}"
        );
    }
    for name in ["nodeshm-link", "nodeshm-fifo"] {
        let (code, out) = nodeshm(dir, &["stat", name]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("not a nodeshm arena"), "{out}");
    }
    let (code, out) = nodeshm(dir, &["gc"]);
    assert_eq!(code, 0, "{out}");
    for name in [
        "nodeshm-link",
        "nodeshm-fifo",
        "nodeshm-dir",
        "nodeshm-real",
    ] {
        assert!(
            dir.join(name).symlink_metadata().is_ok(),
            "gc removed {name}"
        );
    }
    drop(real);
}

/// Child: maps an unlinked arena and holds a FIFO open for reading with no writer (opening
/// such a FIFO from /proc/<pid>/fd blocks for ever).
fn role_fifo_holder() {
    let dir = PathBuf::from(support::role_arg());
    let arena = Arena::create(
        "nodeshm-fifo-holder",
        &Options::new(1 << 20)
            .dir(&dir)
            .unlink(Unlink::AfterAttach { peers: 0 })
            .label("SHARED::fifo node 0"),
    )
    .unwrap();
    let fifo = dir.join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _fd = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
    drop(arena);
}

fn fifo_held_by_a_process_that_maps_an_arena() {
    let tmp = support::TempDir::new("fifo-holder");
    let mut child = support::spawn_role("fifo_holder", &tmp.0.display().to_string());
    let line = support::first_line(&mut child);
    let child = support::KillOnDrop(child);
    assert_eq!(line, "ready");
    let (code, out) = nodeshm(&tmp.0, &["ls", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"shm_name\": \"nodeshm-fifo-holder\"") && out.contains("SHARED::fifo"),
        "the unlinked arena is read through the holder's descriptor: {out}"
    );
    let (code, out) = nodeshm(&tmp.0, &["check"]);
    assert!(code == 0 || code == 1, "{out}");
    drop(child);
}

/// A valid arena whose size another process toggles while `ls` and `stat` read it: "changed
/// while reading" or a foreign file, never SIGBUS.
fn file_resized_while_listed() {
    let tmp = support::TempDir::new("resized");
    let dir = tmp.0.clone();
    let arena = Arena::create("nodeshm-resized", &options(&dir, 1 << 20)).unwrap();
    for i in 0..50 {
        let b = arena.allocate(&format!("b{i}"), 1000).unwrap();
        arena.persist(b).unwrap();
    }
    drop(arena);
    let path = dir.join("nodeshm-resized");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggler = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.set_len(if flips % 2 == 0 { 8192 } else { 1 << 20 })
                    .unwrap();
                flips += 1;
            }
            flips
        })
    };
    for _ in 0..20 {
        let (code, out) = nodeshm(&dir, &["ls"]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = nodeshm(&dir, &["stat", "nodeshm-resized"]);
        assert!(code == 0 || code == 1, "{out}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(toggler.join().unwrap() > 20);
}

/// A sparse file with a valid header and a directory of 4 M buckets (32 MiB of holes) in a
/// 16 MiB tmpfs: listing it reads the holes without allocating them.
fn sparse_file_with_a_huge_directory_in_a_small_tmpfs() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a 16 MiB tmpfs)");
        return;
    }
    let src = support::TempDir::new("sparse-src");
    let arena = Arena::create(
        "nodeshm-sparse",
        &options(&src.0, 256 << 20)
            .expected_names(1 << 22)
            .reserve_at_create(false),
    )
    .unwrap();
    drop(arena);
    let tmpfs = support::Mount::tmpfs("16m");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(src.0.join("nodeshm-sparse"))
        .arg(tmpfs.0.join("nodeshm-sparse"))
        .status()
        .unwrap();
    assert!(copied.success());
    let free = || nodeshm::sys::backing_space(&tmpfs.0).unwrap().1;
    let before = free();
    assert!(
        before > 8 << 20,
        "the copy is not sparse: {before} bytes free"
    );
    let (code, out) = nodeshm(&tmpfs.0, &["ls"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nodeshm-sparse"), "{out}");
    let (code, out) = nodeshm(&tmpfs.0, &["stat", "nodeshm-sparse"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        free(),
        before,
        "reading the arena allocated memory in the tmpfs"
    );
}

/// Child: creates an arena and exits, leaving it to the test to map (creator gone, mapped: live).
fn role_create_and_exit() {
    let path = PathBuf::from(support::role_arg());
    let arena = Arena::create(
        path.file_name().unwrap().to_str().unwrap(),
        &options(path.parent().unwrap(), 1 << 20).label("SHARED::mapped node 0"),
    )
    .unwrap();
    drop(arena);
}

/// `gc` with the backing directory spelled `/dev/../dev/shm` or through a symlink: a live arena
/// (mapped by this process, creator gone) is never a candidate. Dry runs only: /dev/shm is shared.
fn gc_with_the_directory_spelled_otherwise() {
    let name = support::unique("spelled");
    let status = Command::new(std::env::current_exe().unwrap())
        .env(
            support::ROLE_ENV,
            format!("create_and_exit:/dev/shm/{name}"),
        )
        .status()
        .unwrap();
    assert!(status.success());
    let options = Options::new(0).dir("/dev/shm");
    let mapped = Arena::attach_with(&name, &options).unwrap();
    let link = support::TempDir::new("shm-link");
    std::os::unix::fs::symlink("/dev/shm", link.0.join("shm")).unwrap();
    for dir in [
        PathBuf::from("/dev/../dev/shm"),
        PathBuf::from("/dev/shm/"),
        link.0.join("shm"),
    ] {
        let (code, out) = nodeshm(&dir, &["gc", "--dry-run", "--json"]);
        assert_eq!(code, 0, "{out}");
        assert!(
            !out.contains(&name),
            "gc --dir {} would remove a live arena: {out}",
            dir.display()
        );
        let (code, out) = nodeshm(&dir, &["ls", "--json"]);
        assert_eq!(code, 0, "{out}");
        let at = out.find(&name).expect("listed");
        let state = out[at..].split("\"state\": \"").nth(1).unwrap_or_default();
        assert!(state.starts_with("live"), "{out}");
    }
    drop(mapped);
    std::fs::remove_file(format!("/dev/shm/{name}")).unwrap();
}

/// `stat` of files that are not arenas, and `ls` of a directory that is not one.
fn non_arenas_and_bad_directories_are_errors() {
    let tmp = support::TempDir::new("non-arenas");
    for target in [
        "/etc/passwd",
        "/etc/hostname",
        "/proc/self/status",
        "Cargo.toml",
    ] {
        let (code, out) = nodeshm(&tmp.0, &["stat", target]);
        assert_eq!(code, 1, "{target}: {out}");
        assert!(
            out.contains("not a nodeshm arena") || out.contains("not an arena"),
            "{out}"
        );
    }
    let (code, out) = nodeshm(&tmp.0, &["stat", "/etc"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = nodeshm(&tmp.0, &["stat", "nodeshm-nothing-here"]);
    assert_eq!(code, 1, "{out}");
    for dir in ["/nonexistent-nodeshm-dir", "/etc/passwd"] {
        let (code, out) = nodeshm(Path::new(dir), &["ls"]);
        assert_eq!(code, 2, "{dir}: {out}");
        assert!(out.contains("backing directory"), "{out}");
        let (code, _) = nodeshm(Path::new(dir), &["gc"]);
        assert_eq!(code, 2);
    }
}

/// A damaged arena whose bucket chain points to itself, and names with terminal escapes:
/// bounded output, escaped text.
fn damaged_arena_and_escapes_are_bounded_and_safe() {
    let tmp = support::TempDir::new("damaged-cli");
    let dir = &tmp.0;
    let arena = Arena::create(
        "nodeshm-cycle",
        &options(dir, 1 << 20)
            .expected_names(64)
            .label("SHARED::evil\x1b[31m node 0"),
    )
    .unwrap();
    for i in 0..10 {
        let b = arena
            .allocate(&format!("blk{i}\x1b]0;pwned\x07"), 64)
            .unwrap();
        arena.persist(b).unwrap();
    }
    drop(arena);
    let path = dir.join("nodeshm-cycle");
    let (code, out) = nodeshm(dir, &["stat", "nodeshm-cycle"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains('\x1b') && !out.contains('\x07'),
        "raw escapes printed: {out:?}"
    );
    assert!(out.contains("\\u{1b}[31m"), "{out}");
    // Make the first non-empty chain's entry point to itself (the directory is in groups of
    // 8 words, the first of each its version; a head's low 48 bits are its first entry, the
    // high 16 its filter).
    let mut bytes = std::fs::read(&path).unwrap();
    let buckets = HEADER_SIZE.next_multiple_of(64) as usize;
    let entry = (0..64)
        .filter(|i| i % 8 != 0)
        .map(|i| {
            let at = buckets + i * 8;
            u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap()) & ((1 << 48) - 1)
        })
        .find(|&e| e != 0)
        .unwrap() as usize;
    bytes[entry..entry + 8].copy_from_slice(&(entry as u64).to_ne_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let started = Instant::now();
    let (code, out) = nodeshm(dir, &["stat", "nodeshm-cycle"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("arena damaged"), "{out}");
    assert!(out.lines().count() < 60, "{} lines", out.lines().count());
    // ls reads no block list, so it shows the arena as it is; it must list it all the same.
    let (code, out) = nodeshm(dir, &["ls"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nodeshm-cycle"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// 1,000 arenas listed at once (the time is printed, not asserted).
fn ls_of_a_thousand_arenas() {
    let tmp = support::TempDir::new("thousand");
    for i in 0..1000 {
        let a = Arena::create(&format!("nodeshm-many-{i:04}"), &options(&tmp.0, 64 << 10)).unwrap();
        drop(a);
    }
    let started = Instant::now();
    let (code, out) = nodeshm(&tmp.0, &["ls"]);
    let took = started.elapsed();
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains("nodeshm-many-")).count(),
        1000
    );
    println!(
        "nodeshm ls of 1,000 arenas: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
}

fn main() {
    support::main(
        &[
            ("fifo_holder", role_fifo_holder),
            ("create_and_exit", role_create_and_exit),
        ],
        &[
            (
                "planted_links_fifos_and_directories",
                planted_links_fifos_and_directories,
            ),
            (
                "fifo_held_by_a_process_that_maps_an_arena",
                fifo_held_by_a_process_that_maps_an_arena,
            ),
            ("file_resized_while_listed", file_resized_while_listed),
            (
                "sparse_file_with_a_huge_directory_in_a_small_tmpfs",
                sparse_file_with_a_huge_directory_in_a_small_tmpfs,
            ),
            (
                "gc_with_the_directory_spelled_otherwise",
                gc_with_the_directory_spelled_otherwise,
            ),
            (
                "non_arenas_and_bad_directories_are_errors",
                non_arenas_and_bad_directories_are_errors,
            ),
            (
                "damaged_arena_and_escapes_are_bounded_and_safe",
                damaged_arena_and_escapes_are_bounded_and_safe,
            ),
            ("ls_of_a_thousand_arenas", ls_of_a_thousand_arenas),
        ],
    );
}
