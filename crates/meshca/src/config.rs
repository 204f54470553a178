//! The server configuration file (JSON or HCL, Consul's agent keys) merged with flags.
//! Unknown keys stop the server with a message naming them.

use crate::cli::ServerArgs;
use anyhow::{bail, Context};
use meshca_core::CaConfig;
use meshca_server::tls::{self as tls, MinVersion, ServerIdentity, TlsOptions};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub datacenter: Option<String>,
    pub primary_datacenter: Option<String>,
    /// The primary's HTTP(S) URLs, for a secondary.
    pub primary_addresses: Option<Vec<String>>,
    pub client_addr: Option<String>,
    /// The address the other servers sharing the store reach this one at
    /// (default: the address the API is bound to).
    pub advertise_addr: Option<String>,
    pub ports: Option<Ports>,
    pub connect: Option<Connect>,
    pub encrypt_store: Option<EncryptStore>,
    pub store: Option<StoreBlock>,
    pub acl: Option<Acl>,
    pub tls: Option<Tls>,
    /// Consul's DNS domain (default `consul`): names the `auto_tls`
    /// certificate (`server.<datacenter>.<domain>`).
    pub domain: Option<String>,
    pub audit: Option<Audit>,
    pub log_json: Option<bool>,
    pub log_level: Option<String>,
    /// After SIGTERM, how long requests in flight may take to finish (a Go
    /// duration, default 10s, at most 5m).
    pub shutdown_grace_period: Option<String>,
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

/// Consul's `ports`: `-1` turns a listener off. HTTP is on (8500) unless
/// set to -1; HTTPS is off unless set (Consul's defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: Option<i64>,
    pub https: Option<i64>,
}

/// Consul's `tls` block. `defaults` holds the settings; `https`, when
/// present, overrides them key by key (it is the only interface meshca
/// has). meshca's own keys: `auto_tls` here, and NATS's
/// `curve_preferences`, `timeout` and `verify_and_map` in either block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub defaults: Option<TlsInterface>,
    pub https: Option<TlsInterface>,
    pub auto_tls: Option<bool>,
    /// Consul's other interfaces, recognised to be refused with a reason.
    pub internal_rpc: Option<Value>,
    pub grpc: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInterface {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_incoming: Option<bool>,
    pub verify_and_map: Option<bool>,
    pub tls_min_version: Option<String>,
    /// A comma-separated string (Consul) or a list.
    pub tls_cipher_suites: Option<Names>,
    pub curve_preferences: Option<Names>,
    /// Handshake timeout: seconds (NATS, fractions allowed) or a Go
    /// duration string.
    pub timeout: Option<Value>,
    /// Consul keys that cannot apply to meshca, refused by name.
    pub ca_path: Option<Value>,
    pub verify_outgoing: Option<Value>,
    pub verify_server_hostname: Option<Value>,
    pub use_auto_cert: Option<Value>,
}

/// A list of names, as a list or as one comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Names {
    List(Vec<String>),
    Joined(String),
}

