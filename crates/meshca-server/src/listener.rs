//! The accept loop, with the limits a server exposed to a network needs:
//! a request head must arrive within [`Limits::header_timeout`] (which also
//! closes idle keep-alive connections), a body within
//! [`Limits::body_timeout`], and the number of open connections is capped
//! in all and per client address. A connection over a cap is closed at once;
//! everyone else keeps being served.
//!
//! The HTTPS listener is this same loop: the TLS handshake runs in the
//! connection's task, holding its connection slot, and must finish within
//! the handshake timeout ([`crate::tls::TlsServer::handshake_timeout`]) or
//! the connection is closed; the request limits then apply as on HTTP.
//! Every request carries `ConnectInfo<SocketAddr>` and the same address as
//! the audit trail and fair shares name it ([`crate::auth::Peer`], written
//! once per connection), and on HTTPS what the handshake established about
//! the client ([`crate::tls::TlsPeer`]).

use crate::tls::{TlsPeer, TlsServer};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// After the shutdown began, how long open requests (a signing in
    /// flight) may take to finish before the listener stops anyway.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_client: 512,
            drain: Duration::from_secs(10),
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
    serve_with(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS: each connection first completes the handshake
/// `tls` runs (within its timeout), then is served as on HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Arc<TlsServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, Some(tls), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<Arc<TlsServer>>,
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
        let router = router.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    serve_connection(stream, peer, TlsPeer::default(), router, limits, watcher)
                        .await
                }
                Some(tls) => {
                    // A client that never finishes the handshake is closed
                    // after the handshake timeout, releasing its slot.
                    if let Some((stream, who)) = tls.handshake(stream, peer).await {
                        serve_connection(stream, peer, who, router, limits, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let drain = limits.drain;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; stopping anyway");
    }
    Ok(())
}

/// Serves HTTP/1.1 on one accepted (and, on HTTPS, handshaken) connection.
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    who: TlsPeer,
    router: axum::Router,
    limits: Limits,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Formatted once here, not for every request.
    let peer_named = crate::auth::Peer::new(peer);
    let service =
        TowerToHyperService::new(router.map_request(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(peer_named.clone());
            who.insert_into(req.extensions_mut());
            req
        }));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    let _ = conn.await;
}
