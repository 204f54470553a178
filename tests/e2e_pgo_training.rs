//! The profile-guided release build (scripts/pgo/build) trains meshca with
//! scripts/pgo/train.py: every request of that workload must be answered
//! with 200 and the server must exit cleanly on SIGTERM (the profile is
//! written at exit), or the build fails. Run here on the test build, at the
//! smallest scale, so that an API change that breaks the training shows in
//! CI rather than at release time.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_training_workload_is_answered_and_the_server_exits_cleanly() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pgo/train.py");
    let out = Command::new("timeout")
        .args(["300", "python3"])
        .arg(script)
        .args(["--meshca", common::BIN, "--scale", "1"])
        .output()
        .expect("running scripts/pgo/train.py");
    assert!(
        out.status.success(),
        "the training run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
