//! The PKI-engine operations behind the provider, and the checks applied to
//! every certificate Vault returns before meshca uses it.

use crate::client::VaultClient;
use meshca_core::config::VaultConfig;
use meshca_core::x509::{cert_facts, cert_pem, decode_pem_blocks, CertFacts};
use meshca_core::{CaConfig, KeySpec, Serial, TrustDomain};
use meshca_provider::verify::check_signed_intermediate;
use meshca_provider::{
    CaMaterial, CaRequest, IntermediateRequest, LeafRequest, ProviderError, SignedLeaf,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The role leaves are signed through, in the intermediate mount.
const LEAF_ROLE: &str = "meshca-leaf";
/// Issuers meshca creates are named with this prefix; a default issuer
/// under another name is an operator's root, used as it is.
const OWN_ISSUER_PREFIX: &str = "meshca-";

/// `provider_state` keys.
const ROOT_PATH: &str = "vault_root_pki_path";
const ROOT_ISSUER: &str = "vault_root_issuer_id";
const INT_PATH: &str = "vault_intermediate_pki_path";
const INT_ISSUER: &str = "vault_intermediate_issuer_id";

fn internal(msg: impl Into<String>) -> ProviderError {
    ProviderError::Internal(format!("vault: {}", msg.into()))
}

/// Where one CA lives in Vault: the two mounts and its two issuers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    root_path: String,
    root_issuer: String,
    int_path: String,
    int_issuer: String,
}

impl State {
    pub(crate) fn from_material(m: &CaMaterial) -> Result<Self, ProviderError> {
        let get = |k: &str| {
            m.provider_state
                .get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| internal(format!("the stored CA has no {k}")))
        };
        Ok(Self {
            root_path: get(ROOT_PATH)?,
            root_issuer: get(ROOT_ISSUER)?,
            int_path: get(INT_PATH)?,
            int_issuer: get(INT_ISSUER)?,
        })
    }

    fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ROOT_PATH.into(), self.root_path.clone()),
            (ROOT_ISSUER.into(), self.root_issuer.clone()),
            (INT_PATH.into(), self.int_path.clone()),
            (INT_ISSUER.into(), self.int_issuer.clone()),
        ])
    }
}

/// The configured mounts of one Vault, and the client to reach it.
#[derive(Debug)]
pub(crate) struct Mounts {
    client: Arc<VaultClient>,
    root: String,
    int: String,
    address: String,
}

fn mount_path(p: &str) -> String {
    p.trim_matches('/').to_string()
}

fn secs(d: time::Duration) -> String {
    format!("{}s", d.whole_seconds().max(1))
}

fn rfc3339(t: OffsetDateTime) -> Result<String, ProviderError> {
    t.replace_nanosecond(0)
        .map_err(|e| internal(e.to_string()))?
        .format(&Rfc3339)
        .map_err(|e| internal(e.to_string()))
}

fn str_field<'a>(v: &'a Value, key: &str, op: &str) -> Result<&'a str, ProviderError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| internal(format!("{op}: the answer has no {key}")))
}

fn one_cert(pem: &str, what: &str) -> Result<Vec<u8>, ProviderError> {
    one_block(pem, "CERTIFICATE").map_err(|e| internal(format!("{what}: {e}")))
}

/// The certificate in field `certificate` of Vault's answer `data` to `op`.
fn cert_in(data: &Value, op: &str, what: &str) -> Result<Vec<u8>, ProviderError> {
    one_cert(str_field(data, "certificate", op)?, what)
}

/// The first `label` block of `pem`.
fn one_block(pem: &str, label: &str) -> Result<Vec<u8>, ProviderError> {
    decode_pem_blocks(pem, label)
        .ok()
        .and_then(|mut b| (!b.is_empty()).then(|| b.remove(0)))
        .ok_or_else(|| internal(format!("not a PEM {label}")))
}

fn facts(der: &[u8], what: &str) -> Result<CertFacts, ProviderError> {
    cert_facts(der).map_err(|e| internal(format!("{what}: {e}")))
}

