//! A small client for Vault's HTTP API (reqwest + rustls): the token or an
//! AppRole login, the namespace header, TLS to Vault, bounded time-outs, and
//! Vault's answers turned into [`ProviderError`]s that name Vault and the
//! operation.

use meshca_core::config::VaultConfig;
use meshca_provider::ProviderError;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{json, Value};
use std::sync::RwLock;
use std::time::Duration;

/// Every call to Vault ends within this time (connecting included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How meshca authenticates to Vault.
#[derive(Debug)]
enum Auth {
    /// A token given in the configuration.
    Token,
    /// AppRole: log in at `auth/<mount>/login` and again when the token is
    /// refused.
    AppRole {
        mount: String,
        role_id: SecretString,
        secret_id: SecretString,
    },
}

/// A Vault server as the configuration describes it.
pub struct VaultClient {
    http: reqwest::Client,
    /// `scheme://host:port` without a trailing slash.
    base: String,
    namespace: Option<String>,
    auth: Auth,
    token: RwLock<Option<SecretString>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

fn config_error(field: &str, msg: impl std::fmt::Display) -> ProviderError {
    ProviderError::InvalidInput(format!("{field}: {msg}"))
}

impl VaultClient {
    /// A client for `cfg`. Reads the TLS files now, so that a bad path is a
    /// configuration error, not a failure at the first signature.
    pub fn new(cfg: &VaultConfig) -> Result<Self, ProviderError> {
        let url = reqwest::Url::parse(&cfg.address)
            .map_err(|e| config_error("Address", format!("{:?} is not a URL: {e}", cfg.address)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(config_error(
                "Address",
                format!("{:?} must be an http:// or https:// URL", cfg.address),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy();
        builder = add_tls(builder, cfg)?;
        let (base, builder) = with_server_name(&url, cfg.tls_server_name.as_deref(), builder)?;
        let http = builder
            .build()
            .map_err(|e| config_error("Address", format!("cannot build a client: {e}")))?;
        let auth = auth_of(cfg)?;
        let token = cfg
            .token
            .as_ref()
            .and_then(|t| t.expose_str())
            .map(|t| SecretString::from(t.to_string()));
        if matches!(auth, Auth::Token) && token.is_none() {
            return Err(config_error(
                "Token",
                "the vault provider needs Token or AuthMethod",
            ));
        }
        Ok(Self {
            http,
            base,
            namespace: cfg.namespace.clone().filter(|n| !n.is_empty()),
            auth,
            token: RwLock::new(token),
        })
    }

    /// `method /v1/<path>` with `body`; the `data` of Vault's answer (or
    /// `Value::Null` for an empty one). `op` names the operation in errors.
    pub async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ProviderError> {
        if self.current_token().is_none() {
            self.login(op).await?;
        }
        match self.send(op, method.clone(), path, body.as_ref()).await {
            // A refused token: an AppRole client logs in again, once.
            Err(Refused::Forbidden(_)) if matches!(self.auth, Auth::AppRole { .. }) => {
                self.login(op).await?;
                self.send(op, method, path, body.as_ref())
                    .await
                    .map_err(Refused::into_error)
            }
            other => other.map_err(Refused::into_error),
        }
    }

    fn current_token(&self) -> Option<SecretString> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn send(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Refused> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base));
        if let Some(token) = self.current_token() {
            req = req.header("X-Vault-Token", token.expose_secret());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Refused::Unreachable(format!("vault: {op}: {}", describe(&e))))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Refused::Unreachable(format!("vault: {op}: reading the answer: {e}")))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| Refused::Other(format!("vault: {op}: the answer is not JSON: {e}")))?;
            return Ok(value
                .get("data")
                .filter(|d| !d.is_null())
                .cloned()
                .unwrap_or(value));
        }
        Err(Refused::from_status(op, status, &text))
    }

    /// Logs in with the configured auth method (nothing to do for a token).
    async fn login(&self, op: &str) -> Result<(), ProviderError> {
        let Auth::AppRole {
            mount,
            role_id,
            secret_id,
        } = &self.auth
        else {
            return Err(ProviderError::Unavailable(format!(
                "vault: {op}: no token configured"
            )));
        };
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = None;
        let body =
            json!({"role_id": role_id.expose_secret(), "secret_id": secret_id.expose_secret()});
        let resp = self
            .send(
                "log in with AppRole",
                Method::POST,
                &format!("auth/{mount}/login"),
                Some(&body),
            )
            .await
            .map_err(Refused::into_error)?;
        // `send` returns `data`; a login answers in `auth`, so read it raw.
        let token = resp
            .get("client_token")
            .or_else(|| resp.pointer("/auth/client_token"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ProviderError::Unavailable("vault: log in with AppRole: no client_token".into())
            })?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) =
            Some(SecretString::from(token.to_string()));
        tracing::info!(mount = %mount, "logged in to vault with AppRole");
        Ok(())
    }
}

