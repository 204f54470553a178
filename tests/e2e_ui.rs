//! End-to-end: the dashboard at `/ui/`, loaded in headless Chromium
//! (Debian's `chromium`) from a real server after a root rotation: the page
//! shows the trust domain, every root, the cross-signature, and the
//! timeline; a screenshot lands in the test's output directory.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod common;

use common::Server;
use serde_json::json;
use std::process::Command;

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    // Lets the page's fetches finish before the DOM is dumped.
    "--virtual-time-budget=10000",
];

/// Runs Chromium on `url` with `extra` flags; its stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium (apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_the_hierarchy_after_a_rotation() {
    let server = Server::start(&[]);
    let old = server.roots()["ActiveRootID"].as_str().unwrap().to_string();
    let r = server.put_config(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(r.status, 200, "{r:?}");
    let roots = server.roots();
    let new = roots["ActiveRootID"].as_str().unwrap().to_string();
    let url = server.url("/ui/");

    let dom = chromium(&url, &["--dump-dom"]);
    assert!(dom.contains(&server.trust_domain()), "{dom}");
    assert!(dom.contains(&format!("2 root(s); active {new}")), "{dom}");
    for id in [&old, &new] {
        assert!(
            dom.contains(&format!("data-root-id=\"{id}\"")),
            "{id} in {dom}"
        );
    }
    assert!(
        dom.contains(&format!("cross-signed by {}", &old[..11])),
        "the cross-signature under the new root: {dom}"
    );
    assert!(
        dom.contains("signs leaves now") && dom.contains("leaf issued now"),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"now\""),
        "the timeline marks now: {dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("meshca-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            "--window-size=1300,1000",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("dashboard screenshot: {}", shot.display());
}

#[test]
fn the_dashboard_files_are_same_origin_only() {
    let server = Server::start(&[]);
    let page = server.get("/ui/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let policy = page.header("content-security-policy").unwrap();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe"),
        "{policy}"
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
    }
    let (status, headers, _) = common::raw_request(&server.base, "GET", "/ui", vec![]);
    assert_eq!(status, 308, "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains("location: /ui/"),
        "{headers}"
    );
}
