//! Client commands: thin wrappers over the HTTP API.

use crate::cli::{CaCommand, ConnectCommand, HttpArgs, LeafArgs, SnapshotCommand};
use anyhow::{bail, Context};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A path from the flag, else from meshca's variable, else from Consul's.
fn tls_path(flag: &Option<PathBuf>, ours: &str, consuls: &str) -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    flag.clone().or_else(|| var(ours)).or_else(|| var(consuls))
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The certificates of a CA file: the only anchors that verify the server.
pub fn trust_anchors(ca: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let certs = reqwest::Certificate::from_pem_bundle(&read("the CA file", ca)?)
        .with_context(|| format!("{} holds no PEM certificates", ca.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", ca.display());
    Ok(certs)
}

/// A client certificate and its key, as a TLS client identity.
pub fn identity(cert: &Path, key: &Path) -> anyhow::Result<reqwest::Identity> {
    let mut pem = read("the client certificate", cert)?;
    pem.push(b'\n');
    pem.extend(read("the client key", key)?);
    reqwest::Identity::from_pem(&pem).with_context(|| {
        format!(
            "{} and {} are not a PEM certificate and key",
            cert.display(),
            key.display()
        )
    })
}

/// The HTTP client, with the CA and client certificate the flags or the
/// environment name (for `https://` addresses).
fn client(http: &HttpArgs) -> anyhow::Result<Client> {
    let mut builder = Client::builder();
    if let Some(ca) = tls_path(&http.ca_file, "MESHCA_CACERT", "CONSUL_CACERT") {
        // Only the given CA: the system's roots must not vouch for meshca.
        builder = builder.tls_built_in_root_certs(false);
        for cert in trust_anchors(&ca)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let cert = tls_path(
        &http.client_cert,
        "MESHCA_CLIENT_CERT",
        "CONSUL_CLIENT_CERT",
    );
    let key = tls_path(&http.client_key, "MESHCA_CLIENT_KEY", "CONSUL_CLIENT_KEY");
    match (cert, key) {
        (Some(cert), Some(key)) => builder = builder.identity(identity(&cert, &key)?),
        (Some(_), None) => {
            bail!("a client certificate needs its key: set MESHCA_CLIENT_KEY or --client-key")
        }
        (None, Some(_)) => {
            bail!("a client key needs its certificate: set MESHCA_CLIENT_CERT or --client-cert")
        }
        (None, None) => {}
    }
    builder.build().context("building the HTTP client")
}

/// The server's base URL: the flag, else `MESHCA_HTTP_ADDR`, else Consul's
/// `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`. A bare `host:port`
/// (as Consul accepts) means `http://host:port`.
fn base_url(flag: Option<&str>) -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let addr = flag
        .map(str::to_string)
        .or_else(|| var("MESHCA_HTTP_ADDR"))
        .or_else(|| var("CONSUL_HTTP_ADDR"))
        .unwrap_or_else(|| "http://127.0.0.1:8500".into());
    let addr = addr.trim_end_matches('/');
    match addr.contains("://") {
        true => addr.to_string(),
        false => format!("http://{addr}"),
    }
}

pub(crate) fn request(
    http: &HttpArgs,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<RequestBuilder> {
    let client = client(http)?;
    let url = format!("{}{path}", base_url(http.addr.as_deref()));
    let mut req = client.request(method, url);
    // Consul's variable works too when meshca's is unset.
    let token = http
        .token
        .clone()
        .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if let Some(token) = token {
        req = req.header("X-Consul-Token", token);
    }
    Ok(req)
}

pub(crate) fn send(req: RequestBuilder) -> anyhow::Result<Response> {
    let waiting = Waiting::on_terminal();
    let resp = req.send().context("contacting the meshca server");
    drop(waiting);
    let resp = resp?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        bail!(
            "Unexpected response code: {} ({})",
            status.as_u16(),
            body.trim()
        );
    }
    Ok(resp)
}

/// Progress for a request that takes a while (a rotation to an RSA-4096
/// root, a snapshot restore): after a second, a line on the terminal that
/// counts the seconds, erased when the answer comes. Nothing when stderr is
/// not a terminal (scripts, logs).
struct Waiting {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Waiting {
    fn on_terminal() -> Option<Self> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let ticker = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut shown = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let secs = started.elapsed().as_secs();
                if secs > shown {
                    eprint!("\r{}", waiting_line(secs));
                    shown = secs;
                }
            }
            if shown > 0 {
                eprint!("\r{}\r", " ".repeat(waiting_line(0).len() + 8));
            }
        });
        Some(Self {
            done,
            ticker: Some(ticker),
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn waiting_line(secs: u64) -> String {
    format!("waiting for the server… {secs}s")
}

fn get_json(http: &HttpArgs, path: &str) -> anyhow::Result<Value> {
    Ok(send(request(http, reqwest::Method::GET, path)?)?.json()?)
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn connect(http: &HttpArgs, cmd: ConnectCommand) -> anyhow::Result<()> {
    let ConnectCommand::Ca { command } = cmd;
    match command {
        CaCommand::Roots => print_json(&get_json(http, "/v1/connect/ca/roots")?),
        CaCommand::GetConfig => print_json(&get_json(http, "/v1/connect/ca/configuration")?),
        CaCommand::SetConfig { config_file, merge } => {
            let body = std::fs::read(&config_file)
                .with_context(|| format!("reading {}", config_file.display()))?;
            let mut change = serde_json::from_slice::<Value>(&body)
                .with_context(|| format!("{} is not valid JSON", config_file.display()))?;
            if merge {
                let current = get_json(http, "/v1/connect/ca/configuration")?;
                change = merged(&current, change)?;
            }
            let body = serde_json::to_vec(&change)?;
            send(request(http, reqwest::Method::PUT, "/v1/connect/ca/configuration")?.body(body))?;
            println!("Configuration updated!");
            Ok(())
        }
    }
}

/// `change` laid over the `current` configuration (as `GET` shows it): the
/// change's `Config` keys replace theirs, whatever their spelling
/// (`leaf_cert_ttl` replaces `LeafCertTTL`). Secrets `GET` shows as
/// `"hidden"` go back as such, which keeps the stored ones.
fn merged(current: &Value, change: Value) -> anyhow::Result<Value> {
    let provider = current["Provider"].clone();
    if change
        .get("Provider")
        .is_some_and(|p| p.as_str() != provider.as_str())
    {
        bail!("--merge keeps the current provider ({provider}): to switch providers, send the whole configuration without --merge");
    }
    let spelling = |k: &str| k.replace('_', "").to_ascii_lowercase();
    let mut config = current["Config"].as_object().cloned().unwrap_or_default();
    let Some(new) = change.get("Config").and_then(Value::as_object) else {
        bail!("the file has no \"Config\" object to merge");
    };
    for (key, value) in new {
        config.retain(|k, _| spelling(k) != spelling(key));
        config.insert(key.clone(), value.clone());
    }
    let mut out = serde_json::json!({"Provider": provider, "Config": config});
    if let Some(force) = change.get("ForceWithoutCrossSigning") {
        out["ForceWithoutCrossSigning"] = force.clone();
    }
    Ok(out)
}

/// `meshca snapshot save|restore FILE`. The file is checked on both sides:
/// a damaged download is not kept, a damaged file is not sent.
pub fn snapshot(http: &HttpArgs, cmd: SnapshotCommand) -> anyhow::Result<()> {
    use meshca_store::snapshot_file;
    match cmd {
        SnapshotCommand::Save { file } => {
            let resp = send(request(http, reqwest::Method::GET, "/v1/snapshot")?)?;
            let bytes = resp.bytes().context("reading the snapshot")?;
            let snapshot = snapshot_file::decode(&bytes).context("the server's snapshot")?;
            write_new_private(&file, &bytes)?;
            println!(
                "Saved snapshot of index {} ({} records) to {}",
                snapshot.index,
                snapshot.records.len(),
                file.display()
            );
        }
        SnapshotCommand::Restore { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            snapshot_file::decode(&bytes).with_context(|| format!("{}", file.display()))?;
            let req = request(http, reqwest::Method::PUT, "/v1/snapshot")?
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
            let resp = send(req)?;
            let index = resp
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            println!(
                "Restored snapshot {} (store index now {index})",
                file.display()
            );
        }
    }
    Ok(())
}

/// Creates `path` (mode 0600) with `bytes`; an existing file is never
/// replaced.
fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{} already exists or cannot be created", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Writes `contents` to `path`, creating it with `mode` (never wider).
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its old mode on open; narrow it explicitly.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

pub fn leaf(http: &HttpArgs, args: LeafArgs) -> anyhow::Result<()> {
    let leaf = get_json(http, &format!("/v1/agent/connect/ca/leaf/{}", args.service))?;
    let roots = get_json(http, "/v1/agent/connect/ca/roots")?;
    let field = |v: &Value, k: &str| -> anyhow::Result<String> {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("response has no {k}"))
    };
    let bundle: String = roots["Roots"]
        .as_array()
        .context("response has no Roots")?
        .iter()
        .filter_map(|r| r["RootCert"].as_str())
        .collect();
    std::fs::create_dir_all(&args.out_dir)?;
    let cert_path = args.out_dir.join(format!("{}.pem", args.service));
    let key_path = args.out_dir.join(format!("{}-key.pem", args.service));
    let ca_path = args.out_dir.join("ca.pem");
    write_file(&cert_path, &field(&leaf, "CertPEM")?, 0o644)?;
    write_file(&key_path, &field(&leaf, "PrivateKeyPEM")?, 0o600)?;
    write_file(&ca_path, &bundle, 0o644)?;
    println!("==> Saved {}", cert_path.display());
    println!("==> Saved {}", key_path.display());
    println!("==> Saved {}", ca_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_replaces_only_the_named_keys_in_any_spelling() {
        let current = json!({"Provider": "consul", "Config": {
            "LeafCertTTL": "24h", "PrivateKeyType": "ec", "PrivateKey": "hidden"},
            "CreateIndex": 4, "ModifyIndex": 9});
        let change = json!({"Config": {"private_key_type": "rsa", "PrivateKeyBits": 4096}});
        assert_eq!(
            merged(&current, change).unwrap(),
            json!({"Provider": "consul", "Config": {"LeafCertTTL": "24h",
                "PrivateKey": "hidden", "private_key_type": "rsa", "PrivateKeyBits": 4096}})
        );
        let force = json!({"Config": {}, "ForceWithoutCrossSigning": true});
        assert_eq!(
            merged(&current, force).unwrap()["ForceWithoutCrossSigning"],
            json!(true)
        );
        let switch = json!({"Provider": "vault", "Config": {}});
        assert!(merged(&current, switch)
            .unwrap_err()
            .to_string()
            .contains("whole configuration"));
        assert!(merged(&current, json!({})).is_err());
    }
}
