//! The server configuration file (JSON or HCL, Consul's agent keys) merged with flags.
//! Unknown keys stop the server with a message naming them.

use crate::cli::ServerArgs;
use anyhow::{bail, Context};
use meshca_core::CaConfig;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub datacenter: Option<String>,
    pub primary_datacenter: Option<String>,
    pub client_addr: Option<String>,
    pub ports: Option<Ports>,
    pub connect: Option<Connect>,
    pub encrypt_store: Option<EncryptStore>,
    pub acl: Option<Acl>,
    /// Recognised so that a TLS block is refused with a clear reason
    /// instead of as an unknown key (TLS on the API is not built yet).
    pub tls: Option<Value>,
    pub audit: Option<Audit>,
    pub log_json: Option<bool>,
    pub log_level: Option<String>,
}

/// Consul's `acl` block, plus meshca's `auto_bootstrap`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub enabled: Option<bool>,
    /// Only `deny` (the default) is supported.
    pub default_policy: Option<String>,
    pub tokens: Option<AclTokens>,
    /// Whether the first start creates a management token and writes it to
    /// `<data-dir>/bootstrap-token` (default true). With false, the
    /// operator bootstraps with `meshca acl bootstrap`.
    pub auto_bootstrap: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclTokens {
    /// A management token's SecretID (a UUID) created at start when absent.
    pub initial_management: Option<String>,
    /// The token a secondary datacenter presents to the primary.
    pub replication: Option<String>,
}

/// The effective ACL settings.
#[derive(Debug, Clone)]
pub struct AclSettings {
    pub enabled: bool,
    pub initial_management: Option<secrecy::SecretString>,
    pub auto_bootstrap: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// File that receives one JSON line per issued certificate.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    pub enabled: Option<bool>,
    pub ca_provider: Option<String>,
    pub ca_config: Option<Map<String, Value>>,
}

/// meshca's `encrypt_store` block: the store key, the previous store key
/// while changing it, and how often a new data key is made.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptStore {
    pub key_file: Option<PathBuf>,
    pub old_key_file: Option<PathBuf>,
    /// A Go duration (`168h`); default 7 days.
    pub data_key_rotation_period: Option<String>,
}

/// The effective server settings.
#[derive(Debug)]
pub struct Settings {
    pub dev: bool,
    pub data_dir: PathBuf,
    pub datacenter: String,
    pub bind: String,
    pub http_port: u16,
    pub store_key_file: Option<PathBuf>,
    /// The previous store key, to re-seal the store under `store_key_file`.
    pub old_store_key_file: Option<PathBuf>,
    pub data_key_rotation_period: time::Duration,
    pub initial_ca: CaConfig,
    pub audit_path: Option<PathBuf>,
    pub acl: AclSettings,
    pub log_json: bool,
    pub log_level: String,
}

/// Reads one file as JSON (`.json`) or HCL (anything else that is not JSON).
fn read_file(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if is_json {
        serde_json::from_str(&text)
            .with_context(|| format!("parsing JSON config file {}", path.display()))
    } else {
        hcl::from_str(&text).with_context(|| format!("parsing HCL config file {}", path.display()))
    }
}

/// Later files override earlier ones key by key (objects merge deeply).
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn load(args: &ServerArgs) -> anyhow::Result<Settings> {
    let mut merged = Value::Object(Map::new());
    for path in &args.config_file {
        merge(&mut merged, read_file(path)?);
    }
    let file: FileConfig = serde_json::from_value(merged)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    settings(args, file)
}

/// The `acl` block: on by default (off with `--dev` unless the file turns
/// it on), default deny. Settings meshca cannot honour stop the server.
fn acl_settings(dev: bool, acl: Option<Acl>) -> anyhow::Result<AclSettings> {
    let acl = acl.unwrap_or_default();
    match acl.default_policy.as_deref() {
        None | Some("deny") => {}
        Some(other) => bail!(
            "acl.default_policy = {other:?}: meshca's ACLs are default-deny; to run an open \
             server use --dev or acl.enabled = false"
        ),
    }
    let tokens = acl.tokens.unwrap_or_default();
    if tokens.replication.is_some() {
        bail!("acl.tokens.replication: secondary datacenters are not supported yet");
    }
    let initial_management = match tokens.initial_management {
        Some(t) if uuid::Uuid::parse_str(&t).is_err() => {
            bail!("acl.tokens.initial_management must be a UUID")
        }
        t => t.map(secrecy::SecretString::from),
    };
    Ok(AclSettings {
        enabled: acl.enabled.unwrap_or(!dev),
        initial_management,
        auto_bootstrap: acl.auto_bootstrap.unwrap_or(true),
    })
}