impl Names {
    fn names(&self) -> Vec<String> {
        match self {
            Names::List(v) => v.iter().map(|s| s.trim().to_string()).collect(),
            Names::Joined(s) => s
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

impl TlsInterface {
    /// `self` with every key `over` sets replaced.
    fn overridden_by(self, over: TlsInterface) -> TlsInterface {
        TlsInterface {
            ca_file: over.ca_file.or(self.ca_file),
            cert_file: over.cert_file.or(self.cert_file),
            key_file: over.key_file.or(self.key_file),
            verify_incoming: over.verify_incoming.or(self.verify_incoming),
            verify_and_map: over.verify_and_map.or(self.verify_and_map),
            tls_min_version: over.tls_min_version.or(self.tls_min_version),
            tls_cipher_suites: over.tls_cipher_suites.or(self.tls_cipher_suites),
            curve_preferences: over.curve_preferences.or(self.curve_preferences),
            timeout: over.timeout.or(self.timeout),
            ca_path: over.ca_path.or(self.ca_path),
            verify_outgoing: over.verify_outgoing.or(self.verify_outgoing),
            verify_server_hostname: over.verify_server_hostname.or(self.verify_server_hostname),
            use_auto_cert: over.use_auto_cert.or(self.use_auto_cert),
        }
    }
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

/// meshca's `store` block: where the CA's records live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreBlock {
    /// `sled` (the default: embedded, in the data dir) or `etcd`.
    pub backend: Option<String>,
    pub etcd: Option<EtcdBlock>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdBlock {
    /// `http://host:port` of each member (`https://` with `ca_file`).
    pub endpoints: Option<Vec<String>>,
    /// TLS to `https://` members: the CA that signed their certificates
    /// (trusted alone) and, for members that ask for one, this server's
    /// client certificate and key. PEM files.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Every key starts with it (default `/meshca/<datacenter>/`).
    pub prefix: Option<String>,
    /// One request to one member, a Go duration (default 2s).
    pub request_timeout: Option<String>,
    /// The leader's lease, a Go duration (default 5s): how long the
    /// servers go without a leader after the leader dies.
    pub lease_ttl: Option<String>,
}

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// sled in the data dir (or memory with `--dev`).
    Embedded,
    Etcd(EtcdSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub request_timeout: std::time::Duration,
    pub lease_ttl: std::time::Duration,
    /// Exactly when the endpoints are `https://`.
    pub tls: Option<EtcdTlsFiles>,
}

/// TLS to etcd: the members' CA, and this server's client certificate and
/// key when the members ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The effective server settings.
#[derive(Debug)]
pub struct Settings {
    pub dev: bool,
    pub data_dir: PathBuf,
    pub datacenter: String,
    pub bind: String,
    /// What the other servers on a shared store reach this one at.
    pub advertise_addr: Option<std::net::IpAddr>,
    /// `None`: the HTTP listener is off (`ports.http = -1`).
    pub http_port: Option<u16>,
    /// `Some` exactly when `tls` is.
    pub https_port: Option<u16>,
    pub tls: Option<TlsOptions>,
    /// Things the operator should know, logged once logging is set up.
    pub warnings: Vec<String>,
    pub store_key_file: Option<PathBuf>,
    /// The previous store key, to re-seal the store under `store_key_file`.
    pub old_store_key_file: Option<PathBuf>,
    pub data_key_rotation_period: time::Duration,
    pub store: StoreBackend,
    pub initial_ca: CaConfig,
    /// Whether the file set `connect.ca_provider` or `connect.ca_config`.
    pub ca_config_given: bool,
    pub audit_path: Option<PathBuf>,
    pub acl: AclSettings,
    pub log_json: bool,
    pub log_level: String,
    /// Set for a secondary datacenter.
    pub secondary: Option<SecondarySettings>,
    pub shutdown_grace: std::time::Duration,
}

/// How a secondary datacenter reaches its primary.
#[derive(Debug)]
pub struct SecondarySettings {
    pub primary_datacenter: String,
    /// Base URLs, tried in turn.
    pub primary_addresses: Vec<String>,
    /// The replication token (`acl.tokens.replication`), sent to the primary.
    pub replication_token: Option<secrecy::SecretString>,
    /// For an https primary: the CA bundle that verifies it and our client
    /// certificate (`tls.defaults` `ca_file`, `cert_file`, `key_file`).
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
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

/// A port setting: `None` when unset, `Some(None)` when turned off (-1).
fn port(name: &str, value: Option<i64>) -> anyhow::Result<Option<Option<u16>>> {
    match value {
        None => Ok(None),
        Some(-1) => Ok(Some(None)),
        Some(n) => u16::try_from(n).map(|p| Some(Some(p))).map_err(|_| {
            anyhow::anyhow!("{name} must be -1 (off) or a port from 0 to 65535, got {n}")
        }),
    }
}

/// A DNS domain as Consul's `domain` takes it (no trailing dot).
pub(crate) fn check_domain(domain: &str) -> anyhow::Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        bail!("domain {domain:?} is not a DNS domain");
    }
    Ok(())
}

fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: reading {}", path.display()))
}

/// The PEM file `setting` names, and the certificates in it (at least one).
pub(crate) fn pem_certs(
    setting: &str,
    path: &Path,
) -> anyhow::Result<(Vec<u8>, Vec<tls::CertificateDer<'static>>)> {
    let pem = read(setting, path)?;
    let certs = tls::parse_pem_certs(&pem)
        .map_err(|e| anyhow::anyhow!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{setting} {} holds no PEM certificate", path.display());
    }
    Ok((pem, certs))
}

/// A certificate file and its key file, read and checked: the key is the
/// certificate's.
pub(crate) struct PemIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub chain: Vec<tls::CertificateDer<'static>>,
    pub key: tls::PrivateKeyDer<'static>,
}

/// [`PemIdentity`] from the files `settings` name (certificate, key).
pub(crate) fn pem_identity(
    settings: [&str; 2],
    cert: &Path,
    key: &Path,
) -> anyhow::Result<PemIdentity> {
    let [cert_setting, key_setting] = settings;
    let (cert_pem, chain) = pem_certs(cert_setting, cert)?;
    let key_pem = read(key_setting, key)?;
    let key_der = tls::parse_pem_key(&key_pem)
        .map_err(|e| anyhow::anyhow!("{key_setting} {}: {e}", key.display()))?;
    tls::certified_key(chain.clone(), &key_der).map_err(|e| {
        anyhow::anyhow!(
            "{cert_setting} {} and {key_setting} {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(PemIdentity {
        cert_pem,
        key_pem,
        chain,
        key: key_der,
    })
}

/// The handshake timeout: seconds as a number (NATS) or a Go duration.
fn handshake_timeout(v: &Value) -> anyhow::Result<std::time::Duration> {
    let d = match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(|f| std::time::Duration::try_from_secs_f64(f).ok()),
        Value::String(s) => s
            .parse::<meshca_core::duration::GoDuration>()
            .ok()
            .map(|d| d.as_std()),
        _ => None,
    };
    match d {
        Some(d) if !d.is_zero() && d <= std::time::Duration::from_secs(60) => Ok(d),
        _ => bail!("tls timeout must be a handshake timeout between 0 and 60 seconds (e.g. 5, 0.5 or \"5s\"), got {v}"),
    }
}

/// Names the `auto_tls` certificate carries.
pub struct AutoNames<'a> {
    pub datacenter: &'a str,
    pub domain: &'a str,
    pub bind: &'a str,
}

