//! End-to-end: a configuration change of the root key rotates the root
//! (cross-signing): the new root is cross-signed by the old one, both stay
//! trusted, new leaves verify against either root alone, cached leaves are
//! replaced, and the result survives a restart.

mod common;

use common::{
    active_root, cert_facts, csr_for_uri, pem_blocks, root_by_id, roots_bundle, service_uri,
    verify_chain_against, Server,
};
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn key_type_change_rotates_the_root_with_a_cross_signature() {
    let mut server = Server::start(&[]);
    let before = server.get("/v1/connect/ca/roots");
    let old_roots = before.json();
    let old_root = active_root(&old_roots).clone();
    let old_root_pem = old_root["RootCert"].as_str().unwrap().to_string();
    let old_leaf = server.get_json("/v1/agent/connect/ca/leaf/web");
    let old_leaf_index = old_leaf["ModifyIndex"].as_u64().unwrap();

    // A leaf query parked on the cached leaf must wake up for the new signer.
    let url = server.url(&format!(
        "/v1/agent/connect/ca/leaf/web?index={old_leaf_index}&wait=60s"
    ));
    let http = server.http();
    let waiter = std::thread::spawn(move || http.send(reqwest::Method::GET, &url, None));
    // Nothing observable says the query is parked; this pause only makes
    // that interleaving likely, and the assertions hold either way.
    std::thread::sleep(Duration::from_millis(300));

    let r = server.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200, "{r:?}");
    let rotated_at = Instant::now();

    let after = server.get("/v1/connect/ca/roots");
    assert!(after.index() > before.index());
    let roots = after.json();
    assert_eq!(roots["TrustDomain"], old_roots["TrustDomain"]);
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 2, "{roots}");
    assert_ne!(roots["ActiveRootID"], old_roots["ActiveRootID"]);

    // The old root stays trusted, inactive, with a rotated-out time.
    let old = root_by_id(&roots, &old_root["ID"]);
    assert_eq!(old["Active"], json!(false));
    assert_eq!(old["RootCert"], old_root["RootCert"]);
    assert!(old["RotatedOutAt"].is_string(), "{old}");

    // The new root: RSA, same cluster, [cross-signed, signing] intermediates.
    let new = active_root(&roots);
    assert_eq!(new["Active"], json!(true));
    assert_eq!(new["PrivateKeyType"], json!("rsa"));
    assert_eq!(new["PrivateKeyBits"], json!(2048));
    assert_eq!(new["ExternalTrustDomain"], old_root["ExternalTrustDomain"]);
    let new_root = cert_facts(new["RootCert"].as_str().unwrap());
    let old_facts = cert_facts(&old_root_pem);
    assert_eq!((new_root.key_is_ec, new_root.key_bits), (false, 2048));
    let inters = new["IntermediateCerts"].as_array().unwrap();
    assert_eq!(inters.len(), 2, "[cross-signed, signing]: {new}");
    let cross = cert_facts(inters[0].as_str().unwrap());
    assert_eq!(cross.subject_cn, new_root.subject_cn);
    assert_eq!(cross.issuer_cn, old_facts.subject_cn);
    assert_eq!(cross.subject_key_id, new_root.subject_key_id);
    assert_eq!(cross.authority_key_id, old_facts.subject_key_id);
    assert_eq!(cross.uris, new_root.uris);
    assert_eq!(cross.ca, Some(true));
    assert!(
        cross.not_after - cross.not_before >= 2 * 72 * 3600,
        "the cross-signature must outlive 2 x LeafCertTTL"
    );
    assert!(cross.not_after <= old_facts.not_after);
    let signing = cert_facts(inters[1].as_str().unwrap());
    assert_eq!(signing.authority_key_id, new_root.subject_key_id);

    // The parked leaf query returned promptly with a leaf from the new signer.
    let woken = waiter.join().unwrap();
    assert_eq!(woken.status, 200, "{woken:?}");
    assert!(
        rotated_at.elapsed() < Duration::from_secs(20),
        "the parked leaf query did not return promptly after the rotation"
    );
    let woken = woken.json();
    assert_ne!(woken["SerialNumber"], old_leaf["SerialNumber"]);
    assert_eq!(
        cert_facts(woken["CertPEM"].as_str().unwrap()).authority_key_id,
        signing.subject_key_id
    );
    assert_eq!(
        server.get_json("/v1/agent/connect/ca/leaf/web")["SerialNumber"],
        woken["SerialNumber"],
        "the cache now holds the new leaf"
    );

    // New leaves verify against the new root alone, against the old root
    // alone (through the cross-signature), and against the whole bundle.
    let td = roots["TrustDomain"].as_str().unwrap();
    let r = server.sign(&csr_for_uri(&service_uri(td, "dc1", "api")));
    assert_eq!(r.status, 200, "{r:?}");
    let new_leaf = r.json()["CertPEM"].as_str().unwrap().to_string();
    assert_eq!(
        pem_blocks(&new_leaf).len(),
        3,
        "leaf + cross-signed + signing"
    );
    let bundle = roots_bundle(&roots);
    verify_chain_against(
        &new_leaf,
        new["RootCert"].as_str().unwrap(),
        "new leaf, new root",
    );
    verify_chain_against(&new_leaf, &old_root_pem, "new leaf, old root only");
    verify_chain_against(&new_leaf, &bundle, "new leaf, bundle");
    // Leaves issued before the rotation stay valid under the new bundle.
    verify_chain_against(
        old_leaf["CertPEM"].as_str().unwrap(),
        &bundle,
        "old leaf, bundle",
    );

    // The same change again is a no-op.
    let index = server.get("/v1/connect/ca/roots").index();
    let r = server.put_config(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    assert_eq!(r.status, 200);
    assert_eq!(server.get("/v1/connect/ca/roots").index(), index);

    // And all of it survives a restart.
    server.restart();
    let restarted = server.roots();
    assert_eq!(restarted["ActiveRootID"], roots["ActiveRootID"]);
    assert_eq!(restarted["Roots"], roots["Roots"]);
    let r = server.sign(&csr_for_uri(&service_uri(td, "dc1", "api")));
    assert_eq!(r.status, 200, "{r:?}");
    verify_chain_against(
        r.json()["CertPEM"].as_str().unwrap(),
        &old_root_pem,
        "after restart, old root only",
    );
}

#[test]
fn concurrent_rotations_are_refused_with_409() {
    let server = Server::start(&[]);
    let before = server.roots();
    // Two different rotations released together: RSA key generation takes
    // long enough that the second arrives while the first runs.
    let barrier = Arc::new(Barrier::new(2));
    let url = server.url("/v1/connect/ca/configuration");
    let threads: Vec<_> = [4096, 3072]
        .into_iter()
        .map(|bits| {
            let (barrier, url, http) = (barrier.clone(), url.clone(), server.http());
            let body = json!({"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": bits}})
                .to_string()
                .into_bytes();
            std::thread::spawn(move || {
                barrier.wait();
                http.send(reqwest::Method::PUT, &url, Some(body))
            })
        })
        .collect();
    let mut results: Vec<common::Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    results.sort_by_key(|r| r.status);
    assert_eq!(
        results.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 409],
        "{results:?}"
    );
    let busy = &results[1];
    busy.assert_error(409);
    assert!(
        busy.body.starts_with("CA is already in state \""),
        "{busy:?}"
    );
    // Exactly one rotation happened.
    let after = server.roots();
    assert_eq!(after["Roots"].as_array().unwrap().len(), 2);
    assert_ne!(after["ActiveRootID"], before["ActiveRootID"]);
}
