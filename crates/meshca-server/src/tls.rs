//! TLS on the HTTP API: the rustls configuration built from the operator's
//! `tls` settings, the certificate the listener serves (from files, or
//! issued by our own Connect CA and renewed in place: `auto_tls`), and the
//! verification of client certificates against two separate anchors.
//!
//! A client certificate is verified against the Connect CA's current roots
//! (with `verify_and_map`) and against the operator's `ca_file` (with
//! `verify_incoming`), in that order, and the anchor that verified it is
//! recorded. Only a certificate verified by the mesh roots can become a
//! [`MeshIdentity`], and a certificate that chains to the mesh roots is never
//! treated as an agent or operator certificate, even when `ca_file` also
//! trusts it: a service's leaf must not act as an operator's credential
//! (Consul's CVE-2021-37219).
//!
//! What a handler sees: every request carries `ConnectInfo<SocketAddr>`
//! (the client's address); a request on a TLS connection whose client
//! presented a verified certificate also carries [`ClientCertificate`], and,
//! when that certificate is a mesh leaf of a service in our trust domain and
//! datacenter, [`MeshIdentity`]. This module authenticates; it authorises
//! nothing.

use crate::CaEngine;
use arc_swap::ArcSwap;
use meshca_ca::{CaError, IssuedLeaf};
use meshca_core::{ServiceName, SpiffeId, TrustDomain};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
/// The certificate and key types the parsers here return.
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::{TrustAnchor, UnixTime};
use secrecy::ExposeSecret;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete the TLS handshake unless the
/// configuration says otherwise (`timeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The only namespace meshca issues service leaves in; a mesh leaf in
/// another namespace maps to no identity, because [`MeshIdentity`] names a
/// service only.
const MESH_NAMESPACE: &str = "default";

/// A client certificate that is a valid mesh leaf of one of our services:
/// it chains to the Connect CA's current roots, has not expired, and its
/// only URI SAN is `spiffe://<our trust domain>/ns/default/dc/<our dc>/svc/<service>`.
/// Inserted into the request's extensions; read it with
/// `Option<Extension<MeshIdentity>>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshIdentity {
    pub service: ServiceName,
}

/// Which trust anchor verified a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// The operator's `ca_file`: agent, CLI and operator certificates.
    AgentCa,
    /// The Connect CA's roots: a mesh certificate. Never an operator's.
    Mesh,
}

/// A verified client certificate, inserted into the extensions of every
/// request on its connection (for the audit log and for authorisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub anchor: Anchor,
    /// Colon-hex serial number of the client's certificate.
    pub serial: String,
    /// The certificate's URI SANs (a mesh leaf has exactly one).
    pub uris: Vec<String>,
}

/// What the TLS handshake established about the client of one connection.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    pub client: Option<ClientCertificate>,
    pub mesh: Option<MeshIdentity>,
}

impl TlsPeer {
    /// Adds what is known to a request's extensions.
    pub fn insert_into(&self, ext: &mut axum::http::Extensions) {
        if let Some(c) = &self.client {
            ext.insert(c.clone());
        }
        if let Some(m) = &self.mesh {
            ext.insert(m.clone());
        }
    }
}

/// The lowest TLS version the listener accepts (`tls_min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

impl FromStr for MinVersion {
    type Err = String;

    /// Consul's spellings, old (`tls12`) and new (`TLSv1_2`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tls12" | "TLSv1_2" => Ok(Self::Tls12),
            "tls13" | "TLSv1_3" => Ok(Self::Tls13),
            "tls10" | "tls11" | "TLSv1_0" | "TLSv1_1" => Err(format!(
                "{s:?} is not supported: meshca speaks TLS 1.2 and 1.3 only (tls12 or tls13)"
            )),
            _ => Err(format!(
                "{s:?} is not a TLS version (tls12, tls13, TLSv1_2 or TLSv1_3)"
            )),
        }
    }
}

