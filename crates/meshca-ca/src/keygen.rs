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
    /// async runtime).
    pub fn generate_p256_now() -> Result<Self, CaError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CaError::internal)?;
        Ok(Self {
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            private_key_pem: SecretString::from(key.serialize_pem()),
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
