//! The one place where errors become HTTP responses: status, stable
//! `X-Meshca-Error` code and Consul's public message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshca_acl::AclError;
use meshca_ca::CaError;
use meshca_core::config::ConfigError;
use meshca_core::csr::CsrError;

/// Header carrying a stable, machine-readable error code.
pub const ERROR_HEADER: &str = "x-meshca-error";

/// Why a request failed on the server's side (a 5xx answer), for the one
/// log line the request's edge writes with its method and path: those are
/// not in the request's span, which every request pays for.
#[derive(Clone, Debug)]
pub struct Failure {
    pub code: &'static str,
    pub error: String,
}

/// Every error an API handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Request decode failed: {0}")]
    Decode(String),
    #[error("Invalid index")]
    InvalidIndex,
    #[error("Invalid wait time")]
    InvalidWait,
    #[error("The 'pem' query parameter must be a boolean value")]
    InvalidPemParam,
    #[error("{0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("{0}")]
    InvalidCsr(#[from] CsrError),
    #[error("{0}")]
    BadRequest(String),
    /// A request only the primary datacenter serves, sent to a secondary:
    /// retrying here never helps, so a 400.
    #[error("not the primary datacenter")]
    NotPrimary,
    #[error("Provider State is read-only. It must be omitted or identical to the current value")]
    ProviderStateReadOnly,
    #[error("The current CA Provider does not support cross-signing. You can try again with ForceWithoutCrossSigningSet but this may cause disruption - see documentation for more.")]
    CrossSigningUnsupported,
    /// Consul's wording: `Permission denied: token with AccessorID '…'
    /// lacks permission 'service:write' on "web"`.
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    /// An ACL endpoint while ACLs are off (Consul's 401).
    #[error("ACL support disabled")]
    AclDisabled,
    /// A token secret that matches no token.
    #[error("ACL not found")]
    AclNotFound,
    /// A token or policy asked for by ID or name that does not exist.
    #[error("ACL not found: {0}")]
    AclObjectNotFound(String),
    #[error("Not found: {0}")]
    NotFound(String),
    #[error("Method {0} not allowed")]
    MethodNotAllowed(String),
    #[error("Request body too large (limit is 1 MiB)")]
    PayloadTooLarge,
    #[error("Unsupported Content-Type {0:?}: send JSON (application/json)")]
    UnsupportedMediaType(String),
    #[error("CA is already in state \"{0}\"")]
    CaBusy(&'static str),
    #[error("Rate limit reached, try again later")]
    RateLimited { retry_after_secs: u64 },
    /// A write that needs the leader while none is elected (Consul's
    /// wording), or that the leader could not be reached for.
    #[error("No cluster leader{0}")]
    NoLeader(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("Internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Status and stable code. The match is exhaustive on purpose: a new
    /// variant cannot silently become a 500.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            Decode(_) => (StatusCode::BAD_REQUEST, "decode_failed"),
            InvalidIndex => (StatusCode::BAD_REQUEST, "invalid_index"),
            InvalidWait => (StatusCode::BAD_REQUEST, "invalid_wait"),
            InvalidPemParam => (StatusCode::BAD_REQUEST, "invalid_pem_param"),
            InvalidConfig(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            InvalidCsr(_) => (StatusCode::BAD_REQUEST, "invalid_csr"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            NotPrimary => (StatusCode::BAD_REQUEST, "not_primary"),
            ProviderStateReadOnly => (StatusCode::BAD_REQUEST, "provider_state_read_only"),
            CrossSigningUnsupported => (StatusCode::BAD_REQUEST, "cross_signing_unsupported"),
            PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            AclNotFound => (StatusCode::FORBIDDEN, "acl_not_found"),
            AclDisabled => (StatusCode::UNAUTHORIZED, "acl_disabled"),
            AclObjectNotFound(_) => (StatusCode::NOT_FOUND, "acl_object_not_found"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            CaBusy(_) => (StatusCode::CONFLICT, "ca_busy"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            NoLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The engine's errors as Consul's statuses and messages. Exhaustive on
/// purpose: a new engine error must be placed here.
impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::InvalidConfig(e) => Self::InvalidConfig(e),
            CaError::InvalidCsr(e) => Self::InvalidCsr(e),
            CaError::Rejected(m) => Self::BadRequest(m),
            CaError::ProviderStateReadOnly => Self::ProviderStateReadOnly,
            CaError::NotPrimary => Self::NotPrimary,
            CaError::CrossSigningUnsupported => Self::CrossSigningUnsupported,
            CaError::Denied(m) => Self::PermissionDenied(m),
            CaError::Busy(state) => Self::CaBusy(state),
            CaError::Store(e) => Self::Unavailable(e.to_string()),
            CaError::Unavailable(m) => Self::Unavailable(m),
            CaError::Internal(m) => Self::Internal(m),
        }
    }
}

/// The ACL system's errors. Exhaustive on purpose, like the engine's.
impl From<AclError> for ApiError {
    fn from(e: AclError) -> Self {
        match e {
            AclError::TokenNotFound => Self::AclNotFound,
            AclError::NotFound(what) => Self::AclObjectNotFound(what),
            e @ AclError::BootstrapDone(_) => Self::PermissionDenied(e.to_string()),
            AclError::Invalid(m) => Self::BadRequest(m),
            e @ AclError::Corrupt(_) => Self::Internal(e.to_string()),
            AclError::Store(e) => Self::Unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let text = self.to_string();
        let failure = status.is_server_error().then(|| Failure {
            code,
            error: text.clone(),
        });
        let mut resp = (status, text).into_response();
        if let Some(failure) = failure {
            resp.extensions_mut().insert(failure);
        }
        let headers = resp.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let ApiError::RateLimited { retry_after_secs } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_strings_are_kept() {
        assert_eq!(ApiError::InvalidIndex.to_string(), "Invalid index");
        assert_eq!(
            ApiError::CaBusy("RECONFIGURING").to_string(),
            "CA is already in state \"RECONFIGURING\""
        );
        assert_eq!(
            ApiError::RateLimited {
                retry_after_secs: 1
            }
            .to_string(),
            "Rate limit reached, try again later"
        );
    }

    #[test]
    fn a_failed_store_write_is_a_503_with_its_message() {
        let store_error = meshca_store::StoreError::WriteFailed("no space left on device".into());
        let err = ApiError::from(CaError::from(store_error));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(
            err.to_string(),
            "store write failed: no space left on device"
        );
    }

    #[test]
    fn rate_limited_responses_carry_retry_after_and_code() {
        let r = ApiError::RateLimited {
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[ERROR_HEADER], "rate_limited");
    }
}
