//! `api-docs/openapi.json` describes exactly the routes the server has, and
//! every documented route is served (neither 404 nor 405) over a real socket.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

mod support;

use meshca_server::ROUTES;
use std::collections::BTreeSet;

fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../api-docs/openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_openapi_file_lists_exactly_the_served_routes() {
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_route_is_routed() {
    let ca = support::engine().await;
    let (base, stop) = meshca_server::spawn_on_loopback(ca).await.unwrap();
    let client = reqwest::Client::new();
    for (method, path) in ROUTES {
        let url = format!("{base}{}", path.replace("{service}", "web"));
        let resp = client
            .request(method.parse().unwrap(), &url)
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status != 404 && status != 405, "{method} {path}: {status}");
    }
    let _ = stop.send(());
}
