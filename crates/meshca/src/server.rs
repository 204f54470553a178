//! `meshca server`: opens the store, starts the CA and serves the API until
//! SIGINT/SIGTERM.

use crate::cli::ServerArgs;
use crate::config::{self, Settings};
use anyhow::Context;
use meshca_core::{Clock, SystemClock};
use meshca_server::routes::AppState;
use meshca_server::{default_provider_factory, CaEngine};
use meshca_store::{MemoryStore, Records, StoreKey};
use meshca_store_sled::SledStore;
use std::sync::Arc;
use std::time::Duration;

/// How often the CA checks for intermediates to renew and roots to prune.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(60);

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let settings = config::load(&args)?;
    init_logging(&settings)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(settings))
}

fn init_logging(s: &Settings) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&s.log_level));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let stderr = if s.log_json {
        stderr.json().boxed()
    } else {
        stderr.boxed()
    };
    // The audit trail: one JSON line per issued certificate (target
    // "audit"), appended to its own file when `audit.path` is set.
    let audit = match &s.audit_path {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening audit log {}", path.display()))?;
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::sync::Mutex::new(file))
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() == "audit"
                }));
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter))
        .with(audit)
        .init();
    Ok(())
}

/// Opens the store: the sled backend in the data dir (or, with `--dev`, an
/// in-memory store under a random key), vetted, migrated and unsealed.
fn open_store(s: &Settings) -> anyhow::Result<Arc<Records>> {
    let now = SystemClock.now();
    if s.dev {
        tracing::warn!("dev mode: the store is in memory and everything is lost on exit");
        let records =
            meshca_migrations::open(Arc::new(MemoryStore::new()), &StoreKey::generate()?, now)?;
        return Ok(Arc::new(records));
    }
    meshca_store::fs::create_private_dir_all(&s.data_dir)
        .with_context(|| format!("creating data dir {}", s.data_dir.display()))?;
    let key = match &s.store_key_file {
        Some(path) => {
            StoreKey::load(path).with_context(|| format!("loading store key {}", path.display()))?
        }
        None => {
            let default_key = s.data_dir.join(meshca_store::KEY_FILE_NAME);
            if !default_key.exists() && meshca_store_sled::holds_store(&s.data_dir) {
                // A new key could never open this store: refuse before
                // creating anything.
                anyhow::bail!(
                    "{} holds a store but no store key ({} is missing): start with \
                     --store-key-file pointing at the key the store was created with, or \
                     put that key back at {}",
                    s.data_dir.display(),
                    default_key.display(),
                    default_key.display()
                );
            }
            // load_or_create_in warns when it creates the key.
            StoreKey::load_or_create_in(&s.data_dir)?.0
        }
    };
    let store = SledStore::open(&s.data_dir, &key)
        .with_context(|| format!("opening the store in {}", s.data_dir.display()))?;
    let records = meshca_migrations::open(Arc::new(store), &key, now)
        .with_context(|| format!("opening the store in {}", s.data_dir.display()))?;
    Ok(Arc::new(records))
}

async fn serve(s: Settings) -> anyhow::Result<()> {
    let store = open_store(&s)?;
    let ca = CaEngine::start(
        store,
        Arc::new(SystemClock),
        s.datacenter.clone(),
        s.initial_ca.clone(),
        default_provider_factory(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the CA: {e}"))?;
    tracing::warn!("ACLs are not implemented in this version: every API request is unauthenticated; bind to a trusted address only");
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let p = ca.published();
    let router = meshca_server::router(AppState::new(ca.clone()));
    // One shutdown signal for every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut listeners = tokio::task::JoinSet::new();
    // HTTPS first, so that its line is logged before HTTP's.
    if let (Some(opts), Some(port)) = (s.tls, s.https_port) {
        let tls = meshca_server::tls::TlsServer::start(opts, ca.clone())
            .await
            .context("setting up TLS on the HTTP API")?;
        let listener = tokio::net::TcpListener::bind((s.bind.as_str(), port))
            .await
            .with_context(|| format!("binding {}:{port} (HTTPS)", s.bind))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "meshca listening on https://{addr}");
        listeners.spawn(meshca_server::serve_tls(
            listener,
            router.clone(),
            tls,
            until_stopped(),
        ));
    }
    if let Some(port) = s.http_port {
        let listener = tokio::net::TcpListener::bind((s.bind.as_str(), port))
            .await
            .with_context(|| format!("binding {}:{port}", s.bind))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, trust_domain = %p.trust_domain, datacenter = %s.datacenter, "meshca listening on http://{addr}");
        listeners.spawn(meshca_server::serve(
            listener,
            router.clone(),
            until_stopped(),
        ));
    }
    ca.spawn_maintenance(MAINTENANCE_PERIOD);
    shutdown_signal().await;
    let _ = stop.send(true);
    while let Some(done) = listeners.join_next().await {
        done.context("a listener task failed")??;
    }
    tracing::info!("meshca stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
