//! The active signer: one CA's keys together with the certificates that go
//! with them, as one immutable value.
//!
//! A leaf signed by these keys is shipped with exactly this chain and
//! tagged with exactly this SigningKeyID, because they come from the same
//! value: there is no second source of truth to fall out of step with.

use crate::verify::{check_leaf, trust_anchor, SignerKey};
use crate::{off_runtime, CaKeys, LeafRequest, LocalKeys, ProviderError, SignedLeaf};
use meshca_core::rotation::first_cert_der;
use meshca_core::x509::{cert_facts, colon_hex};
use rustls_pki_types::TrustAnchor;
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
///
/// Every leaf's chain shares its upper part (signing certificate → root),
/// so that part is verified once, when the signer is built, and each leaf
/// is verified against the signing certificate as its anchor: one
/// signature verification per leaf instead of two. A root that constrains
/// names keeps the whole chain per leaf, since the leaf's names must then
/// be checked against the root's constraints.
struct ChainCheck {
    /// Made once here: webpki parsed it from the DER for every leaf.
    anchor: TrustAnchor<'static>,
    /// Empty when the anchor is the signing certificate.
    intermediates: Vec<Vec<u8>>,
    signing_skid: Vec<u8>,
    signing_key: Option<SignerKey>,
}

impl ChainCheck {
    fn new(
        root_der: Vec<u8>,
        signing_der: Vec<u8>,
        signing_skid: Vec<u8>,
    ) -> Result<Self, ProviderError> {
        let root = parse(&root_der, "root")?;
        let signing = parse(&signing_der, "signing certificate")?;
        if signing_der != root_der {
            signing
                .verify_signature(Some(root.public_key()))
                .map_err(|e| {
                    ProviderError::Internal(format!(
                        "the signing certificate is not signed by the root: {e}"
                    ))
                })?;
        }
        let root_constrains_names = root.name_constraints().ok().flatten().is_some();
        let signing_key = SignerKey::new(&signing.public_key().subject_public_key.data);
        let (anchor_der, intermediates) = if root_constrains_names {
            (root_der, vec![signing_der])
        } else {
            (signing_der, Vec::new())
        };
        Ok(Self {
            anchor: trust_anchor(&anchor_der)?,
            intermediates,
            signing_skid,
            signing_key,
        })
    }
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
        let root_der = first_cert_der(root_pem).map_err(ProviderError::internal)?;
        Ok(Self {
            keys,
            check: Arc::new(ChainCheck::new(
                root_der,
                signing_der,
                signing_skid.clone(),
            )?),
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
        let check = self.check.clone();
        if let Some(local) = self.keys.local() {
            return off_runtime(move || check.sign_now(&*local, &req)).await;
        }
        let signed = self.keys.sign_leaf(&req).await?;
        off_runtime(move || {
            check.verify(&signed, &req)?;
            Ok(signed)
        })
        .await
    }

    /// [`Signer::sign_leaf`] on the calling thread, for a caller that is
    /// already off the async runtime; `None` when the keys are not local
    /// (then await `sign_leaf`).
    pub fn sign_leaf_now(&self, req: &LeafRequest) -> Option<Result<SignedLeaf, ProviderError>> {
        let local = self.keys.local()?;
        Some(self.check.sign_now(&*local, req))
    }
}

impl ChainCheck {
    fn sign_now(
        &self,
        keys: &dyn LocalKeys,
        req: &LeafRequest,
    ) -> Result<SignedLeaf, ProviderError> {
        let signed = keys.sign_leaf_now(req)?;
        self.verify(&signed, req)?;
        Ok(signed)
    }