/// Settings for features this version does not have stop the server: running
/// without the TLS an operator asked for would be worse.
fn refuse_unbuilt(file: &FileConfig) -> anyhow::Result<()> {
    if file.tls.is_some() {
        bail!("tls: TLS on the HTTP API is not implemented in this version of meshca; refusing to start without it");
    }
    Ok(())
}

fn settings(args: &ServerArgs, file: FileConfig) -> anyhow::Result<Settings> {
    refuse_unbuilt(&file)?;
    let connect = file.connect.unwrap_or_default();
    if connect.enabled == Some(false) {
        bail!(
            "connect.enabled = false: meshca is a Connect CA and cannot run with Connect disabled"
        );
    }
    let provider = connect.ca_provider.unwrap_or_else(|| "consul".into());
    let initial_ca = CaConfig::from_wire(&provider, &connect.ca_config.unwrap_or_default(), None)
        .map_err(|e| anyhow::anyhow!("invalid connect.ca_config: {e}"))?;
    let datacenter = args
        .datacenter
        .clone()
        .or(file.datacenter)
        .unwrap_or_else(|| "dc1".into());
    meshca_core::spiffe::validate_segment("datacenter", &datacenter)
        .map_err(|e| anyhow::anyhow!("invalid datacenter: {e}"))?;
    if let Some(primary) = &file.primary_datacenter {
        if primary != &datacenter {
            bail!("primary_datacenter {primary:?} differs from datacenter {datacenter:?}: secondary datacenters are not supported yet");
        }
    }
    let encrypt = file.encrypt_store.unwrap_or_default();
    let store_key_file = args.store_key_file.clone().or(encrypt.key_file);
    let old_store_key_file = args.old_store_key_file.clone().or(encrypt.old_key_file);
    let data_key_rotation_period = match &encrypt.data_key_rotation_period {
        Some(text) => parse_rotation_period(text)?,
        None => meshca_migrations::DEFAULT_DATA_KEY_ROTATION_PERIOD,
    };
    if old_store_key_file.is_some() && store_key_file.is_none() {
        bail!(
            "encrypt_store.old_key_file (--old-store-key-file) needs the new store key in \
             encrypt_store.key_file (--store-key-file): the old key is only read to re-seal the \
             store under the new one"
        );
    }
    if args.dev && (store_key_file.is_some() || old_store_key_file.is_some()) {
        bail!(
            "--dev keeps the store in memory under a throw-away key: a store key file \
             (encrypt_store.key_file, old_key_file, --store-key-file, --old-store-key-file) \
             cannot apply"
        );
    }
    Ok(Settings {
        dev: args.dev,
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| "meshca-data".into()),
        datacenter,
        bind: args
            .client
            .clone()
            .or(file.client_addr)
            .unwrap_or_else(|| "127.0.0.1".into()),
        http_port: args
            .http_port
            .or(file.ports.and_then(|p| p.http))
            .unwrap_or(8500),
        store_key_file,
        old_store_key_file,
        data_key_rotation_period,
        initial_ca,
        audit_path: file.audit.and_then(|a| a.path),
        acl: acl_settings(args.dev, file.acl)?,
        log_json: file.log_json.unwrap_or(false),
        log_level: file.log_level.unwrap_or_else(|| "info".into()),
    })
}

