//! The CA configuration (`Provider` + `Config`), its validation rules and the
//! decision whether a change needs a root rotation.

use crate::duration::GoDuration;
use crate::keyspec::KeySpec;
use crate::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Which provider holds the CA keys. `consul` is the built-in provider; the
/// name is kept for compatibility with Consul clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Consul,
    Vault,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Consul => "consul",
            Self::Vault => "vault",
        }
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "consul" => Ok(Self::Consul),
            "" => Err(ConfigError::new(
                "Provider",
                "is required (\"consul\" or \"vault\")",
            )),
            "vault" => Ok(Self::Vault),
            other => Err(ConfigError::new(
                "Provider",
                format!("unknown CA provider {other:?} (expected \"consul\" or \"vault\")"),
            )),
        }
    }
}

/// A configuration value was invalid; `field` names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub const DEFAULT_LEAF_TTL: GoDuration = GoDuration::from_hours(72);
pub const DEFAULT_INTERMEDIATE_TTL: GoDuration = GoDuration::from_hours(8760);
pub const DEFAULT_ROOT_TTL: GoDuration = GoDuration::from_hours(87600);
pub const DEFAULT_CSR_MAX_PER_SECOND: f64 = 50.0;

/// Settings of the Vault provider. Secrets (`Token`, auth parameters) are kept
/// as [`SecretBytes`] so that they never print.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VaultConfig {
    pub address: String,
    pub token: Option<SecretBytes>,
    pub auth_method: Option<SecretBytes>,
    pub root_pki_path: String,
    pub intermediate_pki_path: String,
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub tls_skip_verify: bool,
    pub namespace: Option<String>,
}

/// The validated CA configuration. Built only through [`CaConfig::from_wire`]
/// (or [`Default`]): the fields are private, so a value of this type always
/// satisfies the configuration rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaConfig {
    provider: ProviderKind,
    leaf_cert_ttl: GoDuration,
    intermediate_cert_ttl: GoDuration,
    root_cert_ttl: GoDuration,
    key_spec: KeySpec,
    csr_max_per_second: f64,
    csr_max_concurrent: u32,
    /// Rotate the (generated) root when it is this old; zero disables.
    /// meshca's own key: no peer rotates roots on a schedule.
    #[serde(default)]
    root_rotation_period: GoDuration,
    /// Bring-your-own root: PEM private key (secret) and certificate.
    private_key: Option<SecretBytes>,
    root_cert: Option<String>,
    vault: Option<VaultConfig>,
}

impl CaConfig {
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }

    pub fn leaf_cert_ttl(&self) -> GoDuration {
        self.leaf_cert_ttl
    }

    pub fn intermediate_cert_ttl(&self) -> GoDuration {
        self.intermediate_cert_ttl
    }

    pub fn root_cert_ttl(&self) -> GoDuration {
        self.root_cert_ttl
    }

    pub fn key_spec(&self) -> KeySpec {
        self.key_spec
    }

    /// `CSRMaxPerSecond`; 0 means off.
    pub fn csr_max_per_second(&self) -> f64 {
        self.csr_max_per_second
    }

    /// `CSRMaxConcurrent`; 0 means off, and when set it replaces the
    /// per-second limit.
    pub fn csr_max_concurrent(&self) -> u32 {
        self.csr_max_concurrent
    }

    pub fn root_rotation_period(&self) -> GoDuration {
        self.root_rotation_period
    }

    /// A supplied root's private key (PEM), when the operator brings one.
    pub fn private_key(&self) -> Option<&SecretBytes> {
        self.private_key.as_ref()
    }

    /// A supplied root's certificate (PEM).
    pub fn root_cert(&self) -> Option<&str> {
        self.root_cert.as_deref()
    }

    pub fn vault(&self) -> Option<&VaultConfig> {
        self.vault.as_ref()
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Consul,
            leaf_cert_ttl: DEFAULT_LEAF_TTL,
            intermediate_cert_ttl: DEFAULT_INTERMEDIATE_TTL,
            root_cert_ttl: DEFAULT_ROOT_TTL,
            key_spec: KeySpec::EcP256,
            csr_max_per_second: DEFAULT_CSR_MAX_PER_SECOND,
            csr_max_concurrent: 0,
            root_rotation_period: GoDuration::from_secs(0),
            private_key: None,
            root_cert: None,
            vault: None,
        }
    }
}