/// Go cipher suite names (Consul's `tls_cipher_suites`) that meshca knows
/// but does not offer: no forward secrecy, CBC or worse.
const UNOFFERED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// A TLS 1.2 cipher suite by its Go name, as Consul's `tls_cipher_suites`
/// lists them. TLS 1.3 suites are not configurable (as in Go and Consul).
pub fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, String> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    Ok(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Err(format!(
                "{name} is a TLS 1.3 suite; TLS 1.3 suites are always on and not configurable"
            ))
        }
        n if UNOFFERED_SUITES.contains(&n) => {
            return Err(format!(
                "{n} is not offered by meshca (only ECDHE suites with AES-GCM or ChaCha20-Poly1305)"
            ))
        }
        n => return Err(format!("unknown cipher suite {n:?}")),
    })
}

/// A key exchange group by its Go name (`curve_preferences`).
pub fn curve(name: &str) -> Result<&'static dyn SupportedKxGroup, String> {
    use rustls::crypto::aws_lc_rs::kx_group;
    Ok(match name {
        "X25519" => kx_group::X25519,
        "CurveP256" => kx_group::SECP256R1,
        "CurveP384" => kx_group::SECP384R1,
        "X25519MLKEM768" => kx_group::X25519MLKEM768,
        "CurveP521" => return Err("CurveP521 is not offered by meshca".into()),
        n => {
            return Err(format!(
                "unknown curve {n:?} (X25519, CurveP256, CurveP384 or X25519MLKEM768)"
            ))
        }
    })
}

/// Where the listener's certificate comes from.
pub enum ServerIdentity {
    /// `cert_file` and `key_file`: a chain (leaf first) and its key.
    Files {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
    /// `auto_tls`: issued by our own Connect CA for these names, renewed at
    /// half its life and whenever the CA's signing key changes.
    Auto {
        dns_names: Vec<String>,
        ips: Vec<IpAddr>,
    },
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Files { chain, .. } => f
                .debug_struct("Files")
                .field("certificates", &chain.len())
                .field("key", &"[redacted]")
                .finish(),
            Self::Auto { dns_names, ips } => f
                .debug_struct("Auto")
                .field("dns_names", dns_names)
                .field("ips", ips)
                .finish(),
        }
    }
}

/// The HTTPS listener's settings, validated.
#[derive(Debug)]
pub struct TlsOptions {
    pub identity: ServerIdentity,
    /// `ca_file`: anchors of agent and operator client certificates.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Require a client certificate (verified by `client_ca` or, with
    /// `verify_and_map`, by the mesh roots).
    pub verify_incoming: bool,
    /// Accept mesh leaves as client certificates and map them to
    /// [`MeshIdentity`]. Without `verify_incoming` a client certificate is
    /// optional, but one that is presented must verify.
    pub verify_and_map: bool,
    pub min_version: MinVersion,
    /// TLS 1.2 suites to offer (None: all of rustls's).
    pub cipher_suites: Option<Vec<SupportedCipherSuite>>,
    /// Key exchange groups in order of preference (None: rustls's).
    pub curves: Option<Vec<&'static dyn SupportedKxGroup>>,
    pub handshake_timeout: Duration,
}

impl TlsOptions {
    /// Options with defaults around `identity`.
    pub fn new(identity: ServerIdentity) -> Self {
        Self {
            identity,
            client_ca: Vec::new(),
            verify_incoming: false,
            verify_and_map: false,
            min_version: MinVersion::Tls12,
            cipher_suites: None,
            curves: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The settings cannot work; the message names the setting.
    #[error("{0}")]
    Invalid(String),
    /// The CA could not issue the listener's certificate (`auto_tls`).
    #[error("issuing the HTTPS certificate from the Connect CA: {0}")]
    Issue(#[from] CaError),
}

fn invalid(msg: impl Into<String>) -> TlsError {
    TlsError::Invalid(msg.into())
}

/// Every certificate in a PEM text (other blocks are skipped).
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

/// The first private key in a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn parse_pem_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM private key: {e}"))
}

fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The certificate chain and key as rustls serves them, refusing a key
/// that is not the certificate's.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unusable private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("the private key does not belong to the certificate".into())
        }
        Err(e) => Err(format!("cannot check the key against the certificate: {e}")),
    }
}

/// The signature kind of a suite's certificate (`ECDSA` or `RSA`).
fn suite_signs_with(suite: &SupportedCipherSuite) -> &'static str {
    if format!("{:?}", suite.suite()).contains("_ECDSA_") {
        "ECDSA"
    } else {
        "RSA"
    }
}

