//! How fast a root rotation in the primary datacenter reaches a secondary:
//! a primary engine served on loopback, a secondary engine following it
//! over HTTP with its real client (`HttpPrimary`), and rotations in the
//! primary. Each round is timed from the primary's configuration change
//! returning to the secondary publishing the new root with a new
//! intermediate of its own (it signs under it from that moment).

use meshca_core::{CaConfig, SystemClock};
use meshca_server::primary::HttpPrimary;
use meshca_server::{default_provider_factory, CaEngine, ConfigChange, PrimaryLink};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest one round may take before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// The propagation time of `rounds` rotations (EC P-384 and P-256 roots in
/// turn), in order.
pub async fn propagation(rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let (primary, _) = crate::start_engine("consul", serde_json::json!({})).await?;
    let (base, stop) = meshca_server::spawn_on_loopback(primary.clone()).await?;
    let link = PrimaryLink {
        primary: Arc::new(HttpPrimary::new(reqwest::Client::new(), &[base], None)),
        primary_datacenter: "dc1".into(),
    };
    let secondary = CaEngine::start_secondary(
        crate::memory_records()?,
        Arc::new(SystemClock),
        "dc2".into(),
        CaConfig::default(),
        default_provider_factory(),
        link,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let follower = secondary.spawn_follower();
    let mut changes = secondary.subscribe();
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let bits = if round % 2 == 0 { 384 } else { 256 };
        let change = ConfigChange {
            provider: "consul".into(),
            config: serde_json::json!({"PrivateKeyType": "ec", "PrivateKeyBits": bits})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..ConfigChange::default()
        };
        let start = Instant::now();
        primary
            .change_config(change)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let new_root = primary.published().active_root_id.clone();
        tokio::time::timeout(ROUND_LIMIT, async {
            while secondary.published().active_root_id != new_root {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("round {round}: the secondary did not follow"))?;
        times.push(start.elapsed());
    }
    if let Some(f) = follower {
        f.abort();
    }
    let _ = stop.send(());
    Ok(times)
}

/// The median and the largest of `times`, in milliseconds.
pub fn summary(times: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    (median, ms.last().copied().unwrap_or(0.0))
}
