//! HTTP handlers of the Connect CA API. Each handler parses its input into
//! domain types, calls the CA engine, and renders Consul's wire format.

use crate::auth::{Caller, Remote};
use crate::blocking::{non_empty, wait_for_index, BlockingQuery};
use crate::error::ApiError;
use crate::leafcache::LeafCache;
use crate::metrics::Metrics;
use crate::ratelimit::CsrLimiter;
use crate::wire::{
    CaConfiguration, CaConfigurationUpdate, IndexedCaRoots, IssuedCert, SignRequest,
    SignedIntermediate,
};
use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshca_acl::Acl;
use meshca_ca::{CaEngine, Published};
use meshca_core::acl::{permission_to_sign, Access, Permission};
use meshca_core::ServiceName;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// Shared state of every handler. One `Arc`: each request clones the
/// state several times (middleware, extractors), one reference count each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
#[derive(Clone)]
pub struct Shared {
    pub ca: Arc<CaEngine>,
    /// The ACL system; `None` when ACLs are off (everything is allowed).
    pub acl: Option<Arc<Acl>>,
    pub limiter: Arc<CsrLimiter>,
    pub leaves: Arc<LeafCache>,
    roots_json: Arc<ArcSwapOption<RenderedRoots>>,
    /// Turns true when the server begins to shut down: parked blocking
    /// queries answer at once.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    pub metrics: Arc<Metrics>,
}

/// The roots answer serialised once per published CA, not per request.
struct RenderedRoots {
    of: Arc<Published>,
    json: Bytes,
}

impl AppState {
    pub fn new(ca: Arc<CaEngine>) -> Self {
        let cfg = &ca.published().config;
        let limiter = CsrLimiter::new(cfg.csr_max_per_second(), cfg.csr_max_concurrent());
        let metrics = Arc::new(Metrics::new());
        // The first state made for an engine sees its issuance.
        ca.observe_issuance(metrics.clone());
        Self(Arc::new(Shared {
            ca,
            acl: None,
            limiter: Arc::new(limiter),
            leaves: Arc::new(LeafCache::default()),
            roots_json: Arc::new(ArcSwapOption::empty()),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            metrics,
        }))
    }

    /// Begins the shutdown: every parked blocking query answers now, with
    /// the current state, and later ones do not park.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// A receiver that turns true when the shutdown begins.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The same state with ACLs enforced by `acl`.
    pub fn with_acl(self, acl: Arc<Acl>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.acl = Some(acl);
        Self(Arc::new(shared))
    }

    /// `IndexedCARoots` of `p` as JSON, rendered the first time it is asked
    /// for. Two requests racing on a new CA may both render; both answers
    /// are the same.
    fn roots_json(&self, p: &Arc<Published>) -> Result<Bytes, ApiError> {
        if let Some(r) = self.roots_json.load().as_ref() {
            if Arc::ptr_eq(&r.of, p) {
                return Ok(r.json.clone());
            }
        }
        let json = serde_json::to_vec(&IndexedCaRoots::from(&**p))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let json = Bytes::from(json);
        self.roots_json.store(Some(Arc::new(RenderedRoots {
            of: p.clone(),
            json: json.clone(),
        })));
        Ok(json)
    }
}

pub const INDEX_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-consul-index");

fn with_index(mut resp: Response, index: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert(INDEX_HEADER, v);
    }
    resp
}

fn json_body(bytes: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(bytes.into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_body(body))
}

fn parse_query(raw: Option<String>) -> Result<HashMap<String, String>, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::Decode(format!("query string: {e}")))
}

/// The request body, or the error a body that did not arrive deserves.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::Decode(e.body_text()),
    })
}

/// Decodes a JSON body, mapping an over-long body to 413 and anything else
/// to Consul's `Request decode failed: …`.
pub(crate) fn decode_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    // Go's decoder only fills a struct from a JSON object; serde would also
    // accept an array by position, so reject anything but an object first.
    // A key given twice is refused rather than silently resolved.
    let value =
        crate::strict_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::Decode("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Decode(e.to_string()))
}

