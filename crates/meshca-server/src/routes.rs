//! HTTP handlers of the Connect CA API. Each handler parses its input into
//! domain types, calls the CA manager, and renders Consul's wire format.

use crate::blocking::{wait_for_index, BlockingQuery};
use crate::error::ApiError;
use crate::leafcache::LeafCache;
use crate::manager::{blocking, CaManager};
use crate::ratelimit::CsrLimiter;
use crate::wire::{CaConfigurationUpdate, SignRequest};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub ca: Arc<CaManager>,
    pub limiter: Arc<CsrLimiter>,
    pub leaves: Arc<LeafCache>,
}

impl AppState {
    pub fn new(ca: Arc<CaManager>) -> Self {
        let cfg = &ca.published().config;
        let limiter = CsrLimiter::new(cfg.csr_max_per_second, cfg.csr_max_concurrent);
        Self {
            ca,
            limiter: Arc::new(limiter),
            leaves: Arc::new(LeafCache::default()),
        }
    }
}

pub const INDEX_HEADER: &str = "x-consul-index";

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

fn to_json<T: serde::Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_body(body))
}

fn parse_query(raw: Option<String>) -> Result<HashMap<String, String>, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::Decode(format!("query string: {e}")))
}

/// Decodes a JSON body, mapping an over-long body to 413 and anything else
/// to Consul's `Request decode failed: …`.
fn decode_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::Decode(e.body_text())
        }
    })?;
    // Go's decoder only fills a struct from a JSON object; serde would also
    // accept an array by position, so reject anything but an object first.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))?;
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
    let pem = match query.get("pem") {
        None => false,
        Some(v) => parse_go_bool(v).ok_or(ApiError::InvalidPemParam)?,
    };
    let bq = BlockingQuery::parse(&query)?;
    if let Some(index) = bq.index {
        let deadline = tokio::time::Instant::now() + bq.wait_with_jitter();
        wait_for_index(&mut app.ca.subscribe(), index, deadline).await;
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
        json_body(p.roots_json.clone())
    };
    Ok(with_index(resp, p.index))
}

/// `GET /v1/connect/ca/configuration`.
pub async fn get_configuration(State(app): State<AppState>) -> Result<Response, ApiError> {
    let cfg = app.ca.configuration();
    let index = cfg.modify_index;
    Ok(with_index(to_json(&cfg)?, index))
}

/// `PUT /v1/connect/ca/configuration`.
pub async fn put_configuration(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let upd: CaConfigurationUpdate = decode_body(body)?;
    app.ca.update_configuration(upd).await?;
    let p = app.ca.published();
    app.limiter
        .configure(p.config.csr_max_per_second, p.config.csr_max_concurrent);
    Ok(with_index(StatusCode::OK.into_response(), p.index))
}

/// `POST|PUT /v1/connect/ca/sign`: sign a proxy's CSR; its key stays with it.
pub async fn sign(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: SignRequest = decode_body(body)?;
    let _permit = app.limiter.acquire()?;
    let ca = app.ca.clone();
    let issued = blocking(move || ca.sign_csr(&req.csr)).await?;
    let index = issued.modify_index;
    Ok(with_index(to_json(&issued)?, index))
}

/// `GET /v1/agent/connect/ca/leaf/<service>`.
pub async fn leaf(
    State(app): State<AppState>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    meshca_core::spiffe::validate_segment("service name", &service)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bq = BlockingQuery::parse(&parse_query(raw)?)?;
    let leaf = match bq.index {
        None => app.leaves.current(&app.ca, &app.limiter, &service).await?,
        Some(index) => {
            app.leaves
                .wait_for_newer(
                    &app.ca,
                    &app.limiter,
                    &service,
                    index,
                    bq.wait_with_jitter(),
                )
                .await?
        }
    };
    let index = leaf.issued.modify_index;
    Ok(with_index(to_json(&leaf.issued)?, index))
}

/// `GET /v1/status/leader`: this server leads itself (single node).
pub async fn leader(State(app): State<AppState>) -> Result<Response, ApiError> {
    let p = app.ca.published();
    Ok(with_index(to_json(&"127.0.0.1:8300")?, p.index))
}

/// `GET /v1/health`: ready once the CA is loaded, which it is if we serve,
/// and while the store's writes succeed (a full disk is a 503 naming it).
pub async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.ca.store_health()?;
    let p = app.ca.published();
    let body = serde_json::json!({"Status": "ok", "ActiveRootID": p.active_root_id});
    Ok(with_index(to_json(&body)?, p.index))
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}
