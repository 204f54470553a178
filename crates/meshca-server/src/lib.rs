//! meshca's HTTP server: the Consul-compatible Connect CA API on top of the
//! CA engine (`meshca-ca`).
//!
//! `server.rs`-style entry point: [`serve`] owns the accept loop and graceful
//! shutdown; handlers live in [`routes`]; every error becomes a response in
//! [`error`] only.

pub mod acl_routes;
pub mod auth;
pub mod blocking;
pub mod error;
mod fair;
pub mod leader;
pub mod leafcache;
pub mod listener;
pub mod metrics;
pub mod primary;
pub mod ratelimit;
pub mod routes;
mod strict_json;
pub mod tls;
pub mod ui;
pub mod wire;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use error::{ApiError, ERROR_HEADER};
use routes::AppState;
use std::future::Future;
use tokio::net::TcpListener;

pub use meshca_ca::{
    default_provider_factory, CaEngine, ConfigChange, PrimaryLink, Published, Requester,
    ISSUED_AUDIT_EVENT,
};

/// Task polls between two looks at the sockets (tokio's default is 61).
/// A signing poll runs a few hundred microseconds of P-256 work, so 61 of
/// them could leave a newly arrived request unseen for many milliseconds
/// while other requests signed. With 8, a quiet client's p99 beside a
/// 64-connection flood fell from 21-22 ms to 10 ms, for about 3% more CPU
/// per /sign (docs/BENCHMARKS.md).
const POLLS_BETWEEN_IO_CHECKS: u32 = 8;

/// The async runtime the server runs on (and the benchmark's HTTP floor,
/// so that the two are measured on the same settings).
pub fn runtime() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().event_interval(POLLS_BETWEEN_IO_CHECKS);
    builder
}

/// Largest accepted request body (1 MiB; larger is a 413).
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest accepted snapshot to restore (`PUT /v1/snapshot`).
pub const MAX_SNAPSHOT: usize = 64 * 1024 * 1024;
pub(crate) const SNAPSHOT_PATH: &str = "/v1/snapshot";

/// Every (method, path) the API serves. `api-docs/openapi.json` must list
/// exactly these, and every one must be routed; a test checks both.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/connect/ca/roots"),
    ("GET", "/v1/agent/connect/ca/roots"),
    ("GET", "/v1/connect/ca/configuration"),
    ("PUT", "/v1/connect/ca/configuration"),
    ("POST", "/v1/connect/ca/sign"),
    ("PUT", "/v1/connect/ca/sign"),
    ("POST", "/v1/connect/ca/sign-intermediate"),
    ("GET", "/v1/agent/connect/ca/leaf/{service}"),
    ("GET", "/v1/status/leader"),
    ("GET", "/v1/health"),
    ("GET", "/v1/agent/metrics"),
    ("GET", "/v1/snapshot"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/app.js"),
    ("GET", "/ui/app.css"),
    ("PUT", "/v1/snapshot"),
    ("PUT", "/v1/acl/bootstrap"),
    ("PUT", "/v1/acl/token"),
    ("GET", "/v1/acl/token/self"),
    ("GET", "/v1/acl/token/{accessor_id}"),
    ("DELETE", "/v1/acl/token/{accessor_id}"),
    ("GET", "/v1/acl/tokens"),
    ("PUT", "/v1/acl/policy"),
    ("GET", "/v1/acl/policy/{id}"),
    ("PUT", "/v1/acl/policy/{id}"),
    ("DELETE", "/v1/acl/policy/{id}"),
    ("GET", "/v1/acl/policy/name/{name}"),
    ("GET", "/v1/acl/policies"),
];

/// The API router.
pub fn router(state: AppState) -> Router {
    use tower::Layer as _;
    // The layers every request goes through wrap the routes once, as one
    // service. `Router::layer` would wrap each route instead: one more
    // boxed service clone and boxed future per request and layer (a roots
    // request took 37 k instructions that way, 35 k this way).
    let every_request = panic_guard().layer(
        axum::middleware::from_fn(edge)
            .layer(DefaultBodyLimit::max(MAX_BODY).layer(api_routes(state))),
    );
    Router::new().fallback_service(every_request)
}

