//! The active signer: one CA's keys together with the certificates that go
//! with them, as one immutable value.
//!
//! A leaf signed by these keys is shipped with exactly this chain and
//! tagged with exactly this SigningKeyID, because they come from the same
//! value: there is no second source of truth to fall out of step with.

use crate::verify::check_leaf;
use crate::{off_runtime, CaKeys, LeafRequest, ProviderError, SignedLeaf};
use meshca_core::rotation::first_cert_der;
use meshca_core::x509::{cert_facts, colon_hex};
use meshca_core::Serial;
use std::sync::Arc;
use time::OffsetDateTime;

/// Keys + signing certificate + the chain appended to every leaf + NotAfter.
pub struct Signer {
    keys: Arc<dyn CaKeys>,
    check: Arc<ChainCheck>,
    /// The PEMs appended to every leaf's `CertPEM`, each ending in a newline.
    chain_pem: String,
    signing_key_id: String,
    not_after: OffsetDateTime,
}

/// What the post-signing check needs, shared with the blocking task.
struct ChainCheck {
    root_der: Vec<u8>,
    signing_der: Vec<u8>,
    signing_skid: Vec<u8>,
}

impl Signer {
    /// `chain` is the active root's `IntermediateCerts`: the cross-signed
    /// certificate (if any) first, the signing certificate — the one `keys`
    /// signs leaves with — last.
    pub fn new(
        keys: Arc<dyn CaKeys>,
        root_pem: &str,
        chain: &[String],
    ) -> Result<Self, ProviderError> {
        let signing_pem = chain
            .last()
            .ok_or_else(|| ProviderError::Internal("the CA has no signing certificate".into()))?;
        let signing_der = first_cert_der(signing_pem).map_err(ProviderError::internal)?;
        let signing = cert_facts(&signing_der).map_err(ProviderError::Internal)?;
        let signing_skid = signing.subject_key_id.unwrap_or_default();
        Ok(Self {
            keys,
            check: Arc::new(ChainCheck {
                root_der: first_cert_der(root_pem).map_err(ProviderError::internal)?,
                signing_der,
                signing_skid: signing_skid.clone(),
            }),
            chain_pem: chain.iter().map(|p| with_newline(p)).collect(),
            signing_key_id: colon_hex(&signing_skid),
            not_after: signing.not_after,
        })
    }

    pub fn keys(&self) -> &Arc<dyn CaKeys> {
        &self.keys
    }

    /// The intermediates appended to every leaf, as PEM.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Colon-hex SubjectKeyId of the signing certificate (`SigningKeyID`).
    pub fn signing_key_id(&self) -> &str {
        &self.signing_key_id
    }

    /// NotAfter of the signing certificate: no leaf outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs a leaf and checks it before anyone sees it: the SVID profile
    /// (one URI SAN equal to the request's, CA:false, usages, AKID naming
    /// the signing certificate), the serial the provider reported, and the
    /// chain through the signing certificate to the root.
    pub async fn sign_leaf(&self, req: LeafRequest) -> Result<SignedLeaf, ProviderError> {
        let signed = self.keys.sign_leaf(&req).await?;
        let check = self.check.clone();
        off_runtime(move || {
            check.verify(&signed, &req)?;
            Ok(signed)
        })
        .await
    }
}

impl ChainCheck {
    fn verify(&self, signed: &SignedLeaf, req: &LeafRequest) -> Result<(), ProviderError> {
        let facts = cert_facts(&signed.der).map_err(ProviderError::Internal)?;
        if Serial::from_bytes(&facts.serial).ok().as_ref() != Some(&signed.serial) {
            return Err(ProviderError::Internal(format!(
                "the provider reported serial {} for a certificate with another serial",
                signed.serial
            )));
        }
        check_leaf(
            &signed.der,
            req.csr.spiffe_id(),
            &self.signing_skid,
            std::slice::from_ref(&self.signing_der),
            std::slice::from_ref(&self.root_der),
            req.not_before + meshca_core::leaf::BACKDATE,
        )
    }
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}
