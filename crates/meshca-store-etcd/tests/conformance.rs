//! The shared Store conformance suite against a real 3-member etcd cluster
//! on loopback. Tests running at the same time share one cluster, each
//! under a prefix of its own; the last one to finish stops it.

#[path = "../../../tests/common/etcd.rs"]
mod etcd;

use etcd::EtcdCluster;
use meshca_store::Store;
use meshca_store_etcd::{EtcdOptions, EtcdStore};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

static CLUSTER: Mutex<Weak<EtcdCluster>> = Mutex::new(Weak::new());

/// The cluster of the tests running now, started if there is none.
fn cluster() -> Arc<EtcdCluster> {
    let mut shared = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(EtcdCluster::start(3));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// A store under a fresh prefix, and the cluster it needs kept running.
fn fresh_store() -> (Arc<dyn Store>, Arc<EtcdCluster>) {
    let cluster = cluster();
    let store = EtcdStore::open(EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: format!("/meshca-test/{}/", uuid::Uuid::new_v4()),
        request_timeout: Duration::from_secs(5),
        tls: None,
    })
    .expect("opening the etcd store");
    (Arc::new(store) as Arc<dyn Store>, cluster)
}

meshca_store::conformance_tests!(fresh_store);