/// The `tls` block as listener options; every key that cannot apply is
/// refused by name.
fn tls_options(
    t: Tls,
    names: AutoNames<'_>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<TlsOptions> {
    if t.internal_rpc.is_some() {
        bail!("tls.internal_rpc: meshca has no RPC interface; the HTTP API's TLS is set in tls.defaults or tls.https");
    }
    if t.grpc.is_some() {
        bail!("tls.grpc: meshca has no gRPC interface; the HTTP API's TLS is set in tls.defaults or tls.https");
    }
    let d = t
        .defaults
        .unwrap_or_default()
        .overridden_by(t.https.unwrap_or_default());
    if d.ca_path.is_some() {
        bail!("tls ca_path is not supported: put the CA certificates in one ca_file");
    }
    for (key, set) in [
        ("verify_outgoing", d.verify_outgoing.is_some()),
        ("verify_server_hostname", d.verify_server_hostname.is_some()),
        ("use_auto_cert", d.use_auto_cert.is_some()),
    ] {
        if set {
            bail!("tls {key} cannot apply: meshca makes no outgoing TLS connections and serves only its HTTP API");
        }
    }
    let auto = t.auto_tls.unwrap_or(false);
    let identity = match (auto, &d.cert_file, &d.key_file) {
        (true, None, None) => {
            let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
            if let Ok(ip) = names.bind.parse::<std::net::IpAddr>() {
                if !ip.is_unspecified() && !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            ServerIdentity::Auto {
                dns_names: vec![
                    format!("server.{}.{}", names.datacenter, names.domain),
                    "localhost".into(),
                ],
                ips,
            }
        }
        (true, _, _) => {
            bail!("tls auto_tls = true and cert_file/key_file are both set: choose one")
        }
        (false, Some(cert), Some(key)) => {
            let files = pem_identity(["tls cert_file", "tls key_file"], cert, key)?;
            warn_if_shared("tls key_file", key, warnings);
            ServerIdentity::Files {
                chain: files.chain,
                key: files.key,
            }
        }
        (false, Some(_), None) => bail!("tls cert_file is set without key_file"),
        (false, None, Some(_)) => bail!("tls key_file is set without cert_file"),
        (false, None, None) => {
            bail!("tls: no certificate for the HTTPS listener: set cert_file and key_file, or auto_tls = true")
        }
    };
    let mut opts = TlsOptions::new(identity);
    if let Some(ca) = &d.ca_file {
        opts.client_ca = pem_certs("tls ca_file", ca)?.1;
    }
    opts.verify_incoming = d.verify_incoming.unwrap_or(false);
    opts.verify_and_map = d.verify_and_map.unwrap_or(false);
    if opts.verify_incoming && opts.client_ca.is_empty() {
        bail!("tls verify_incoming = true requires ca_file (the CA of the client certificates)");
    }
    if d.ca_file.is_some() && !opts.verify_incoming {
        warnings.push("tls ca_file is set without verify_incoming: client certificates signed by it are accepted when presented but not required".into());
    }
    if let Some(v) = &d.tls_min_version {
        opts.min_version = v
            .parse()
            .map_err(|e| anyhow::anyhow!("tls tls_min_version: {e}"))?;
    }
    if let Some(suites) = &d.tls_cipher_suites {
        if opts.min_version == MinVersion::Tls13 {
            bail!("tls tls_cipher_suites cannot be set when tls_min_version is tls13 (TLS 1.3 suites are not configurable)");
        }
        let names = suites.names();
        if names.is_empty() {
            bail!("tls tls_cipher_suites is empty");
        }
        opts.cipher_suites = Some(
            names
                .iter()
                .map(|n| tls::cipher_suite(n))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("tls tls_cipher_suites: {e}"))?,
        );
    }
    if let Some(curves) = &d.curve_preferences {
        let names = curves.names();
        if names.is_empty() {
            bail!("tls curve_preferences is empty");
        }
        opts.curves = Some(
            names
                .iter()
                .map(|n| tls::curve(n))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("tls curve_preferences: {e}"))?,
        );
    }
    if let Some(t) = &d.timeout {
        opts.handshake_timeout = handshake_timeout(t)?;
    }
    Ok(opts)
}

/// A warning when the private key file `what` is readable by anyone but
/// its owner.
fn warn_if_shared(what: &str, path: &Path, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{what} {} is readable by others (mode {mode:04o}); make it 0600",
                path.display()
            ));
        }
    }
}

/// The configuration keys about the primary datacenter.
struct PrimaryLinkConfig {
    primary_datacenter: Option<String>,
    primary_addresses: Option<Vec<String>>,
    replication: Option<String>,
    tls_defaults: Option<TlsInterface>,
}

