//! The `nodeshm` command line against real arenas made by test processes: live, idle, unlinked
//! and held, orphaned by a killed creator, and a foreign file.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nodeshm::arena::{Arena, Options, Unlink};
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodeshm")
}

fn nodeshm(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running nodeshm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let (code, out, err) = nodeshm(dir, args);
    assert_eq!(code, 0, "nodeshm {args:?} failed: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nodeshm {args:?} printed no JSON ({e}): {out}"))
}

fn spawn(role: &str, dir: &Path) -> (Child, String) {
    let mut child = support::spawn_role(role, &dir.display().to_string());
    let line = support::first_line(&mut child);
    (child, line)
}

/// Child: an arena unlinked at once (no peers) but mapped by this live process.
fn role_hold_unlinked() {
    let dir = PathBuf::from(support::role_arg());
    let options = Options::new(1 << 20)
        .dir(&dir)
        .unlink(Unlink::AfterAttach { peers: 0 })
        .label("SHARED::held node 0");
    let arena = Arena::create("nodeshm-cli-unlinked", &options).unwrap();
    let _b = arena.allocate("held-block", 5000).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

/// Child: creates an arena with blocks and waits to be killed.
fn role_killed_creator() {
    let dir = PathBuf::from(support::role_arg());
    let options = Options::new(2 << 20)
        .dir(&dir)
        .unlink(Unlink::OnLastDetach)
        .label(nodeshm::topology::allocator_label(
            "SHARED::victim with spaces",
            &nodeshm::ScopeInstance {
                scope: nodeshm::Scope::Socket,
                index: 1,
                os_index: None,
            },
        ));
    let arena = Arena::create("nodeshm-cli-killed", &options).unwrap();
    let _a = arena.allocate("alpha", 1000).unwrap();
    let _b = arena.allocate("beta", 2000).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

fn by_name<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["shm_name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed in {rows:#}"))
}