/// The recognised `Config` keys, in their canonical (Consul) spelling.
const COMMON_KEYS: &[&str] = &[
    "LeafCertTTL",
    "IntermediateCertTTL",
    "RootCertTTL",
    "PrivateKeyType",
    "PrivateKeyBits",
    "CSRMaxPerSecond",
    "CSRMaxConcurrent",
    "RootRotationPeriod",
];
const BUILTIN_KEYS: &[&str] = &["PrivateKey", "RootCert"];
const VAULT_KEYS: &[&str] = &[
    "Address",
    "Token",
    "AuthMethod",
    "RootPKIPath",
    "IntermediatePKIPath",
    "CAFile",
    "CAPath",
    "CertFile",
    "KeyFile",
    "TLSServerName",
    "TLSSkipVerify",
    "Namespace",
];
/// Keys Consul accepts that have no effect here; accepted so existing
/// configurations load, ignored otherwise.
const IGNORED_KEYS: &[&str] = &["RotationPeriod", "DisableCrossSigning"];

/// Matches a key the way Consul's decoder does: case-insensitively, and (for
/// agent configuration files) with snake_case spelled out (`leaf_cert_ttl`).
fn canonical_key(provider: ProviderKind, key: &str) -> Option<&'static str> {
    let folded: String = key
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    let provider_keys = match provider {
        ProviderKind::Consul => BUILTIN_KEYS,
        ProviderKind::Vault => VAULT_KEYS,
    };
    COMMON_KEYS
        .iter()
        .chain(provider_keys)
        .chain(IGNORED_KEYS)
        .copied()
        .find(|k| k.to_lowercase() == folded)
}

fn as_string(field: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(ConfigError::new(field, "must be a string")),
    }
}

fn as_duration(field: &str, v: &Value) -> Result<GoDuration, ConfigError> {
    let s = as_string(field, v)?;
    s.parse()
        .map_err(|_| ConfigError::new(field, format!("invalid duration {s:?}")))
}

/// Numbers may arrive as JSON numbers or as strings (Consul's weak decoding).
fn as_f64(field: &str, v: &Value) -> Result<f64, ConfigError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        // `-0.0` compares equal to zero but is a sign error all the same.
        Some(n) if n.is_finite() && n >= 0.0 && n.is_sign_positive() => Ok(n),
        _ => Err(ConfigError::new(field, "must be a non-negative number")),
    }
}

fn as_u32(field: &str, v: &Value) -> Result<u32, ConfigError> {
    let n = as_f64(field, v)?;
    if n.fract() != 0.0 {
        return Err(ConfigError::new(field, "must be a whole number"));
    }
    if n > f64::from(u32::MAX) {
        return Err(ConfigError::new(field, format!("is too large ({n})")));
    }
    Ok(n as u32)
}

/// `CSRMaxPerSecond`: 0 turns the limit off; otherwise at least one request
/// every 10 s (so `Retry-After` stays a few seconds) and at most a million.
const CSR_RATE_RANGE: std::ops::RangeInclusive<f64> = 0.1..=1_000_000.0;
/// `CSRMaxConcurrent`: 0 turns the limit off.
const CSR_CONCURRENT_MAX: u32 = 100_000;

fn as_bool(field: &str, v: &Value) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(ConfigError::new(field, "must be a boolean")),
    }
}

fn non_empty(field: &str, v: &Value) -> Result<String, ConfigError> {
    let s = as_string(field, v)?;
    if s.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(s)
}

