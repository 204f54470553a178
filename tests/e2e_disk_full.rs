//! A full disk, for real: the data dir is a small tmpfs. A change that cannot
//! be saved answers 503 with the store's reason and changes nothing; health
//! says so; once space is freed, the next change goes through without a
//! restart (regression: every later change failed until restart, the next
//! rotation was refused with 409 `CA is already in state "RECONFIGURING"`,
//! and `/v1/health` said ok throughout). Leaves stop too while their
//! journal entries cannot be written, and resume with the space.

mod common;

use common::{active_root, Server};
use serde_json::json;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test's lifetime, unmounted on drop (also when
/// the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("creating the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (root with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    // The last partial block may still fit in pieces.
    while f.write_all(&[0u8; 512]).is_ok() {}
    path
}

fn rotate(server: &Server, bits: u32) -> common::Resp {
    server.put(
        "/v1/connect/ca/configuration",
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": bits}})
            .to_string(),
    )
}

#[test]
fn a_full_disk_refuses_changes_cleanly_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let mount = Tmpfs::mount(&data, "32m");
    let mut server = Server::start_in(dir, &[]);
    let before = server.roots();
    let old_root = active_root(&before)["ID"].clone();

    let filler = fill(&mount.0);
    let r = rotate(&server, 384);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "store write failed: no space left on device");
    let health = server.get("/v1/health");
    assert_eq!(health.status, 503, "{health:?}");
    assert!(
        health.body.contains("no space left on device"),
        "{health:?}"
    );
    let roots = server.roots();
    assert_eq!(roots, before, "nothing changed");
    // No leaf without its durable journal entry: like Vault without a
    // working audit device, issuance stops rather than go unrecorded.
    let leaf = server.get("/v1/agent/connect/ca/leaf/web");
    assert_eq!(leaf.status, 503, "{leaf:?}");
    assert!(leaf.body.contains("issuance journal"), "{leaf:?}");
    assert!(!leaf.body.contains("BEGIN"), "no certificate: {leaf:?}");

    std::fs::remove_file(&filler).expect("freeing the space");
    assert_eq!(server.get("/v1/agent/connect/ca/leaf/web").status, 200);
    let r = rotate(&server, 384);
    assert_eq!(r.status, 200, "the next change goes through: {r:?}");
    let after = server.roots();
    assert_ne!(active_root(&after)["ID"], old_root, "rotated");
    assert_eq!(active_root(&after)["PrivateKeyBits"], json!(384));
    assert_eq!(server.get("/v1/health").status, 200);

    server.restart();
    assert_eq!(
        server.roots(),
        after,
        "what was acknowledged survives a restart"
    );
    drop(server);
}