/// Vault's `key_type`/`key_bits` for a key spec.
fn vault_key(spec: KeySpec) -> (&'static str, u32) {
    (spec.key_type(), spec.bits())
}

/// A CA common name like Consul's for Vault: `pri-<random>.vault.ca.<cluster>.consul`.
fn common_name(prefix: &str, cluster_id: &uuid::Uuid) -> String {
    let short: String = cluster_id.simple().to_string().chars().take(8).collect();
    let random: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(8)
        .collect();
    format!("{prefix}-{random}.vault.ca.{short}.consul")
}

fn issuer_name(kind: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{OWN_ISSUER_PREFIX}{kind}-{}", &id[..12])
}

impl Mounts {
    pub(crate) fn new(client: Arc<VaultClient>, cfg: &VaultConfig) -> Self {
        Self {
            client,
            root: mount_path(&cfg.root_pki_path),
            int: mount_path(&cfg.intermediate_pki_path),
            address: cfg.address.clone(),
        }
    }

    async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ProviderError> {
        self.client.call(op, method, path, body).await
    }

    /// Mounts a PKI engine at `path` unless one is there, and sets its
    /// maximum lease TTL (the longest certificate it may issue).
    async fn ensure_mount(&self, path: &str, max_ttl: time::Duration) -> Result<(), ProviderError> {
        let mounts = self
            .call("list mounts", Method::GET, "sys/mounts", None)
            .await?;
        let config = json!({"max_lease_ttl": secs(max_ttl)});
        match mounts.get(format!("{path}/")) {
            Some(m) if m.get("type").and_then(Value::as_str) != Some("pki") => {
                Err(ProviderError::InvalidInput(format!(
                    "vault: {path} is mounted as {}, not a pki secrets engine",
                    m.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("something else")
                )))
            }
            Some(_) => {
                let op = format!("tune the {path} mount");
                self.call(
                    &op,
                    Method::POST,
                    &format!("sys/mounts/{path}/tune"),
                    Some(config),
                )
                .await
                .map(drop)
            }
            None => {
                let op = format!("mount a pki engine at {path}");
                let body = json!({"type": "pki", "description": "meshca CA", "config": config});
                self.call(&op, Method::POST, &format!("sys/mounts/{path}"), Some(body))
                    .await
                    .map(drop)
            }
        }
    }

