//! Writes that need the leader, when several servers share one store:
//! a follower forwards them to the leader and returns its answer, or
//! answers 503 `No cluster leader` while none is elected. Signing and
//! reads are served by every server.

use crate::error::ApiError;
use crate::routes::AppState;
use crate::SNAPSHOT_PATH;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use std::time::Duration;

/// Marks a request a follower forwarded: a server that is not the leader
/// either answers it 503, never forwards it again.
pub const FORWARDED_HEADER: &str = "x-meshca-forwarded";

/// A forwarded write may be a rotation with a large RSA key.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Request headers the leader needs; nothing else is passed on.
const REQUEST_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static("x-consul-token"),
];

/// Answer headers the client needs from the leader.
const RESPONSE_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    HeaderName::from_static("x-consul-index"),
    HeaderName::from_static("x-meshca-error"),
];

/// Whether `method path` changes state that one writer keeps: the CA
/// configuration, a snapshot restore, the ACLs.
pub fn needs_leader(method: &Method, path: &str) -> bool {
    let reads = method == Method::GET || method == Method::HEAD;
    !reads
        && (path == "/v1/connect/ca/configuration"
            || path == SNAPSHOT_PATH
            || path.starts_with("/v1/acl/"))
}

/// Passes a write that needs the leader on to it when this server is not
/// the leader; anything else goes to `next`.
pub async fn leader_writes(app: &AppState, req: Request, next: Next) -> Response {
    if !needs_leader(req.method(), req.uri().path()) || app.ca.leads() {
        return next.run(req).await;
    }
    let leader = app.ca.leadership().and_then(|l| l.borrow().leader.clone());
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    match leader {
        Some(leader) if !forwarded => forward(&leader, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        _ => ApiError::NoLeader(String::new()).into_response(),
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Sends `req` to the leader at `leader` (its API URL) and returns its
/// answer as it came.
async fn forward(leader: &str, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = axum::body::to_bytes(body, crate::MAX_SNAPSHOT)
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
    let mut headers = HeaderMap::new();
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(FORWARDED_HEADER, header::HeaderValue::from_static("1"));
    let unreachable = |e: reqwest::Error| {
        ApiError::NoLeader(format!(": the leader {leader} did not answer: {e}"))
    };
    let answer = client()
        .request(
            parts.method,
            format!("{}{path}", leader.trim_end_matches('/')),
        )
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(unreachable)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for name in RESPONSE_HEADERS {
        if let Some(v) = answer.headers().get(&name) {
            out.insert(name, v.clone());
        }
    }
    let body: Bytes = answer.bytes().await.map_err(unreachable)?;
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = out;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_of_the_single_writer_state_need_the_leader() {
        for (method, path) in [
            (Method::PUT, "/v1/connect/ca/configuration"),
            (Method::PUT, SNAPSHOT_PATH),
            (Method::PUT, "/v1/acl/token"),
            (Method::DELETE, "/v1/acl/policy/x"),
            (Method::PUT, "/v1/acl/bootstrap"),
        ] {
            assert!(needs_leader(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/v1/connect/ca/configuration"),
            (Method::GET, SNAPSHOT_PATH),
            (Method::POST, "/v1/connect/ca/sign"),
            (Method::PUT, "/v1/connect/ca/sign"),
            (Method::POST, "/v1/connect/ca/sign-intermediate"),
            (Method::GET, "/v1/agent/connect/ca/leaf/web"),
            (Method::GET, "/v1/acl/tokens"),
        ] {
            assert!(!needs_leader(&method, path), "{method} {path}");
        }
    }
}