/// The routes, each counted and a write forwarded to the leader.
fn api_routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/connect/ca/roots", get(routes::roots))
        .route("/v1/agent/connect/ca/roots", get(routes::roots))
        .route(
            "/v1/connect/ca/configuration",
            get(routes::get_configuration).put(routes::put_configuration),
        )
        .route("/v1/connect/ca/sign", post(routes::sign).put(routes::sign))
        .route(
            "/v1/connect/ca/sign-intermediate",
            post(routes::sign_intermediate),
        )
        .route("/v1/agent/connect/ca/leaf/{service}", get(routes::leaf))
        .route("/v1/status/leader", get(routes::leader))
        .route("/v1/health", get(routes::health))
        .route("/v1/agent/metrics", get(routes::metrics))
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route(
            SNAPSHOT_PATH,
            get(routes::snapshot_save)
                .put(routes::snapshot_restore)
                .layer(DefaultBodyLimit::max(MAX_SNAPSHOT)),
        )
        .route("/v1/acl/bootstrap", put(acl_routes::bootstrap))
        .route("/v1/acl/token", put(acl_routes::create_token))
        .route("/v1/acl/token/self", get(acl_routes::token_self))
        .route(
            "/v1/acl/token/{accessor_id}",
            get(acl_routes::read_token).delete(acl_routes::delete_token),
        )
        .route("/v1/acl/tokens", get(acl_routes::list_tokens))
        .route("/v1/acl/policy", put(acl_routes::create_policy))
        .route(
            "/v1/acl/policy/{id}",
            get(acl_routes::read_policy)
                .put(acl_routes::update_policy)
                .delete(acl_routes::delete_policy),
        )
        .route(
            "/v1/acl/policy/name/{name}",
            get(acl_routes::read_policy_by_name),
        )
        .route("/v1/acl/policies", get(acl_routes::list_policies))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            matched_route,
        ))
        .fallback(routes::not_found)
        .with_state(state)
}

/// What every request of a matched route goes through: a write that needs
/// the leader goes to it ([`leader::leader_writes`]), and the request is
/// counted by its route pattern, method and status (unmatched ones are
/// counted by the fallback). One layer, not two: each layer costs a boxed
/// future and a clone of the service per request.
async fn matched_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    path: axum::extract::MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let resp = leader::leader_writes(&state, req, next).await;
    state.metrics.http_request(metrics::HttpLabels {
        route: path.as_str().to_string(),
        method,
        status: resp.status().as_u16(),
    });
    resp
}

/// What every request goes through before routing, as one layer (see
/// [`matched_route`] for why one): its ID, a body refused by its declared
/// size or media type, and our error body on a wrong method.
///
/// The ID goes in the request's extensions (the audit lines carry it), in
/// a span around its handling (so every log line of the request names it),
/// and in the `X-Request-Id` response header, so an operator can match an
/// answer to its log and audit lines. A client's own `X-Request-Id` is not
/// trusted. A failure on the server's side (5xx) is logged here, with the
/// method and the path but not the query, which may hold a token.
///
/// The span costs every request: it has only the ID (two more fields were
/// about 8% of a roots request's instructions), and the reads in
/// [`UNLOGGED_READS`] go without it (it was another 10%).
async fn edge(mut req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = uuid::Uuid::new_v4().to_string();
    req.extensions_mut().insert(auth::RequestId(id.clone()));
    let span = || tracing::info_span!("request", request_id = %id);
    let unlogged = is_unlogged_read(&req);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let handled = async {
        if let Some(refused) = refuse_declared_oversize(&req).or_else(|| refuse_non_json_body(&req))
        {
            return refused;
        }
        explain_method_not_allowed(&method, next.run(req).await)
    };
    let mut resp = if unlogged {
        handled.await
    } else {
        handled.instrument(span()).await
    };
    if let Some(failure) = resp.extensions_mut().remove::<error::Failure>() {
        span().in_scope(|| {
            tracing::error!(method = %method, path = %uri.path(),
                code = failure.code, error = %failure.error, "request failed");
        });
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Reads that log nothing while they are answered and that every proxy
/// polls: they go without the request's span. A failure of one is still
/// logged with its ID, by [`edge`].
const UNLOGGED_READS: [&str; 2] = ["/v1/connect/ca/roots", "/v1/agent/connect/ca/roots"];

fn is_unlogged_read(req: &Request) -> bool {
    req.method() == axum::http::Method::GET && UNLOGGED_READS.contains(&req.uri().path())
}

const REQUEST_ID_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-request-id");

/// A panic in a handler answers 500 with our error body instead of closing
/// the connection without an answer. The panic is a bug and is logged; the
/// payload is not sent to the client.
fn panic_guard(
) -> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    fn answer(panic: Box<dyn std::any::Any + Send>) -> Response {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "a request handler panicked");
        ApiError::Internal("the request could not be handled".into()).into_response()
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer)
}

/// A body declared larger than the limit is refused before any of it is
/// read: a client announcing 64 MiB and sending one byte gets its 413 now,
/// not after a timeout.
fn refuse_declared_oversize(req: &Request) -> Option<Response> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = match req.uri().path() {
        SNAPSHOT_PATH => MAX_SNAPSHOT,
        _ => MAX_BODY,
    };
    declared
        .is_some_and(|n| n > limit as u64)
        .then(|| ApiError::PayloadTooLarge.into_response())
}