    pub(crate) async fn generate_ca(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError> {
        let cfg = &req.config;
        self.ensure_mount(&self.root, cfg.root_cert_ttl().as_time())
            .await?;
        self.ensure_mount(&self.int, cfg.intermediate_cert_ttl().as_time())
            .await?;
        let (root_issuer, root_pem) = self.root_issuer(req).await?;
        let root_der = one_cert(&root_pem, "the root")?;
        check_root(&root_der, &req.trust_domain, req.now)?;
        let (int_issuer, signing_pem) = self.new_intermediate(&root_issuer, &root_der, req).await?;
        self.ensure_role(cfg).await?;
        let state = State {
            root_path: self.root.clone(),
            root_issuer,
            int_path: self.int.clone(),
            int_issuer,
        };
        Ok(CaMaterial {
            root_pem: cert_pem(&root_der),
            signing_pem,
            key_spec: key_spec_of(&root_der)?,
            private_keys: BTreeMap::new(),
            provider_state: state.to_map(),
        })
    }

    /// The root for a new CA: an operator's root already in the mount (its
    /// default issuer, not named by meshca), else a new root issuer.
    async fn root_issuer(&self, req: &CaRequest) -> Result<(String, String), ProviderError> {
        if let Some(found) = self.operator_root().await? {
            tracing::info!(mount = %self.root, issuer = %found.0, "using the root already in vault");
            return Ok(found);
        }
        let (key_type, key_bits) = vault_key(req.config.key_spec());
        let name = issuer_name("root");
        let body = json!({
            "common_name": common_name("pri", &req.cluster_id),
            "uri_sans": req.trust_domain.ca_uri(),
            "exclude_cn_from_sans": true,
            "key_type": key_type,
            "key_bits": key_bits,
            "ttl": secs(req.config.root_cert_ttl().as_time()),
            "issuer_name": name,
            "key_name": name,
        });
        let op = format!("generate a root in {}", self.root);
        let data = self
            .call(
                &op,
                Method::POST,
                &format!("{}/root/generate/internal", self.root),
                Some(body),
            )
            .await?;
        Ok((
            str_field(&data, "issuer_id", &op)?.to_string(),
            str_field(&data, "certificate", &op)?.to_string(),
        ))
    }

    async fn operator_root(&self) -> Result<Option<(String, String)>, ProviderError> {
        let op = format!("read the default issuer of {}", self.root);
        let config = self
            .call(
                &op,
                Method::GET,
                &format!("{}/config/issuers", self.root),
                None,
            )
            .await?;
        let Some(default) = config
            .get("default")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        else {
            return Ok(None);
        };
        let issuer = self.read_issuer(&self.root, default).await?;
        let name = issuer
            .get("issuer_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.starts_with(OWN_ISSUER_PREFIX) {
            return Ok(None);
        }
        Ok(Some((
            default.to_string(),
            str_field(&issuer, "certificate", &op)?.to_string(),
        )))
    }

    async fn read_issuer(&self, mount: &str, id: &str) -> Result<Value, ProviderError> {
        let op = format!("read issuer {id} of {mount}");
        self.call(&op, Method::GET, &format!("{mount}/issuer/{id}"), None)
            .await
    }

    /// A new intermediate key in the intermediate mount, signed by the root
    /// issuer, checked, and imported as an issuer of its own.
    async fn new_intermediate(
        &self,
        root_issuer: &str,
        root_der: &[u8],
        req: &CaRequest,
    ) -> Result<(String, String), ProviderError> {
        let (key_type, key_bits) = vault_key(key_spec_of(root_der)?);
        let name = issuer_name("int");
        let op = format!("generate an intermediate key in {}", self.int);
        let csr = self
            .call(
                &op,
                Method::POST,
                &format!("{}/intermediate/generate/internal", self.int),
                Some(
                    json!({"common_name": "meshca intermediate", "key_type": key_type,
                    "key_bits": key_bits, "key_name": name, "exclude_cn_from_sans": true}),
                ),
            )
            .await?;
        let csr_der = one_block(str_field(&csr, "csr", &op)?, "CERTIFICATE REQUEST")?;
        let request = IntermediateRequest {
            csr: meshca_core::csr::ValidatedIntermediateCsr::of_own_key(csr_der)
                .map_err(|e| internal(format!("{op}: {e}")))?,
            cluster_id: req.cluster_id,
            trust_domain: req.trust_domain.clone(),
            now: req.now,
            not_after: req.now + req.config.intermediate_cert_ttl().as_time(),
        };
        let pem = self
            .sign_intermediate_with(&self.root, root_issuer, root_der, &request)
            .await?;
        let op = format!("import the signed intermediate into {}", self.int);
        let imported = self
            .call(
                &op,
                Method::POST,
                &format!("{}/intermediate/set-signed", self.int),
                Some(json!({"certificate": pem})),
            )
            .await?;
        let id = self.imported_issuer(&imported, &pem, &op).await?;
        Ok((id, pem))
    }

    /// Signs `req` with the root issuer `root_issuer` of `root_path` (whose
    /// certificate is `root_der`) from Vault's intermediate profile with
    /// our names, pathLen 0 and the NotAfter asked for (capped at the
    /// root's), and checks the result before returning it as PEM.
    async fn sign_intermediate_with(
        &self,
        root_path: &str,
        root_issuer: &str,
        root_der: &[u8],
        req: &IntermediateRequest,
    ) -> Result<String, ProviderError> {
        let not_after = std::cmp::min(req.not_after, facts(root_der, "the root")?.not_after);
        let csr = pem::encode(&pem::Pem::new(
            "CERTIFICATE REQUEST",
            req.csr.csr_der().to_vec(),
        ));
        let op = format!("sign an intermediate with {root_path}/issuer/{root_issuer}");
        let signed = self
            .call(
                &op,
                Method::POST,
                &format!("{root_path}/issuer/{root_issuer}/sign-intermediate"),
                Some(json!({
                    "csr": csr, "common_name": common_name("int", &req.cluster_id),
                    "uri_sans": req.trust_domain.ca_uri(), "exclude_cn_from_sans": true,
                    "use_csr_values": false, "max_path_length": 0,
                    "not_after": rfc3339(not_after)?, "format": "pem",
                })),
            )
            .await?;
        let der = cert_in(&signed, &op, "the signed intermediate")?;
        check_signed_intermediate(&der, req.csr.spki_der(), root_der, &req.trust_domain)?;
        Ok(cert_pem(&der))
    }

    /// The certificate of the CA's root issuer, as Vault holds it.
    async fn root_der(&self, state: &State) -> Result<Vec<u8>, ProviderError> {
        let root = self
            .read_issuer(&state.root_path, &state.root_issuer)
            .await?;
        cert_in(&root, "read the root", "the root")
    }

    /// A secondary datacenter's intermediate, signed by this CA's root.
    pub(crate) async fn sign_intermediate(
        &self,
        state: &State,
        req: &IntermediateRequest,
    ) -> Result<String, ProviderError> {
        let root_der = self.root_der(state).await?;
        self.sign_intermediate_with(&state.root_path, &state.root_issuer, &root_der, req)
            .await
    }

    /// The issuer ID `set-signed` created for `pem`.
    async fn imported_issuer(
        &self,
        answer: &Value,
        pem: &str,
        op: &str,
    ) -> Result<String, ProviderError> {
        let ids: Vec<&str> = answer
            .get("imported_issuers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let want = one_cert(pem, "the intermediate")?;
        for id in ids {
            let issuer = self.read_issuer(&self.int, id).await?;
            if cert_in(&issuer, op, "an issuer")? == want {
                return Ok(id.to_string());
            }
        }
        Err(internal(format!(
            "{op}: vault did not import the intermediate as an issuer"
        )))
    }

    /// The role leaves are signed through. The names and validity of each
    /// leaf come from meshca's validated request, never from the CSR.
    async fn ensure_role(&self, cfg: &CaConfig) -> Result<(), ProviderError> {
        let body = json!({
            "allow_any_name": true, "enforce_hostnames": false, "allow_ip_sans": true,
            "allowed_uri_sans": ["spiffe://*"], "key_type": "any",
            "use_csr_common_name": false, "use_csr_sans": false, "require_cn": false,
            "server_flag": true, "client_flag": true, "key_usage": ["DigitalSignature"],
            "max_ttl": secs(cfg.leaf_cert_ttl().as_time() + time::Duration::hours(1)),
            "no_store": true, "generate_lease": false, "not_before_duration": "60s",
        });
        let op = format!("write the {LEAF_ROLE} role in {}", self.int);
        self.call(
            &op,
            Method::POST,
            &format!("{}/roles/{LEAF_ROLE}", self.int),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// The issuers named by `state` must exist and hold exactly the
    /// material's certificates. Vault being down is not a reason to refuse:
    /// the CA keeps serving its roots and signs again once Vault is back.
    pub(crate) async fn check_material(
        &self,
        state: &State,
        m: &CaMaterial,
    ) -> Result<(), ProviderError> {
        let pairs = [
            (&state.root_path, &state.root_issuer, &m.root_pem, "root"),
            (
                &state.int_path,
                &state.int_issuer,
                &m.signing_pem,
                "intermediate",
            ),
        ];
        for (mount, id, pem, what) in pairs {
            let issuer = match self.read_issuer(mount, id).await {
                Ok(issuer) => issuer,
                Err(ProviderError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "cannot check the CA's issuers in vault now");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let held = cert_in(&issuer, "read issuer", what)?;
            if held != one_cert(pem, what)? {
                return Err(ProviderError::InvalidInput(format!(
                    "vault: issuer {id} in {mount} does not hold the CA's {what} certificate"
                )));
            }
        }
        Ok(())
    }

    pub(crate) async fn sign_leaf(
        &self,
        state: &State,
        req: &LeafRequest,
    ) -> Result<SignedLeaf, ProviderError> {
        let csr_der = req.csr.csr_der().ok_or_else(|| {
            internal("sign a leaf: the request carries no CSR (vault signs only CSRs)")
        })?;
        let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec()));
        let join = |v: Vec<String>| v.join(",");
        let body = json!({
            "csr": csr,
            "uri_sans": req.csr.spiffe_id().to_string(),
            "alt_names": join(req.csr.dns_sans().to_vec()),
            "ip_sans": join(req.csr.ip_sans().iter().map(ToString::to_string).collect()),
            "exclude_cn_from_sans": true,
            "not_after": rfc3339(req.not_after)?,
            "format": "pem",
        });
        let op = format!(
            "sign a leaf with {}/issuer/{}",
            state.int_path, state.int_issuer
        );
        let data = self
            .call(
                &op,
                Method::POST,
                &format!(
                    "{}/issuer/{}/sign/{LEAF_ROLE}",
                    state.int_path, state.int_issuer
                ),
                Some(body),
            )
            .await?;
        let der = cert_in(&data, &op, "the leaf")?;
        let serial = Serial::from_bytes(&facts(&der, "the leaf")?.serial)
            .map_err(|e| internal(format!("the leaf's serial: {e}")))?;
        let reported = str_field(&data, "serial_number", &op)?.replace(':', "");
        if !reported.eq_ignore_ascii_case(&serial.to_string().replace(':', "")) {
            return Err(internal(format!(
                "{op}: vault reported serial {reported} for a certificate with serial {serial}"
            )));
        }
        Ok(SignedLeaf { der, serial })
    }

    /// Cross-signs another CA's root with this CA's root issuer, through a
    /// self-issued template carrying the subject, key, SKID and SANs of the
    /// other root and the validity asked for (Vault keeps the template's
    /// fields and signs with its own key, whatever the key types).
    pub(crate) async fn cross_sign(
        &self,
        state: &State,
        other_pem: &str,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<String, ProviderError> {
        let root_der = self.root_der(state).await?;
        let not_after = std::cmp::min(not_after, facts(&root_der, "the root")?.not_after);
        let other_der = one_cert(other_pem, "the certificate to cross-sign")?;
        let template = self_issued_template(&other_der, now, not_after)?;
        let op = format!(
            "cross-sign with {}/issuer/{}",
            state.root_path, state.root_issuer
        );
        let data = self
            .call(
                &op,
                Method::POST,
                &format!("{}/issuer/{}/sign-self-issued", state.root_path, state.root_issuer),
                Some(json!({"certificate": template, "require_matching_certificate_algorithms": false})),
            )
            .await?;
        let der = cert_in(&data, &op, "the cross-signed certificate")?;
        check_cross_signed(&der, &other_der, &root_der, not_after)?;
        Ok(cert_pem(&der))
    }

    pub(crate) async fn renew_intermediate(
        &self,
        state: &State,
        req: &CaRequest,
    ) -> Result<CaMaterial, ProviderError> {
        let root_der = self.root_der(state).await?;
        let this = Mounts {
            client: self.client.clone(),
            root: state.root_path.clone(),
            int: state.int_path.clone(),
            address: self.address.clone(),
        };
        let (int_issuer, signing_pem) = this
            .new_intermediate(&state.root_issuer, &root_der, req)
            .await?;
        this.ensure_role(&req.config).await?;
        let renewed = State {
            int_issuer,
            ..state.clone()
        };
        Ok(CaMaterial {
            root_pem: cert_pem(&root_der),
            signing_pem,
            key_spec: key_spec_of(&root_der)?,
            private_keys: BTreeMap::new(),
            provider_state: renewed.to_map(),
        })
    }

    /// After a rotation replaced this provider: unmounts the intermediate
    /// mount (its keys signed only for this CA), unless the successor is the
    /// same Vault and still uses that mount. The root mount is the
    /// operator's and stays.
    pub(crate) async fn cleanup(
        &self,
        successor: Option<&VaultConfig>,
    ) -> Result<(), ProviderError> {
        if successor.is_some_and(|s| {
            s.address == self.address && mount_path(&s.intermediate_pki_path) == self.int
        }) {
            return Ok(());
        }
        let op = format!("unmount {}", self.int);
        self.call(
            &op,
            Method::DELETE,
            &format!("sys/mounts/{}", self.int),
            None,
        )
        .await
        .map(drop)
    }
}

/// The key spec of a certificate's public key.
fn key_spec_of(der: &[u8]) -> Result<KeySpec, ProviderError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| internal(e.to_string()))?;
    match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            KeySpec::from_type_and_bits("rsa", u32::try_from(rsa.key_size()).unwrap_or(0))
        }
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => {
            KeySpec::from_type_and_bits("ec", u32::try_from(ec.key_size()).unwrap_or(0))
        }
        _ => {
            return Err(ProviderError::InvalidInput(
                "vault: the root has an unsupported key type".into(),
            ))
        }
    }
    .map_err(|e| ProviderError::InvalidInput(format!("vault: the root's key: {e}")))
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, ProviderError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| internal(format!("{what}: {e}")))
}