impl CaConfig {
    /// Parses and validates the `Provider` and `Config` of a
    /// `PUT /v1/connect/ca/configuration` body (or of the agent config file).
    ///
    /// `current` supplies the values of redacted secrets the caller omitted,
    /// so that a GET → edit → PUT round trip does not erase them.
    pub fn from_wire(
        provider: &str,
        config: &Map<String, Value>,
        current: Option<&CaConfig>,
    ) -> Result<Self, ConfigError> {
        let provider: ProviderKind = provider.parse()?;
        let mut out = CaConfig {
            provider,
            ..CaConfig::default()
        };
        let (mut key_type, mut key_bits) = ("ec".to_string(), 0u32);
        let mut vault = VaultConfig::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in config {
            let field = canonical_key(provider, key).ok_or_else(|| {
                ConfigError::new(
                    key.clone(),
                    format!(
                        "unknown configuration key for provider {:?}",
                        provider.as_str()
                    ),
                )
            })?;
            // `LeafCertTTL` and `leaf_cert_ttl` are one key: given both, which
            // one was meant is a guess, and a wrong guess can rotate the root.
            if !seen.insert(field) {
                return Err(ConfigError::new(
                    field,
                    "is given more than once (in different spellings)",
                ));
            }
            match field {
                "LeafCertTTL" => out.leaf_cert_ttl = as_duration(field, value)?,
                "IntermediateCertTTL" => out.intermediate_cert_ttl = as_duration(field, value)?,
                "RootCertTTL" => out.root_cert_ttl = as_duration(field, value)?,
                "PrivateKeyType" => key_type = as_string(field, value)?,
                "PrivateKeyBits" => key_bits = as_u32(field, value)?,
                "CSRMaxPerSecond" => out.csr_max_per_second = as_f64(field, value)?,
                "CSRMaxConcurrent" => out.csr_max_concurrent = as_u32(field, value)?,
                "RootRotationPeriod" => out.root_rotation_period = as_duration(field, value)?,
                "PrivateKey" => {
                    let pem = as_string(field, value)?;
                    if !pem.is_empty() && pem != REDACTED {
                        out.private_key = Some(SecretBytes::new(pem.into_bytes()));
                    } else if pem == REDACTED {
                        out.private_key = current.and_then(|c| c.private_key.clone());
                    }
                }
                "RootCert" => {
                    let pem = as_string(field, value)?;
                    out.root_cert = (!pem.trim().is_empty()).then_some(pem);
                }
                _ => apply_vault_key(&mut vault, field, value, current)?,
            }
        }
        out.key_spec = KeySpec::from_type_and_bits(&key_type, key_bits).map_err(|e| {
            let field = if matches!(e, crate::keyspec::KeySpecError::UnknownType(_)) {
                "PrivateKeyType"
            } else {
                "PrivateKeyBits"
            };
            ConfigError::new(field, e.to_string())
        })?;
        if provider == ProviderKind::Vault {
            out.vault = Some(vault);
        }
        out.validate()?;
        Ok(out)
    }

