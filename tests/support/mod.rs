//! A small runner for test binaries that start real processes (harness = false): the binary runs
//! its scenarios in order, or, when started by a scenario with `NODESHM_ROLE` set, plays that
//! role (a child process or an MPI rank) and exits.
#![allow(dead_code)]

pub mod launch;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

pub const ROLE_ENV: &str = "NODESHM_ROLE";

/// The variable the manager adds to its shm names (`nodeshm::manager::NAME_TAG_ENV`).
pub const NAME_TAG_ENV: &str = "NODESHM_NAME_TAG";

/// This test run's marker: in every shm name its tests make (the manager's names through
/// `NODESHM_NAME_TAG`, arena names through [`unique`]), so leak checks look at this run's names
/// only and a user's own arenas on the node never fail them. `scripts/test.sh` sets one for the
/// whole run; a test binary run alone makes its own.
pub fn marker() -> String {
    std::env::var(NAME_TAG_ENV).unwrap_or_default()
}

/// A shm name of this run: `nodeshm-test-<marker>-<pid>-<tag>`.
pub fn unique(tag: &str) -> String {
    format!(
        "{}-test-{}-{}-{tag}",
        nodeshm::arena::SHM_PREFIX,
        marker(),
        std::process::id()
    )
}

/// This binary playing `role` with `arg` (see [`main`]), its stdout piped.
pub fn spawn_role(role: &str, arg: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, format!("{role}:{arg}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning a child process")
}

/// The next line a child printed (it says it is ready), trimmed.
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout piped"))
        .read_line(&mut line)
        .expect("reading a child's output");
    line.trim().to_string()
}

pub type Scenario = (&'static str, fn());

/// Runs the role named in `NODESHM_ROLE` if set (exiting with its result), else every scenario
/// whose name contains the command-line filter, printing libtest-style lines.
pub fn main(roles: &[(&str, fn())], scenarios: &[Scenario]) {
    if marker().is_empty() {
        // Before any thread or child exists: children inherit it.
        std::env::set_var(NAME_TAG_ENV, format!("t{}", std::process::id()));
    }
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let name = role.split(':').next().unwrap_or_default().to_string();
        let Some((_, f)) = roles.iter().find(|(n, _)| *n == name) else {
            eprintln!("unknown role {role:?}");
            std::process::exit(2);
        };
        // A failing rank must die at once: unwinding would run MPI_Finalize and wait there for
        // ranks that wait in a collective for it, and the job would hang instead of failing.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::exit(101);
        }));
        f();
        std::process::exit(0);
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in scenarios {
            println!("{name}: test");
        }
        return;
    }
    let selected: Vec<_> = scenarios
        .iter()
        .filter(|(n, _)| args.is_empty() || args.iter().any(|a| n.contains(a.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, f) in &selected {
        let t = Instant::now();
        let ok = std::panic::catch_unwind(AssertUnwindSafe(f)).is_ok();
        println!(
            "test {name} ... {} ({:.1} s)",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        if !ok {
            failed.push(*name);
        }
    }
    let passed = selected.len() - failed.len();
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        scenarios.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// The role argument after the colon in `NODESHM_ROLE=role:arg`.
pub fn role_arg() -> String {
    std::env::var(ROLE_ENV)
        .ok()
        .and_then(|r| r.split_once(':').map(|(_, a)| a.to_string()))
        .unwrap_or_default()
}

/// Names of ours left in /dev/shm whose name contains `marker` (give [`marker()`] or something
/// more specific, never ""): other arenas on the node are none of a test's business.
pub fn leftovers(marker: &str) -> Vec<String> {
    assert!(!marker.is_empty(), "leak checks look for a marker");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(nodeshm::arena::SHM_PREFIX) && n.contains(marker))
                .collect()
        })
        .unwrap_or_default()
}

/// True when running as root (mounting a tmpfs needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A file system mounted on a fresh directory for one test, unmounted and removed on drop.
pub struct Mount(pub std::path::PathBuf);

impl Mount {
    /// Mounts `fstype` with `options` (root only).
    pub fn new(fstype: &str, options: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodeshm-{fstype}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", fstype, "-o", options, "nodeshm-test"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting {fstype} ({options}) on {} failed",
            dir.display()
        );
        Mount(dir)
    }

    /// A small tmpfs anyone may write to.
    pub fn tmpfs(size: &str) -> Self {
        Self::new("tmpfs", &format!("size={size},mode=1777"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `cmd` with a deadline; returns (success, stdout + stderr). Kills it at the deadline.
pub fn run_with_timeout(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> (bool, String) {
    match run_status(cmd, limit) {
        (Some(s), text) => (s.success(), text),
        (None, text) => (false, format!("{text}\nTIMED OUT after {limit:?}")),
    }
}

/// Runs `cmd` in its own process group with a deadline, reading its output as it comes (a
/// full pipe never stalls it); returns its exit status (None: killed at the deadline) and
/// stdout followed by stderr.
pub fn run_status(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting a test command");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            // The whole process group: mpirun and its ranks.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGKILL,
            );
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let text = format!("{}{}", reader.join().unwrap(), err_reader.join().unwrap());
    (status, text)
}

use std::os::unix::process::CommandExt as _;

/// A child process killed when the test is done with it, also when the test fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed with everything in it when the test is done, also when it fails
/// (`.0` is its path).
pub struct TempDir(pub std::path::PathBuf, tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodeshm-{tag}-"))
            .tempdir()
            .expect("creating a temporary directory");
        TempDir(dir.path().to_path_buf(), dir)
    }
}

/// Raises /proc/sys/vm/nr_hugepages by `pages` for the test and puts the old value back.
pub struct HugePagesReserved(u64);

impl HugePagesReserved {
    pub fn reserve(pages: u64) -> Self {
        let path = "/proc/sys/vm/nr_hugepages";
        let old: u64 = std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(path, (old + pages).to_string()).expect("raising nr_hugepages (root)");
        let now: u64 = std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            now >= old + pages,
            "the kernel gave only {now} huge pages of the {} asked",
            old + pages
        );
        HugePagesReserved(old)
    }
}

impl Drop for HugePagesReserved {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", self.0.to_string());
    }
}
