//! `nodeshm`: list, inspect and clean nodeshm arenas on this node; show the topology scopes are
//! made from; check the environment. Exit status 0 on success, 1 on failure (with a message),
//! 2 on bad usage.

mod scan;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nodeshm::arena::backing_dir;
use nodeshm::error::human_bytes;
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

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("plain data serialises")
    );
}

fn ls(dir: &Path, json: bool) -> Result<(), String> {
    let rows = scan::scan(dir);
    if json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no nodeshm arenas in {} or mapped by live processes",
            dir.display()
        );
        return Ok(());
    }
    let label = |r: &scan::Row| {
        if r.named {
            r.shm_name.clone()
        } else {
            format!("{} (unlinked)", r.shm_name)
        }
    };
    let w = rows.iter().map(|r| label(r).len()).max().unwrap_or(8);
    let a = rows
        .iter()
        .map(|r| r.allocator.len())
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
            r.allocator,
            r.scope_instance,
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
            println!("{:<10} {reason}", "");
        }
    }
    Ok(())
}

fn stat(dir: &Path, arena: &str, json: bool) -> Result<(), String> {
    let wanted = Path::new(arena);
    let rows = scan::scan(dir);
    let row = rows
        .iter()
        .find(|r| r.path == wanted || r.shm_name == arena)
        .or_else(|| {
            rows.iter()
                .find(|r| r.path.file_name() == wanted.file_name())
        });
    let Some(row) = row else {
        // Not in the backing directory: maybe a path elsewhere.
        if wanted.is_file() {
            return stat(wanted.parent().unwrap_or(Path::new(".")), arena, json);
        }
        return Err(format!(
            "no arena {arena:?} in {} nor mapped by a live process (see `nodeshm ls`)",
            dir.display()
        ));
    };
    let Some(i) = &row.inspection else {
        return Err(format!(
            "{} is {}: {}",
            row.path.display(),
            row.state,
            row.reason.clone().unwrap_or_default()
        ));
    };
    if json {
        #[derive(Serialize)]
        struct Stat<'a> {
            arena: &'a scan::Row,
            layout_version: u32,
            unlink_policy: String,
            unlinked: bool,
            attach_count: u32,
            created_unix_secs: u64,
            placement: &'a str,
            capacity: u64,
            used: u64,
            free: u64,
            largest_free: u64,
            high_water: u64,
            requested: u64,
            recoveries: u64,
            blocks: Vec<Block<'a>>,
            warnings: &'a [String],
        }
        #[derive(Serialize)]
        struct Block<'a> {
            name: &'a str,
            offset: u64,
            size: u64,
            refcount: u64,
        }
        print_json(&Stat {
            arena: row,
            layout_version: i.info.layout_version,
            unlink_policy: i.info.unlink.to_string(),
            unlinked: !row.named,
            attach_count: i.info.attach_count,
            created_unix_secs: i.info.created_unix_secs,
            placement: &i.info.placement,
            capacity: i.stats.capacity,
            used: i.stats.used,
            free: i.stats.free,
            largest_free: i.stats.largest_free,
            high_water: i.stats.high_water,
            requested: i.stats.requested,
            recoveries: i.stats.recoveries,
            blocks: i
                .entries
                .iter()
                .map(|e| Block {
                    name: &e.name,
                    offset: e.offset,
                    size: e.size,
                    refcount: e.refcount,
                })
                .collect(),
            warnings: &i.warnings,
        });
        return Ok(());
    }
    let info = &i.info;
    println!(
        "arena       {}{}",
        row.path.display(),
        if row.named { "" } else { " (unlinked)" }
    );
    println!(
        "state       {} (attached: {:?})",
        row.state, row.attached_pids
    );
    println!("label       {}", info.label);
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
        entries.sort_by_key(|e| e.offset);
        for e in &entries {
            println!(
                "{:<40} {:>14} {:>14} {:>8}",
                e.name, e.offset, e.size, e.refcount
            );
        }
    }
    for w in &i.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

fn gc(dir: &Path, dry_run: bool, json: bool) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for r in scan::scan(dir) {
        if r.state != "orphaned" || !r.named || r.owner_uid != me {
            continue;
        }
        // Re-check just before removing: nothing maps it, and it is still the same file.
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&r.path).map_err(|e| e.to_string())?,
        );
        if scan::mapped_now(dir, inode) {
            continue;
        }
        if !dry_run {
            if let Err(e) = std::fs::remove_file(&r.path) {
                failed.push(format!("{}: {e}", r.path.display()));
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
                r.path.display(),
                r.allocator,
                human_bytes(r.size),
                r.creator_pid
            );
        }
        if removed.is_empty() {
            println!("no orphaned arenas of this user in {}", dir.display());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("could not remove: {}", failed.join("; ")))
    }
}

fn topo(json: bool) -> Result<(), String> {
    let t = sysinfo::topo().map_err(|e| e.to_string())?;
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

fn check(dir: &Path, json: bool) -> Result<(), String> {
    let findings = sysinfo::check(dir);
    if json {
        print_json(&findings);
    } else {
        for f in &findings {
            println!("{:<8} {:<34} {}", f.status, f.check, f.detail);
            if let Some(fix) = &f.fix {
                println!("{:<8} {:<34} fix: {fix}", "", "");
            }
        }
    }
    let problems = findings.iter().filter(|f| f.status == "problem").count();
    if problems > 0 {
        Err(format!("{problems} problem(s) found"))
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
        Err(message) => {
            eprintln!("nodeshm: {message}");
            ExitCode::FAILURE
        }
    }
}
