//! Certificate templates for the root, intermediate and leaf profiles of
//! meshca's certificate profiles, as rcgen parameters. Providers that sign locally use these; the
//! template is built here, never copied from a request.

use crate::ProviderError;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use meshca_core::csr::ValidatedCsr;
use meshca_core::x509::key_id;
use meshca_core::{KeySpec, Serial, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use uuid::Uuid;

fn random_bytes<const N: usize>() -> Result<[u8; N], ProviderError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ProviderError::Internal("system random source failed".into()))?;
    Ok(buf)
}

/// A random positive serial that fits a u64 (Consul's `CARoot.SerialNumber`).
pub fn ca_serial() -> Result<Vec<u8>, ProviderError> {
    let mut b = random_bytes::<8>()?;
    b[0] &= 0x7f;
    b[0] |= 0x01; // never zero, always eight significant bytes
    Ok(b.to_vec())
}

/// A random positive 128-bit leaf serial (at least 64 random bits, as
/// unique serials require).
pub fn leaf_serial() -> Result<Serial, ProviderError> {
    let mut b = random_bytes::<16>()?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Serial::from_bytes(&b).map_err(ProviderError::internal)
}

/// Eight random base-36 characters, for CA common names.
fn random_base36() -> Result<String, ProviderError> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let raw = random_bytes::<8>()?;
    Ok(raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// `<prefix>-<8 base36>.consul.ca.<first 8 of cluster id>.consul`.
pub fn ca_common_name(prefix: &str, cluster_id: &Uuid) -> Result<String, ProviderError> {
    let short: String = cluster_id.simple().to_string().chars().take(8).collect();
    Ok(format!(
        "{prefix}-{}.consul.ca.{short}.consul",
        random_base36()?
    ))
}

fn ia5(s: impl Into<String>) -> Result<rcgen::string::Ia5String, ProviderError> {
    rcgen::string::Ia5String::try_from(s.into()).map_err(ProviderError::internal)
}

/// The signature algorithm rcgen uses for a key spec.
pub fn signature_algorithm(spec: KeySpec) -> &'static rcgen::SignatureAlgorithm {
    match spec {
        KeySpec::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeySpec::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// Generates a key pair through aws-lc-rs (ring cannot generate RSA keys).
pub fn generate_key(spec: KeySpec) -> Result<KeyPair, ProviderError> {
    let alg = signature_algorithm(spec);
    let size = match spec {
        KeySpec::EcP256 | KeySpec::EcP384 => {
            return KeyPair::generate_for(alg).map_err(ProviderError::internal)
        }
        KeySpec::Rsa2048 => rcgen::RsaKeySize::_2048,
        KeySpec::Rsa3072 => rcgen::RsaKeySize::_3072,
        KeySpec::Rsa4096 => rcgen::RsaKeySize::_4096,
    };
    KeyPair::generate_rsa_for(alg, size).map_err(ProviderError::internal)
}

/// Restores a key pair from PKCS#8 DER, with the algorithm of its spec.
pub fn load_key(pkcs8: &[u8], spec: KeySpec) -> Result<KeyPair, ProviderError> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, signature_algorithm(spec))
        .map_err(ProviderError::internal)
}

/// Fields shared by the root and intermediate profiles.
fn ca_params(
    common_name: String,
    trust_domain: &TrustDomain,
    key: &impl PublicKeyData,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    constraint: BasicConstraints,
) -> Result<CertificateParams, ProviderError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(ia5(trust_domain.ca_uri())?)];
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(&ca_serial()?));
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&key.subject_public_key_info()));
    Ok(p)
}

/// The root profile: self-signed, CA:true without path length limit.
pub fn root_params(
    cluster_id: &Uuid,
    trust_domain: &TrustDomain,
    key: &impl PublicKeyData,
    now: OffsetDateTime,
    ttl: time::Duration,
) -> Result<CertificateParams, ProviderError> {
    ca_params(
        ca_common_name("pri", cluster_id)?,
        trust_domain,
        key,
        now - meshca_core::leaf::BACKDATE,
        now + ttl,
        BasicConstraints::Unconstrained,
    )
}

/// The intermediate profile: CA:true, pathLen 0, capped at the root's NotAfter.
pub fn intermediate_params(
    cluster_id: &Uuid,
    trust_domain: &TrustDomain,
    key: &impl PublicKeyData,
    now: OffsetDateTime,
    ttl: time::Duration,
    root_not_after: OffsetDateTime,
) -> Result<CertificateParams, ProviderError> {
    let mut p = ca_params(
        ca_common_name("int", cluster_id)?,
        trust_domain,
        key,
        now - meshca_core::leaf::BACKDATE,
        std::cmp::min(now + ttl, root_not_after),
        BasicConstraints::Constrained(0),
    )?;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The CSR of a secondary datacenter's intermediate key: CA with pathLen 0
/// and the trust domain's URI SAN, as the primary requires. (The primary
/// builds the certificate from its own template; the request only asks.)
pub fn intermediate_csr(
    cluster_id: &Uuid,
    trust_domain: &TrustDomain,
    key: &KeyPair,
) -> Result<String, ProviderError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        ca_common_name("int", cluster_id)?,
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.subject_alt_names = vec![SanType::URI(ia5(trust_domain.ca_uri())?)];
    p.serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(ProviderError::internal)
}