    fn verify(&self, signed: &SignedLeaf, req: &LeafRequest) -> Result<(), ProviderError> {
        check_leaf(
            signed,
            req.csr.spiffe_id(),
            &self.signing_skid,
            self.signing_key.as_ref(),
            &self.intermediates,
            std::slice::from_ref(&self.anchor),
            req.not_before + meshca_core::leaf::BACKDATE,
        )
    }
}

fn parse<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, ProviderError> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| ProviderError::Internal(format!("the {what} does not parse: {e}")))
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{leaf_request, request};
    use crate::{BuiltinProvider, CaMaterial, CaProvider, CaRequest};
    use async_trait::async_trait;
    use meshca_core::KeySpec;

    /// Built-in keys seen through the async path only, as a remote
    /// provider's would be (`local()` is `None`); `lie_about_serial` is a
    /// mock of a fault a real provider cannot be made to commit.
    struct RemoteShaped {
        inner: Arc<dyn CaKeys>,
        lie_about_serial: bool,
    }

    #[async_trait]
    impl CaKeys for RemoteShaped {
        async fn sign_leaf(&self, req: &LeafRequest) -> Result<SignedLeaf, ProviderError> {
            let mut signed = self.inner.sign_leaf(req).await?;
            if self.lie_about_serial {
                signed.serial = meshca_core::Serial::from_bytes(&[0x42]).unwrap();
            }
            Ok(signed)
        }

        async fn cross_sign_ca(
            &self,
            cert_pem: &str,
            not_after: OffsetDateTime,
            now: OffsetDateTime,
        ) -> Result<String, ProviderError> {
            self.inner.cross_sign_ca(cert_pem, not_after, now).await
        }

        async fn renew_intermediate(&self, req: &CaRequest) -> Result<CaMaterial, ProviderError> {
            self.inner.renew_intermediate(req).await
        }

        async fn sign_intermediate(
            &self,
            req: &crate::IntermediateRequest,
        ) -> Result<String, ProviderError> {
            self.inner.sign_intermediate(req).await
        }
    }

    async fn remote_signer(lie_about_serial: bool) -> Signer {
        let p = BuiltinProvider::new();
        let m = p.generate_ca(&request(KeySpec::EcP256)).await.unwrap();
        let keys = Arc::new(RemoteShaped {
            inner: p.open(&m).await.unwrap(),
            lie_about_serial,
        });
        Signer::new(keys, &m.root_pem, std::slice::from_ref(&m.signing_pem)).unwrap()
    }

    #[tokio::test]
    async fn remote_keys_are_awaited_and_their_leaves_checked() {
        let signer = remote_signer(false).await;
        let req = leaf_request(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(signer.sign_leaf_now(&req).is_none(), "not local");
        let signed = signer.sign_leaf(req).await.unwrap();
        assert!(!cert_facts(&signed.der).unwrap().is_ca);
    }

    #[tokio::test]
    async fn a_provider_reporting_another_serial_is_caught() {
        let signer = remote_signer(true).await;
        let err = signer
            .sign_leaf(leaf_request(&rcgen::PKCS_ECDSA_P256_SHA256))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("serial"), "{err}");
    }

    #[tokio::test]
    async fn a_signing_certificate_another_root_signed_is_refused_when_the_signer_is_built() {
        let p = BuiltinProvider::new();
        let req = request(KeySpec::EcP256);
        let (a, b) = (
            p.generate_ca(&req).await.unwrap(),
            p.generate_ca(&req).await.unwrap(),
        );
        let keys = p.open(&b).await.unwrap();
        let err = Signer::new(
            keys.clone(),
            &a.root_pem,
            std::slice::from_ref(&b.signing_pem),
        )
        .err()
        .expect("b's intermediate under a's root");
        assert!(err.to_string().contains("not signed by the root"), "{err}");
        let signer = Signer::new(keys, &b.root_pem, std::slice::from_ref(&b.signing_pem)).unwrap();
        let leaf = leaf_request(&rcgen::PKCS_ECDSA_P256_SHA256);
        let signed = signer.sign_leaf_now(&leaf).unwrap().unwrap();
        // The per-leaf check anchors at the signing certificate; the leaf
        // still verifies through the whole chain to the root.
        crate::verify::verify_chain(
            &signed.der,
            &[first_cert_der(&b.signing_pem).unwrap()],
            &[first_cert_der(&b.root_pem).unwrap()],
            leaf.not_before + meshca_core::leaf::BACKDATE,
        )
        .unwrap();
    }

    #[tokio::test]
    async fn the_chain_is_the_one_given_and_the_key_id_is_the_signers() {
        let p = BuiltinProvider::new();
        let m = p.generate_ca(&request(KeySpec::EcP256)).await.unwrap();
        let keys = p.open(&m).await.unwrap();
        let chain = [
            "-----BEGIN CERTIFICATE-----\nY3Jvc3M=\n-----END CERTIFICATE-----".to_string(),
            m.signing_pem.clone(),
        ];
        let signer = Signer::new(keys, &m.root_pem, &chain).unwrap();
        assert!(signer.chain_pem().starts_with(&chain[0]));
        assert!(signer.chain_pem().ends_with(&m.signing_pem));
        let signing = cert_facts(&first_cert_der(&m.signing_pem).unwrap()).unwrap();
        assert_eq!(
            signer.signing_key_id(),
            colon_hex(&signing.subject_key_id.unwrap())
        );
        assert_eq!(signer.not_after(), signing.not_after);
    }
}
