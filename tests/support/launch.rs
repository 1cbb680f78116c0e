//! MPI jobs for the tests, started through `scripts/mpi-launch.sh` (the one place that spells
//! each launcher): a test states ranks, binding and environment once, and `NODESHM_MPI`
//! (openmpi | mpich) and `NODESHM_LAUNCHER` (mpirun | srun) decide how the job starts.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the ranks may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Whatever the launcher does by default.
    Default,
    /// One core per rank, round robin over the node's cores.
    Core,
    /// Free to run on every CPU of the node.
    None,
}

/// The MPI implementation this test binary was built against and runs with.
pub fn mpi() -> String {
    std::env::var("NODESHM_MPI").unwrap_or_else(|_| "openmpi".into())
}

/// The launcher the jobs are started with.
pub fn launcher() -> String {
    std::env::var("NODESHM_LAUNCHER").unwrap_or_else(|_| "mpirun".into())
}

/// True when jobs start under Slurm's `srun`.
pub fn under_srun() -> bool {
    launcher() == "srun"
}

/// One MPI job: `np` ranks of `program`.
#[derive(Clone, Debug)]
pub struct Job {
    np: usize,
    binding: Binding,
    env: Vec<(String, String)>,
    program: PathBuf,
    args: Vec<String>,
}

impl Job {
    /// `np` ranks of `program`.
    pub fn new(np: usize, program: &Path) -> Job {
        Job {
            np,
            binding: Binding::Default,
            env: Vec::new(),
            program: program.to_path_buf(),
            args: Vec::new(),
        }
    }

    /// `np` ranks of this test binary, each playing `role` (see `support::main`).
    pub fn role(np: usize, role: &str) -> Job {
        Job::new(np, &std::env::current_exe().unwrap())
            .env(super::ROLE_ENV, role)
            .env("NODESHM_MPI", mpi())
            .env("NODESHM_LAUNCHER", launcher())
            .env(super::NAME_TAG_ENV, super::marker())
    }

    pub fn bind(mut self, binding: Binding) -> Job {
        self.binding = binding;
        self
    }

    /// An environment variable every rank sees.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Job {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Arguments of the program.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Job {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The command that starts the job (run it in its own process group to kill it whole).
    pub fn command(&self) -> Command {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/mpi-launch.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script).args(["-n", &self.np.to_string()]);
        match self.binding {
            Binding::Default => {}
            Binding::Core => {
                cmd.args(["--bind", "core"]);
            }
            Binding::None => {
                cmd.args(["--bind", "none"]);
            }
        }
        for (k, v) in &self.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--").arg(&self.program).args(&self.args);
        // cargo test points LD_LIBRARY_PATH at its target directory, which holds a libnodeshm.so
        // too: programs linked against an installed one must load that, as a user's would.
        cmd.env_remove("LD_LIBRARY_PATH");
        cmd
    }
}
