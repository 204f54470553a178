//! The primary datacenter's side of secondary datacenters: signing the
//! intermediate CA a secondary generated, with the active root.

use crate::{blocking, provider_call, CaEngine, CaError, Requester};
use meshca_core::csr::validate_intermediate_csr;
use meshca_core::rotation::first_cert_der;
use meshca_core::x509::cert_facts;
use meshca_provider::verify::check_signed_intermediate;
use meshca_provider::IntermediateRequest;

/// Largest accepted intermediate CSR, as for leaf CSRs.
const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

impl CaEngine {
    /// Signs a secondary datacenter's intermediate CSR with the active root:
    /// a CA with pathLen 0 and the trust domain's URI SAN, valid for the
    /// primary's `IntermediateCertTTL` and never past the root. The result
    /// is checked before it is returned, and audit-logged.
    pub async fn sign_intermediate(
        &self,
        csr_pem: String,
        requester: Requester,
    ) -> Result<String, CaError> {
        if self.is_secondary() {
            return Err(CaError::NotPrimary);
        }
        let p = self.published();
        let td = p.trust_domain.clone();
        let csr =
            blocking(move || Ok(validate_intermediate_csr(&csr_pem, &td, MAX_CSR_PEM_BYTES)?))
                .await?;
        let now = self.clock.now();
        let req = IntermediateRequest {
            csr,
            cluster_id: p.cluster_id,
            trust_domain: p.trust_domain.clone(),
            now,
            not_after: now + p.config.intermediate_cert_ttl().as_time(),
        };
        let pem = provider_call(p.signer.keys().sign_intermediate(&req)).await?;
        let active = p
            .state()
            .active_root()
            .ok_or_else(|| CaError::internal("the CA has no active root"))?;
        let (der, root_der) = (first_cert_der(&pem)?, first_cert_der(&active.root_cert)?);
        check_signed_intermediate(&der, req.csr.spki_der(), &root_der, &req.trust_domain)?;
        let facts = cert_facts(&der).map_err(CaError::Internal)?;
        tracing::info!(target: "audit", serial = %meshca_core::x509::colon_hex(&facts.serial),
            requester = %requester.identity, remote = requester.remote.as_deref().unwrap_or("-"),
            request_id = requester.request_id.as_deref().unwrap_or("-"),
            root = %active.id, valid_before = %crate::issue::rfc3339(facts.not_after),
            "signed a secondary intermediate");
        Ok(pem)
    }
}