/// The leaf (SVID) profile: empty subject, critical SAN with exactly one URI
/// plus the CSR's DNS/IP names, CA:false, digitalSignature
/// (+keyEncipherment for RSA), serverAuth+clientAuth.
pub fn leaf_params(
    csr: &ValidatedCsr,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: &Serial,
) -> Result<CertificateParams, ProviderError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    let mut sans = vec![SanType::URI(ia5(csr.spiffe_id().uri())?)];
    for dns in csr.dns_sans() {
        sans.push(SanType::DnsName(ia5(dns)?));
    }
    sans.extend(csr.ip_sans().iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if csr.key_type().is_rsa() {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(csr.spki_der()));
    Ok(p)
}

/// A validated CSR's public key as rcgen takes it, with the algorithm
/// known from validation. rcgen's `SubjectPublicKeyInfo::from_der` finds
/// the algorithm by encoding and parsing every one it knows: about 11 k
/// instructions per leaf (docs/BENCHMARKS.md).
pub struct LeafPublicKey<'a> {
    alg: &'static rcgen::SignatureAlgorithm,
    key: &'a [u8],
}

impl<'a> LeafPublicKey<'a> {
    pub fn of(csr: &'a ValidatedCsr) -> Result<Self, ProviderError> {
        use meshca_core::csr::CsrKeyType;
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(csr.spki_der())
            .map_err(|e| ProviderError::InvalidInput(format!("CSR public key: {e}")))?;
        let alg = match csr.key_type() {
            CsrKeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            CsrKeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            CsrKeyType::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        };
        // A parse borrows the key from the DER; it never copies it.
        let std::borrow::Cow::Borrowed(key) = spki.subject_public_key.data else {
            return Err(ProviderError::Internal(
                "the CSR's public key was copied while parsed".into(),
            ));
        };
        Ok(Self { alg, key })
    }
}

impl PublicKeyData for LeafPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Options of `meshca tls ca create` (Consul's flags).
#[derive(Debug, Clone)]
pub struct AgentCaOptions {
    pub common_name: Option<String>,
    pub domain: String,
    /// When set, the CA carries `spiffe://<cluster-id>.consul` and can be
    /// supplied as a Connect root (`PrivateKey` + `RootCert`).
    pub cluster_id: Option<Uuid>,
    pub days: u32,
    /// Permit only DNS names under `domain` and `localhost` (+ additional).
    pub name_constraint: bool,
    pub additional_name_constraints: Vec<String>,
}

/// A self-signed EC P-256 CA as `consul tls ca create` makes it: for agent
/// TLS, or (with a cluster ID) for recovering the Connect CA. Returns the
/// certificate and private key as PEM.
pub fn agent_ca(
    opts: &AgentCaOptions,
    now: OffsetDateTime,
) -> Result<(String, String), ProviderError> {
    let key = generate_key(KeySpec::EcP256)?;
    let serial = ca_serial()?;
    let mut p = CertificateParams::default();
    let cn = opts
        .common_name
        .clone()
        .unwrap_or_else(|| format!("Consul Agent CA {}", meshca_core::x509::serial_u64(&serial)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    if let Some(id) = &opts.cluster_id {
        p.subject_alt_names = vec![SanType::URI(ia5(TrustDomain::for_cluster(id).ca_uri())?)];
    }
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - meshca_core::leaf::BACKDATE;
    p.not_after = now + time::Duration::days(i64::from(opts.days));
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&key.subject_public_key_info()));
    if opts.name_constraint {
        // DNS constraints only: URI name constraints break rustls and
        // Python's verifier for SPIFFE leaves.
        let mut permitted = vec![opts.domain.clone(), "localhost".to_string()];
        permitted.extend(opts.additional_name_constraints.iter().cloned());
        p.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: permitted
                .into_iter()
                .map(rcgen::GeneralSubtree::DnsName)
                .collect(),
            excluded_subtrees: vec![],
        });
    }
    let cert = p.self_signed(&key).map_err(ProviderError::internal)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Which certificate `meshca tls cert create` makes (Consul's
/// `--server`, `--client`, `--cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCertKind {
    Server,
    Client,
    Cli,
}

impl AgentCertKind {
    /// The word in Consul's file names (`dc1-server-consul-0.pem`).
    pub fn file_word(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Cli => "cli",
        }
    }
}

/// Options of `meshca tls cert create` (Consul's flags).
#[derive(Debug, Clone)]
pub struct AgentCertOptions {
    pub kind: AgentCertKind,
    pub datacenter: String,
    pub domain: String,
    /// Server only: adds `<node>.server.<dc>.<domain>`.
    pub node: Option<String>,
    pub additional_dns_names: Vec<String>,
    pub additional_ips: Vec<std::net::IpAddr>,
    pub days: u32,
}

