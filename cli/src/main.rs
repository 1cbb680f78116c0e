//! `nodeshm`: list, inspect and clean nodeshm arenas on this node; show the topology scopes are
//! made from; check the environment. Exit status 0 on success, 1 on failure (with a message),
//! 2 on bad usage.

mod scan;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nodeshm::arena::backing_dir;
use nodeshm::sys::human_bytes;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "nodeshm",
    version,
    about = "Inspect and clean nodeshm shared-memory arenas"
)]
struct Cli {
    /// Backing directory (default: $NODESHM_SHM_DIR, else /dev/shm)
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every nodeshm arena on this node: named ones, and unlinked ones still mapped
    Ls {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one arena's header, figures and blocks (read-only; takes no lock)
    Stat {
        /// Shm name (in the backing directory, or unlinked and mapped by a process) or path
        arena: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove orphaned arenas of this user (named, unmapped, creator gone)
    Gc {
        /// Only print what would be removed
        #[arg(long)]
        dry_run: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show packages, NUMA nodes, cores and PUs, and the scope instances of each PU
    Topo {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Check the environment for the problems shared memory users hit; exit 1 on a problem
    Check {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed: bad usage (exit 2) or a failure (exit 1).
enum Fail {
    Usage(String),
    Failed(String),
}

impl From<String> for Fail {
    fn from(message: String) -> Self {
        Fail::Failed(message)
    }
}

/// Blocks `stat` lists at most, and before "arena damaged" on a damaged one.
const STAT_MAX_ENTRIES: u64 = 1_000_000;
const DAMAGED_SHOWN: usize = 20;

/// Text from an arena or the file system, safe to print on a terminal: control characters
/// (escape sequences included) are shown escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn open_dir(dir: &Path) -> Result<scan::Dir, Fail> {
    scan::Dir::open(dir).map_err(Fail::Usage)
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serialises")
    );
}

fn ls(dir: &Path, json: bool) -> Result<(), Fail> {
    let dir = open_dir(dir)?;
    let rows = scan::scan(&dir, 0);
    if json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no nodeshm arenas in {} or mapped by live processes",
            esc(&dir.path.display().to_string())
        );
        return Ok(());
    }
    let label = |r: &scan::Row| {
        if r.named {
            esc(&r.shm_name)
        } else {
            format!("{} (unlinked)", esc(&r.shm_name))
        }
    };
    let w = rows.iter().map(|r| label(r).len()).max().unwrap_or(8);
    let a = rows
        .iter()
        .map(|r| esc(&r.allocator).len())
        .max()
        .unwrap_or(9)
        .max(9);
    println!(
        "{:<10} {:<w$} {:<a$} {:<10} {:>10} {:>10} {:>6} {:>8} attached",
        "state", "shm name", "allocator", "scope", "size", "used", "blocks", "creator"
    );
    for r in &rows {
        let name = label(r);
        let size = human_bytes(r.size);
        let used = human_bytes(r.used);
        let short = |s: &str| s.split(" (").next().unwrap_or(s).to_string();
        println!(
            "{:<10} {:<w$} {:<a$} {:<10} {:>10} {:>10} {:>6} {:>8} {}",
            r.state,
            name,
            esc(&r.allocator),
            esc(&r.scope_instance),
            short(&size),
            short(&used),
            r.live_blocks,
            r.creator_pid,
            r.attached_pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some(reason) = &r.reason {
            println!("{:<10} {}", "", esc(reason));
        }
    }
    Ok(())
}

fn stat(dir: &Path, arena: &str, json: bool) -> Result<(), Fail> {
    let dir = open_dir(dir)?;
    let wanted = Path::new(arena);
    let by_name = !arena.contains('/');
    let rows = if by_name {
        scan::scan(&dir, STAT_MAX_ENTRIES)
    } else {
        Vec::new()
    };
    let found = rows.iter().find(|r| r.shm_name == arena).cloned();
    let row = match found {
        Some(row) => row,
        // Not an arena name here: a file of that name in the current directory is inspected.
        None if by_name && wanted.symlink_metadata().is_err() => {
            return Err(Fail::Failed(format!(
                "no arena {:?} in {} nor mapped by a live process (see `nodeshm ls`)",
                esc(arena),
                esc(&dir.path.display().to_string())
            )))
        }
        // A path: opened like any file we did not create, and read, never followed or mapped.
        None => {
            let wanted = if by_name {
                Path::new(".").join(wanted)
            } else {
                wanted.to_path_buf()
            };
            let wanted = wanted.as_path();
            let parent = wanted.parent().filter(|p| !p.as_os_str().is_empty());
            let parent = scan::Dir::open(parent.unwrap_or(Path::new(".")))
                .map_err(|e| Fail::Failed(format!("{}: {e}", esc(arena))))?;
            let name = wanted.file_name().unwrap_or_default();
            let (file, st) =
                nodeshm::arena::open_for_reading(std::os::fd::AsFd::as_fd(&parent.fd), name)
                    .map_err(|what| {
                        Fail::Failed(format!("{} is {what}, not an arena", esc(arena)))
                    })?;
            scan::row_of_file(wanted, &file, &st, STAT_MAX_ENTRIES)
        }
    };
    let row = &row;
    let Some(i) = &row.inspection else {
        return Err(Fail::Failed(format!(
            "{} is not a nodeshm arena this version reads ({}): {}",
            esc(&row.path.display().to_string()),
            row.state,
            esc(&row.reason.clone().unwrap_or_default())
        )));
    };
    if json {
        #[derive(Serialize)]
        struct Stat<'a> {
            arena: &'a scan::Row,
            info: &'a nodeshm::arena::ArenaInfo,
            stats: &'a nodeshm::arena::Stats,
            blocks: &'a [nodeshm::arena::EntryInfo],
            blocks_truncated: bool,
            damage: Option<&'a str>,
        }
        print_json(&Stat {
            arena: row,
            info: &i.info,
            stats: &i.stats,
            blocks: &i.entries,
            blocks_truncated: i.truncated,
            damage: i.damage.as_deref(),
        });
        return Ok(());
    }
    let info = &i.info;
    println!(
        "arena       {}{}",
        esc(&row.path.display().to_string()),
        if row.named { "" } else { " (unlinked)" }
    );
    println!(
        "state       {} (attached: {:?})",
        row.state, row.attached_pids
    );
    println!("label       {}", esc(&info.label));
    println!("layout      version {}", info.layout_version);
    println!("size        {}", human_bytes(info.size));
    println!(
        "creator     pid {} ({})",
        info.creator_pid,
        if row.creator_alive { "running" } else { "gone" }
    );
    println!("job token   {:016x}", info.job_token);
    println!(
        "unlink      {}{}",
        info.unlink,
        if info.unlinked { ", unlinked" } else { "" }
    );
    println!(
        "placement   {}",
        if info.placement.is_empty() {
            "not recorded"
        } else {
            &info.placement
        }
        .escape_default()
    );
    let s = &i.stats;
    println!(
        "heap        {} used, {} free of {}, largest free block {}, high-water {}",
        human_bytes(s.used),
        human_bytes(s.free),
        human_bytes(s.capacity),
        human_bytes(s.largest_free),
        human_bytes(s.high_water)
    );
    println!(
        "blocks      {} live, {} requested, {} lock recoveries",
        s.live_blocks,
        human_bytes(s.requested),
        s.recoveries
    );
    if !i.entries.is_empty() {
        println!(
            "\n{:<40} {:>14} {:>14} {:>8}",
            "name", "offset", "size", "refs"
        );
        let mut entries = i.entries.clone();
        if i.damage.is_some() {
            // What was read before the damage, in walk order, a few at most.
            entries.truncate(DAMAGED_SHOWN);
        } else {
            entries.sort_by_key(|e| e.offset);
        }
        for e in &entries {
            println!(
                "{:<40} {:>14} {:>14} {:>8}",
                esc(&e.name),
                e.offset,
                e.size,
                e.refcount
            );
        }
        if i.truncated {
            println!("... more blocks than the {STAT_MAX_ENTRIES} listed");
        }
    }
    if let Some(damage) = &i.damage {
        println!("arena damaged: {}", esc(damage));
    }
    Ok(())
}

fn gc(dir: &Path, dry_run: bool, json: bool) -> Result<(), Fail> {
    let dir = open_dir(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for r in scan::scan(&dir, 0) {
        if r.state != "orphaned" || !r.named || r.owner_uid != me || r.reason.is_some() {
            continue;
        }
        // Re-check just before removing, by identity: the name still holds the same regular
        // file, and no process maps it.
        if dir.id_of(&r.shm_name) != Some(((r.device, r.inode), true))
            || scan::mapped_now(&dir, (r.device, r.inode))
        {
            continue;
        }
        if !dry_run {
            if let Err(e) = dir.unlink(&r.shm_name) {
                failed.push(format!("{}: {e}", esc(&r.path.display().to_string())));
                continue;
            }
        }
        removed.push(r);
    }
    if json {
        #[derive(Serialize)]
        struct Gc<'a> {
            dry_run: bool,
            removed: &'a [scan::Row],
            failed: &'a [String],
        }
        print_json(&Gc {
            dry_run,
            removed: &removed,
            failed: &failed,
        });
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        for r in &removed {
            println!(
                "{verb} {} ({}, {}, creator pid {} gone)",
                esc(&r.path.display().to_string()),
                esc(&r.allocator),
                human_bytes(r.size),
                r.creator_pid
            );
        }
        if removed.is_empty() {
            println!(
                "no orphaned arenas of this user in {}",
                esc(&dir.path.display().to_string())
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Fail::Failed(format!(
            "could not remove: {}",
            failed.join("; ")
        )))
    }
}

fn topo(json: bool) -> Result<(), Fail> {
    let t = sysinfo::topo().map_err(|e| Fail::Failed(e.to_string()))?;
    if json {
        print_json(&t);
        return Ok(());
    }
    println!("topology    {}", t.source);
    println!(
        "machine     {} package(s), {} NUMA node(s), {} core(s), {} PU(s)",
        t.packages,
        t.numa_nodes,
        t.cores,
        t.pus.len()
    );
    println!("\n{:>6} {:>6} {:>8} {:>6}", "PU", "core", "socket", "numa");
    let show = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
    for pu in &t.pus {
        println!(
            "{:>6} {:>6} {:>8} {:>6}",
            pu.os_index,
            show(pu.core),
            show(pu.socket),
            show(pu.numa)
        );
    }
    println!("\nthis process is bound to PUs {}", t.binding);
    println!("  node scope:   {}", t.node_instance);
    println!("  socket scope: {}", t.socket_instance);
    println!("  numa scope:   {}", t.numa_instance);
    Ok(())
}

fn check(dir: &Path, json: bool) -> Result<(), Fail> {
    let findings = sysinfo::check(dir);
    if json {
        print_json(&findings);
    } else {
        for f in &findings {
            println!("{:<8} {:<34} {}", f.status, f.check, esc(&f.detail));
            if let Some(fix) = &f.fix {
                println!("{:<8} {:<34} fix: {fix}", "", "");
            }
        }
    }
    let problems = findings.iter().filter(|f| f.status == "problem").count();
    if problems > 0 {
        Err(Fail::Failed(format!("{problems} problem(s) found")))
    } else {
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = backing_dir(cli.dir.as_deref());
    let result = match cli.command {
        Command::Ls { json } => ls(&dir, json),
        Command::Stat { arena, json } => stat(&dir, &arena, json),
        Command::Gc { dry_run, json } => gc(&dir, dry_run, json),
        Command::Topo { json } => topo(json),
        Command::Check { json } => check(&dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Failed(message)) => {
            eprintln!("nodeshm: {message}");
            ExitCode::FAILURE
        }
        Err(Fail::Usage(message)) => {
            eprintln!("nodeshm: {message}");
            ExitCode::from(2)
        }
    }
}