/// Go's `strconv.ParseBool`, which Consul uses for `?pem=`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `GET /v1/connect/ca/roots` and `GET /v1/agent/connect/ca/roots`.
pub async fn roots(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_query(raw)?;
    let pem = match non_empty(&query, "pem") {
        None => false,
        Some(v) => parse_go_bool(v).ok_or(ApiError::InvalidPemParam)?,
    };
    let bq = BlockingQuery::parse(&query)?;
    if let Some(index) = bq.index {
        let _open = app.metrics.blocking_query();
        let deadline = tokio::time::Instant::now() + bq.wait_with_jitter();
        wait_for_index(
            &mut app.ca.subscribe(),
            index,
            deadline,
            &mut app.stopping(),
        )
        .await;
    }
    let p = app.ca.published();
    let resp = if pem {
        let mut r = Response::new(axum::body::Body::from(p.roots_pem.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pem-certificate-chain"),
        );
        r
    } else {
        json_body(app.roots_json(&p)?)
    };
    Ok(with_index(resp, p.index))
}

/// `GET /v1/connect/ca/configuration`.
pub async fn get_configuration(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Read))?;
    let cfg = CaConfiguration::from(&*app.ca.published());
    let index = cfg.modify_index;
    Ok(with_index(to_json(&cfg)?, index))
}

/// `PUT /v1/connect/ca/configuration`.
pub async fn put_configuration(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Write))?;
    let upd: CaConfigurationUpdate = decode_body(body)?;
    let before = app.ca.published();
    app.ca.change_config(upd.into()).await?;
    let p = app.ca.published();
    if !Arc::ptr_eq(&before, &p) {
        let requester = caller.requester(remote);
        tracing::info!(target: "audit", requester = %requester.identity,
            remote = requester.remote.as_deref().unwrap_or("-"),
            request_id = requester.request_id.as_deref().unwrap_or("-"), provider = ?p.config.provider(),
            active_root = %p.active_root_id, rotated = before.active_root_id != p.active_root_id,
            index = p.index, "CA configuration changed");
    }
    app.limiter
        .configure(p.config.csr_max_per_second(), p.config.csr_max_concurrent());
    Ok(with_index(StatusCode::OK.into_response(), p.index))
}

/// `POST|PUT /v1/connect/ca/sign`: sign a proxy's CSR; its key stays with it.
/// Which permission it takes depends on the SPIFFE ID in the CSR, so it is
/// checked after the CSR is validated and before it is signed; a caller
/// with no permission at all is turned away before any of that work.
pub async fn sign(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.refuse_if_anonymous("sign certificates")?;
    let req: SignRequest = decode_body(body)?;
    let gate = app
        .limiter
        .for_client(caller.fair_share_name(remote.peer.as_ref()));
    let admitted = gate.admit().await?;
    let requester = caller.requester(remote);
    let authorize = move |id: &meshca_core::SpiffeId| caller.check(&permission_to_sign(id));
    let leaf = app
        .ca
        .sign_csr(req.csr, requester, authorize, admitted)
        .await?;
    Ok(with_index(to_json(&IssuedCert::from(&leaf))?, leaf.index))
}

/// `POST /v1/connect/ca/sign-intermediate`: the primary signs a secondary
/// datacenter's intermediate CA (operator:write).
pub async fn sign_intermediate(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Write))?;
    let req: SignRequest = decode_body(body)?;
    let cert_pem = app
        .ca
        .sign_intermediate(req.csr, caller.requester(remote))
        .await?;
    to_json(&SignedIntermediate { cert_pem })
}

/// `GET /v1/snapshot` (operator:write): the whole store as a checksummed
/// backup file (sealed records stay sealed).
pub async fn snapshot_save(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Write))?;
    let snapshot = app.ca.snapshot().await?;
    let body = meshca_ca::snapshot_file::encode(&snapshot)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(with_index(json_body(body), snapshot.index))
}

/// `PUT /v1/snapshot` (operator:write): replaces the whole store with a
/// backup file and publishes its CA, or refuses and changes nothing.
pub async fn snapshot_restore(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Write))?;
    let bytes = body_bytes(body)?;
    let snapshot = meshca_ca::snapshot_file::decode(&bytes)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let index = app.ca.restore_snapshot(snapshot).await?;
    if let Some(acl) = &app.acl {
        acl.reload()?;
    }
    let requester = caller.requester(remote);
    tracing::info!(target: "audit", requester = %requester.identity,
        remote = requester.remote.as_deref().unwrap_or("-"),
        request_id = requester.request_id.as_deref().unwrap_or("-"), index,
        active_root = %app.ca.published().active_root_id, "snapshot restored");
    Ok(with_index(StatusCode::OK.into_response(), index))
}