    /// The rules that relate fields to each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let hour = GoDuration::from_hours(1);
        if self.leaf_cert_ttl < hour || self.leaf_cert_ttl > GoDuration::from_hours(8760) {
            return Err(ConfigError::new(
                "LeafCertTTL",
                format!(
                    "must be between 1h0m0s and 8760h0m0s, got {}",
                    self.leaf_cert_ttl
                ),
            ));
        }
        let min_intermediate = std::cmp::max(
            GoDuration::from_hours(3),
            GoDuration::from(self.leaf_cert_ttl.as_std() * 3),
        );
        if self.intermediate_cert_ttl < min_intermediate {
            return Err(ConfigError::new(
                "IntermediateCertTTL",
                format!(
                    "must be at least 3h0m0s and at least 3 x LeafCertTTL ({min_intermediate}), got {}",
                    self.intermediate_cert_ttl
                ),
            ));
        }
        if self.root_cert_ttl < self.intermediate_cert_ttl {
            return Err(ConfigError::new(
                "RootCertTTL",
                format!(
                    "must be at least IntermediateCertTTL ({}), got {}",
                    self.intermediate_cert_ttl, self.root_cert_ttl
                ),
            ));
        }
        self.validate_rate_limits()?;
        self.validate_rotation_period()?;
        match (&self.private_key, &self.root_cert) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "RootCert",
                    "must be set when PrivateKey is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "PrivateKey",
                    "must be set when RootCert is set",
                ))
            }
            _ => {}
        }
        if let Some(v) = &self.vault {
            validate_vault(v)?;
        }
        Ok(())
    }

    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let rate = self.csr_max_per_second;
        if rate != 0.0 && !CSR_RATE_RANGE.contains(&rate) {
            return Err(ConfigError::new(
                "CSRMaxPerSecond",
                format!(
                    "must be 0 (off) or between {} and {}, got {rate}",
                    CSR_RATE_RANGE.start(),
                    CSR_RATE_RANGE.end()
                ),
            ));
        }
        if self.csr_max_concurrent > CSR_CONCURRENT_MAX {
            return Err(ConfigError::new(
                "CSRMaxConcurrent",
                format!(
                    "must be 0 (off) up to {CSR_CONCURRENT_MAX}, got {}",
                    self.csr_max_concurrent
                ),
            ));
        }
        Ok(())
    }

    /// A scheduled rotation must leave each root in service longer than the
    /// 2×LeafCertTTL overlap, and happen before the root expires.
    fn validate_rotation_period(&self) -> Result<(), ConfigError> {
        let period = self.root_rotation_period;
        if period.as_std().is_zero() {
            return Ok(());
        }
        let min = GoDuration::from(self.leaf_cert_ttl.as_std() * 2);
        if period <= min || period >= self.root_cert_ttl {
            return Err(ConfigError::new(
                "RootRotationPeriod",
                format!(
                    "must be 0 (off), or longer than 2 x LeafCertTTL ({min}) and shorter than RootCertTTL ({}), got {period}",
                    self.root_cert_ttl
                ),
            ));
        }
        if self.private_key.is_some() {
            return Err(ConfigError::new(
                "RootRotationPeriod",
                "cannot rotate a supplied root (PrivateKey) on a schedule",
            ));
        }
        Ok(())
    }

    /// Whether moving from `self` to `next` changes the root key and so needs
    /// a root rotation. TTL and rate-limit changes never do.
    pub fn requires_rotation(&self, next: &CaConfig) -> bool {
        if self.provider != next.provider || self.key_spec != next.key_spec {
            return true;
        }
        if next.private_key.is_some() && next.root_cert != self.root_cert {
            return true;
        }
        match (&self.vault, &next.vault) {
            (Some(a), Some(b)) => {
                a.address != b.address
                    || a.root_pki_path != b.root_pki_path
                    || a.namespace != b.namespace
            }
            _ => false,
        }
    }

    /// The wire `Config` map. With `redact`, secrets are replaced by a marker
    /// (Consul returns them in clear; meshca never does).
    pub fn to_wire(&self, redact: bool) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("LeafCertTTL", self.leaf_cert_ttl.to_string().into());
        put(
            "IntermediateCertTTL",
            self.intermediate_cert_ttl.to_string().into(),
        );
        put("RootCertTTL", self.root_cert_ttl.to_string().into());
        put("PrivateKeyType", self.key_spec.key_type().into());
        put("PrivateKeyBits", self.key_spec.bits().into());
        put("CSRMaxPerSecond", self.csr_max_per_second.into());
        put("CSRMaxConcurrent", self.csr_max_concurrent.into());
        if !self.root_rotation_period.as_std().is_zero() {
            put(
                "RootRotationPeriod",
                self.root_rotation_period.to_string().into(),
            );
        }
        let secret = |s: &SecretBytes| -> Value {
            if redact {
                REDACTED.into()
            } else {
                String::from_utf8_lossy(s.expose()).into_owned().into()
            }
        };
        if let Some(k) = &self.private_key {
            put("PrivateKey", secret(k));
        }
        if let Some(c) = &self.root_cert {
            put("RootCert", c.clone().into());
        }
        if let Some(v) = &self.vault {
            put("Address", v.address.clone().into());
            put("RootPKIPath", v.root_pki_path.clone().into());
            put(
                "IntermediatePKIPath",
                v.intermediate_pki_path.clone().into(),
            );
            if let Some(t) = &v.token {
                put("Token", secret(t));
            }
            if let Some(a) = &v.auth_method {
                put("AuthMethod", secret(a));
            }
            for (k, val) in [
                ("CAFile", &v.ca_file),
                ("CAPath", &v.ca_path),
                ("CertFile", &v.cert_file),
                ("KeyFile", &v.key_file),
                ("TLSServerName", &v.tls_server_name),
                ("Namespace", &v.namespace),
            ] {
                if let Some(val) = val {
                    put(k, val.clone().into());
                }
            }
            put("TLSSkipVerify", v.tls_skip_verify.into());
        }
        m
    }
}

/// The value a redacted secret shows in `GET /v1/connect/ca/configuration`.
/// Sending it back in a `PUT` keeps the stored secret.
pub const REDACTED: &str = "hidden";

