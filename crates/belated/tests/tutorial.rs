//! Runs the tutorial example (built alongside the tests) with `--quick`: all five examples must match
//! their sequential versions, within a time limit.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo test` builds examples next to the test binaries: `target/<profile>/examples/`.
fn example(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_tutorial_runs_quickly_and_matches_sequential_code() {
    let path = example("tutorial");
    assert!(path.exists(), "{} was not built", path.display());
    let mut child = Command::new(&path)
        .arg("--quick")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            child.kill().unwrap();
            panic!("the tutorial did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for example in ["ex1", "ex2", "ex3", "ex4", "ex5"] {
        assert!(
            stdout.contains(example),
            "{example} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("all 5 examples match"), "{stdout}");
}