fn ls_stat_gc_on_real_arenas() {
    let tmp = support::TempDir::new("cli");
    let dir = tmp.0.clone();
    let opts = |size| Options::new(size).dir(&dir).unlink(Unlink::Never);
    let live = Arena::create(
        "nodeshm-cli-live",
        &opts(1 << 20).label("SHARED::live node 0"),
    )
    .unwrap();
    let _kept = live.allocate("kept", 123).unwrap();
    drop(Arena::create("nodeshm-cli-idle", &opts(1 << 20)).unwrap());
    std::fs::write(
        dir.join("nodeshm-cli-foreign"),
        b"this is not an arena, just a file named like one",
    )
    .unwrap();
    let (holder, ready) = spawn("hold_unlinked", &dir);
    let holder = support::KillOnDrop(holder);
    assert_eq!(ready, "ready");
    let (mut victim, ready) = spawn("killed_creator", &dir);
    assert_eq!(ready, "ready");
    let victim_pid = victim.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    victim.wait().unwrap();

    let rows = json(&dir, &["ls", "--json"]);
    let me = std::process::id();
    let row = by_name(&rows, "nodeshm-cli-live");
    assert_eq!(
        (row["state"].as_str(), row["named"].as_bool()),
        (Some("live"), Some(true))
    );
    assert_eq!(row["allocator"], "SHARED::live");
    assert_eq!(row["scope_instance"], "node 0");
    assert_eq!(row["attached_pids"], serde_json::json!([me]));
    assert_eq!(row["live_blocks"], 1);
    assert_eq!(by_name(&rows, "nodeshm-cli-idle")["state"], "idle");
    let foreign = by_name(&rows, "nodeshm-cli-foreign");
    assert_eq!(foreign["state"], "foreign");
    assert!(
        foreign["reason"]
            .as_str()
            .unwrap()
            .contains("smaller than an arena header"),
        "{foreign}"
    );
    let unlinked = by_name(&rows, "nodeshm-cli-unlinked");
    assert_eq!(
        (unlinked["state"].as_str(), unlinked["named"].as_bool()),
        (Some("live"), Some(false))
    );
    assert_eq!(
        unlinked["attached_pids"],
        serde_json::json!([holder.0.id()])
    );
    assert_eq!(unlinked["live_blocks"], 1);
    let killed = by_name(&rows, "nodeshm-cli-killed");
    assert_eq!(killed["state"], "orphaned");
    assert_eq!(killed["creator_pid"], victim_pid);
    assert_eq!(killed["allocator"], "SHARED::victim with spaces");
    assert_eq!(killed["scope_instance"], "socket 1");

    // stat shows the blocks, also of the unlinked arena (through the holder's fd).
    let stat = json(&dir, &["stat", "nodeshm-cli-killed", "--json"]);
    let names: Vec<&str> = stat["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"alpha") && names.contains(&"beta"),
        "{stat:#}"
    );
    assert_eq!(
        stat["info"]["layout_version"],
        nodeshm::arena::LAYOUT_VERSION
    );
    assert_eq!(stat["stats"]["live_blocks"], 2);
    let stat = json(&dir, &["stat", "nodeshm-cli-unlinked", "--json"]);
    assert_eq!(stat["blocks"][0]["name"], "held-block");
    assert_eq!(stat["blocks"][0]["size"], 5000);
    assert_eq!(stat["info"]["unlinked"], true);
    assert_eq!(stat["arena"]["named"], false);
    let (code, text, _) = nodeshm(&dir, &["stat", "nodeshm-cli-live"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("kept") && text.contains("SHARED::live node 0"),
        "{text}"
    );
    let (code, _, err) = nodeshm(&dir, &["stat", "nodeshm-cli-missing"]);
    assert_eq!(code, 1);
    assert!(err.contains("no arena \"nodeshm-cli-missing\""), "{err}");
    let (code, _, err) = nodeshm(&dir, &["stat", "nodeshm-cli-foreign"]);
    assert_eq!(code, 1);
    assert!(err.contains("foreign"), "{err}");

    // gc: exactly the orphaned one.
    let dry = json(&dir, &["gc", "--dry-run", "--json"]);
    let listed: Vec<&str> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["shm_name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["nodeshm-cli-killed"]);
    assert!(
        dir.join("nodeshm-cli-killed").exists(),
        "dry run removed something"
    );
    let (code, text, _) = nodeshm(&dir, &["gc"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("removed") && text.contains("nodeshm-cli-killed"),
        "{text}"
    );
    assert!(!dir.join("nodeshm-cli-killed").exists());
    for kept in [
        "nodeshm-cli-live",
        "nodeshm-cli-idle",
        "nodeshm-cli-foreign",
    ] {
        assert!(dir.join(kept).exists(), "gc removed {kept}");
    }

    drop(holder);
    drop(live);
}

fn topo_honours_hwloc_xmlfile() {
    let xml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/topologies/two-packages.xml");
    let out = Command::new(bin())
        .args(["topo", "--json"])
        .env("HWLOC_XMLFILE", &xml)
        .env("HWLOC_THISSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let topo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(topo["packages"], 2);
    assert_eq!(topo["pus"][1]["socket"], 1);
    let text = Command::new(bin())
        .arg("topo")
        .env("HWLOC_XMLFILE", &xml)
        .env("HWLOC_THISSYSTEM", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("2 package(s)"));
}

fn check_reports_a_tiny_backing_directory() {
    if !support::is_root() {
        println!("skipped: needs root (mounts a 16 MiB tmpfs)");
        return;
    }
    let tmpfs = support::Mount::tmpfs("16m");
    let (code, out, err) = nodeshm(&tmpfs.0, &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.contains("backing directory"))
        .unwrap();
    assert!(
        line.starts_with("problem") && line.contains("too small"),
        "{out}"
    );
    assert!(out.contains("fix:"), "{out}");
    let findings =
        serde_json::from_str::<Value>(&nodeshm(&tmpfs.0, &["check", "--json"]).1).unwrap();
    assert_eq!(findings[0]["status"], "problem");
}

fn usage_errors_exit_non_zero() {
    let out = Command::new(bin()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    for sub in ["ls", "stat", "gc", "topo", "check"] {
        let help = Command::new(bin()).args([sub, "--help"]).output().unwrap();
        assert!(
            help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage"),
            "{sub} --help"
        );
    }
}

fn main() {
    support::main(
        &[
            ("hold_unlinked", role_hold_unlinked),
            ("killed_creator", role_killed_creator),
        ],
        &[
            ("ls_stat_gc_on_real_arenas", ls_stat_gc_on_real_arenas),
            ("topo_honours_hwloc_xmlfile", topo_honours_hwloc_xmlfile),
            (
                "check_reports_a_tiny_backing_directory",
                check_reports_a_tiny_backing_directory,
            ),
            ("usage_errors_exit_non_zero", usage_errors_exit_non_zero),
        ],
    );
}
