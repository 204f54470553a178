//! The built-in provider passes the provider conformance suite, for every
//! key spec.

use meshca_provider::conformance::{run_all, KEY_SPECS, NOW};
use meshca_provider::BuiltinProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_provider_passes_the_conformance_suite() {
    run_all(&BuiltinProvider::new(), &KEY_SPECS, NOW).await;
}