fn apply_vault_key(
    vault: &mut VaultConfig,
    field: &str,
    value: &Value,
    current: Option<&CaConfig>,
) -> Result<(), ConfigError> {
    let current_vault = current.and_then(|c| c.vault.as_ref());
    let opt = |v: &Value| -> Result<Option<String>, ConfigError> {
        let s = as_string(field, v)?;
        Ok((!s.is_empty()).then_some(s))
    };
    match field {
        "Address" => vault.address = non_empty(field, value)?,
        "Token" => {
            let t = as_string(field, value)?;
            vault.token = if t == REDACTED {
                current_vault.and_then(|c| c.token.clone())
            } else {
                (!t.is_empty()).then(|| SecretBytes::new(t.into_bytes()))
            };
        }
        "AuthMethod" => {
            vault.auth_method = if value == &Value::String(REDACTED.into()) {
                current_vault.and_then(|c| c.auth_method.clone())
            } else if value.is_object() {
                Some(SecretBytes::new(value.to_string().into_bytes()))
            } else {
                return Err(ConfigError::new(field, "must be an object"));
            };
        }
        "RootPKIPath" => vault.root_pki_path = non_empty(field, value)?,
        "IntermediatePKIPath" => vault.intermediate_pki_path = non_empty(field, value)?,
        "CAFile" => vault.ca_file = opt(value)?,
        "CAPath" => vault.ca_path = opt(value)?,
        "CertFile" => vault.cert_file = opt(value)?,
        "KeyFile" => vault.key_file = opt(value)?,
        "TLSServerName" => vault.tls_server_name = opt(value)?,
        "Namespace" => vault.namespace = opt(value)?,
        "TLSSkipVerify" => vault.tls_skip_verify = as_bool(field, value)?,
        // Keys Consul accepts but meshca does not act on.
        _ => {}
    }
    Ok(())
}

fn validate_vault(v: &VaultConfig) -> Result<(), ConfigError> {
    if v.address.is_empty() {
        return Err(ConfigError::new(
            "Address",
            "is required for the vault provider",
        ));
    }
    if v.token.is_none() && v.auth_method.is_none() {
        return Err(ConfigError::new(
            "Token",
            "the vault provider needs Token or AuthMethod",
        ));
    }
    if v.root_pki_path.is_empty() {
        return Err(ConfigError::new(
            "RootPKIPath",
            "is required for the vault provider",
        ));
    }
    if v.intermediate_pki_path.is_empty() {
        return Err(ConfigError::new(
            "IntermediatePKIPath",
            "is required for the vault provider",
        ));
    }
    if v.root_pki_path.trim_matches('/') == v.intermediate_pki_path.trim_matches('/') {
        return Err(ConfigError::new(
            "IntermediatePKIPath",
            "must differ from RootPKIPath",
        ));
    }
    Ok(())
}