/// `GET /v1/agent/connect/ca/leaf/<service>`.
pub async fn leaf(
    State(app): State<AppState>,
    caller: Caller,
    remote: Remote,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let service: ServiceName = service
        .parse()
        .map_err(|e: meshca_core::spiffe::SpiffeError| ApiError::BadRequest(e.to_string()))?;
    caller.require(&Permission::service(Access::Write, service.as_str()))?;
    let gate = app
        .limiter
        .for_client(caller.fair_share_name(remote.peer.as_ref()));
    let requester = caller.requester(remote);
    let bq = BlockingQuery::parse(&parse_query(raw)?)?;
    let leaf = match bq.index {
        None => {
            app.leaves
                .current(&app.ca, &gate, &service, &requester)
                .await?
        }
        Some(index) => {
            let _open = app.metrics.blocking_query();
            app.leaves
                .wait_for_newer(
                    &app.ca,
                    &gate,
                    &service,
                    &requester,
                    crate::leafcache::Parked {
                        index,
                        wait: bq.wait_with_jitter(),
                        stop: app.stopping(),
                    },
                )
                .await?
        }
    };
    let index = leaf.issued.index;
    Ok(with_index(to_json(&IssuedCert::from(&leaf.issued))?, index))
}

/// `GET /v1/agent/metrics?format=prometheus` (operator:read): the metrics
/// in Prometheus's text format.
pub async fn metrics(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(&Permission::operator(Access::Read))?;
    let query = parse_query(raw)?;
    match query.get("format").map(String::as_str) {
        Some("prometheus") => {}
        other => {
            return Err(ApiError::BadRequest(format!(
                "metrics are served in the Prometheus format only: ask for \
                 ?format=prometheus (got format={})",
                other.unwrap_or("<none>")
            )))
        }
    }
    let text = app
        .metrics
        .render(&app.ca)
        .map_err(|e| ApiError::Internal(format!("encoding the metrics: {e}")))?;
    let mut resp = Response::new(axum::body::Body::from(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(resp)
}

/// `GET /v1/status/leader`: the leader's address (`host:port` of its
/// API) as Consul answers it, or `""` while none is elected.
pub async fn leader(State(app): State<AppState>) -> Result<Response, ApiError> {
    let p = app.ca.published();
    let leader = app
        .ca
        .leadership()
        .and_then(|l| l.borrow().leader.clone())
        .unwrap_or_default();
    let address = leader
        .split_once("://")
        .map_or(leader.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    Ok(with_index(to_json(&address)?, p.index))
}

/// `GET /v1/health`: 200 while the CA serves and its store can write; 503
/// naming the problem when the last store write failed (signing goes on,
/// but no change to the CA can be saved). In a secondary datacenter,
/// `Primary` tells how following the primary goes; while it fails the
/// status is `degraded` but the answer stays 200, since leaves are still
/// signed (until `SigningCertNotAfter`).
pub async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    let p = app.ca.published();
    let mut body = serde_json::json!({"Status": "ok", "ActiveRootID": p.active_root_id});
    let mut status = StatusCode::OK;
    if let Some(link) = app.ca.primary_link() {
        if link.error.is_some() {
            body["Status"] = "degraded".into();
        }
        let link = crate::wire::PrimaryHealth::new(link, p.signer.not_after());
        body["Primary"] =
            serde_json::to_value(link).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    if let Err(problem) = app.ca.health() {
        status = StatusCode::SERVICE_UNAVAILABLE;
        body["Status"] = "degraded".into();
        body["Store"] = problem.into();
    }
    let mut resp = to_json(&body)?;
    *resp.status_mut() = status;
    Ok(with_index(resp, p.index))
}

pub async fn not_found(
    State(app): State<AppState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    app.metrics.http_request(crate::metrics::HttpLabels {
        route: "unmatched".into(),
        method: method.to_string(),
        status: 404,
    });
    ApiError::NotFound(uri.path().to_string())
}
