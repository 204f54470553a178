//! The secondary datacenter's HTTP client to its primary: the primary's
//! roots through a blocking query on `/v1/connect/ca/roots`, and
//! `/v1/connect/ca/sign-intermediate` with the replication token. The
//! primary's addresses are tried in turn until one answers.

use crate::wire::IndexedCaRoots;
use async_trait::async_trait;
use meshca_ca::primary::{Primary, PrimaryRoot, PrimaryRoots};
use meshca_ca::CaError;
use secrecy::{ExposeSecret as _, SecretString};
use std::time::Duration;

/// Time allowed on top of a blocking query's wait (the primary adds up to
/// 1/16 of jitter, and the network its own delay).
const WAIT_MARGIN: Duration = Duration::from_secs(10);
/// Time allowed for a request that does not block.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The primary datacenter over HTTP(S).
pub struct HttpPrimary {
    http: reqwest::Client,
    /// Base URLs without a trailing slash.
    addresses: Vec<String>,
    token: Option<SecretString>,
}

impl std::fmt::Debug for HttpPrimary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPrimary")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl HttpPrimary {
    /// A client for the primary at `addresses` (tried in order), sending
    /// `token` (the replication token). `http` carries the TLS settings.
    pub fn new(http: reqwest::Client, addresses: &[String], token: Option<SecretString>) -> Self {
        Self {
            http,
            addresses: addresses
                .iter()
                .map(|a| a.trim_end_matches('/').to_string())
                .collect(),
            token,
        }
    }

    /// Sends the request `make` builds to each address in turn until one
    /// answers; the answer's status and body.
    async fn send(
        &self,
        what: &str,
        make: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, String), CaError> {
        let mut failures = Vec::new();
        for base in &self.addresses {
            let mut req = make(base);
            if let Some(token) = &self.token {
                req = req.header("X-Consul-Token", token.expose_secret());
            }
            match req.send().await {
                Ok(resp) => {
                    let (status, headers) = (resp.status(), resp.headers().clone());
                    let body = resp.text().await.map_err(|e| {
                        CaError::Unavailable(format!("primary datacenter at {base}: {what}: {e}"))
                    })?;
                    return Ok((status, headers, body));
                }
                Err(e) => failures.push(format!("{base}: {e}")),
            }
        }
        Err(CaError::Unavailable(format!(
            "primary datacenter unreachable ({what}): {}",
            failures.join("; ")
        )))
    }
}

/// An answer other than 200: a 4xx is the primary refusing (reported as
/// such), a 5xx the primary failing (retry later).
fn refused(what: &str, status: reqwest::StatusCode, body: &str) -> CaError {
    let msg = format!(
        "the primary datacenter refused {what}: {status}: {}",
        body.trim()
    );
    if status.is_client_error() {
        CaError::Rejected(msg)
    } else {
        CaError::Unavailable(msg)
    }
}

#[async_trait]
impl Primary for HttpPrimary {
    async fn roots(&self, after: u64, wait: Duration) -> Result<PrimaryRoots, CaError> {
        let what = "reading its roots";
        let (status, headers, body) = self
            .send(what, |base| {
                self.http
                    .get(format!("{base}/v1/connect/ca/roots"))
                    .query(&[
                        ("index", after.to_string()),
                        ("wait", format!("{}ms", wait.as_millis())),
                    ])
                    .timeout(wait + WAIT_MARGIN)
            })
            .await?;
        if status != reqwest::StatusCode::OK {
            return Err(refused(what, status, &body));
        }
        let index = headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                CaError::Unavailable("the primary's roots have no X-Consul-Index".into())
            })?;
        let wire: IndexedCaRoots = serde_json::from_str(&body)
            .map_err(|e| CaError::Unavailable(format!("the primary's roots do not parse: {e}")))?;
        let trust_domain = wire.trust_domain.parse().map_err(|e| {
            CaError::Unavailable(format!("the primary's trust domain is invalid: {e}"))
        })?;
        Ok(PrimaryRoots {
            index,
            trust_domain,
            active_root_id: wire.active_root_id,
            roots: wire
                .roots
                .into_iter()
                .map(|r| PrimaryRoot {
                    id: r.id,
                    root_cert: r.root_cert,
                    intermediate_certs: r.intermediate_certs.unwrap_or_default(),
                    active: r.active,
                })
                .collect(),
        })
    }

    async fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError> {
        let what = "to sign our intermediate";
        let body = serde_json::json!({ "CSR": csr_pem });
        let (status, _, text) = self
            .send(what, |base| {
                self.http
                    .post(format!("{base}/v1/connect/ca/sign-intermediate"))
                    .json(&body)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if status != reqwest::StatusCode::OK {
            return Err(refused(what, status, &text));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            CaError::Unavailable(format!("the primary's answer does not parse: {e}"))
        })?;
        answer["CertPEM"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CaError::Unavailable("the primary's answer has no CertPEM".into()))
    }
}
