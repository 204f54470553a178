//! `GET /v1/agent/metrics?format=prometheus`: what an operator alerts on.
//!
//! Counted as it happens: HTTP requests by route, method and status
//! (rate-limited ones among them), leaf signings by kind and result with
//! their latency (the engine reports each through [`IssueObserver`]), and
//! the blocking queries open. Computed at each scrape from the published
//! CA: seconds until the active root and the signing certificate expire,
//! and for each root the leaves signed under it that are still valid (since
//! this server started) and when pruning may drop it.

use meshca_ca::{CaEngine, IssueKind, IssueObserver, Pace, Reaction};
use meshca_core::rotation::prunable_at;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/v1/agent/connect/ca/leaf/{service}`), never
    /// the path itself: service names would make the label set unbounded.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SigningLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PaceLabels {
    pace: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RootLabels {
    root_id: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    http: Family<HttpLabels, Counter>,
    rate_limited: Counter,
    blocking_open: Gauge,
    signings: Family<SigningLabels, Counter>,
    signing_seconds: Family<KindLabels, Histogram>,
    paced: Family<PaceLabels, Counter>,
    root_expiry: FloatGauge,
    signing_expiry: FloatGauge,
    root_valid_leaves: Family<RootLabels, Gauge>,
    root_prunable_at: Family<RootLabels, FloatGauge>,
    primary_up: Gauge,
    primary_failures: Gauge,
    /// Root ID → NotAfter (Unix seconds) → leaves signed under it that end then.
    leaves: Mutex<HashMap<String, BTreeMap<i64, u64>>>,
    /// One scrape at a time: it rewrites the computed gauges.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("meshca"),
            http: Family::default(),
            rate_limited: Counter::default(),
            blocking_open: Gauge::default(),
            signings: Family::default(),
            // 0.25 ms to about 4 s.
            signing_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
            }),
            paced: Family::default(),
            root_expiry: FloatGauge::default(),
            signing_expiry: FloatGauge::default(),
            root_valid_leaves: Family::default(),
            root_prunable_at: Family::default(),
            primary_up: Gauge::default(),
            primary_failures: Gauge::default(),
            leaves: Mutex::new(HashMap::new()),
            scrape: Mutex::new(()),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            self.http.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Signing requests refused with 429 by CSRMaxPerSecond or CSRMaxConcurrent",
            self.rate_limited.clone(),
        );
        r.register(
            "blocking_queries_open",
            "Blocking queries (?index=) waiting now",
            self.blocking_open.clone(),
        );
        r.register(
            "leaf_signings",
            "Leaf signings by kind (csr, agent_leaf, server_tls) and result",
            self.signings.clone(),
        );
        r.register(
            "leaf_signing_seconds",
            "Time to sign a leaf, from the request to the checked certificate",
            self.signing_seconds.clone(),
        );
        r.register(
            "leaf_signings_paced",
            "Inline (EC) signings by pace: batched (a client alone, or one request per client), \
             prompt (one request beside a busy client), background (a busy client beside others)",
            self.paced.clone(),
        );
        r.register(
            "ca_root_expiry_seconds",
            "Seconds until the active root's NotAfter",
            self.root_expiry.clone(),
        );
        r.register(
            "ca_signing_cert_expiry_seconds",
            "Seconds until the signing certificate's NotAfter: no leaf outlives it",
            self.signing_expiry.clone(),
        );
        r.register(
            "ca_root_valid_leaves",
            "Leaves signed under each root by this server since it started that are still valid",
            self.root_valid_leaves.clone(),
        );
        r.register(
            "ca_root_prunable_timestamp_seconds",
            "When pruning may drop each rotated-out root (Unix time)",
            self.root_prunable_at.clone(),
        );
        r.register(
            "primary_link_up",
            "In a secondary datacenter: 1 while following the primary works, 0 while it fails",
            self.primary_up.clone(),
        );
        r.register(
            "primary_link_failures",
            "In a secondary datacenter: failed contacts with the primary since start",
            self.primary_failures.clone(),
        );
    }

    /// Counts one answered HTTP request.
    pub fn http_request(&self, labels: HttpLabels) {
        if labels.status == 429 {
            self.rate_limited.inc();
        }
        self.http.get_or_create(&labels).inc();
    }

    /// Counts a blocking query as open until the guard is dropped.
    pub fn blocking_query(&self) -> OpenQuery<'_> {
        self.blocking_open.inc();
        OpenQuery(&self.blocking_open)
    }

    /// The metrics in the Prometheus text format, with the computed ones
    /// brought up to date from `ca` first.
    pub fn render(&self, ca: &CaEngine) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.compute(ca);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn compute(&self, ca: &CaEngine) {
        let p = ca.published();
        let now = ca.clock().now();
        let seconds_until = |t: OffsetDateTime| (t - now).as_seconds_f64();
        if let Some(active) = p.roots.iter().find(|r| r.active) {
            self.root_expiry.set(seconds_until(active.not_after));
        }
        self.signing_expiry.set(seconds_until(p.signer.not_after()));
        let valid = self.valid_leaves(now);
        self.root_valid_leaves.clear();
        self.root_prunable_at.clear();
        for root in &p.roots {
            let labels = RootLabels {
                root_id: root.id.clone(),
            };
            let count = valid.get(&root.id).copied().unwrap_or(0);
            self.root_valid_leaves
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
            if let Some(at) = prunable_at(root, p.config.leaf_cert_ttl()) {
                let at = at.unix_timestamp() as f64;
                self.root_prunable_at.get_or_create(&labels).set(at);
            }
        }
        if let Some(link) = ca.primary_link() {
            self.primary_up.set(i64::from(link.error.is_none()));
            self.primary_failures
                .set(i64::try_from(link.failures).unwrap_or(i64::MAX));
        }
    }

    /// Leaves still valid at `now`, by root; expired ones are forgotten.
    fn valid_leaves(&self, now: OffsetDateTime) -> HashMap<String, u64> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        let now = now.unix_timestamp();
        leaves.retain(|_, by_end| {
            *by_end = by_end.split_off(&(now + 1));
            !by_end.is_empty()
        });
        leaves
            .iter()
            .map(|(root, by_end)| (root.clone(), by_end.values().sum()))
            .collect()
    }
}

impl IssueObserver for Metrics {
    fn issued(&self, kind: IssueKind, root_id: &str, not_after: OffsetDateTime, took: Duration) {
        self.count(kind, "ok", took);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        *leaves
            .entry(root_id.to_string())
            .or_default()
            .entry(not_after.unix_timestamp())
            .or_default() += 1;
    }

    fn failed(&self, kind: IssueKind, reaction: Reaction, took: Duration) {
        let result = match reaction {
            Reaction::FixRequest => "refused",
            Reaction::RetryLater => "busy",
            Reaction::Unavailable => "unavailable",
            Reaction::Bug => "error",
        };
        self.count(kind, result, took);
    }

    fn paced(&self, pace: Pace) {
        self.paced
            .get_or_create(&PaceLabels {
                pace: pace.as_str(),
            })
            .inc();
    }
}

impl Metrics {
    fn count(&self, kind: IssueKind, result: &'static str, took: Duration) {
        let kind = kind.as_str();
        self.signings
            .get_or_create(&SigningLabels { kind, result })
            .inc();
        self.signing_seconds
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }
}

/// An open blocking query; dropping it closes it.
pub struct OpenQuery<'a>(&'a Gauge);

impl Drop for OpenQuery<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

    #[test]
    fn leaves_count_until_they_expire() {
        let m = Metrics::new();
        let hour = time::Duration::hours(1);
        for end in [T0 + hour, T0 + hour, T0 + hour * 3] {
            m.issued(IssueKind::Csr, "root-a", end, Duration::from_millis(2));
        }
        m.issued(
            IssueKind::AgentLeaf,
            "root-b",
            T0 + hour,
            Duration::from_millis(2),
        );
        let at = |t| {
            let mut v: Vec<(String, u64)> = m.valid_leaves(t).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(at(T0), [("root-a".into(), 3), ("root-b".into(), 1)]);
        assert_eq!(
            at(T0 + hour),
            [("root-a".into(), 1)],
            "ending now is expired"
        );
        assert!(at(T0 + hour * 3).is_empty());
    }

    #[test]
    fn rate_limited_answers_and_blocking_queries_are_counted() {
        let m = Metrics::new();
        let labels = |status| HttpLabels {
            route: "/v1/connect/ca/sign".into(),
            method: "POST".into(),
            status,
        };
        m.http_request(labels(429));
        m.http_request(labels(200));
        assert_eq!(m.rate_limited.get(), 1);
        let open = m.blocking_query();
        assert_eq!(m.blocking_open.get(), 1);
        drop(open);
        assert_eq!(m.blocking_open.get(), 0);
    }
}
