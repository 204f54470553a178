//! `cargo run --release -p meshca-bench -- journal [DIR]`: durable appends
//! per second to the issuance journal with 1 to 256 concurrent writers, on
//! a real disk (a temporary directory under DIR, default the current one),
//! next to one `fdatasync` per entry as the baseline group commit beats.

use meshca_journal::{Entry, Journal, DEFAULT_SEGMENT_BYTES};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(3);
const WRITERS: &[usize] = &[1, 16, 64, 256];

fn entry(n: usize) -> Entry {
    let t = meshca_core::Clock::now(&meshca_core::SystemClock);
    Entry {
        serial: format!("{n:032x}"),
        spiffe_id: format!(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/s{n}"
        ),
        valid_after: t,
        valid_before: t + time::Duration::hours(72),
        signing_key_id: "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd".into(),
        kind: "csr".into(),
        requester: "accessor:8d7a6c3e-1f2a-4b5c-9d8e-7f6a5b4c3d2e".into(),
        remote: Some("127.0.0.1:50000".into()),
        request_id: Some("0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e".into()),
    }
}

/// Appends per second with `writers` tasks each appending in a loop.
async fn rate(journal: Arc<Journal>, writers: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while start.elapsed() < RUN {
                    journal.append(&entry(w * 1_000_000 + n)).await?;
                    n += 1;
                }
                Ok::<_, meshca_journal::JournalError>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// One write and one `fdatasync` per entry, from one thread.
fn sync_per_entry(dir: &Path) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("baseline"))?;
    let line = serde_json::to_vec(&entry(0))?;
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < RUN {
        f.write_all(&line)?;
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(parent: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(parent)?;
    println!("| issuance journal, {} | appends/s |", parent.display());
    println!("|---|---:|");
    println!(
        "| one fdatasync per entry (baseline) | {:.0} |",
        sync_per_entry(dir.path())?
    );
    let journal = Arc::new(Journal::open(
        &dir.path().join("journal"),
        DEFAULT_SEGMENT_BYTES,
    )?);
    for &writers in WRITERS {
        let r = rate(journal.clone(), writers).await?;
        println!("| group commit, {writers} concurrent writers | {r:.0} |");
    }
    Ok(())
}