/// The secondary's link to its primary, or `None` for a primary (no
/// `primary_datacenter`, or the same as `datacenter`). Settings that only a
/// secondary uses are refused in a primary, and a secondary must be able to
/// reach its primary.
fn secondary_settings(
    args: &ServerArgs,
    file: PrimaryLinkConfig,
    datacenter: &str,
    initial_ca: &CaConfig,
) -> anyhow::Result<Option<SecondarySettings>> {
    let primary = args.primary_datacenter.clone().or(file.primary_datacenter);
    let addresses = match args.primary_address.is_empty() {
        true => file.primary_addresses.unwrap_or_default(),
        false => args.primary_address.clone(),
    };
    let replication = file.replication;
    let Some(primary) = primary.filter(|p| p != datacenter) else {
        if !addresses.is_empty() {
            bail!("primary_addresses (--primary-address) only apply to a secondary datacenter: set primary_datacenter (--primary-datacenter) to the primary's name, other than datacenter {datacenter:?}");
        }
        if replication.is_some() {
            bail!("acl.tokens.replication is the token a secondary datacenter presents to its primary; this server is the primary datacenter ({datacenter:?}), where it cannot apply");
        }
        return Ok(None);
    };
    meshca_core::spiffe::validate_segment("primary_datacenter", &primary)
        .map_err(|e| anyhow::anyhow!("invalid primary_datacenter: {e}"))?;
    if addresses.is_empty() {
        bail!("datacenter {datacenter:?} is a secondary of {primary:?}: set primary_addresses (--primary-address) to the primary's HTTP(S) URL");
    }
    for a in &addresses {
        let url = reqwest::Url::parse(a)
            .map_err(|e| anyhow::anyhow!("primary_addresses: {a:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("primary_addresses: {a:?} must be an http:// or https:// URL with a host");
        }
    }
    if initial_ca.private_key().is_some() || initial_ca.root_cert().is_some() {
        bail!("connect.ca_config: a secondary datacenter's root is the primary's; RootCert and PrivateKey cannot be set here");
    }
    if initial_ca.provider() != meshca_core::ProviderKind::Consul {
        bail!("connect.ca_provider = {:?}: a secondary datacenter uses the consul provider (its primary may use vault)", initial_ca.provider().as_str());
    }
    let tls = file.tls_defaults.unwrap_or_default();
    let client_cert = match (tls.cert_file, tls.key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    Ok(Some(SecondarySettings {
        primary_datacenter: primary,
        primary_addresses: addresses,
        replication_token: replication.map(secrecy::SecretString::from),
        ca_file: tls.ca_file,
        client_cert,
    }))
}

fn settings(args: &ServerArgs, mut file: FileConfig) -> anyhow::Result<Settings> {
    let connect = file.connect.unwrap_or_default();
    if connect.enabled == Some(false) {
        bail!(
            "connect.enabled = false: meshca is a Connect CA and cannot run with Connect disabled"
        );
    }
    let ca_config_given = connect.ca_provider.is_some() || connect.ca_config.is_some();
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
    let replication = file
        .acl
        .as_mut()
        .and_then(|a| a.tokens.as_mut())
        .and_then(|t| t.replication.take());
    let link = PrimaryLinkConfig {
        primary_datacenter: file.primary_datacenter.take(),
        primary_addresses: file.primary_addresses.take(),
        replication,
        tls_defaults: file.tls.as_ref().and_then(|t| t.defaults.clone()),
    };
    let secondary = secondary_settings(args, link, &datacenter, &initial_ca)?;
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
    if args.dev && (args.data_dir.is_some() || file.data_dir.is_some()) {
        bail!("--dev keeps the store in memory: a data dir (--data-dir, data_dir) cannot apply");
    }
    if args.dev && (store_key_file.is_some() || old_store_key_file.is_some()) {
        bail!(
            "--dev keeps the store in memory under a throw-away key: a store key file \
             (encrypt_store.key_file, old_key_file, --store-key-file, --old-store-key-file) \
             cannot apply"
        );
    }
    let store = store_backend(args, file.store.take(), &datacenter)?;
    if let StoreBackend::Etcd(_) = &store {
        if args.dev {
            bail!("--dev keeps the store in memory: an etcd store (--store etcd) cannot apply");
        }
        if store_key_file.is_none() {
            bail!(
                "the etcd store needs the store key in a file every server reads (--store-key-file or encrypt_store.key_file, made once with `meshca keygen`): a key generated in one server's data dir could not open the others' records"
            );
        }
        if old_store_key_file.is_some() {
            bail!(
                "--old-store-key-file (encrypt_store.old_key_file) cannot apply to the etcd store yet: re-sealing under a new store key works with the embedded store only"
            );
        }
    }
    let bind = args
        .client
        .clone()
        .or(file.client_addr)
        .unwrap_or_else(|| "127.0.0.1".into());
    let advertise_addr = match args.advertise.clone().or(file.advertise_addr.take()) {
        Some(text) => Some(text.parse::<std::net::IpAddr>().map_err(|_| {
            anyhow::anyhow!("invalid advertise_addr {text:?}: expected an IP address")
        })?),
        None => None,
    };
    let unspecified = bind
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    match (&store, advertise_addr) {
        (StoreBackend::Embedded, Some(_)) => bail!(
            "advertise_addr (--advertise) tells the other servers on an etcd store where this \
             one is: it cannot apply to the embedded store"
        ),
        (StoreBackend::Etcd(_), None) if unspecified => bail!(
            "the API binds to {bind}, which the other servers sharing the etcd store cannot \
             reach: set advertise_addr (--advertise) to this server's address"
        ),
        _ => {}
    }
    let ports = file.ports.unwrap_or_default();
    let http_port = match port("ports.http", args.http_port.or(ports.http))? {
        None => Some(8500),
        Some(p) => p,
    };
    let https_port = port("ports.https", args.https_port.or(ports.https))?.flatten();
    let domain = file.domain.unwrap_or_else(|| "consul".into());
    check_domain(&domain)?;
    let mut warnings = Vec::new();
    if let StoreBackend::Etcd(EtcdSettings {
        tls: Some(EtcdTlsFiles {
            client: Some((_, key)),
            ..
        }),
        ..
    }) = &store
    {
        warn_if_shared("store.etcd.key_file", key, &mut warnings);
    }
    // In a secondary without an HTTPS port, the tls block only says how to
    // reach an https primary (ca_file, client certificate).
    let outgoing_only = secondary.is_some() && https_port.is_none();
    let tls = match file.tls.filter(|_| !outgoing_only) {
        Some(t) => Some(tls_options(
            t,
            AutoNames {
                datacenter: &datacenter,
                domain: &domain,
                bind: &bind,
            },
            &mut warnings,
        )?),
        None => None,
    };
    match (&tls, https_port, http_port) {
        (Some(_), None, _) => bail!("tls is configured but ports.https (or --https-port) is not: meshca serves TLS on the HTTPS port only"),
        (None, Some(_), _) => bail!("ports.https is set but there is no tls block (cert_file and key_file, or auto_tls = true)"),
        (None, None, None) => bail!("ports.http = -1 and no HTTPS port: meshca would not listen at all"),
        (Some(t), Some(_), Some(http)) if t.verify_incoming || t.verify_and_map => {
            warnings.push(format!("the HTTP port {http} stays open without TLS or client certificates (as in Consul); set ports.http = -1 to serve only HTTPS"));
        }
        _ => {}
    }
    Ok(Settings {
        dev: args.dev,
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| "meshca-data".into()),
        datacenter,
        bind,
        advertise_addr,
        http_port,
        https_port,
        tls,
        warnings,
        store_key_file,
        old_store_key_file,
        data_key_rotation_period,
        store,
        initial_ca,
        ca_config_given,
        audit_path: file.audit.and_then(|a| a.path),
        acl: acl_settings(args.dev, file.acl)?,
        log_json: file.log_json.unwrap_or(false),
        log_level: file.log_level.unwrap_or_else(|| "info".into()),
        secondary,
        shutdown_grace: shutdown_grace(file.shutdown_grace_period.as_deref())?,
    })
}

/// The store backend from `--store`, `--etcd-endpoints` and the `store`
/// block (flags win).
fn store_backend(
    args: &ServerArgs,
    block: Option<StoreBlock>,
    datacenter: &str,
) -> anyhow::Result<StoreBackend> {
    let block = block.unwrap_or_default();
    let etcd = block.etcd.unwrap_or_default();
    let backend = args
        .store
        .clone()
        .or(block.backend)
        .unwrap_or_else(|| "sled".into());
    let endpoints = match &args.etcd_endpoints {
        Some(list) => Some(
            list.split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>(),
        ),
        None => etcd.endpoints,
    };
    let ca_file = args.etcd_ca_file.clone().or(etcd.ca_file);
    let cert_file = args.etcd_cert_file.clone().or(etcd.cert_file);
    let key_file = args.etcd_key_file.clone().or(etcd.key_file);
    match backend.as_str() {
        "sled" => {
            if endpoints.is_some()
                || etcd.prefix.is_some()
                || etcd.request_timeout.is_some()
                || etcd.lease_ttl.is_some()
                || ca_file.is_some()
                || cert_file.is_some()
                || key_file.is_some()
            {
                bail!(
                    "etcd settings (--etcd-endpoints, store.etcd) cannot apply to the embedded store: select the etcd store with --store etcd (store.backend = \"etcd\")"
                );
            }
            Ok(StoreBackend::Embedded)
        }
        "etcd" => {
            let endpoints = endpoints.filter(|e| !e.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the etcd store needs its members: --etcd-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379 (store.etcd.endpoints)"
                )
            })?;
            let https = etcd_endpoints_use_tls(&endpoints)?;
            let tls = etcd_tls(https, ca_file, cert_file, key_file)?;
            let prefix = etcd
                .prefix
                .unwrap_or_else(|| format!("/meshca/{datacenter}/"));
            if prefix.is_empty() {
                bail!("store.etcd.prefix is empty: meshca's keys need a prefix of their own");
            }
            let request_timeout = match etcd.request_timeout.as_deref() {
                None => std::time::Duration::from_secs(2),
                Some(text) => etcd_duration("request_timeout", text, 100, 60_000)?,
            };
            let lease_ttl = match etcd.lease_ttl.as_deref() {
                None => std::time::Duration::from_secs(5),
                Some(text) => etcd_duration("lease_ttl", text, 1_000, 60_000)?,
            };
            Ok(StoreBackend::Etcd(EtcdSettings {
                endpoints,
                prefix,
                request_timeout,
                lease_ttl,
                tls,
            }))
        }
        other => bail!("unknown store backend {other:?}: expected \"sled\" or \"etcd\""),
    }
}

