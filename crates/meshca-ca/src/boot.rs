//! Start-up: restore the CA from the store, or create it on first start.

use crate::persist::Persistence;
use crate::published::Published;
use crate::{provider_call, CaError, ProviderFactory};
use meshca_core::rotation;
use meshca_core::state::CaState;
use meshca_core::{CaConfig, Clock, TrustDomain};
use meshca_provider::CaRequest;
use uuid::Uuid;

/// Opens a stored CA with the provider its configuration names.
pub(crate) async fn restore(
    state: CaState,
    factory: &ProviderFactory,
    datacenter: &str,
) -> Result<Published, CaError> {
    let provider = factory(&state.config.config)?;
    let (cluster_id, index) = (state.cluster_id, state.modify_index);
    let published = Published::open(state, provider, datacenter).await?;
    tracing::info!(%cluster_id, index, "CA restored from the store");
    Ok(published)
}

/// Refuses a stored CA of the other kind: a primary's CA (with its own
/// root) cannot serve a secondary datacenter, a secondary's (the roots of
/// another primary) cannot serve a primary or follow another primary.
pub(crate) fn check_role(state: &CaState, primary_datacenter: Option<&str>) -> Result<(), CaError> {
    let stored = state.primary_datacenter.as_deref();
    if stored == primary_datacenter {
        return Ok(());
    }
    let what = |dc: Option<&str>| match dc {
        None => "a primary datacenter (its own root)".to_string(),
        Some(p) => format!("a secondary of primary datacenter {p:?}"),
    };
    Err(CaError::Rejected(format!(
        "the store holds the CA of {}, but this server is configured as {}: use another data dir",
        what(stored),
        what(primary_datacenter)
    )))
}

/// The published CA of the store, creating it from `initial` when the
/// store holds none.
pub(crate) async fn load_or_bootstrap(
    store: &Persistence,
    clock: &dyn Clock,
    initial: CaConfig,
    factory: &ProviderFactory,
    datacenter: &str,
) -> Result<Published, CaError> {
    if let Some(state) = store.load().await? {
        check_role(&state, None)?;
        return restore(state, factory, datacenter).await;
    }
    let expected = store.index().await?;
    let cluster_id = Uuid::new_v4();
    let provider = factory(&initial)?;
    let req = CaRequest {
        cluster_id,
        trust_domain: TrustDomain::for_cluster(&cluster_id),
        config: initial.clone(),
        now: clock.now(),
    };
    // A 4096-bit RSA key takes seconds: say what the start is waiting for.
    tracing::info!(%cluster_id, provider = initial.provider().as_str(),
        key = %initial.key_spec(), "no CA in the store: generating the first root");
    let started = std::time::Instant::now();
    let material = provider_call(provider.generate_ca(&req)).await?;
    let keys = provider_call(provider.open(&material)).await?;
    let state = rotation::bootstrap(cluster_id, initial, &material, expected + 1)?;
    let published = Published::build(state, provider, keys, datacenter)?;
    store.commit(published.state(), expected).await?;
    tracing::info!(%cluster_id, elapsed_ms = started.elapsed().as_millis() as u64,
        "CA initialised with a new root");
    Ok(published)
}
