//! `http-floor PORT`: the least an HTTP server on meshca's stack (tokio,
//! hyper, axum, serde_json, aws-lc-rs) can do for one `POST
//! /v1/connect/ca/sign` or one agent leaf, so the benchmark can tell
//! meshca's own cost from that of the stack and the kernel.
//!
//! Per request it does the cryptography meshca promises and nothing else.
//! `/sign`: the body's JSON and the CSR's PEM decoded, the CSR's signature
//! checked against its key (one verify), a certificate-sized message signed
//! with a P-256 key (one sign) and that signature checked (one verify).
//! Agent leaf (`GET /v1/agent/connect/ca/leaf/<service>`): a P-256 key
//! generated, a message signed and checked. Each answers JSON of a leaf's
//! size (with the key's PEM for the agent leaf). No validation of names, no
//! certificate built, no journal, no audit line, no access control. It is a
//! yardstick for the benchmark, not a certificate authority.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use x509_parser::prelude::FromDer;

/// A P-256 leaf's DER is about this long; the answer carries it as PEM.
const LEAF_DER_LEN: usize = 560;

#[derive(serde::Deserialize)]
struct SignRequest {
    #[serde(rename = "CSR")]
    csr: String,
}

#[derive(serde::Serialize)]
struct Signed {
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    #[serde(rename = "PrivateKeyPEM", skip_serializing_if = "Option::is_none")]
    private_key_pem: Option<String>,
    #[serde(rename = "SerialNumber")]
    serial: String,
}

struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    rng: SystemRandom,
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: http-floor PORT"))?
        .parse()?;
    // The runtime settings of meshca's server.
    meshca_server::runtime().build()?.block_on(serve(port))
}

async fn serve(port: u16) -> anyhow::Result<()> {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("key rejected"))?;
    let public = key.public_key().as_ref().to_vec();
    let signer = Arc::new(Signer { key, public, rng });
    let app = Router::new()
        .route("/v1/connect/ca/sign", post(sign))
        .route("/v1/agent/connect/ca/leaf/{service}", get(leaf))
        .with_state(signer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn sign(State(signer): State<Arc<Signer>>, body: Bytes) -> Result<Bytes, StatusCode> {
    let req: SignRequest = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let csr_der = pem::parse(req.csr.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
    verify_csr(csr_der.contents()).ok_or(StatusCode::BAD_REQUEST)?;
    signed_answer(&signer, None)
}

async fn leaf(State(signer): State<Arc<Signer>>) -> Result<Bytes, StatusCode> {
    let internal = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let key =
        EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(internal)?;
    let pkcs8 = key.to_pkcs8v1().map_err(internal)?;
    signed_answer(
        &signer,
        Some(pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()))),
    )
}

/// A certificate-sized message signed and its signature checked, answered
/// as an issued certificate would be.
fn signed_answer(signer: &Signer, private_key_pem: Option<String>) -> Result<Bytes, StatusCode> {
    let message = vec![0x5a; LEAF_DER_LEN];
    let sig = signer
        .key
        .sign(&signer.rng, &message)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &signer.public)
        .verify(&message, sig.as_ref())
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let answer = Signed {
        cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", message)),
        private_key_pem,
        serial: "5a:5a:5a:5a:5a:5a:5a:5a".into(),
    };
    serde_json::to_vec(&answer)
        .map(Bytes::from)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// The CSR's signature checked against the key it carries.
fn verify_csr(der: &[u8]) -> Option<()> {
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der).ok()?;
    let key = csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data;
    let signed = csr.certification_request_info.raw;
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &key)
        .verify(signed, &csr.signature_value.data)
        .ok()
}
