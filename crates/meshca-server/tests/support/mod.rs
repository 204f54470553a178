//! Shared set-up for this crate's tests: a CA engine with the default
//! configuration on an in-memory store.

#![allow(dead_code, clippy::unwrap_used)] // test support: each test uses a part

use meshca_core::{CaConfig, Clock, SystemClock};
use meshca_server::{default_provider_factory, CaEngine};
use meshca_store::{MemoryStore, StoreKey};
use std::sync::Arc;

/// An engine for datacenter `dc1` whose time comes from `clock`.
pub async fn engine_with(clock: Arc<dyn Clock>) -> Arc<CaEngine> {
    let store = meshca_migrations::open(
        Arc::new(MemoryStore::new()),
        &StoreKey::generate().unwrap(),
        clock.now(),
    )
    .unwrap();
    CaEngine::start(
        Arc::new(store),
        clock,
        "dc1".into(),
        CaConfig::default(),
        default_provider_factory(),
    )
    .await
    .unwrap()
}

/// An engine on the system clock.
pub async fn engine() -> Arc<CaEngine> {
    engine_with(Arc::new(SystemClock)).await
}