/// Whether the members are reached over TLS: every endpoint is
/// `https://host:port`, or every one `http://host:port`.
fn etcd_endpoints_use_tls(endpoints: &[String]) -> anyhow::Result<bool> {
    let schemes = endpoints
        .iter()
        .map(|e| check_etcd_endpoint(e))
        .collect::<anyhow::Result<Vec<bool>>>()?;
    let first = schemes.first().copied().unwrap_or(false);
    if schemes.iter().any(|&https| https != first) {
        bail!(
            "etcd endpoints {}: all http:// or all https://, not both",
            endpoints.join(",")
        );
    }
    Ok(first)
}

/// An etcd member's client URL, `http://host:port` or `https://host:port`:
/// whether it is https.
fn check_etcd_endpoint(endpoint: &str) -> anyhow::Result<bool> {
    let parsed = match endpoint.split_once("://") {
        Some(("http", rest)) => Some((false, rest)),
        Some(("https", rest)) => Some((true, rest)),
        _ => None,
    };
    let valid = parsed.filter(|(_, rest)| {
        rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        })
    });
    match valid {
        Some((https, _)) => Ok(https),
        None => bail!("etcd endpoint {endpoint:?}: expected http://host:port or https://host:port"),
    }
}

/// TLS to etcd: a CA file exactly when the endpoints are https, and a
/// client certificate only with its key.
fn etcd_tls(
    https: bool,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> anyhow::Result<Option<EtcdTlsFiles>> {
    if !https {
        if ca_file.is_some() || cert_file.is_some() || key_file.is_some() {
            bail!(
                "etcd TLS files (--etcd-ca-file, --etcd-cert-file, --etcd-key-file; store.etcd.ca_file, cert_file, key_file) cannot apply to http:// endpoints: give https://host:port"
            );
        }
        return Ok(None);
    }
    let ca_file = ca_file.ok_or_else(|| {
        anyhow::anyhow!(
            "https etcd endpoints need the CA that signed the members' certificates: --etcd-ca-file (store.etcd.ca_file)"
        )
    })?;
    let client = match (cert_file, key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!(
            "an etcd client certificate needs both --etcd-cert-file and --etcd-key-file (store.etcd.cert_file, key_file)"
        ),
    };
    Ok(Some(EtcdTlsFiles { ca_file, client }))
}

/// `store.etcd.<key>`: a Go duration from `min_ms` to `max_ms`.
fn etcd_duration(
    key: &str,
    text: &str,
    min_ms: u64,
    max_ms: u64,
) -> anyhow::Result<std::time::Duration> {
    let range = std::time::Duration::from_millis(min_ms)..=std::time::Duration::from_millis(max_ms);
    match text.parse::<meshca_core::GoDuration>() {
        Ok(d) if range.contains(&d.as_std()) => Ok(d.as_std()),
        _ => bail!(
            "invalid store.etcd.{key} {text:?}: expected a Go duration from {:?} to {:?}",
            range.start(),
            range.end()
        ),
    }
}

/// The log filter for `log_level`. A bare level applies to meshca's own
/// code, with the libraries (sled, hyper, rustls…) at `info` at most, so
/// that `debug` shows meshca's debug lines rather than the storage
/// engine's internals. A filter with directives (`info,sled=debug`) is
/// taken as written.
pub fn log_filter(level: &str) -> String {
    if level.contains([',', '=']) {
        return level.to_string();
    }
    let libraries = match level {
        "trace" | "debug" => "info",
        other => other,
    };
    format!("{libraries},meshca={level}")
}

/// `shutdown_grace_period`: a Go duration up to 5m (default 10s).
fn shutdown_grace(text: Option<&str>) -> anyhow::Result<std::time::Duration> {
    let Some(text) = text else {
        return Ok(std::time::Duration::from_secs(10));
    };
    match text.parse::<meshca_core::GoDuration>() {
        Ok(d) if d.as_std() <= std::time::Duration::from_secs(300) => Ok(d.as_std()),
        _ => bail!("invalid shutdown_grace_period {text:?}: expected a Go duration up to 5m, such as \"10s\""),
    }
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
    fn the_etcd_store_from_flags_or_the_file() {
        let flags = load(&ServerArgs {
            store: Some("etcd".into()),
            etcd_endpoints: Some("http://127.0.0.1:2379, http://127.0.0.2:2379".into()),
            store_key_file: Some("/k".into()),
            datacenter: Some("east".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            flags.store,
            StoreBackend::Etcd(EtcdSettings {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.2:2379".into()
                ],
                prefix: "/meshca/east/".into(),
                request_timeout: std::time::Duration::from_secs(2),
                lease_ttl: std::time::Duration::from_secs(5),
                tls: None,
            })
        );
        let file = load_text(
            "a.hcl",
            "encrypt_store { key_file = \"/k\" }\nstore {\n  backend = \"etcd\"\n  etcd {\n    endpoints = [\"http://e1:2379\"]\n    prefix = \"/ca/\"\n    request_timeout = \"500ms\"\n    lease_ttl = \"3s\"\n  }\n}\n",
        )
        .unwrap();
        let StoreBackend::Etcd(etcd) = file.store else {
            panic!("not etcd: {:?}", file.store);
        };
        assert_eq!(etcd.endpoints, ["http://e1:2379"]);
        assert_eq!(etcd.prefix, "/ca/");
        assert_eq!(etcd.request_timeout, std::time::Duration::from_millis(500));
        assert_eq!(etcd.lease_ttl, std::time::Duration::from_secs(3));
        assert_eq!(
            load(&ServerArgs::default()).unwrap().store,
            StoreBackend::Embedded
        );
    }

    #[test]
    fn tls_to_etcd_from_flags_or_the_file() {
        let flags = load(&ServerArgs {
            store: Some("etcd".into()),
            etcd_endpoints: Some("https://127.0.0.1:2379,https://127.0.0.2:2379".into()),
            etcd_ca_file: Some("/ca.pem".into()),
            etcd_cert_file: Some("/meshca.pem".into()),
            etcd_key_file: Some("/meshca-key.pem".into()),
            store_key_file: Some("/k".into()),
            ..Default::default()
        })
        .unwrap();
        let StoreBackend::Etcd(etcd) = flags.store else {
            panic!("not etcd: {:?}", flags.store);
        };
        assert_eq!(
            etcd.tls,
            Some(EtcdTlsFiles {
                ca_file: "/ca.pem".into(),
                client: Some(("/meshca.pem".into(), "/meshca-key.pem".into())),
            })
        );
        let file = load_text(
            "a.hcl",
            "encrypt_store { key_file = \"/k\" }\nstore {\n  backend = \"etcd\"\n  etcd {\n    endpoints = [\"https://e1:2379\"]\n    ca_file = \"/etcd-ca.pem\"\n  }\n}\n",
        )
        .unwrap();
        let StoreBackend::Etcd(etcd) = file.store else {
            panic!("not etcd: {:?}", file.store);
        };
        // Members that do not ask for client certificates need none.
        assert_eq!(
            etcd.tls,
            Some(EtcdTlsFiles {
                ca_file: "/etcd-ca.pem".into(),
                client: None,
            })
        );
        // A client key others can read: said once logging is up.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("meshca-key.pem");
        std::fs::write(&key, "not read here").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let shared = load(&ServerArgs {
            store: Some("etcd".into()),
            etcd_endpoints: Some("https://127.0.0.1:2379".into()),
            etcd_ca_file: Some("/ca.pem".into()),
            etcd_cert_file: Some("/meshca.pem".into()),
            etcd_key_file: Some(key.clone()),
            store_key_file: Some("/k".into()),
            ..Default::default()
        })
        .unwrap();
        let said = format!(
            "store.etcd.key_file {} is readable by others",
            key.display()
        );
        assert!(
            shared.warnings.iter().any(|w| w.contains(&said)),
            "{:?}",
            shared.warnings
        );
        assert!(flags.warnings.iter().all(|w| !w.contains("store.etcd")));
    }

    #[test]
    fn etcd_settings_that_cannot_apply_are_refused() {
        let etcd = |f: fn(&mut ServerArgs)| {
            let mut args = ServerArgs {
                store: Some("etcd".into()),
                etcd_endpoints: Some("http://127.0.0.1:2379".into()),
                store_key_file: Some("/k".into()),
                ..Default::default()
            };
            f(&mut args);
            load(&args).unwrap_err().to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            (etcd(|a| a.etcd_endpoints = None), "needs its members"),
            (
                etcd(|a| a.etcd_endpoints = Some(" , ".into())),
                "needs its members",
            ),
            (
                etcd(|a| a.etcd_endpoints = Some("https://e:2379".into())),
                "need the CA that signed the members' certificates",
            ),
            (
                etcd(|a| a.etcd_endpoints = Some("http://e:2379,https://f:2379".into())),
                "all http:// or all https://",
            ),
            (
                etcd(|a| a.etcd_endpoints = Some("grpc://e:2379".into())),
                "http://host:port or https://host:port",
            ),
            (
                etcd(|a| a.etcd_ca_file = Some("/ca.pem".into())),
                "cannot apply to http:// endpoints",
            ),
            (
                etcd(|a| {
                    a.etcd_endpoints = Some("https://e:2379".into());
                    a.etcd_ca_file = Some("/ca.pem".into());
                    a.etcd_cert_file = Some("/cert.pem".into());
                }),
                "needs both --etcd-cert-file and --etcd-key-file",
            ),
            (
                etcd(|a| {
                    a.store = None;
                    a.etcd_endpoints = None;
                    a.store_key_file = None;
                    a.etcd_key_file = Some("/key.pem".into());
                }),
                "cannot apply to the embedded store",
            ),
            (
                etcd(|a| a.etcd_endpoints = Some("http://e".into())),
                "http://host:port",
            ),
            (
                etcd(|a| a.etcd_endpoints = Some("http://e:0".into())),
                "http://host:port",
            ),
            (etcd(|a| a.store_key_file = None), "store key in a file"),
            (
                etcd(|a| a.old_store_key_file = Some("/old".into())),
                "cannot apply to the etcd",
            ),
            (
                etcd(|a| a.store = Some("consul".into())),
                "unknown store backend",
            ),
            (
                etcd(|a| {
                    a.store = None;
                }),
                "cannot apply to the embedded store",
            ),
            (
                etcd(|a| {
                    a.store_key_file = None;
                    a.dev = true;
                }),
                "--dev",
            ),
        ];
        for (err, want) in cases {
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        let everywhere = etcd(|a| a.client = Some("0.0.0.0".into()));
        assert!(everywhere.contains("set advertise_addr"), "{everywhere}");
        let embedded = load(&ServerArgs {
            advertise: Some("10.0.0.1".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            embedded.contains("cannot apply to the embedded"),
            "{embedded}"
        );
        let garbage = etcd(|a| a.advertise = Some("meshca.example".into()));
        assert!(garbage.contains("expected an IP address"), "{garbage}");
        let ok = load(&ServerArgs {
            store: Some("etcd".into()),
            etcd_endpoints: Some("http://127.0.0.1:2379".into()),
            store_key_file: Some("/k".into()),
            client: Some("0.0.0.0".into()),
            advertise: Some("10.0.0.1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.advertise_addr, Some("10.0.0.1".parse().unwrap()));
        let err = load_text(
            "a.json",
            r#"{"store": {"backend": "etcd", "etcd": {"endpoints": ["http://e:1"], "request_timeout": "5m"}}, "encrypt_store": {"key_file": "/k"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("request_timeout"), "{err}");
    }

    #[test]
    fn defaults_without_flags_or_files() {
        let s = load(&ServerArgs::default()).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("meshca-data"));
        assert_eq!(
            (s.bind.as_str(), s.http_port, s.datacenter.as_str()),
            ("127.0.0.1", Some(8500), "dc1")
        );
        assert_eq!(s.initial_ca, CaConfig::default());
    }

    #[test]
    fn hcl_and_json_files_set_the_same_keys() {
        let hcl = load_text("a.hcl", "datacenter = \"east\"\nports { http = 9500 }\nconnect {\n  ca_config {\n    leaf_cert_ttl = \"24h\"\n    private_key_type = \"rsa\"\n  }\n}\n").unwrap();
        let json = load_text("a.json", r#"{"datacenter":"east","ports":{"http":9500},"connect":{"ca_config":{"LeafCertTTL":"24h","PrivateKeyType":"rsa"}}}"#).unwrap();
        for s in [hcl, json] {
            assert_eq!(s.datacenter, "east");
            assert_eq!(s.http_port, Some(9500));
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
    fn the_audit_path_is_read() {
        let s = load_text("a.json", r#"{"audit":{"path":"/tmp/audit.log"}}"#).unwrap();
        assert_eq!(s.audit_path, Some(PathBuf::from("/tmp/audit.log")));
    }

    /// A CA, a server certificate and key signed by it, and another key,
    /// written to `dir` as PEM.
    fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("other-key.pem"),
        );
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        std::fs::write(&paths.3, other.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for k in [&paths.2, &paths.3] {
            std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        paths
    }

    fn tls_load(tls: Value, https: Option<i64>) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, json!({ "tls": tls }).to_string()).unwrap();
        load(&ServerArgs {
            config_file: vec![path],
            https_port: https,
            ..Default::default()
        })
    }

    use serde_json::json;

    #[test]
    fn tls_block_with_files_and_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key, _) = tls_files(dir.path());
        let s = tls_load(
            json!({"defaults": {
                "ca_file": ca, "cert_file": cert, "key_file": key, "verify_incoming": true,
                "tls_min_version": "TLSv1_2",
                "tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "curve_preferences": ["X25519", "CurveP256"], "timeout": 0.5, "verify_and_map": true,
            }, "https": {"timeout": "2s"}}),
            Some(8501),
        )
        .unwrap();
        let t = s.tls.as_ref().unwrap();
        assert_eq!((s.http_port, s.https_port), (Some(8500), Some(8501)));
        assert!(t.verify_incoming && t.verify_and_map);
        assert_eq!(t.cipher_suites.as_ref().unwrap().len(), 2);
        assert_eq!(t.curves.as_ref().unwrap().len(), 2);
        assert_eq!(t.handshake_timeout, std::time::Duration::from_secs(2));
        assert_eq!(t.client_ca.len(), 1);
        assert!(
            s.warnings.iter().any(|w| w.contains("stays open")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn auto_tls_names_the_server_and_ports_follow_consul() {
        let s = tls_load(json!({"auto_tls": true}), Some(0)).unwrap();
        match &s.tls.as_ref().unwrap().identity {
            ServerIdentity::Auto { dns_names, ips } => {
                assert_eq!(dns_names, &["server.dc1.consul", "localhost"]);
                assert_eq!(ips, &[std::net::IpAddr::from([127, 0, 0, 1])]);
            }
            other => panic!("{other:?}"),
        }
        // ports.http = -1 turns HTTP off.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"tls":{"auto_tls":true},"ports":{"http":-1,"https":8501},"domain":"mesh.internal"}"#,
        )
        .unwrap();
        let s = load(&ServerArgs {
            config_file: vec![path],
            ..Default::default()
        })
        .unwrap();
        assert_eq!((s.http_port, s.https_port), (None, Some(8501)));
        let ServerIdentity::Auto { dns_names, .. } = &s.tls.as_ref().unwrap().identity else {
            panic!("auto")
        };
        assert_eq!(dns_names[0], "server.dc1.mesh.internal");
    }

    #[test]
    fn tls_keys_that_cannot_apply_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key, other_key) = tls_files(dir.path());
        let files = json!({"cert_file": cert, "key_file": key});
        let with = |extra: Value| {
            let mut d = files.clone();
            d.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({ "defaults": d })
        };
        let cases: Vec<(Value, Option<i64>, &str)> = vec![
            (
                with(json!({"verify_incoming": true})),
                Some(0),
                "requires ca_file",
            ),
            (
                json!({"defaults": {"cert_file": cert, "key_file": other_key}}),
                Some(0),
                "does not belong",
            ),
            (
                with(
                    json!({"tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_BOGUS"}),
                ),
                Some(0),
                "TLS_BOGUS",
            ),
            (
                with(json!({"tls_cipher_suites": "TLS_RSA_WITH_AES_128_CBC_SHA"})),
                Some(0),
                "not offered",
            ),
            (
                with(json!({"tls_min_version": "tls11"})),
                Some(0),
                "tls_min_version",
            ),
            (
                with(
                    json!({"tls_min_version": "tls13", "tls_cipher_suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}),
                ),
                Some(0),
                "tls13",
            ),
            (
                with(json!({"curve_preferences": ["CurveP521"]})),
                Some(0),
                "CurveP521",
            ),
            (with(json!({"timeout": 0})), Some(0), "timeout"),
            (
                with(json!({"verify_outgoing": true})),
                Some(0),
                "verify_outgoing",
            ),
            (with(json!({"ca_path": "/etc/ssl"})), Some(0), "ca_path"),
            (with(json!({"tls_cipher": "x"})), Some(0), "tls_cipher"),
            (
                json!({"defaults": {"cert_file": cert}}),
                Some(0),
                "key_file",
            ),
            (json!({"defaults": {}}), Some(0), "no certificate"),
            (
                json!({"auto_tls": true, "defaults": files.clone()}),
                Some(0),
                "choose one",
            ),
            (json!({"internal_rpc": {}}), Some(0), "internal_rpc"),
            (with(json!({})), None, "ports.https"),
            (
                with(json!({"ca_file": dir.path().join("missing.pem")})),
                Some(0),
                "missing.pem",
            ),
        ];
        for (tls, https, want) in cases {
            let err = format!("{:#}", tls_load(tls.clone(), https).unwrap_err());
            assert!(err.contains(want), "{tls}: want {want:?} in {err:?}");
        }
        // An HTTPS port without a tls block.
        let err = load(&ServerArgs {
            https_port: Some(8501),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no tls block"), "{err}");
        let _ = ca;
    }

    #[test]
    fn a_key_file_others_can_read_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key, _) = tls_files(dir.path());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = tls_load(
            json!({"defaults": {"cert_file": cert, "key_file": key}}),
            Some(0),
        )
        .unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("readable by others")),
            "{:?}",
            s.warnings
        );
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

    #[test]
    fn a_secondary_names_its_primary_and_how_to_reach_it() {
        let file = r#"{"datacenter":"dc2","primary_datacenter":"dc1",
            "primary_addresses":["https://10.0.0.1:8501","http://10.0.0.2:8500"],
            "acl":{"tokens":{"replication":"r-token"}},
            "tls":{"defaults":{"ca_file":"/ca.pem","cert_file":"/c.pem","key_file":"/k.pem"}}}"#;
        let s = load_text("a.json", file).unwrap();
        let sec = s.secondary.expect("a secondary");
        assert_eq!(sec.primary_datacenter, "dc1");
        assert_eq!(sec.primary_addresses.len(), 2);
        use secrecy::ExposeSecret;
        assert_eq!(sec.replication_token.unwrap().expose_secret(), "r-token");
        assert_eq!(sec.ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(sec.client_cert.is_some());
        assert!(
            s.tls.is_none(),
            "no HTTPS port: the tls block is for the primary only"
        );

        let flags = load(&ServerArgs {
            datacenter: Some("dc3".into()),
            primary_datacenter: Some("dc1".into()),
            primary_address: vec!["http://127.0.0.1:8500".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            flags.secondary.unwrap().primary_addresses,
            ["http://127.0.0.1:8500"]
        );

        let primary = load_text(
            "a.json",
            r#"{"datacenter":"dc1","primary_datacenter":"dc1"}"#,
        );
        assert!(primary.unwrap().secondary.is_none());
    }

    #[test]
    fn secondary_settings_that_cannot_apply_are_refused() {
        for (text, needle) in [
            (
                r#"{"datacenter":"dc2","primary_datacenter":"dc1"}"#,
                "set primary_addresses",
            ),
            (
                r#"{"primary_addresses":["http://x:1"]}"#,
                "only apply to a secondary",
            ),
            (r#"{"acl":{"tokens":{"replication":"x"}}}"#, "replication"),
            (
                r#"{"datacenter":"dc2","primary_datacenter":"dc1","primary_addresses":["ftp://x"]}"#,
                "http:// or https://",
            ),
            (
                r#"{"datacenter":"dc2","primary_datacenter":"dc1","primary_addresses":["http://[::1"]}"#,
                "is not a URL",
            ),
            (
                r#"{"datacenter":"dc2","primary_datacenter":"d c","primary_addresses":["http://x"]}"#,
                "invalid primary_datacenter",
            ),
            (
                r#"{"datacenter":"dc2","primary_datacenter":"dc1","primary_addresses":["http://x"],
                   "connect":{"ca_provider":"vault","ca_config":{"Address":"http://v","Token":"t",
                   "RootPKIPath":"r","IntermediatePKIPath":"i"}}}"#,
                "uses the consul provider",
            ),
        ] {
            let err = load_text("a.json", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_bare_log_level_keeps_the_libraries_at_info() {
        assert_eq!(log_filter("debug"), "info,meshca=debug");
        assert_eq!(log_filter("trace"), "info,meshca=trace");
        assert_eq!(log_filter("warn"), "warn,meshca=warn");
        assert_eq!(log_filter("info,sled=debug"), "info,sled=debug");
    }
}
