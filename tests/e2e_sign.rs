//! End-to-end: `POST /v1/connect/ca/sign` refuses malformed and hostile CSRs
//! with 400 (and stays up), and signs valid ones for every identity kind
//! with the fixed leaf profile.

mod common;

use common::{
    cert_facts, csr_for_uri, csr_for_uri_with, csr_with, dns_san, openssl_csr, p256_key,
    roots_bundle, service_uri, uri_san, verify_issued_chain, Server,
};
use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use serde_json::{json, Value};

/// A server with CSR rate limiting off: these tests fire many requests in a
/// burst, and rate limiting has its own tests.
fn server() -> Server {
    Server::start_with_config(
        &json!({"connect": {"ca_config": {"CSRMaxPerSecond": 0}}}),
        &[],
    )
}

/// What a refused request must answer.
enum Want {
    /// 400 `invalid_csr` with any message.
    Invalid,
    /// 400 `invalid_csr` with exactly this message.
    Message(String),
    /// 400 `decode_failed` (`Request decode failed: …`).
    Decode,
}

/// Re-armours `der` as a `CERTIFICATE REQUEST`.
fn to_pem(der: Vec<u8>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

fn der_of(csr_pem: &str) -> Vec<u8> {
    pem::parse(csr_pem).expect("a PEM CSR").contents().to_vec()
}

/// Replaces the first occurrence of `from` in `bytes` by `to` (same length).
fn replace_bytes(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present in the DER");
    bytes[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn hostile_csrs_are_refused_and_the_server_stays_up() {
    let mut server = server();
    let td = server.trust_domain();
    let web = service_uri(&td, "dc1", "web");
    let good = csr_for_uri(&web);
    let good_body: Vec<&str> = good.lines().collect();
    let other_td = "11111111-2222-3333-4444-555555555555.consul";

    let mut cases: Vec<(&str, Value, Want)> = Vec::new();
    let mut csr = |name: &'static str, pem: String, want: Want| {
        cases.push((name, json!({ "CSR": pem }), want));
    };

    // Armour.
    csr("not PEM", "hello, CA".into(), Want::Invalid);
    csr("empty", String::new(), Want::Invalid);
    csr("whitespace only", " \n\t\n".into(), Want::Invalid);
    csr(
        "wrong PEM tag",
        good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        Want::Invalid,
    );
    csr(
        "legacy NEW CERTIFICATE REQUEST tag",
        good.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
        Want::Invalid,
    );
    csr("two blocks", format!("{good}{good}"), Want::Invalid);
    csr(
        "truncated mid-body",
        good[..good.len() / 2].to_string(),
        Want::Invalid,
    );
    csr(
        "truncated body, END kept",
        format!(
            "{}\n{}\n{}\n",
            good_body[0],
            good_body[1],
            good_body.last().unwrap()
        ),
        Want::Invalid,
    );
    csr(
        "garbage base64",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!not*base64$$$$\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        Want::Invalid,
    );
    csr(
        "bare base64 without armour",
        good_body[1..good_body.len() - 1].concat(),
        Want::Invalid,
    );
    csr(
        "text after the block",
        format!("{good}this is not whitespace\n"),
        Want::Invalid,
    );
    csr(
        "valid base64 of garbage DER",
        to_pem(b"definitely not a PKCS#10 request".to_vec()),
        Want::Invalid,
    );
    csr(
        "trailing bytes after the DER",
        to_pem([der_of(&good), vec![0, 0, 0]].concat()),
        Want::Invalid,
    );

    // Proof of possession.
    let mut flipped = der_of(&good);
    *flipped.last_mut().unwrap() ^= 0x01;
    csr("signature byte flipped", to_pem(flipped), Want::Invalid);
    let mut renamed = der_of(&good);
    replace_bytes(&mut renamed, b"svc/web", b"svc/adm");
    csr("SAN edited after signing", to_pem(renamed), Want::Invalid);
    csr(
        "ECDSA over SHA-1",
        openssl_csr(
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-sha1",
            ],
            &format!("URI:{web}"),
        ),
        Want::Invalid,
    );

    // Identity.
    csr(
        "other trust domain",
        csr_for_uri(&format!("spiffe://{other_td}/ns/default/dc/dc1/svc/web")),
        Want::Message(format!(
            "SPIFFE ID in CSR from a different trust domain: {other_td}, we are {td}"
        )),
    );
    csr(
        "other datacenter",
        csr_for_uri(&service_uri(&td, "dc2", "web")),
        Want::Message("SPIFFE ID in CSR from a different datacenter: dc2, we are dc1".into()),
    );
    csr(
        "no URI, DNS only",
        csr_with(&p256_key(), vec![dns_san("web.example.com")], |_| {}),
        Want::Message("CSR SAN contains an invalid number of URIs: 0".into()),
    );
    csr(
        "no SAN at all",
        csr_with(&p256_key(), vec![], |_| {}),
        Want::Message("CSR SAN contains an invalid number of URIs: 0".into()),
    );
    csr(
        "two URIs",
        csr_with(
            &p256_key(),
            vec![uri_san(&web), uri_san(&service_uri(&td, "dc1", "api"))],
            |_| {},
        ),
        Want::Message("CSR SAN contains an invalid number of URIs: 2".into()),
    );
    csr(
        "email SAN",
        csr_with(
            &p256_key(),
            vec![
                uri_san(&web),
                SanType::Rfc822Name("web@example.com".try_into().unwrap()),
            ],
            |_| {},
        ),
        Want::Message("CSR SAN does not allow specifying email addresses".into()),
    );
    csr(
        "IP SAN",
        csr_with(
            &p256_key(),
            vec![uri_san(&web), SanType::IpAddress([10, 0, 0, 1].into())],
            |_| {},
        ),
        Want::Invalid,
    );
    csr(
        "invalid DNS SAN",
        csr_with(
            &p256_key(),
            vec![uri_san(&web), dns_san("not a host name!")],
            |_| {},
        ),
        Want::Invalid,
    );
    for (name, uri) in [
        (
            "dot-dot segment",
            format!("spiffe://{td}/ns/default/dc/dc1/svc/.."),
        ),
        (
            "dot-dot inside the path",
            format!("spiffe://{td}/ns/default/dc/dc1/svc/x/../web"),
        ),
        (
            "percent-encoded dot",
            format!("spiffe://{td}/ns/default/dc/dc1/svc/%2e%2e"),
        ),
        (
            "percent-encoded letter",
            format!("spiffe://{td}/ns/default/dc/dc1/svc/w%65b"),
        ),
        ("query", format!("{web}?admin=true")),
        ("fragment", format!("{web}#frag")),
        (
            "port",
            format!("spiffe://{td}:8443/ns/default/dc/dc1/svc/web"),
        ),
        (
            "userinfo",
            format!("spiffe://admin@{td}/ns/default/dc/dc1/svc/web"),
        ),
        ("upper-case service", service_uri(&td, "dc1", "WEB")),
        (
            "upper-case trust domain",
            service_uri(&td.to_uppercase(), "dc1", "web"),
        ),
        ("upper-case scheme", web.replacen("spiffe", "SPIFFE", 1)),
        ("not spiffe", web.replacen("spiffe", "https", 1)),
        (
            "over-long (3000 chars)",
            service_uri(&td, "dc1", &"a".repeat(3000)),
        ),
        (
            "empty service",
            format!("spiffe://{td}/ns/default/dc/dc1/svc/"),
        ),
        ("trailing slash", format!("{web}/")),
        (
            "unknown kind",
            format!("spiffe://{td}/ns/default/dc/dc1/job/web"),
        ),
        ("the CA's own identity", format!("spiffe://{td}")),
        (
            "double slash",
            format!("spiffe://{td}//ns/default/dc/dc1/svc/web"),
        ),
    ] {
        csr(name, csr_for_uri(&uri), Want::Invalid);
    }

    // What the certificate may not become.
    csr(
        "CA:true requested",
        csr_with(&p256_key(), vec![uri_san(&web)], |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
        }),
        Want::Invalid,
    );
    csr(
        "keyCertSign requested",
        csr_with(&p256_key(), vec![uri_san(&web)], |p| {
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ]
        }),
        Want::Invalid,
    );

    // Keys off the allow-list.
    let san = format!("URI:{web}");
    csr(
        "RSA-1024 key",
        openssl_csr(&["-newkey", "rsa:1024"], &san),
        Want::Invalid,
    );
    csr(
        "EC P-521 key",
        openssl_csr(
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            &san,
        ),
        Want::Invalid,
    );
    csr(
        "EC P-224 key",
        openssl_csr(
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-224"],
            &san,
        ),
        Want::Invalid,
    );
    csr(
        "Ed25519 key",
        openssl_csr(&["-newkey", "ed25519"], &san),
        Want::Invalid,
    );

    // The JSON around the CSR.
    cases.push(("CSR as a number", json!({"CSR": 42}), Want::Decode));
    cases.push(("CSR as null", json!({"CSR": null}), Want::Decode));
    cases.push(("missing CSR field", json!({"csr_pem": good}), Want::Decode));
    cases.push(("body is a string", json!(good), Want::Decode));

    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, body, want) in &cases {
        let r = server.post("/v1/connect/ca/sign", body.to_string());
        let (code, message) = match want {
            Want::Invalid => ("invalid_csr", None),
            Want::Message(m) => ("invalid_csr", Some(m.as_str())),
            Want::Decode => ("decode_failed", None),
        };
        let ok = r.status == 400
            && r.code() == code
            && !r.body.is_empty()
            && message.is_none_or(|m| r.body == m)
            && (!matches!(want, Want::Decode) || r.body.starts_with("Request decode failed:"));
        if !ok {
            failures.push(format!(
                "{name}: got {} {:?} {:?}",
                r.status,
                r.code(),
                r.body
            ));
        }
        assert!(
            server.is_running(),
            "server died on {name}; logs:\n{}",
            server.logs()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile CSRs were not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still alive and still signing.
    server.assert_alive();
    let r = server.sign(&good);
    assert_eq!(r.status, 200, "{r:?}");
}

/// Checks an `IssuedCert` of the sign endpoint against the leaf profile.
fn check_signed_leaf(server: &Server, issued: &Value, uri: &str, dns: &[&str]) {
    let cert_pem = issued["CertPEM"]
        .as_str()
        .expect("the response field is a string");
    assert!(
        issued.get("PrivateKeyPEM").is_none(),
        "the sign endpoint never returns a key: {issued}"
    );
    let facts = cert_facts(cert_pem);
    assert!(facts.subject_is_empty, "subject must be empty: {facts:?}");
    assert_eq!(facts.san_critical, Some(true), "SAN must be critical");
    assert_eq!(facts.uris, vec![uri.to_string()]);
    let mut got_dns = facts.dns.clone();
    got_dns.sort();
    let mut want_dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
    want_dns.sort();
    assert_eq!(got_dns, want_dns, "DNS SANs");
    assert!(facts.emails.is_empty() && facts.other_san_count == 0);
    assert_eq!(facts.ca, Some(false), "leaves are CA:false");
    assert!(facts.digital_signature && !facts.key_cert_sign, "{facts:?}");
    assert_eq!(
        facts.eku,
        Some(vec!["serverAuth".to_string(), "clientAuth".to_string()]),
        "EKU must be exactly serverAuth+clientAuth"
    );
    assert_eq!(facts.not_after - facts.not_before, 72 * 3600);
    assert_eq!(
        issued["SerialNumber"]
            .as_str()
            .expect("the response field is a string"),
        facts.serial
    );
    assert!(
        facts.serial.split(':').count() >= 8,
        "serial must carry >= 64 bits: {}",
        facts.serial
    );
    assert!(facts.subject_key_id.is_some(), "leaf needs a SubjectKeyId");
    let roots = server.roots();
    let inter = cert_facts(
        common::active_root(&roots)["IntermediateCerts"][0]
            .as_str()
            .expect("IntermediateCerts holds PEM strings"),
    );
    assert_eq!(facts.authority_key_id, inter.subject_key_id);
    verify_issued_chain(cert_pem, &roots_bundle(&roots), dns.first().copied());
}

#[test]
fn valid_csrs_for_every_identity_kind_are_signed() {
    let server = server();
    let td = server.trust_domain();

    // A service, asking for more than it may get: a subject, codeSigning,
    // and a DNS name (which it does get).
    let web = service_uri(&td, "dc1", "web");
    let csr = csr_with(
        &p256_key(),
        vec![uri_san(&web), dns_san("web.service.consul")],
        |p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "root-of-all-evil");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
            p.is_ca = IsCa::ExplicitNoCa;
        },
    );
    let r = server.sign(&csr);
    assert_eq!(r.status, 200, "{r:?}");
    let issued = r.json();
    assert_eq!(r.index(), issued["ModifyIndex"].as_u64().unwrap());
    assert_eq!(issued["Service"], json!("web"));
    assert_eq!(issued["ServiceURI"], json!(web));
    check_signed_leaf(&server, &issued, &web, &["web.service.consul"]);

    // A service in another namespace, signed through PUT.
    let prod = format!("spiffe://{td}/ns/prod/dc/dc1/svc/billing");
    let r = server.put(
        "/v1/connect/ca/sign",
        json!({ "CSR": csr_for_uri(&prod) }).to_string(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let issued = r.json();
    assert_eq!(issued["Service"], json!("billing"));
    assert_eq!(issued["ServiceURI"], json!(prod));
    check_signed_leaf(&server, &issued, &prod, &[]);

    // A client agent.
    let agent = format!("spiffe://{td}/agent/client/dc/dc1/id/node-1");
    let r = server.sign(&csr_for_uri(&agent));
    assert_eq!(r.status, 200, "{r:?}");
    let issued = r.json();
    assert_eq!(issued["Agent"], json!("node-1"));
    assert_eq!(issued["AgentURI"], json!(agent));
    assert!(issued.get("ServiceURI").is_none());
    check_signed_leaf(&server, &issued, &agent, &[]);

    // A server, with its DNS name.
    let srv = format!("spiffe://{td}/agent/server/dc/dc1");
    let csr = csr_with(
        &p256_key(),
        vec![uri_san(&srv), dns_san("server.dc1.consul")],
        |_| {},
    );
    let r = server.sign(&csr);
    assert_eq!(r.status, 200, "{r:?}");
    let issued = r.json();
    assert_eq!(issued["ServerURI"], json!(srv));
    check_signed_leaf(&server, &issued, &srv, &["server.dc1.consul"]);

    // A mesh gateway.
    let gw = format!("spiffe://{td}/gateway/mesh/dc/dc1");
    let r = server.sign(&csr_for_uri(&gw));
    assert_eq!(r.status, 200, "{r:?}");
    let issued = r.json();
    assert_eq!(issued["Kind"], json!("mesh-gateway"));
    assert_eq!(issued["KindURI"], json!(gw));
    check_signed_leaf(&server, &issued, &gw, &[]);
}

#[test]
fn every_allowed_csr_key_type_is_signed() {
    let server = server();
    let td = server.trust_domain();
    let uri = service_uri(&td, "dc1", "web");
    let san = format!("URI:{uri}");
    let cases = [
        (
            "EC P-256 (rcgen)",
            csr_for_uri_with(&rcgen::PKCS_ECDSA_P256_SHA256, &uri),
            true,
            256,
        ),
        (
            "EC P-384 (rcgen)",
            csr_for_uri_with(&rcgen::PKCS_ECDSA_P384_SHA384, &uri),
            true,
            384,
        ),
        (
            "EC P-256 (openssl)",
            openssl_csr(
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                &san,
            ),
            true,
            256,
        ),
        (
            "RSA-2048 (openssl)",
            openssl_csr(&["-newkey", "rsa:2048"], &san),
            false,
            2048,
        ),
        (
            "RSA-3072 (openssl)",
            openssl_csr(&["-newkey", "rsa:3072"], &san),
            false,
            3072,
        ),
    ];
    for (name, csr, is_ec, bits) in cases {
        let r = server.sign(&csr);
        assert_eq!(r.status, 200, "{name}: {r:?}");
        let issued = r.json();
        let facts = cert_facts(issued["CertPEM"].as_str().unwrap());
        assert_eq!((facts.key_is_ec, facts.key_bits), (is_ec, bits), "{name}");
        // RSA leaf keys may also encipher keys; EC keys may not.
        assert_eq!(facts.key_encipherment, !is_ec, "{name}: {facts:?}");
        check_signed_leaf(&server, &issued, &uri, &[]);
    }
}