/// The listener's rustls state: the acceptor, the certificate it serves
/// (swapped whole on renewal), the client verifier and the handshake
/// timeout. With `auto_tls` a task renews the certificate; it stops when
/// this value is dropped.
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
    served: Arc<ServedCert>,
    verifier: Option<Arc<ClientVerifier>>,
    ca: Arc<CaEngine>,
    handshake_timeout: Duration,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(r) = &self.renewer {
            r.abort();
        }
    }
}

impl TlsServer {
    /// Builds the listener's TLS state; with `auto_tls`, issues the first
    /// certificate from `ca` and starts renewing it.
    pub async fn start(opts: TlsOptions, ca: Arc<CaEngine>) -> Result<Arc<Self>, TlsError> {
        if opts.verify_incoming && opts.client_ca.is_empty() {
            return Err(invalid(
                "tls verify_incoming requires ca_file (the CA that signs client certificates)",
            ));
        }
        if opts.cipher_suites.is_some() && opts.min_version == MinVersion::Tls13 {
            return Err(invalid("tls_cipher_suites cannot be set when tls_min_version is tls13 (TLS 1.3 suites are not configurable)"));
        }
        if opts.handshake_timeout.is_zero() {
            return Err(invalid("tls timeout must be more than 0"));
        }
        let mut provider = provider();
        if let Some(suites) = &opts.cipher_suites {
            if suites.is_empty() {
                return Err(invalid("tls_cipher_suites is empty"));
            }
            provider.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13
                    || suites.iter().any(|w| w.suite() == s.suite())
            });
        }
        if let Some(curves) = &opts.curves {
            if curves.is_empty() {
                return Err(invalid("curve_preferences is empty"));
            }
            provider.kx_groups = curves.clone();
        }
        let (served, renew) = match opts.identity {
            ServerIdentity::Files { chain, key } => {
                let ck = certified_key(chain, &key)
                    .map_err(|e| invalid(format!("tls cert_file/key_file: {e}")))?;
                check_suites_fit(&opts.cipher_suites, ck.key.algorithm())?;
                (ck, None)
            }
            ServerIdentity::Auto { dns_names, ips } => {
                check_suites_fit(&opts.cipher_suites, rustls::SignatureAlgorithm::ECDSA)?;
                let (leaf, ck) = issue_server_cert(&ca, &dns_names, &ips).await?;
                (ck, Some((leaf, dns_names, ips)))
            }
        };
        let served = Arc::new(ServedCert(ArcSwap::from_pointee(served)));
        let verifier = if opts.verify_incoming || opts.verify_and_map {
            Some(Arc::new(ClientVerifier::new(
                &opts.client_ca,
                opts.verify_and_map,
                opts.verify_incoming,
                ca.clone(),
            )?))
        } else {
            None
        };
        let versions: &[&rustls::SupportedProtocolVersion] = match opts.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(|e| invalid(format!("tls: {e}")))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(served.clone());
        // The API speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let renewer = renew.map(|(leaf, dns_names, ips)| {
            tokio::spawn(renew_server_cert(
                ca.clone(),
                served.clone(),
                leaf,
                dns_names,
                ips,
            ))
        });
        Ok(Arc::new(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            served,
            verifier,
            ca,
            handshake_timeout: opts.handshake_timeout,
            renewer,
        }))
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The certificate chain served now (leaf first).
    pub fn served_chain(&self) -> Vec<CertificateDer<'static>> {
        self.served.0.load().cert.clone()
    }

    /// Runs the handshake within the handshake timeout and says who the
    /// client is. `None` (logged at debug) when the handshake fails or
    /// times out: the connection is then closed.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, TlsPeer)> {
        let stream = match tokio::time::timeout(
            self.handshake_timeout,
            self.acceptor.accept(stream),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out; closing");
                return None;
            }
        };
        let tls_peer = self.identify(stream.get_ref().1.peer_certificates());
        Some((stream, tls_peer))
    }

    /// Who presented `certs` (already verified during the handshake; the
    /// anchor is found again here because rustls's verifier cannot hand
    /// data to the connection).
    fn identify(&self, certs: Option<&[CertificateDer<'static>]>) -> TlsPeer {
        let (Some(verifier), Some([ee, intermediates @ ..])) = (&self.verifier, certs) else {
            return TlsPeer::default();
        };
        let Ok(anchor) = verifier.classify(ee, intermediates) else {
            // The CA changed between the handshake and now (a root pruned):
            // treat the client as anonymous rather than guess.
            return TlsPeer::default();
        };
        let facts = CertNames::of(ee);
        let mesh = match anchor {
            Anchor::Mesh => {
                let p = self.ca.published();
                mesh_identity(&facts.uris, &p.trust_domain, self.ca.datacenter())
            }
            Anchor::AgentCa => None,
        };
        TlsPeer {
            client: Some(ClientCertificate {
                anchor,
                serial: facts.serial,
                uris: facts.uris,
            }),
            mesh,
        }
    }
}