/// The shortest pause between two renewals, so that a token with a tiny
/// TTL cannot make the renewer spin.
const MIN_RENEW_PAUSE: Duration = Duration::from_secs(1);
/// How long the renewer waits after a failed attempt before trying again.
const RENEW_RETRY: Duration = Duration::from_secs(5);

impl VaultClient {
    /// Keeps the token alive: renews it at half its TTL and, with AppRole,
    /// logs in again when it can no longer be renewed. A token without a
    /// TTL (a root token) needs nothing. The task holds only a weak
    /// reference, so it ends when the client is dropped; the provider also
    /// aborts it on drop (a reconfiguration replaces the provider).
    pub fn spawn_renewer(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let weak = std::sync::Arc::downgrade(self);
        Some(handle.spawn(async move {
            loop {
                let Some(client) = weak.upgrade() else { return };
                let pause = client.renew_once().await;
                drop(client);
                match pause {
                    Some(p) => tokio::time::sleep(p).await,
                    None => return,
                }
            }
        }))
    }

    /// One renewal round; the pause before the next, or `None` when the
    /// token never expires.
    async fn renew_once(&self) -> Option<Duration> {
        let ttl = match self.token_ttl().await {
            Ok(Some(ttl)) => ttl,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the vault token; retrying");
                return Some(RENEW_RETRY);
            }
        };
        let half = (ttl / 2).max(MIN_RENEW_PAUSE);
        match self
            .call(
                "renew the token",
                Method::POST,
                "auth/token/renew-self",
                Some(json!({})),
            )
            .await
        {
            Ok(_) => Some(half),
            Err(e) if matches!(self.auth, Auth::AppRole { .. }) => {
                tracing::info!(error = %e, "the vault token cannot be renewed; logging in again");
                match self.login("renew the token").await {
                    Ok(()) => Some(MIN_RENEW_PAUSE),
                    Err(e) => {
                        tracing::warn!(error = %e, "vault login failed; retrying");
                        Some(RENEW_RETRY)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the vault token failed; retrying");
                Some(RENEW_RETRY.min(half))
            }
        }
    }

    /// The token's remaining TTL, `None` for a token that never expires or
    /// cannot be renewed (nothing the renewer can do for it).
    async fn token_ttl(&self) -> Result<Option<Duration>, ProviderError> {
        let me = self
            .call(
                "look up the token",
                Method::GET,
                "auth/token/lookup-self",
                None,
            )
            .await?;
        let ttl = me.get("ttl").and_then(Value::as_u64).unwrap_or(0);
        let renewable = me
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if ttl == 0 || (!renewable && matches!(self.auth, Auth::Token)) {
            return Ok(None);
        }
        Ok(Some(Duration::from_secs(ttl)))
    }
}

/// Why a call failed, before it becomes a [`ProviderError`]: a refused
/// token is retried after a new login.
enum Refused {
    Unreachable(String),
    Forbidden(String),
    BadRequest(String),
    Other(String),
}

impl Refused {
    fn from_status(op: &str, status: StatusCode, body: &str) -> Self {
        let errors = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("errors").cloned())
            .and_then(|e| e.as_array().cloned())
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| body.chars().take(200).collect());
        let msg = format!("vault: {op}: {} ({errors})", status.as_u16());
        match status {
            StatusCode::FORBIDDEN => Self::Forbidden(msg),
            StatusCode::BAD_REQUEST => Self::BadRequest(msg),
            StatusCode::SERVICE_UNAVAILABLE => {
                Self::Unreachable(format!("{msg}; vault is sealed or in standby"))
            }
            _ => Self::Other(msg),
        }
    }

    fn into_error(self) -> ProviderError {
        match self {
            Self::BadRequest(m) => ProviderError::InvalidInput(m),
            // Denied, down, sealed or failing: the CA cannot change or sign
            // through Vault now; the current CA stays and the caller retries.
            Self::Unreachable(m) | Self::Forbidden(m) | Self::Other(m) => {
                ProviderError::Unavailable(m)
            }
        }
    }
}