fn check_ca_with_uri(
    cert: &X509Certificate<'_>,
    td: &TrustDomain,
    what: &str,
) -> Result<(), ProviderError> {
    if !cert.is_ca() {
        return Err(internal(format!(
            "{what} from vault is not a CA certificate"
        )));
    }
    let want = td.ca_uri();
    if meshca_core::x509::uri_sans(cert).unwrap_or_default() != [want.clone()] {
        return Err(ProviderError::InvalidInput(format!(
            "vault: {what} must carry exactly one URI SAN, {want}"
        )));
    }
    Ok(())
}

/// A root from Vault (generated or an operator's): a self-signed CA for our
/// trust domain, valid now.
fn check_root(der: &[u8], td: &TrustDomain, now: OffsetDateTime) -> Result<(), ProviderError> {
    let cert = parse(der, "the root")?;
    check_ca_with_uri(&cert, td, "the root")?;
    cert.verify_signature(None)
        .map_err(|e| internal(format!("the root is not self-signed: {e}")))?;
    if facts(der, "the root")?.not_after <= now {
        return Err(ProviderError::InvalidInput(
            "vault: the root has expired".into(),
        ));
    }
    Ok(())
}

/// A cross-signed certificate: the other root's subject, key and SKID,
/// issued and signed by our root, ending when asked.
fn check_cross_signed(
    der: &[u8],
    other_der: &[u8],
    root_der: &[u8],
    not_after: OffsetDateTime,
) -> Result<(), ProviderError> {
    let (x, other, root) = (
        parse(der, "the cross-signed certificate")?,
        parse(other_der, "the other root")?,
        parse(root_der, "the root")?,
    );
    let same = x.subject().as_raw() == other.subject().as_raw()
        && x.public_key().raw == other.public_key().raw
        && meshca_core::x509::subject_key_id(&x) == meshca_core::x509::subject_key_id(&other)
        && x.issuer().as_raw() == root.subject().as_raw()
        && x.is_ca();
    if !same {
        return Err(internal(
            "the cross-signed certificate is not the other root re-issued by ours",
        ));
    }
    if facts(der, "the cross-signed certificate")?.not_after
        != not_after.replace_nanosecond(0).unwrap_or(not_after)
    {
        return Err(internal(
            "the cross-signed certificate does not end when asked",
        ));
    }
    x.verify_signature(Some(root.public_key())).map_err(|e| {
        internal(format!(
            "the cross-signed certificate is not signed by the root: {e}"
        ))
    })
}

