//! The C ABI as C, C++ and Fortran users meet it: build and install the CMake package into a
//! fresh prefix, build the C and Fortran examples and the bad-input test against it with
//! `find_package(nodeshm)`, and run them under mpirun.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn step(what: &str, cmd: &mut Command, limit: Duration) -> String {
    let (ok, out) = support::run_with_timeout(cmd, limit);
    assert!(ok, "{what} failed:\n{out}");
    out
}

fn cmake_build(source: &Path, build: &Path, prefix: &Path) {
    step(
        &format!("configuring {}", source.display()),
        Command::new("cmake")
            .arg("-S")
            .arg(source)
            .arg("-B")
            .arg(build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())),
        Duration::from_secs(120),
    );
    step(
        &format!("building {}", source.display()),
        Command::new("cmake").arg("--build").arg(build),
        Duration::from_secs(300),
    );
}

fn mpirun(np: usize, exe: &Path) -> String {
    step(
        &format!("running {}", exe.display()),
        Command::new("mpirun")
            .args(["--oversubscribe", "-n", &np.to_string()])
            .arg(exe)
            // cargo test points LD_LIBRARY_PATH at target/debug, which holds a libnodeshm.so
            // too: the programs must load the installed one, as a user's would.
            .env_remove("LD_LIBRARY_PATH")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
        Duration::from_secs(120),
    )
}

fn cmake_package_examples_and_bad_input() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The package build keeps its cargo target directory between runs (incremental); the
    // install prefix and the users' builds are fresh every time.
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi");
    let prefix = work.join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    for user in ["c", "fortran", "tests"] {
        let _ = std::fs::remove_dir_all(work.join(user));
    }
    step(
        "configuring the nodeshm CMake package",
        Command::new("cmake")
            .arg("-S")
            .arg(root.join("cmake"))
            .arg("-B")
            .arg(work.join("package"))
            .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display())),
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
        "include/nodeshm-fortran/nodeshm.mod",
        "lib/cmake/nodeshm/nodeshmConfig.cmake",
    ] {
        assert!(prefix.join(f).exists(), "{f} was not installed");
    }

    cmake_build(&root.join("examples/c"), &work.join("c"), &prefix);
    let out = mpirun(4, &work.join("c/cookbook"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ok rank") && l.ends_with("read 0xdeadbeef"))
            .count(),
        4,
        "{out}"
    );

    cmake_build(
        &root.join("examples/fortran"),
        &work.join("fortran"),
        &prefix,
    );
    let out = mpirun(4, &work.join("fortran/shared_sum"));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("ok rank") && l.contains("sum 5000050000.0"))
            .count(),
        4,
        "{out}"
    );

    cmake_build(&root.join("tests/c"), &work.join("tests"), &prefix);
    for exe in ["bad_input", "bad_input_static"] {
        let out = mpirun(2, &work.join("tests").join(exe));
        assert_eq!(
            out.lines().filter(|l| *l == "45 passed, 0 failed").count(),
            2,
            "{exe}:\n{out}"
        );
        assert!(!out.contains("FAILED"), "{out}");
    }
    let left = support::leftovers("");
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