/// A body the client labels as something other than JSON is refused (415)
/// rather than parsed anyway. No label is fine, and so is curl's default for
/// `--data`, `application/x-www-form-urlencoded`, which Consul's own
/// documentation uses to send JSON.
fn refuse_non_json_body(req: &Request) -> Option<Response> {
    use axum::http::Method;
    let has_body = matches!(*req.method(), Method::PUT | Method::POST);
    let value = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .filter(|_| has_body)?;
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json_like = essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/x-www-form-urlencoded"
        || essence == "text/plain";
    (!json_like)
        .then(|| ApiError::UnsupportedMediaType(text.chars().take(64).collect()).into_response())
}

/// axum answers a wrong method with a bare 405 and `Allow`; give it our
/// error body and code too, keeping `Allow`.
fn explain_method_not_allowed(method: &axum::http::Method, resp: Response) -> Response {
    if resp.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED
        || resp.headers().contains_key(ERROR_HEADER)
    {
        return resp;
    }
    let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
    let mut out = ApiError::MethodNotAllowed(method.to_string()).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    out
}

/// Serves the API for `ca` on 127.0.0.1 at a free port in the background,
/// for tests and benchmarks. Returns the base URL and a sender that stops
/// the server.
pub async fn spawn_on_loopback(
    ca: std::sync::Arc<CaEngine>,
) -> std::io::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router(AppState::new(ca)), async {
        let _ = stopped.await;
    }));
    Ok((base, stop))
}

/// Serves `router` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve(listener, router, listener::Limits::default(), shutdown).await
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then
/// drains (the same limits as [`serve`], plus the handshake timeout).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: std::sync::Arc<tls::TlsServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener::serve_tls(listener, router, listener::Limits::default(), tls, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_our_error() {
        async fn boom() -> &'static str {
            panic!("a bug")
        }
        let app: Router = Router::new().route("/boom", get(boom)).layer(panic_guard());
        let req = Request::builder()
            .uri("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[ERROR_HEADER], "internal");
    }

    /// Log lines written while `app` answers `req`, in the default format.
    async fn logs_of(app: Router, req: Request) -> (Response, String) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let resp = app.oneshot(req).await.unwrap();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (resp, text)
    }

    #[tokio::test]
    async fn a_server_side_failure_is_logged_once_with_its_request() {
        async fn broken() -> Result<(), ApiError> {
            Err(ApiError::Internal("the disk is on fire".into()))
        }
        async fn refused() -> Result<(), ApiError> {
            Err(ApiError::BadRequest("no".into()))
        }
        // The roots path is one of the reads answered without a span.
        let app = || {
            Router::new()
                .route("/broken", get(broken))
                .route("/v1/connect/ca/roots", get(broken))
                .route("/refused", get(refused))
                .layer(axum::middleware::from_fn(edge))
        };
        let get = |uri: &str| Request::builder().uri(uri).body(axum::body::Body::empty());
        for path in ["/broken", "/v1/connect/ca/roots"] {
            let (resp, logs) = logs_of(app(), get(&format!("{path}?token=secret")).unwrap()).await;
            assert_eq!(resp.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            let id = resp.headers()["x-request-id"].to_str().unwrap();
            let failed: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("request failed"))
                .collect();
            assert_eq!(failed.len(), 1, "{logs}");
            for part in [
                format!("request_id={id}"),
                "method=GET".into(),
                format!("path={path} "),
                "code=\"internal\"".into(),
                "the disk is on fire".into(),
            ] {
                assert!(failed[0].contains(&part), "{part} is not in {}", failed[0]);
            }
            assert!(!logs.contains("secret"), "the query is in the log: {logs}");
        }
        let (resp, logs) = logs_of(app(), get("/refused").unwrap()).await;
        assert_eq!(resp.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(!logs.contains("request failed"), "{logs}");
    }

    /// What a handler logs is in its request's span, except in the reads
    /// that log nothing.
    #[tokio::test]
    async fn a_handlers_log_lines_name_its_request() {
        async fn talkative() -> &'static str {
            tracing::info!("handling it");
            "ok"
        }
        let app = Router::new()
            .route("/v1/connect/ca/configuration", get(talkative))
            .layer(axum::middleware::from_fn(edge));
        let req = Request::builder()
            .uri("/v1/connect/ca/configuration")
            .body(axum::body::Body::empty())
            .unwrap();
        let (resp, logs) = logs_of(app, req).await;
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        let line = logs
            .lines()
            .find(|l| l.contains("handling it"))
            .expect(&logs);
        assert!(
            line.contains(&format!("request{{request_id={id}}}")),
            "{line}"
        );
    }
}
