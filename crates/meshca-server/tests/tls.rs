//! TLS on the API over real sockets, with the router plus one test-only
//! route that reports what the handshake put into the request: a mesh leaf
//! becomes a `MeshIdentity`, an agent-CA certificate never does (even one
//! carrying a service SPIFFE ID), expired and unknown certificates are
//! refused; and the `auto_tls` certificate is renewed at half its life on
//! the CA's (manual) clock.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod support;

use axum::extract::ConnectInfo;
use axum::Extension;
use meshca_core::{Clock, ManualClock};
use meshca_server::routes::AppState;
use meshca_server::tls::{
    parse_pem_certs, parse_pem_key, Anchor, ClientCertificate, MeshIdentity, ServerIdentity,
    TlsOptions, TlsServer,
};
use meshca_server::CaEngine;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn engine(clock: Arc<ManualClock>) -> Arc<CaEngine> {
    support::engine_with(clock as Arc<dyn Clock>).await
}

/// What the test route answers: the anchor and the mapped service.
async fn whoami(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<Extension<ClientCertificate>>,
    mesh: Option<Extension<MeshIdentity>>,
) -> String {
    assert!(peer.ip().is_loopback());
    let anchor = match client.map(|c| c.0.anchor) {
        Some(Anchor::Mesh) => "mesh",
        Some(Anchor::AgentCa) => "agent",
        None => "none",
    };
    let service = mesh.map(|m| m.0.service.as_str().to_string());
    format!("{anchor} {}", service.as_deref().unwrap_or("-"))
}

/// A self-signed CA made with rcgen (the agent CA of these tests).
struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    der: CertificateDer<'static>,
}

fn test_ca(cn: &str) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().clone();
    TestCa { key, params, der }
}

/// A client certificate from `ca` with `sans`, valid in the given window.
fn client_cert(
    ca: &TestCa,
    sans: Vec<SanType>,
    not_after: time::OffsetDateTime,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = datetime!(2020-01-01 00:00 UTC);
    p.not_after = not_after;
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = p.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

struct Harness {
    addr: SocketAddr,
    server_root: CertificateDer<'static>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves the API plus `/whoami` over TLS with `verify_incoming` (agent CA
/// `agent`) and `verify_and_map`, with a self-signed server certificate.
async fn serve(ca: Arc<CaEngine>, agent: &TestCa) -> Harness {
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let mut opts = TlsOptions::new(ServerIdentity::Files {
        chain: vec![server_cert.der().clone()],
        key: PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
    });
    opts.client_ca = vec![agent.der.clone()];
    opts.verify_incoming = true;
    opts.verify_and_map = true;
    let tls = TlsServer::start(opts, ca.clone()).await.unwrap();
    let router =
        meshca_server::router(AppState::new(ca)).route("/whoami", axum::routing::get(whoami));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshca_server::serve_tls(listener, router, tls, async {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        server_root: server_cert.der().clone(),
        _stop: stop,
    }
}

/// `GET /whoami` with a client certificate; `Err` when the handshake or the
/// request fails.
async fn whoami_with(
    h: &Harness,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.server_root.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let run = async {
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        tls.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        if !out.starts_with("HTTP/1.1 200") {
            return Err(format!("no answer: {out:?}"));
        }
        Ok(out.rsplit("\r\n\r\n").next().unwrap_or("").to_string())
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn mesh_leaf_creds(
    cert_pem: &str,
    key_pem: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        parse_pem_certs(cert_pem.as_bytes()).unwrap(),
        parse_pem_key(key_pem.as_bytes()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_map_maps_mesh_leaves_only() {
    // The CA's clock is real-time-ish so that rustls's own checks of the
    // server certificate (real time) and ours (the CA's clock) agree.
    let clock = Arc::new(ManualClock::new(meshca_core::SystemClock.now()));
    let ca = engine(clock.clone()).await;
    let agent = test_ca("Agent CA");
    let h = serve(ca.clone(), &agent).await;
    let td = ca.published().trust_domain.clone();
    let web_uri = format!("spiffe://{}/ns/default/dc/dc1/svc/web", td.as_str());

    // A mesh leaf for web, with its chain.
    let leaf = ca
        .issue_service_leaf(
            &"web".parse().unwrap(),
            meshca_server::Requester::default(),
            || {},
        )
        .await
        .unwrap();
    let creds = mesh_leaf_creds(
        &leaf.cert_pem,
        leaf.private_key_pem.as_ref().unwrap().expose_secret(),
    );
    assert_eq!(
        whoami_with(&h, Some((creds.0.clone(), creds.1.clone_key())))
            .await
            .unwrap(),
        "mesh web"
    );

    // The leaf alone, without its intermediate: the CA's own intermediates
    // complete the chain.
    let alone = (vec![creds.0[0].clone()], creds.1.clone_key());
    assert_eq!(whoami_with(&h, Some(alone)).await.unwrap(), "mesh web");

    // An agent-CA certificate claiming web's SPIFFE ID is an agent
    // certificate, never a mesh identity.
    let far = datetime!(2090-01-01 00:00 UTC);
    let impostor = client_cert(
        &agent,
        vec![SanType::URI(web_uri.as_str().try_into().unwrap())],
        far,
    );
    assert_eq!(whoami_with(&h, Some(impostor)).await.unwrap(), "agent -");

    // An operator certificate from the agent CA.
    let operator = client_cert(
        &agent,
        vec![SanType::DnsName(
            "cli.client.dc1.consul".try_into().unwrap(),
        )],
        far,
    );
    assert_eq!(whoami_with(&h, Some(operator)).await.unwrap(), "agent -");

    // Refused: no certificate (verify_incoming), another CA, expired.
    assert!(whoami_with(&h, None).await.is_err());
    let stranger = client_cert(&test_ca("Other CA"), vec![], far);
    assert!(whoami_with(&h, Some(stranger)).await.is_err());
    let expired = client_cert(&agent, vec![], datetime!(2021-01-01 00:00 UTC));
    assert!(whoami_with(&h, Some(expired)).await.is_err());

    // A mesh leaf past its NotAfter on the CA's clock is refused.
    clock.advance(time::Duration::hours(73));
    assert!(whoami_with(&h, Some(creds)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_certificate_is_renewed_at_half_life() {
    let clock = Arc::new(ManualClock::new(datetime!(2030-01-01 00:00 UTC)));
    let ca = engine(clock.clone()).await;
    let opts = TlsOptions::new(ServerIdentity::Auto {
        dns_names: vec!["server.dc1.consul".into(), "localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
    });
    let tls = TlsServer::start(opts, ca.clone()).await.unwrap();
    let first = tls.served_chain()[0].clone();

    // Before half of the 72h life: nothing changes.
    clock.advance(time::Duration::hours(35));
    ca.wake_waiters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tls.served_chain()[0], first);

    // Past half: a new certificate is served.
    clock.advance(time::Duration::hours(2));
    ca.wake_waiters();
    let mut renewed = false;
    for _ in 0..100 {
        if tls.served_chain()[0] != first {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the auto_tls certificate was not renewed");
}
