//! Keys the CA generates for requesters that do not bring their own: the
//! agent leaf endpoint creates an EC P-256 key per leaf, as Consul does,
//! whatever the CA's own key type.

use crate::{blocking, CaError};
use meshca_core::csr::ValidatedCsr;
use secrecy::{ExposeSecret as _, SecretString};

/// A freshly generated leaf key: its PKCS#8 PEM (secret) and public key.
pub struct LeafKey {
    pub private_key_pem: SecretString,
    pub spki_der: Vec<u8>,
}

impl LeafKey {
    /// An EC P-256 key from aws-lc-rs, generated off the async runtime.
    pub async fn generate_p256() -> Result<Self, CaError> {
        blocking(Self::generate_p256_now).await
    }

    /// [`LeafKey::generate_p256`] on the calling thread (call it off the
    /// async runtime). Straight from aws-lc-rs: rcgen's `generate_for`
    /// parses the PKCS#8 it generated back into a key, which checks the
    /// public point again, a second scalar multiplication per leaf. The
    /// SubjectPublicKeyInfo is made from the public point aws-lc-rs already
    /// encoded: its own `as_der` encodes the point again, a field inversion
    /// (making it from the point saved 14 k of an agent leaf's 1 344 k
    /// instructions).
    pub fn generate_p256_now() -> Result<Self, CaError> {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
        let failed = |what| CaError::internal(format!("generating a P-256 leaf key: {what}"));
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| failed("key generation"))?;
        let pkcs8 = key.to_pkcs8v1().map_err(|_| failed("PKCS#8"))?;
        let spki_der = meshca_core::x509::p256_spki_der(key.public_key().as_ref())
            .map_err(|_| failed("public key"))?;
        Ok(Self {
            spki_der,
            private_key_pem: SecretString::from(meshca_core::x509::private_key_pem(pkcs8.as_ref())),
        })
    }
}

impl LeafKey {
    /// `request` (made for this key) carried by a CSR signed with this key,
    /// for providers that sign only CSRs; unchanged when `needed` is false,
    /// so that local signing does not pay for a signature nobody reads.
    pub fn carry_in_csr(
        &self,
        request: ValidatedCsr,
        needed: bool,
    ) -> Result<ValidatedCsr, CaError> {
        if !needed {
            return Ok(request);
        }
        let key = rcgen::KeyPair::from_pem(self.private_key_pem.expose_secret())
            .map_err(CaError::internal)?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            request
                .spiffe_id()
                .to_string()
                .try_into()
                .map_err(CaError::internal)?,
        )];
        let der = params
            .serialize_request(&key)
            .map_err(CaError::internal)?
            .der()
            .to_vec();
        Ok(request.with_csr_der(der)?)
    }
}

impl std::fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_p256_pkcs8_and_matches_its_public_key() {
        let key = LeafKey::generate_p256_now().unwrap();
        let pem = key.private_key_pem.expose_secret();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{}",
            &pem[..30]
        );
        let parsed = rcgen::KeyPair::from_pem(pem).unwrap();
        assert!(parsed.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&parsed),
            key.spki_der
        );
        let other = LeafKey::generate_p256_now().unwrap();
        assert_ne!(other.spki_der, key.spki_der);
    }
}