/// `encrypt_store.data_key_rotation_period`: a Go duration of at least a
/// minute (a new data key per commit would only grow the registry).
fn parse_rotation_period(text: &str) -> anyhow::Result<time::Duration> {
    let period: meshca_core::GoDuration = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid encrypt_store.data_key_rotation_period {text:?}: expected a Go duration \
             such as \"168h\""
        )
    })?;
    if period.as_std() < std::time::Duration::from_secs(60) {
        bail!("invalid encrypt_store.data_key_rotation_period {text:?}: it must be at least 1m");
    }
    Ok(period.as_time())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(name: &str, text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        load(&ServerArgs {
            config_file: vec![path],
            ..Default::default()
        })
    }

    #[test]
    fn defaults_without_flags_or_files() {
        let s = load(&ServerArgs::default()).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("meshca-data"));
        assert_eq!(
            (s.bind.as_str(), s.http_port, s.datacenter.as_str()),
            ("127.0.0.1", 8500, "dc1")
        );
        assert_eq!(s.initial_ca, CaConfig::default());
    }

    #[test]
    fn hcl_and_json_files_set_the_same_keys() {
        let hcl = load_text("a.hcl", "datacenter = \"east\"\nports { http = 9500 }\nconnect {\n  ca_config {\n    leaf_cert_ttl = \"24h\"\n    private_key_type = \"rsa\"\n  }\n}\n").unwrap();
        let json = load_text("a.json", r#"{"datacenter":"east","ports":{"http":9500},"connect":{"ca_config":{"LeafCertTTL":"24h","PrivateKeyType":"rsa"}}}"#).unwrap();
        for s in [hcl, json] {
            assert_eq!(s.datacenter, "east");
            assert_eq!(s.http_port, 9500);
            assert_eq!(s.initial_ca.leaf_cert_ttl().to_string(), "24h0m0s");
            assert!(s.initial_ca.key_spec().is_rsa());
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_text("a.json", r#"{"datacentre":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("datacentre"), "{err}");
        let err = load_text("a.hcl", "ports { grpc = 1 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc"), "{err}");
        let err = load_text("a.json", r#"{"connect":{"ca_config":{"LeafTTL":"1h"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LeafTTL"), "{err}");
    }

    #[test]
    fn acls_are_on_by_default_and_unsupported_settings_refuse_to_start() {
        let s = load(&ServerArgs::default()).unwrap();
        assert!(s.acl.enabled && s.acl.auto_bootstrap);
        let dev = load(&ServerArgs {
            dev: true,
            ..Default::default()
        })
        .unwrap();
        assert!(!dev.acl.enabled);
        assert!(
            !load_text("a.hcl", "acl { enabled = false }")
                .unwrap()
                .acl
                .enabled
        );
        let token = "5b0c5f36-1a44-4d5e-9d64-1b0b7b1c9a11";
        let s = load_text(
            "a.hcl",
            &format!("acl {{\n tokens {{ initial_management = \"{token}\" }}\n}}"),
        )
        .unwrap();
        assert!(s.acl.initial_management.is_some());
        for (text, needle) in [
            (r#"{"acl":{"default_policy":"allow"}}"#, "default_policy"),
            (r#"{"acl":{"tokens":{"replication":"x"}}}"#, "replication"),
            (
                r#"{"acl":{"tokens":{"initial_management":"short"}}}"#,
                "UUID",
            ),
            (r#"{"acl":{"tokens":{"agent":"x"}}}"#, "agent"),
        ] {
            let err = load_text("a.json", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn unbuilt_security_features_refuse_to_start() {
        let err = load_text("a.json", r#"{"tls":{"defaults":{"verify_incoming":true}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls"), "{err}");
        let s = load_text("a.json", r#"{"audit":{"path":"/tmp/audit.log"}}"#).unwrap();
        assert_eq!(s.audit_path, Some(PathBuf::from("/tmp/audit.log")));
    }

    #[test]
    fn flags_override_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"datacenter":"east","client_addr":"127.0.0.2"}"#).unwrap();
        let s = load(&ServerArgs {
            config_file: vec![path],
            datacenter: Some("west".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (s.datacenter.as_str(), s.bind.as_str()),
            ("west", "127.0.0.2")
        );
    }

    #[test]
    fn encrypt_store_keys_are_read_and_checked() {
        let s = load_text(
            "a.hcl",
            "encrypt_store {\n  key_file = \"/k/new\"\n  old_key_file = \"/k/old\"\n  data_key_rotation_period = \"36h\"\n}\n",
        )
        .unwrap();
        assert_eq!(s.store_key_file, Some(PathBuf::from("/k/new")));
        assert_eq!(s.old_store_key_file, Some(PathBuf::from("/k/old")));
        assert_eq!(s.data_key_rotation_period, time::Duration::hours(36));
        let s = load(&ServerArgs::default()).unwrap();
        assert_eq!(s.data_key_rotation_period, time::Duration::days(7));

        for (text, needle) in [
            (
                r#"{"encrypt_store":{"data_key_rotation_period":"7d"}}"#,
                "data_key_rotation_period \"7d\"",
            ),
            (
                r#"{"encrypt_store":{"data_key_rotation_period":"30s"}}"#,
                "at least 1m",
            ),
            (
                r#"{"encrypt_store":{"old_key_file":"/k/old"}}"#,
                "needs the new store key",
            ),
            (r#"{"encrypt_store":{"keyfile":"/k"}}"#, "keyfile"),
        ] {
            let err = load_text("a.json", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_store_key_with_dev_is_refused() {
        let err = load(&ServerArgs {
            dev: true,
            store_key_file: Some("/k".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--dev"), "{err}");
    }
}