impl AgentCertOptions {
    /// The certificate's common name and first DNS name.
    pub fn name(&self) -> String {
        let (dc, domain) = (&self.datacenter, &self.domain);
        match self.kind {
            AgentCertKind::Server => format!("server.{dc}.{domain}"),
            AgentCertKind::Client => format!("client.{dc}.{domain}"),
            AgentCertKind::Cli => format!("cli.client.{dc}.{domain}"),
        }
    }
}

/// An agent TLS certificate as `consul tls cert create` makes it, signed by
/// the agent CA (`ca_cert_pem`, `ca_key_pem`): a fresh EC P-256 key, CN and
/// first DNS SAN the kind's name (`server.<dc>.<domain>`), then
/// `<node>.server.<dc>.<domain>` (server with a node), `localhost` and the
/// additional names; IP SANs 127.0.0.1 (server and client) and the
/// additional addresses; serverAuth+clientAuth (the CLI's: clientAuth).
/// Returns the certificate and the private key as PEM.
pub fn agent_cert(
    opts: &AgentCertOptions,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    now: OffsetDateTime,
) -> Result<(String, String), ProviderError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| ProviderError::InvalidInput(format!("the CA key: {e}")))?;
    let ca_der = meshca_core::x509::decode_pem_blocks(ca_cert_pem, "CERTIFICATE")
        .map_err(|e| ProviderError::InvalidInput(format!("the CA certificate: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::InvalidInput("no certificate in the CA file".into()))?;
    {
        use x509_parser::prelude::FromDer;
        let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der)
            .map_err(|e| ProviderError::InvalidInput(format!("the CA certificate: {e}")))?;
        if ca.public_key().raw != ca_key.subject_public_key_info().as_slice() {
            return Err(ProviderError::InvalidInput(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        if !ca.is_ca() {
            return Err(ProviderError::InvalidInput(
                "the CA certificate is not a CA (basicConstraints CA:false)".into(),
            ));
        }
    }
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key)
        .map_err(|e| ProviderError::InvalidInput(format!("the CA certificate: {e}")))?;
    let key = generate_key(KeySpec::EcP256)?;
    let name = opts.name();
    let mut dns = vec![name.clone()];
    if let (AgentCertKind::Server, Some(node)) = (opts.kind, &opts.node) {
        dns.push(format!("{node}.server.{}.{}", opts.datacenter, opts.domain));
    }
    dns.push("localhost".into());
    dns.extend(opts.additional_dns_names.iter().cloned());
    let mut ips = Vec::new();
    if opts.kind != AgentCertKind::Cli {
        ips.push(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    ips.extend(opts.additional_ips.iter().copied());
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let mut sans = Vec::new();
    for d in dns {
        sans.push(SanType::DnsName(ia5(&d).map_err(|_| {
            ProviderError::InvalidInput(format!("{d:?} is not a DNS name"))
        })?));
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match opts.kind {
        AgentCertKind::Cli => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.not_before = now - meshca_core::leaf::BACKDATE;
    p.not_after = now + time::Duration::days(i64::from(opts.days));
    p.serial_number = Some(SerialNumber::from_slice(leaf_serial()?.as_bytes()));
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&key.subject_public_key_info()));
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(ProviderError::internal)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// The key rcgen writes into a leaf is the CSR's, with the algorithm
    /// rcgen itself would have found, for every key type a CSR may have.
    #[test]
    fn a_leafs_public_key_is_the_one_rcgen_would_parse() {
        let id: meshca_core::SpiffeId =
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"
                .parse()
                .unwrap();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let spki = key.subject_public_key_info();
            let csr = ValidatedCsr::for_public_key(id.clone(), &spki).unwrap();
            let ours = LeafPublicKey::of(&csr).unwrap();
            let rcgens = rcgen::SubjectPublicKeyInfo::from_der(&spki).unwrap();
            assert_eq!(ours.algorithm(), rcgens.algorithm());
            assert_eq!(ours.der_bytes(), rcgens.der_bytes());
            assert_eq!(ours.subject_public_key_info(), spki);
        }
    }

    #[test]
    fn agent_ca_with_cluster_id_is_a_connect_root() {
        let id = Uuid::from_u128(7);
        let opts = AgentCaOptions {
            common_name: Some("Consul Agent CA".into()),
            domain: "consul".into(),
            cluster_id: Some(id),
            days: 365,
            name_constraint: true,
            additional_name_constraints: vec!["example.com".into()],
        };
        let now = datetime!(2030-01-01 00:00 UTC);
        let (cert, key) = agent_ca(&opts, now).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = meshca_core::x509::decode_pem_blocks(&cert, "CERTIFICATE")
            .unwrap()
            .remove(0);
        let f = meshca_core::x509::cert_facts(&der).unwrap();
        assert!(f.is_ca);
        assert_eq!(f.not_after, now + time::Duration::days(365));
        use x509_parser::prelude::FromDer;
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        let nc = c.name_constraints().unwrap().unwrap().value.clone();
        assert_eq!(nc.permitted_subtrees.unwrap().len(), 3);
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("[URI(\"{}\")]", TrustDomain::for_cluster(&id).ca_uri())
        );
    }
}
