//! One etcd client per cluster member, and failover between them.
//!
//! etcd-client's own balancer keeps sending requests to a member that has
//! died, so each member gets a client of its own and a request that fails
//! in a way another member might not (unreachable, no leader, timed out)
//! moves on to the next one. Every request carries `require_leader`: a
//! member cut off from the majority refuses at once instead of hanging.

use crate::EtcdTls;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Keepalive pings more often than every 5 s make etcd drop the
/// connection ("too many pings"); 10 s stays clear of that.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Rounds over every member before a request fails, and the pause between
/// rounds: long enough for etcd to elect a new leader of its own.
const ROUNDS: usize = 3;
const ROUND_PAUSE: Duration = Duration::from_millis(500);

pub(crate) struct Members {
    clients: Vec<(String, Client)>,
    /// The member requests go to first.
    current: AtomicUsize,
    timeout: Duration,
}

/// Why a request failed on every member.
#[derive(Debug)]
pub(crate) struct Failed(pub String);

/// Only `tls.ca_pem` is trusted (no system roots); the members' names are
/// checked against the endpoints' hosts.
fn tls_options(tls: EtcdTls) -> TlsOptions {
    let options = TlsOptions::new().ca_certificate(Certificate::from_pem(tls.ca_pem));
    match tls.client {
        Some(client) => options.identity(Identity::from_pem(client.cert_pem, client.key_pem)),
        None => options,
    }
}

impl Members {
    /// Clients for `endpoints` (`http://host:port`, or `https://` with
    /// `tls`). Connecting is lazy: a member that is down now is tried when
    /// it is needed.
    pub(crate) async fn connect(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<EtcdTls>,
    ) -> Result<Self, Failed> {
        if endpoints.is_empty() {
            return Err(Failed("no etcd endpoints given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_require_leader(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls_options(tls));
        }
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let client = Client::connect([endpoint.as_str()], Some(options.clone()))
                .await
                .map_err(|e| Failed(format!("etcd endpoint {endpoint}: {}", describe(&e))))?;
            clients.push((endpoint.clone(), client));
        }
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The client requests go to now, and its endpoint.
    pub(crate) fn current(&self) -> (&str, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        let (endpoint, client) = &self.clients[i];
        (endpoint, client.clone())
    }

    /// Moves on to the next member after `failed` (an index from
    /// [`Members::current`]'s time), unless another request already did.
    fn advance_from(&self, failed: usize) {
        let _ = self.current.compare_exchange(
            failed,
            (failed + 1) % self.clients.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn advance(&self) {
        self.advance_from(self.current.load(Ordering::Relaxed) % self.clients.len());
    }

    /// Runs `op` on the current member and, when it fails in a way another
    /// member may not, on each other member — up to [`ROUNDS`] times over. `op` must be safe to
    /// repeat: a request that timed out may still have been applied.
    pub(crate) async fn call<T, F, Fut>(&self, op: F) -> Result<T, Failed>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut errors = Vec::new();
        for attempt in 0..self.clients.len() * ROUNDS {
            if attempt > 0 && attempt % self.clients.len() == 0 {
                // Every member failed: etcd may be electing its own leader
                // (a second or so after its leader died). Once more, later.
                tokio::time::sleep(ROUND_PAUSE).await;
                errors.clear();
            }
            let i = self.current.load(Ordering::Relaxed) % self.clients.len();
            let (endpoint, client) = &self.clients[i];
            let error = match tokio::time::timeout(self.timeout, op(client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if !another_member_may_answer(&e) => {
                    return Err(Failed(format!("etcd {endpoint}: {}", describe(&e))));
                }
                Ok(Err(e)) => describe(&e),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            errors.push(format!("{endpoint}: {error}"));
            self.advance_from(i);
        }
        Err(Failed(format!(
            "no etcd member answered: {}",
            errors.join("; ")
        )))
    }
}

/// `e` in a few words: a gRPC status's message, not its debug form, and
/// what caused it.
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error;
    match e {
        etcd_client::Error::GRpcStatus(status) if status.message().is_empty() => {
            format!("{:?}", status.code())
        }
        etcd_client::Error::GRpcStatus(status) => {
            with_causes(status.message().to_string(), status.source())
        }
        other => with_causes(other.to_string(), other.source()),
    }
}

/// `text`, then each cause from `source` on that it does not say yet: a
/// transport error's own text is only "transport error", its causes say
/// which (the connection closed, a certificate from an unknown issuer, the
/// member's alert).
fn with_causes(mut text: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Whether `e` is about the member (down, cut off, overloaded) rather than
/// the request, so that another member may answer it.
fn another_member_may_answer(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
                | tonic::Code::ResourceExhausted
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        _ => false,
    }
}