/// The other root re-issued by itself as a template for `sign-self-issued`:
/// Vault needs issuer = subject and re-signs with its own key, keeping
/// everything else, so the throwaway signature here is never checked or
/// published.
fn self_issued_template(
    other_der: &[u8],
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<String, ProviderError> {
    let (params, public_key) = meshca_provider::crosssign::cross_sign_params(
        other_der,
        &meshca_provider::profile::ca_serial()?,
        now - meshca_core::leaf::BACKDATE,
        not_after,
    )?;
    let throwaway = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| internal(e.to_string()))?;
    let mut issuer_params = rcgen::CertificateParams::default();
    issuer_params.distinguished_name = params.distinguished_name.clone();
    let issuer = rcgen::Issuer::new(issuer_params, throwaway);
    let cert = params
        .signed_by(&public_key, &issuer)
        .map_err(|e| internal(e.to_string()))?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    //! The checks applied to what Vault returns, fed with real certificates
    //! from the built-in provider (right and wrong ones), since a real Vault
    //! cannot be made to return wrong ones.

    #![allow(clippy::unwrap_used)] // tests: failures should panic loudly

    use super::*;
    use meshca_provider::conformance::{request, NOW};
    use meshca_provider::{BuiltinProvider, CaProvider};

    async fn ca() -> (CaMaterial, CaRequest) {
        let req = request(KeySpec::EcP256);
        (BuiltinProvider::new().generate_ca(&req).await.unwrap(), req)
    }

    fn der(pem: &str) -> Vec<u8> {
        one_cert(pem, "test").unwrap()
    }

    #[tokio::test]
    async fn a_root_must_be_a_self_signed_ca_for_our_trust_domain_and_valid() {
        let (m, req) = ca().await;
        let (other, _) = ca().await;
        let td = &req.trust_domain;
        check_root(&der(&m.root_pem), td, NOW).unwrap();
        let other_td = TrustDomain::for_cluster(&uuid::Uuid::from_u128(7));
        let err = check_root(&der(&m.root_pem), &other_td, NOW).unwrap_err();
        assert!(matches!(err, ProviderError::InvalidInput(_)), "{err}");
        // An intermediate is a CA for the trust domain, but not self-signed.
        let err = check_root(&der(&m.signing_pem), td, NOW).unwrap_err();
        assert!(err.to_string().contains("self-signed"), "{err}");
        let later = facts(&der(&m.root_pem), "root").unwrap().not_after;
        assert!(check_root(&der(&m.root_pem), td, later).is_err(), "expired");
        // Another cluster's root for the same trust domain name is still
        // checked by its own signature: it is self-signed, so it passes.
        check_root(&der(&other.root_pem), td, NOW).unwrap();
    }

    #[tokio::test]
    async fn a_cross_signed_certificate_must_be_the_other_root_under_ours_ending_when_asked() {
        let (ours, _) = ca().await;
        let (theirs, _) = ca().await;
        let keys = BuiltinProvider::new().open(&ours).await.unwrap();
        let until = NOW + time::Duration::hours(144);
        let x = der(&keys
            .cross_sign_ca(&theirs.root_pem, until, NOW)
            .await
            .unwrap());
        let (their_root, our_root) = (der(&theirs.root_pem), der(&ours.root_pem));
        check_cross_signed(&x, &their_root, &our_root, until).unwrap();
        let err = check_cross_signed(&x, &their_root, &our_root, until + time::Duration::hours(1))
            .unwrap_err();
        assert!(err.to_string().contains("does not end when asked"), "{err}");
        // Checked against the wrong "other" root or the wrong issuer.
        assert!(check_cross_signed(&x, &our_root, &our_root, until).is_err());
        assert!(check_cross_signed(&x, &their_root, &their_root, until).is_err());
    }

    #[tokio::test]
    async fn the_template_is_the_other_root_self_issued_with_the_asked_validity() {
        let (theirs, _) = ca().await;
        let until = NOW + time::Duration::hours(144);
        let pem = self_issued_template(&der(&theirs.root_pem), NOW, until).unwrap();
        let t = der(&pem);
        let (template, their_root) = (parse(&t, "t").unwrap(), der(&theirs.root_pem));
        let root = parse(&their_root, "r").unwrap();
        assert_eq!(
            template.issuer().as_raw(),
            template.subject().as_raw(),
            "self-issued"
        );
        assert_eq!(template.subject().as_raw(), root.subject().as_raw());
        assert_eq!(template.public_key().raw, root.public_key().raw);
        assert_eq!(
            meshca_core::x509::subject_key_id(&template),
            meshca_core::x509::subject_key_id(&root)
        );
        assert_eq!(facts(&t, "t").unwrap().not_after, until);
        assert!(
            template.verify_signature(Some(root.public_key())).is_err(),
            "the throwaway signature is not the other root's"
        );
    }
}
