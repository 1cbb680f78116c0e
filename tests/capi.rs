//! The C ABI as C, C++ and Fortran users meet it: build and install the CMake package into a
//! fresh prefix, build the C and Fortran examples and the bad-input test against it with
//! `find_package(nodeshm)`, and run them under the chosen MPI and launcher
//! (`scripts/mpi-launch.sh`); a consumer that finds the other MPI fails at configure time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::launch::Job;

fn step(what: &str, cmd: &mut Command, limit: Duration) -> String {
    let (ok, out) = support::run_with_timeout(cmd, limit);
    assert!(ok, "{what} failed:\n{out}");
    out
}

/// `-DMPI_<lang>_COMPILER=` for the MPI this run uses (`MPICC`, `MPICXX`, `MPIFC` from
/// scripts/mpi-env.sh).
fn mpi_compilers() -> Vec<String> {
    let mut args = Vec::new();
    for (var, lang) in [("MPICC", "C"), ("MPICXX", "CXX"), ("MPIFC", "Fortran")] {
        if let Ok(wrapper) = std::env::var(var) {
            args.push(format!("-DMPI_{lang}_COMPILER={wrapper}"));
        }
    }
    args
}

fn cmake_configure(source: &Path, build: &Path, prefix: &Path, mpi: &[String]) -> (bool, String) {
    support::run_with_timeout(
        Command::new("cmake")
            .arg("-S")
            .arg(source)
            .arg("-B")
            .arg(build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .args(mpi),
        Duration::from_secs(120),
    )
}

fn cmake_build(source: &Path, build: &Path, prefix: &Path) {
    let (ok, out) = cmake_configure(source, build, prefix, &mpi_compilers());
    assert!(ok, "configuring {} failed:\n{out}", source.display());
    step(
        &format!("building {}", source.display()),
        Command::new("cmake").arg("--build").arg(build),
        Duration::from_secs(300),
    );
}

fn launch(np: usize, exe: &Path) -> String {
    step(
        &format!("running {}", exe.display()),
        &mut Job::new(np, exe).command(),
        Duration::from_secs(120),
    )
}

/// A consumer configured with the other MPI family than the package was built with must fail at
/// configure time, saying which MPI each side has.
fn other_mpi_is_refused(root: &Path, work: &Path, prefix: &Path) {
    let other = if support::launch::mpi() == "mpich" {
        ("mpicc.openmpi", "Open MPI")
    } else {
        ("mpicc.mpich", "MPICH")
    };
    if Command::new("sh")
        .args(["-c", &format!("command -v {}", other.0)])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        println!("skipped the other-MPI check: {} is not installed", other.0);
        return;
    }
    let (ok, out) = cmake_configure(
        &root.join("examples/c"),
        &work.join("c-other-mpi"),
        prefix,
        &[format!("-DMPI_C_COMPILER={}", other.0)],
    );
    assert!(!ok, "a consumer with {} was accepted:\n{out}", other.1);
    assert!(
        out.contains("nodeshm was built with")
            && out.contains(&format!("project found {}", other.1)),
        "{out}"
    );
}

fn cmake_package_examples_and_bad_input() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The package build keeps its cargo target directory between runs (incremental); the
    // install prefix and the users' builds are fresh every time.
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi");
    let prefix = work.join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    for user in ["c", "c-other-mpi", "cpp", "fortran", "tests"] {
        let _ = std::fs::remove_dir_all(work.join(user));
    }
    step(
        "configuring the nodeshm CMake package",
        Command::new("cmake")
            .arg("-S")
            .arg(root.join("cmake"))
            .arg("-B")
            .arg(work.join("package"))
            .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display()))
            .args(mpi_compilers()),
        Duration::from_secs(120),
    );
    step(
        "building the package (cargo build --release)",
        Command::new("cmake")
            .arg("--build")
            .arg(work.join("package")),
        Duration::from_secs(1200),
    );
    step(
        "installing the package",
        Command::new("cmake")
            .arg("--install")
            .arg(work.join("package")),
        Duration::from_secs(60),
    );
    for f in [
        "lib/libnodeshm.so",
        "lib/libnodeshm.a",
        "lib/libnodeshm_fortran.a",
        "include/nodeshm.h",
        "include/nodeshm.hpp",
        "include/nodeshm-fortran/nodeshm.mod",
        "lib/cmake/nodeshm/nodeshmConfig.cmake",
    ] {
        assert!(prefix.join(f).exists(), "{f} was not installed");
    }

    cmake_build(&root.join("examples/c"), &work.join("c"), &prefix);
    let out = launch(4, &work.join("c/cookbook"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ok rank") && l.ends_with("read 0xdeadbeef"))
            .count(),
        4,
        "{out}"
    );

    // C++: RAII handles, exceptions with codes, std::span (C++20) and the C++17 build.
    cmake_build(&root.join("examples/cpp"), &work.join("cpp"), &prefix);
    for exe in ["shared_table", "shared_table_cxx17"] {
        let out = launch(4, &work.join("cpp").join(exe));
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("ok rank") && l.ends_with("7 of 7 checks"))
                .count(),
            4,
            "{exe}:\n{out}"
        );
    }

    cmake_build(
        &root.join("examples/fortran"),
        &work.join("fortran"),
        &prefix,
    );
    let out = launch(4, &work.join("fortran/shared_sum"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ok rank") && l.contains("sum 5000050000.0"))
            .count(),
        4,
        "{out}"
    );

    other_mpi_is_refused(&root, &work, &prefix);

    cmake_build(&root.join("tests/c"), &work.join("tests"), &prefix);
    // One check more under Open MPI, which lets an unknown Fortran handle be detected.
    let checks = if support::launch::mpi() == "openmpi" {
        57
    } else {
        56
    };
    for exe in ["bad_input", "bad_input_static"] {
        let out = launch(2, &work.join("tests").join(exe));
        assert_eq!(
            out.lines()
                .filter(|l| *l == format!("{checks} passed, 0 failed"))
                .count(),
            2,
            "{exe}:\n{out}"
        );
        assert!(!out.contains("FAILED"), "{out}");
    }
    let left = support::leftovers(&support::marker());
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

fn main() {
    support::main(
        &[],
        &[(
            "cmake_package_examples_and_bad_input",
            cmake_package_examples_and_bad_input,
        )],
    );
}