impl fmt::Display for CaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provider={} key={} leaf_ttl={}",
            self.provider.as_str(),
            self.key_spec,
            self.leaf_cert_ttl
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(provider: &str, config: Value) -> Result<CaConfig, ConfigError> {
        CaConfig::from_wire(provider, config.as_object().unwrap(), None)
    }

    fn field_of(provider: &str, config: Value) -> String {
        parse(provider, config).unwrap_err().field
    }

    #[test]
    fn empty_config_gives_the_defaults() {
        assert_eq!(parse("consul", json!({})).unwrap(), CaConfig::default());
    }

    #[test]
    fn a_missing_provider_is_an_error_naming_it() {
        let err = parse("", json!({})).unwrap_err();
        assert_eq!(err.field, "Provider");
    }

    #[test]
    fn accepts_consul_and_snake_case_spellings() {
        let c = parse(
            "consul",
            json!({"LeafCertTTL": "24h", "private_key_type": "rsa", "PrivateKeyBits": 4096, "csr_max_per_second": "10"}),
        )
        .unwrap();
        assert_eq!(c.leaf_cert_ttl, GoDuration::from_hours(24));
        assert_eq!(c.key_spec, KeySpec::Rsa4096);
        assert_eq!(c.csr_max_per_second, 10.0);
    }

    #[test]
    fn leaf_ttl_bounds() {
        assert_eq!(
            field_of("consul", json!({"LeafCertTTL": "59m"})),
            "LeafCertTTL"
        );
        assert_eq!(
            field_of("consul", json!({"LeafCertTTL": "8761h"})),
            "LeafCertTTL"
        );
        assert_eq!(
            field_of("consul", json!({"LeafCertTTL": "soon"})),
            "LeafCertTTL"
        );
        assert!(parse("consul", json!({"LeafCertTTL": "1h"})).is_ok());
        assert!(parse("consul", json!({"LeafCertTTL": "8760h", "IntermediateCertTTL": "26280h", "RootCertTTL": "87600h"})).is_ok());
    }

    #[test]
    fn intermediate_ttl_must_cover_three_leaves_and_three_hours() {
        assert_eq!(
            field_of(
                "consul",
                json!({"LeafCertTTL": "72h", "IntermediateCertTTL": "200h"})
            ),
            "IntermediateCertTTL"
        );
        assert_eq!(
            field_of(
                "consul",
                json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "2h"})
            ),
            "IntermediateCertTTL"
        );
        assert!(parse(
            "consul",
            json!({"LeafCertTTL": "72h", "IntermediateCertTTL": "216h"})
        )
        .is_ok());
    }

    #[test]
    fn root_ttl_must_cover_the_intermediate() {
        assert_eq!(
            field_of("consul", json!({"RootCertTTL": "1000h"})),
            "RootCertTTL"
        );
    }

    #[test]
    fn key_type_and_bits_are_checked() {
        assert_eq!(
            field_of("consul", json!({"PrivateKeyType": "dsa"})),
            "PrivateKeyType"
        );
        assert_eq!(
            field_of("consul", json!({"PrivateKeyBits": 521})),
            "PrivateKeyBits"
        );
        assert_eq!(
            field_of(
                "consul",
                json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 1024})
            ),
            "PrivateKeyBits"
        );
        assert_eq!(
            field_of("consul", json!({"PrivateKeyBits": "many"})),
            "PrivateKeyBits"
        );
    }

    /// Regression: `1e-300` was accepted (and then answered 429 with a
    /// `Retry-After` of 2^64 - 1 seconds), as were `1.8e308` and `-0.0`;
    /// 4294967296 concurrent was refused as "not a non-negative integer"
    /// while 2147483648 passed.
    /// Regression: two spellings of one key silently took the last.
    #[test]
    fn one_key_in_two_spellings_is_refused() {
        let err = parse(
            "consul",
            json!({"LeafCertTTL": "24h", "leaf_cert_ttl": "48h"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "LeafCertTTL");
        assert!(err.message.contains("more than once"), "{err}");
    }

    #[test]
    fn rate_limits_have_sane_ranges_and_say_so() {
        for rate in [
            json!(1e-300),
            json!(1.797_693_134_862_315_7e308),
            json!(-0.0),
            json!(0.05),
        ] {
            let err = parse("consul", json!({"CSRMaxPerSecond": rate})).unwrap_err();
            assert_eq!(err.field, "CSRMaxPerSecond", "{rate}");
        }
        let err = parse("consul", json!({"CSRMaxPerSecond": 1e-300})).unwrap_err();
        assert!(err.message.contains("between 0.1 and 1000000"), "{err}");
        for ok in [0.0, 0.1, 50.0, 1_000_000.0] {
            let c = parse("consul", json!({"CSRMaxPerSecond": ok})).unwrap();
            assert_eq!(c.csr_max_per_second(), ok);
        }
        for count in [2_147_483_648u64, 4_294_967_296, 100_001] {
            let err = parse("consul", json!({"CSRMaxConcurrent": count})).unwrap_err();
            assert_eq!(err.field, "CSRMaxConcurrent", "{count}");
            assert!(!err.message.contains("non-negative"), "{err}");
        }
        assert!(parse("consul", json!({"CSRMaxConcurrent": 100_000})).is_ok());
    }

    #[test]
    fn rate_limits_must_be_non_negative() {
        assert_eq!(
            field_of("consul", json!({"CSRMaxPerSecond": -1})),
            "CSRMaxPerSecond"
        );
        assert_eq!(
            field_of("consul", json!({"CSRMaxConcurrent": 1.5})),
            "CSRMaxConcurrent"
        );
        assert_eq!(
            parse("consul", json!({"CSRMaxConcurrent": 4}))
                .unwrap()
                .csr_max_concurrent,
            4
        );
    }

    #[test]
    fn root_rotation_period_bounds() {
        assert!(parse("consul", json!({"RootRotationPeriod": "8760h"})).is_ok());
        assert!(parse("consul", json!({"RootRotationPeriod": "0s"})).is_ok());
        for bad in ["144h", "87600h", "later"] {
            assert_eq!(
                field_of("consul", json!({"RootRotationPeriod": bad})),
                "RootRotationPeriod",
                "{bad}"
            );
        }
        assert_eq!(
            field_of(
                "consul",
                json!({"RootRotationPeriod": "8760h", "PrivateKey": "K", "RootCert": "C"})
            ),
            "RootRotationPeriod"
        );
        let c = parse("consul", json!({"RootRotationPeriod": "8760h"})).unwrap();
        assert_eq!(c.to_wire(true)["RootRotationPeriod"], json!("8760h0m0s"));
        assert!(
            !CaConfig::default().requires_rotation(&c),
            "a schedule is not a new key"
        );
    }

    #[test]
    fn unknown_keys_and_providers_are_named() {
        assert_eq!(field_of("consul", json!({"LeafTTL": "1h"})), "LeafTTL");
        assert_eq!(
            field_of("consul", json!({"Address": "http://x"})),
            "Address"
        );
        assert_eq!(field_of("aws-pca", json!({})), "Provider");
    }

    #[test]
    fn private_key_needs_a_root_cert_and_vice_versa() {
        assert_eq!(
            field_of("consul", json!({"PrivateKey": "-----BEGIN"})),
            "RootCert"
        );
        assert_eq!(
            field_of("consul", json!({"RootCert": "-----BEGIN"})),
            "PrivateKey"
        );
    }

    #[test]
    fn vault_needs_address_token_and_paths() {
        let ok = json!({"Address": "http://127.0.0.1:8200", "Token": "t", "RootPKIPath": "connect-root", "IntermediatePKIPath": "connect-inter"});
        assert!(parse("vault", ok.clone()).is_ok());
        for (drop, field) in [
            ("Address", "Address"),
            ("Token", "Token"),
            ("RootPKIPath", "RootPKIPath"),
            ("IntermediatePKIPath", "IntermediatePKIPath"),
        ] {
            let mut c = ok.clone();
            c.as_object_mut().unwrap().remove(drop);
            assert_eq!(field_of("vault", c), field, "dropping {drop}");
        }
        let mut same = ok.clone();
        same["IntermediatePKIPath"] = json!("connect-root/");
        assert_eq!(field_of("vault", same), "IntermediatePKIPath");
    }

    #[test]
    fn redaction_hides_secrets_and_a_redacted_put_keeps_them() {
        let c = parse("consul", json!({"PrivateKey": "KEY", "RootCert": "CERT"})).unwrap();
        let wire = c.to_wire(true);
        assert_eq!(wire["PrivateKey"], json!(REDACTED));
        assert_eq!(wire["RootCert"], json!("CERT"));
        let again = CaConfig::from_wire("consul", &wire, Some(&c)).unwrap();
        assert_eq!(again.private_key, c.private_key);
        assert!(!format!("{c:?}").contains("KEY\""));
    }

    #[test]
    fn round_trip_through_the_wire_is_identity() {
        let c = parse(
            "consul",
            json!({"LeafCertTTL": "24h", "PrivateKeyType": "rsa", "CSRMaxConcurrent": 2}),
        )
        .unwrap();
        let again = CaConfig::from_wire("consul", &c.to_wire(false), None).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn only_key_changes_require_rotation() {
        let base = CaConfig::default();
        let ttl = parse(
            "consul",
            json!({"LeafCertTTL": "24h", "CSRMaxPerSecond": 5}),
        )
        .unwrap();
        assert!(!base.requires_rotation(&ttl));
        assert!(!base.requires_rotation(&base.clone()));
        let rsa = parse("consul", json!({"PrivateKeyType": "rsa"})).unwrap();
        assert!(base.requires_rotation(&rsa));
        let byo = parse("consul", json!({"PrivateKey": "K", "RootCert": "C"})).unwrap();
        assert!(base.requires_rotation(&byo));
        assert!(!byo.requires_rotation(&byo.clone()));
        let vault = parse("vault", json!({"Address": "http://v", "Token": "t", "RootPKIPath": "r", "IntermediatePKIPath": "i"})).unwrap();
        assert!(base.requires_rotation(&vault));
    }
}