/// reqwest's error with its causes: "error sending request" alone does
/// not say that the connection was refused.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("timed out after {}s", REQUEST_TIMEOUT.as_secs())
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn auth_of(cfg: &VaultConfig) -> Result<Auth, ProviderError> {
    let Some(raw) = cfg.auth_method.as_ref() else {
        return Ok(Auth::Token);
    };
    let value: Value = serde_json::from_slice(raw.expose())
        .map_err(|e| config_error("AuthMethod", format!("is not a JSON object: {e}")))?;
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| value.get(*n))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let kind = field(&["Type", "type"]).unwrap_or_default();
    match kind.as_str() {
        "token" => Ok(Auth::Token),
        "approle" => {
            let params = ["Params", "params"]
                .iter()
                .find_map(|n| value.get(*n))
                .cloned()
                .unwrap_or(Value::Null);
            let param = |name: &str| {
                params
                    .get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(|s| SecretString::from(s.to_string()))
                    .ok_or_else(|| {
                        config_error("AuthMethod", format!("approle needs Params.{name}"))
                    })
            };
            Ok(Auth::AppRole {
                mount: field(&["MountPath", "mount_path"])
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "approle".into())
                    .trim_matches('/')
                    .to_string(),
                role_id: param("role_id")?,
                secret_id: param("secret_id")?,
            })
        }
        other => Err(config_error(
            "AuthMethod",
            format!("Type {other:?} is not supported (\"token\" or \"approle\")"),
        )),
    }
}

fn read_file(field: &str, path: &str) -> Result<Vec<u8>, ProviderError> {
    std::fs::read(path).map_err(|e| config_error(field, format!("cannot read {path:?}: {e}")))
}

fn add_certs(
    mut builder: reqwest::ClientBuilder,
    field: &str,
    pem: &[u8],
) -> Result<reqwest::ClientBuilder, ProviderError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| config_error(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(field, "holds no certificate"));
    }
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// `CAFile`, `CAPath`, `CertFile` + `KeyFile` and `TLSSkipVerify`.
fn add_tls(
    mut builder: reqwest::ClientBuilder,
    cfg: &VaultConfig,
) -> Result<reqwest::ClientBuilder, ProviderError> {
    if let Some(file) = cfg.ca_file.as_deref().filter(|f| !f.is_empty()) {
        builder = add_certs(builder, "CAFile", &read_file("CAFile", file)?)?;
    }
    if let Some(dir) = cfg.ca_path.as_deref().filter(|d| !d.is_empty()) {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| config_error("CAPath", format!("cannot read {dir:?}: {e}")))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let text = read_file("CAPath", &path.to_string_lossy())?;
                builder = add_certs(builder, "CAPath", &text)?;
            }
        }
    }
    match (
        cfg.cert_file.as_deref().filter(|f| !f.is_empty()),
        cfg.key_file.as_deref().filter(|f| !f.is_empty()),
    ) {
        (Some(cert), Some(key)) => {
            let mut pem = read_file("CertFile", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("KeyFile", key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| config_error("CertFile", format!("with KeyFile: {e}")))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        (Some(_), None) => return Err(config_error("KeyFile", "is required with CertFile")),
        (None, Some(_)) => return Err(config_error("CertFile", "is required with KeyFile")),
    }
    if cfg.tls_skip_verify {
        tracing::warn!("TLSSkipVerify: the vault server's certificate is not verified");
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// With `TLSServerName`, requests go to `https://<name>:<port>` and that
/// name resolves to `Address`'s host, so the certificate is checked (and
/// SNI sent) for the name while the connection goes to the address.
fn with_server_name(
    url: &reqwest::Url,
    server_name: Option<&str>,
    builder: reqwest::ClientBuilder,
) -> Result<(String, reqwest::ClientBuilder), ProviderError> {
    let origin = url.origin().ascii_serialization();
    let Some(name) = server_name.filter(|n| !n.is_empty()) else {
        return Ok((origin, builder));
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let host = url.host_str().unwrap_or_default();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.trim_matches(['[', ']']), port))
        .map_err(|e| config_error("Address", format!("cannot resolve {host:?}: {e}")))?
        .next()
        .ok_or_else(|| config_error("Address", format!("{host:?} has no address")))?;
    let base = format!("{}://{name}:{port}", url.scheme());
    Ok((base, builder.resolve(name, addr)))
}