/// Refuses a TLS 1.2 suite list that has no suite for the certificate's key
/// type: every TLS 1.2 handshake would fail.
fn check_suites_fit(
    suites: &Option<Vec<SupportedCipherSuite>>,
    key: rustls::SignatureAlgorithm,
) -> Result<(), TlsError> {
    let Some(suites) = suites else { return Ok(()) };
    let want = match key {
        rustls::SignatureAlgorithm::ECDSA => "ECDSA",
        rustls::SignatureAlgorithm::RSA => "RSA",
        _ => return Ok(()),
    };
    if suites.iter().any(|s| suite_signs_with(s) == want) {
        Ok(())
    } else {
        Err(invalid(format!(
            "tls_cipher_suites has no TLS_ECDHE_{want}_… suite for the server's {want} certificate"
        )))
    }
}

/// The URI SANs and serial of a certificate (empty when it does not parse;
/// a verified certificate always does).
struct CertNames {
    serial: String,
    uris: Vec<String>,
}

impl CertNames {
    fn of(der: &[u8]) -> Self {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return Self {
                serial: String::new(),
                uris: Vec::new(),
            };
        };
        let uris = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            serial: meshca_core::x509::colon_hex(cert.raw_serial()),
            uris,
        }
    }
}

/// The identity of a mesh-verified certificate with these URI SANs: exactly
/// one, a service SPIFFE ID in our trust domain, datacenter and namespace.
pub fn mesh_identity(
    uris: &[String],
    trust_domain: &TrustDomain,
    dc: &str,
) -> Option<MeshIdentity> {
    let [uri] = uris else { return None };
    match uri.parse::<SpiffeId>().ok()? {
        SpiffeId::Service {
            trust_domain: td,
            namespace,
            datacenter,
            service,
        } if &td == trust_domain
            && datacenter.as_str() == dc
            && namespace.as_str() == MESH_NAMESPACE =>
        {
            Some(MeshIdentity { service })
        }
        _ => None,
    }
}

