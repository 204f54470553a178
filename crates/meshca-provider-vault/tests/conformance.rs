//! The vault provider passes the provider conformance suite against a real
//! OpenBao dev server, for every key spec.

#![allow(clippy::unwrap_used)] // a test: a failed setup should panic loudly

#[path = "../../../tests/common/openbao.rs"]
mod openbao;

use meshca_core::{CaConfig, Clock, SystemClock};
use meshca_provider::conformance::{run_all, KEY_SPECS};
use meshca_provider_vault::VaultProvider;
use openbao::OpenBao;
use time::OffsetDateTime;

fn vault_config(bao: &OpenBao, root: &str, int: &str) -> CaConfig {
    let config = bao.ca_config(root, int);
    CaConfig::from_wire("vault", config.as_object().unwrap(), None).unwrap()
}

/// Now, in whole seconds (certificates carry no fractions): Vault signs
/// only for its own clock.
fn now() -> OffsetDateTime {
    SystemClock.now().replace_nanosecond(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_provider_passes_the_conformance_suite_against_openbao() {
    let bao = OpenBao::start();
    let provider = VaultProvider::new(&vault_config(&bao, "meshca-root", "meshca-int")).unwrap();
    run_all(&provider, &KEY_SPECS, now()).await;
}
