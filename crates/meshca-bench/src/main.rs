//! `cargo run --release -p meshca-bench`: measures meshca's signing paths and
//! `openssl speed` side by side in one run, so ratios survive a noisy machine.
//!
//! Measured: CSR validation + signing in process (one and two threads), the
//! `POST /v1/connect/ca/sign` and `GET /v1/connect/ca/roots` endpoints over
//! a real socket with concurrent clients, and `openssl speed ecdsap256` as
//! the floor of one ECDSA P-256 signature on this machine.

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
    let config = CaConfig::from_wire(
        "consul",
        serde_json::json!({"CSRMaxPerSecond": 0})
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("config"))?,
        None,
    )?;
    // The signing paths never touch the store: an in-memory one keeps the
    // disk out of the numbers.
    let records = meshca_migrations::open(
        Arc::new(MemoryStore::new()),
        &StoreKey::generate()?,
        SystemClock.now(),
    )?;
    let ca = CaEngine::start(
        Arc::new(records),
        Arc::new(SystemClock),
        "dc1".into(),
        config,
        default_provider_factory(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let td = ca.published().trust_domain.to_string();
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| csr_for(&td, &format!("svc{i}")))
            .collect::<Result<_, _>>()?,
    );

    let sign_in_process = |tasks: usize| {
        let (ca, csrs) = (ca.clone(), csrs.clone());
        rate(tasks, move |i| {
            let (ca, csr) = (ca.clone(), csrs[i % csrs.len()].clone());
            async move {
                let _ = ca
                    .sign_csr(csr, meshca_server::Requester::default(), |_| Ok(()))
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