/// The certificate the listener serves, swapped whole on renewal.
#[derive(Debug)]
struct ServedCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Issues the listener's certificate from the Connect CA.
async fn issue_server_cert(
    ca: &CaEngine,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<(IssuedLeaf, CertifiedKey), TlsError> {
    let leaf = ca
        .issue_server_tls(dns_names.to_vec(), ips.to_vec())
        .await?;
    let key_pem = leaf
        .private_key_pem
        .as_ref()
        .ok_or_else(|| invalid("the CA returned no key for the server certificate"))?;
    let chain = parse_pem_certs(leaf.cert_pem.as_bytes()).map_err(invalid)?;
    let key = parse_pem_key(key_pem.expose_secret().as_bytes()).map_err(invalid)?;
    let ck = certified_key(chain, &key).map_err(invalid)?;
    Ok((leaf, ck))
}

/// Whether the listener's certificate must be replaced at `now`: half its
/// life has passed, or the CA signs with another key than the one that
/// signed it (a root rotation or a renewed intermediate).
pub fn server_cert_due(
    valid_after: OffsetDateTime,
    valid_before: OffsetDateTime,
    signed_by: &str,
    now: OffsetDateTime,
    current_signing_key_id: &str,
) -> bool {
    let half = valid_after + (valid_before - valid_after) / 2;
    now >= half || signed_by != current_signing_key_id
}

/// How long to wait after a failed renewal before trying again.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// The longest sleep between checks, so that a wall clock that jumps is
/// noticed within this time.
const RENEW_CHECK: Duration = Duration::from_secs(60);

/// Keeps the `auto_tls` certificate fresh: waits for its renewal point or a
/// CA change, issues a new one and swaps it in (open connections keep the
/// certificate they were made with).
async fn renew_server_cert(
    ca: Arc<CaEngine>,
    served: Arc<ServedCert>,
    mut current: IssuedLeaf,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
) {
    let mut changes = ca.subscribe();
    loop {
        let now = ca.clock().now();
        let signing = ca.published().signer.signing_key_id().to_string();
        if !server_cert_due(
            current.valid_after,
            current.valid_before,
            &current.signing_key_id,
            now,
            &signing,
        ) {
            let half = current.valid_after + (current.valid_before - current.valid_after) / 2;
            let wait = Duration::try_from(half - now)
                .unwrap_or(Duration::ZERO)
                .min(RENEW_CHECK);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        match issue_server_cert(&ca, &dns_names, &ips).await {
            Ok((leaf, ck)) => {
                served.0.store(Arc::new(ck));
                tracing::info!(serial = %leaf.serial, valid_before = %leaf.valid_before,
                    "renewed the HTTPS certificate (auto_tls)");
                current = leaf;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the HTTPS certificate failed; retrying");
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

/// Verifies client certificates against the mesh roots (read from the CA
/// at each handshake, so a rotation takes effect at once) and the agent CA.
struct ClientVerifier {
    agent: Vec<TrustAnchor<'static>>,
    /// Whether mesh leaves are accepted (`verify_and_map`).
    mesh: bool,
    /// The mesh anchors of the last `Published` index seen.
    mesh_cache: Mutex<Option<Arc<MeshAnchors>>>,
    mandatory: bool,
    /// Verification time comes from the CA's clock, like everything else.
    ca: Arc<CaEngine>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

struct MeshAnchors {
    index: u64,
    anchors: Vec<TrustAnchor<'static>>,
    /// Every root's intermediates, so a proxy that sends only its leaf is
    /// verified too.
    intermediates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("agent_anchors", &self.agent.len())
            .field("mesh", &self.mesh)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientVerifier {
    fn new(
        client_ca: &[CertificateDer<'static>],
        mesh: bool,
        mandatory: bool,
        ca: Arc<CaEngine>,
    ) -> Result<Self, TlsError> {
        let agent = client_ca
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| invalid(format!("tls ca_file: unusable CA certificate: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            agent,
            mesh,
            mesh_cache: Mutex::new(None),
            mandatory,
            ca,
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn mesh_anchors(&self) -> Result<Arc<MeshAnchors>, rustls::Error> {
        let p = self.ca.published();
        let mut cache = self.mesh_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.as_ref().filter(|m| m.index == p.index) {
            return Ok(m.clone());
        }
        let mut anchors = Vec::new();
        let mut intermediates = Vec::new();
        for root in &p.roots {
            for der in parse_pem_certs(root.root_cert.as_bytes()).map_err(rustls::Error::General)? {
                anchors.push(
                    webpki::anchor_from_trusted_cert(&der)
                        .map_err(|e| rustls::Error::General(e.to_string()))?
                        .to_owned(),
                );
            }
            for pem in &root.intermediate_certs {
                intermediates
                    .extend(parse_pem_certs(pem.as_bytes()).map_err(rustls::Error::General)?);
            }
        }
        let m = Arc::new(MeshAnchors {
            index: p.index,
            anchors,
            intermediates,
        });
        *cache = Some(m.clone());
        Ok(m)
    }

    /// Which anchor verifies `ee`: the mesh roots first, so that a mesh
    /// certificate is always known as one.
    fn classify(
        &self,
        ee: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Anchor, rustls::Error> {
        let now = unix_time(self.ca.clock().now());
        let mut failure = None;
        if self.mesh {
            let mesh = self.mesh_anchors()?;
            let mut all: Vec<CertificateDer<'_>> = intermediates.to_vec();
            all.extend(mesh.intermediates.iter().cloned());
            match verify_client(ee, &all, &mesh.anchors, now) {
                Ok(()) => return Ok(Anchor::Mesh),
                Err(e) => failure = Some(e),
            }
        }
        if !self.agent.is_empty() {
            match verify_client(ee, intermediates, &self.agent, now) {
                Ok(()) => return Ok(Anchor::AgentCa),
                // An unknown issuer says less than why the mesh refused.
                Err(webpki::Error::UnknownIssuer) if failure.is_some() => {}
                Err(e) => failure = Some(e),
            }
        }
        Err(rustls_error(
            failure.unwrap_or(webpki::Error::UnknownIssuer),
        ))
    }
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap_or(0),
    ))
}

fn verify_client(
    ee: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let cert = webpki::EndEntityCert::try_from(ee)?;
    cert.verify_for_usage(
        meshca_provider::verify::VERIFICATION_ALGS,
        anchors,
        intermediates,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

fn rustls_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::CertRevoked => CertificateError::Revoked,
        e => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No CA names are sent: a proxy holding a mesh leaf must present it
    /// even when only the agent CA would be hinted.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.classify(end_entity, intermediates)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn versions_take_consuls_spellings_and_refuse_old_ones() {
        assert_eq!("tls12".parse(), Ok(MinVersion::Tls12));
        assert_eq!("TLSv1_3".parse(), Ok(MinVersion::Tls13));
        for bad in ["tls10", "tls11", "TLSv1_1", "1.2", ""] {
            assert!(bad.parse::<MinVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cipher_suites_by_go_name() {
        let s = cipher_suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").unwrap();
        assert_eq!(suite_signs_with(&s), "ECDSA");
        let s = cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").unwrap();
        assert_eq!(suite_signs_with(&s), "RSA");
        let e = cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").unwrap_err();
        assert!(e.contains("not offered"), "{e}");
        let e = cipher_suite("TLS_AES_128_GCM_SHA256").unwrap_err();
        assert!(e.contains("TLS 1.3"), "{e}");
        let e = cipher_suite("TLS_FOO").unwrap_err();
        assert!(e.contains("unknown cipher suite \"TLS_FOO\""), "{e}");
    }

    #[test]
    fn curves_by_go_name() {
        assert!(curve("X25519").is_ok());
        assert!(curve("CurveP256").is_ok());
        assert!(curve("CurveP384").is_ok());
        assert!(curve("CurveP521").is_err());
        assert!(curve("P-256").unwrap_err().contains("unknown curve"));
    }

    #[test]
    fn renewal_is_due_at_half_life_or_on_a_new_signing_key() {
        let a = datetime!(2030-01-01 00:00 UTC);
        let b = a + time::Duration::hours(10);
        let due = |now, key| server_cert_due(a, b, "k1", now, key);
        assert!(!due(a + time::Duration::hours(4), "k1"));
        assert!(due(a + time::Duration::hours(5), "k1"));
        assert!(due(a + time::Duration::minutes(1), "k2"));
    }

    #[test]
    fn only_one_service_uri_of_ours_is_a_mesh_identity() {
        let td = TrustDomain::for_cluster(&uuid::Uuid::from_u128(1));
        let other = TrustDomain::for_cluster(&uuid::Uuid::from_u128(2));
        let svc = |td: &TrustDomain, ns: &str, dc: &str, s: &str| {
            format!("spiffe://{}/ns/{ns}/dc/{dc}/svc/{s}", td.as_str())
        };
        let id = mesh_identity(&[svc(&td, "default", "dc1", "web")], &td, "dc1").unwrap();
        assert_eq!(id.service.as_str(), "web");
        for uris in [
            vec![svc(&other, "default", "dc1", "web")],
            vec![svc(&td, "default", "dc2", "web")],
            vec![svc(&td, "prod", "dc1", "web")],
            vec![
                svc(&td, "default", "dc1", "web"),
                svc(&td, "default", "dc1", "db"),
            ],
            vec![format!("spiffe://{}/agent/server/dc/dc1", td.as_str())],
            vec![],
        ] {
            assert_eq!(mesh_identity(&uris, &td, "dc1"), None, "{uris:?}");
        }
    }
}
