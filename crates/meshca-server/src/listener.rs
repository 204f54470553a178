//! The accept loop, with the limits a server exposed to a network needs:
//! a request head must arrive within [`Limits::header_timeout`] (which also
//! closes idle keep-alive connections), a body within
//! [`Limits::body_timeout`], and the number of open connections is capped
//! in all and per client address. A connection over a cap is closed at once;
//! everyone else keeps being served.

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Connection limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head, counted from the end of the
    /// previous response on a kept-alive connection: a slowloris client,
    /// and an idle one, is closed after this.
    pub header_timeout: Duration,
    /// Longest wait for a request body to arrive in full.
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_client: 512,
        }
    }
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A slot in [`Open`], released on drop.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

fn take_slot(open: &Arc<Mutex<Open>>, client: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
    let mine = o.per_client.get(&client).copied().unwrap_or(0);
    if o.total >= limits.max_connections || mine >= limits.max_connections_per_client {
        return None;
    }
    o.total += 1;
    o.per_client.insert(client, mine + 1);
    Some(Slot {
        open: open.clone(),
        client,
    })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// open requests finish (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let open = Arc::new(Mutex::new(Open::default()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: keep serving the
                // connections we have, try again shortly.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = take_slot(&open, peer.ip(), &limits) else {
            tracing::debug!(client = %peer, "connection limit reached; closing");
            continue;
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            move |req: hyper::Request<Incoming>| {
                // The client's address, for the audit trail.
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = conn.await;
        });
    }
    drop(listener);
    let drain = Duration::from_secs(10);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; stopping anyway");
    }
    Ok(())
}
