//! `meshca server`: opens the store, starts the CA and serves the API until
//! SIGINT/SIGTERM.

use crate::cli::ServerArgs;
use crate::config::{self, EtcdSettings, EtcdTlsFiles, SecondarySettings, Settings, StoreBackend};
use anyhow::Context;
use meshca_acl::Acl;
use meshca_core::{Clock, SystemClock};
use meshca_migrations::{KeyChange, OpenOptions};
use meshca_server::routes::AppState;
use meshca_server::{default_provider_factory, CaEngine};
use meshca_store::{Leadership, MemoryStore, Records, StoreKey};
use meshca_store_sled::SledStore;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// How often the CA checks for intermediates to renew and roots to prune.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(60);
/// How long a new secondary waits for its primary at its first start.
const PRIMARY_WAIT_AT_START: Duration = Duration::from_secs(60);

/// The thread that writes audit lines to stderr; dropping its guard writes
/// what is buffered. Kept here so that an exit without unwinding can do it.
static LOG_WRITER: std::sync::Mutex<Option<AuditLogGuard>> = std::sync::Mutex::new(None);

type AuditLogGuard = crate::batched_log::FlushGuard<std::io::Stderr>;

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let settings = config::load(&args)?;
    *LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(init_logging(&settings)?);
    // Also when a panic unwinds through here.
    let _flush = FlushLogOnDrop;
    let seeding = Seeding::start();
    serve_on_runtime(settings, seeding)
}

/// aws-lc seeds its random generator from CPU timing jitter the first time
/// any thread of the process asks for randomness: tens of milliseconds of
/// CPU. A restarted server opens its store without randomness, so the
/// first signing or root rotation after every restart paid it (a rotation
/// 27-36 ms instead of 3-6 ms; docs/BENCHMARKS.md). It is seeded on a
/// thread of its own while the store opens, and the server waits for it
/// before it serves.
struct Seeding(Option<std::thread::JoinHandle<()>>);

impl Seeding {
    fn start() -> Self {
        let thread = std::thread::Builder::new()
            .name("meshca-seed-rng".into())
            .spawn(|| {
                // A failure here is the first use's failure later, reported there.
                let _ = aws_lc_rs::rand::fill(&mut [0u8; 1]);
            });
        // Without the thread, the first use of randomness seeds it.
        Self(thread.ok())
    }

    fn wait(self) {
        if let Some(thread) = self.0 {
            let _ = tokio::task::block_in_place(|| thread.join());
        }
    }
}

/// Writes the audit lines still buffered.
fn flush_log() {
    drop(LOG_WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}

struct FlushLogOnDrop;

impl Drop for FlushLogOnDrop {
    fn drop(&mut self) {
        flush_log();
    }
}

fn serve_on_runtime(settings: Settings, seeding: Seeding) -> anyhow::Result<()> {
    // The journal's batches wait for entries still being signed only while
    // a worker is busy: the workers report going idle and back.
    let idle = meshca_journal::IdleWorkers::reported();
    let (parked, unparked) = (idle.clone(), idle.clone());
    meshca_server::runtime()
        .on_thread_park(move || parked.parked())
        .on_thread_unpark(move || unparked.unparked())
        .build()
        .context("starting the async runtime")?
        .block_on(serve(settings, idle, seeding))
}

/// Logs to stderr. The audit lines of issued certificates, one per
/// request, are written in batches by a thread of their own
/// ([`crate::batched_log`]), so that a request does not wait for a write:
/// on the runtime worker it cost a write syscall per certificate, about 5%
/// of an agent leaf's CPU (docs/BENCHMARKS.md). None is lost (a full buffer
/// blocks, as a direct write would); a crash can lose the last few
/// milliseconds of them, which the issuance journal (synced before each
/// answer) and the audit file hold. Every other line is written at once,
/// in order, so that what a crash leaves in the log ends with its cause.
fn init_logging(s: &Settings) -> anyhow::Result<AuditLogGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(from_env) => from_env,
        Err(_) => tracing_subscriber::EnvFilter::try_new(config::log_filter(&s.log_level))
            .with_context(|| format!("invalid log_level {:?}", s.log_level))?,
    };
    let (audit_writer, guard) = crate::batched_log::Batched::start(
        std::io::stderr(),
        "meshca-log",
        crate::batched_log::FLUSH_EVERY,
        crate::batched_log::FULL_AT,
    )
    .context("starting the log writer")?;
    let writer = audit_writer
        .with_filter(|line: &tracing::Metadata<'_>| {
            line.target() == "audit" && line.name() == meshca_server::ISSUED_AUDIT_EVENT
        })
        .or_else(std::io::stderr);
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
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
    Ok(guard)
}

/// Opens the store: the sled backend in the data dir (or, with `--dev`, an
/// in-memory store under a random key), vetted, migrated and unsealed; the
/// data key rotates when due, and with an old store key the store moves to
/// the new one.
/// The opened store, and the etcd backend's handle when the store is
/// shared (for the election).
type Opened = (Arc<Records>, Option<Arc<meshca_store_etcd::EtcdStore>>);

fn open_store(s: &Settings) -> anyhow::Result<Opened> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if s.dev {
        tracing::warn!("dev mode: the store is in memory and everything is lost on exit");
        let options = OpenOptions {
            key: StoreKey::generate()?,
            old_key: None,
            data_key_rotation_period: s.data_key_rotation_period,
            clock,
        };
        let (records, _) = meshca_migrations::open_with(Arc::new(MemoryStore::new()), &options)?;
        return Ok((Arc::new(records), None));
    }
    if let StoreBackend::Etcd(etcd) = &s.store {
        return open_etcd_store(s, etcd, clock);
    }
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
            meshca_store::fs::create_private_dir_all(&s.data_dir)
                .with_context(|| format!("creating data dir {}", s.data_dir.display()))?;
            // load_or_create_in warns when it creates the key.
            StoreKey::load_or_create_in(&s.data_dir)?.0
        }
    };
    let old_key = match &s.old_store_key_file {
        Some(path) => Some(
            StoreKey::load(path)
                .with_context(|| format!("loading old store key {}", path.display()))?,
        ),
        None => None,
    };
    let opening =
        match (&s.store_key_file, &s.old_store_key_file) {
            (Some(new), Some(old)) => format!(
            "opening the store in {} with store key file {} (key {}) and old store key file {} \
             (key {})",
            s.data_dir.display(),
            new.display(),
            key.id(),
            old.display(),
            old_key.as_ref().map(|k| k.id().to_string()).unwrap_or_default()
        ),
            (Some(new), None) => format!(
                "opening the store in {} with store key file {} (key {})",
                s.data_dir.display(),
                new.display(),
                key.id()
            ),
            _ => format!("opening the store in {}", s.data_dir.display()),
        };
    let opening = || opening.clone();
    let store = match &old_key {
        Some(old) => {
            if old.id() == key.id() {
                anyhow::bail!(
                    "--old-store-key-file and --store-key-file hold the same store key ({}): \
                     there is nothing to re-seal",
                    key.id()
                );
            }
            if !meshca_store_sled::holds_store(&s.data_dir) {
                anyhow::bail!(
                    "--old-store-key-file is given, but {} holds no store to re-seal from it: \
                     start with --store-key-file alone",
                    s.data_dir.display()
                );
            }
            SledStore::open_rekeying(&s.data_dir, &key, old)
        }
        None => {
            meshca_store::fs::create_private_dir_all(&s.data_dir)
                .with_context(|| format!("creating data dir {}", s.data_dir.display()))?;
            SledStore::open(&s.data_dir, &key)
        }
    }
    .map_err(|e| name_the_holder(&s.data_dir, e))
    .with_context(opening)?;
    // Read by the next server that finds the data dir locked: it names us.
    write_private(&s.data_dir.join(PID_FILE), &std::process::id().to_string())?;
    let store = Arc::new(store);
    let options = OpenOptions {
        key: key.clone(),
        old_key,
        data_key_rotation_period: s.data_key_rotation_period,
        clock,
    };
    let (records, change) =
        meshca_migrations::open_with(store.clone(), &options).with_context(opening)?;
    if options.old_key.is_some() {
        // The data keys are under the new store key now; the backend's own
        // files (key check, high-water mark) follow.
        store.rekey(&key).with_context(opening)?;
    }
    match change {
        KeyChange::StoreKeyChanged { from, to } => tracing::warn!(
            %from,
            %to,
            "the store is re-sealed under the new store key, with a new data key; the old store \
             key is no longer needed: start with --store-key-file alone from now on"
        ),
        KeyChange::DataKeyRotated => tracing::info!(
            data_key_id = %records.sealer().data_key_id(),
            "new data key: the previous one reached the data key rotation period"
        ),
        KeyChange::None if options.old_key.is_some() => tracing::warn!(
            "the store is already sealed under the new store key; the old store key is not \
             needed: start with --store-key-file alone from now on"
        ),
        KeyChange::None => {}
    }
    Ok((Arc::new(records), None))
}

/// TLS to etcd from its files, checked here: the etcd client would only
/// fail at its first connection, and less tellingly.
fn etcd_tls(files: &EtcdTlsFiles) -> anyhow::Result<meshca_store_etcd::EtcdTls> {
    let (ca_pem, _) = config::pem_certs("store.etcd.ca_file", &files.ca_file)?;
    let client = match &files.client {
        None => None,
        Some((cert, key)) => {
            let settings = ["store.etcd.cert_file", "store.etcd.key_file"];
            let files = config::pem_identity(settings, cert, key)?;
            Some(meshca_store_etcd::ClientIdentity {
                cert_pem: files.cert_pem,
                key_pem: files.key_pem,
            })
        }
    };
    Ok(meshca_store_etcd::EtcdTls { ca_pem, client })
}

/// Opens the etcd store shared by every server of the cluster, migrated
/// and unsealed with the store key they all read. The data dir keeps this
/// server's own files (the issuance journal).
fn open_etcd_store(
    s: &Settings,
    etcd: &EtcdSettings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Opened> {
    let path = s
        .store_key_file
        .as_ref()
        .context("the etcd store needs --store-key-file")?;
    let key =
        StoreKey::load(path).with_context(|| format!("loading store key {}", path.display()))?;
    meshca_store::fs::create_private_dir_all(&s.data_dir)
        .with_context(|| format!("creating data dir {}", s.data_dir.display()))?;
    let opening = || {
        format!(
            "opening the etcd store at {} under {}",
            etcd.endpoints.join(","),
            etcd.prefix
        )
    };
    let store = Arc::new(
        meshca_store_etcd::EtcdStore::open(meshca_store_etcd::EtcdOptions {
            endpoints: etcd.endpoints.clone(),
            prefix: etcd.prefix.clone(),
            request_timeout: etcd.request_timeout,
            tls: etcd.tls.as_ref().map(etcd_tls).transpose()?,
        })
        .with_context(opening)?,
    );
    let options = OpenOptions {
        key,
        old_key: None,
        data_key_rotation_period: s.data_key_rotation_period,
        clock,
    };
    let (records, change) = open_shared(&store, &options).with_context(opening)?;
    if change == KeyChange::DataKeyRotated {
        tracing::info!(
            data_key_id = %records.sealer().data_key_id(),
            "new data key: the previous one reached the data key rotation period"
        );
    }
    tracing::info!(endpoints = %etcd.endpoints.join(","), prefix = %etcd.prefix, "the store is in etcd");
    Ok((Arc::new(records), Some(store)))
}

/// Opens (migrates, unseals) a store other servers may be opening at the
/// same moment: when another one's first write gets in first, this one
/// opens what that one wrote.
fn open_shared(
    store: &Arc<meshca_store_etcd::EtcdStore>,
    options: &OpenOptions,
) -> Result<(Records, KeyChange), meshca_store::StoreError> {
    let mut attempts = 0;
    loop {
        match meshca_migrations::open_with(store.clone(), options) {
            Err(meshca_store::StoreError::Conflict { .. }) if attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

async fn serve(
    mut s: Settings,
    idle: Arc<meshca_journal::IdleWorkers>,
    seeding: Seeding,
) -> anyhow::Result<()> {
    // Opening may block on the disk or the network: not on a worker.
    let (store, etcd) = tokio::task::block_in_place(|| open_store(&s))?;
    check_datacenter(&s, &store)?;
    let acl_store = store.clone();
    let ca = start_ca(&s, store)
        .await
        .map_err(|e| anyhow::anyhow!("starting the CA: {e}"))?;
    // Nobody leads until the listeners are up: this server then leads
    // alone, or campaigns with the others sharing the etcd store.
    let (leadership, led) = tokio::sync::watch::channel(Leadership::default());
    ca.follow_leadership(led);
    if !s.dev {
        // Opening reads only the end of the newest segment, whatever the
        // journal's size.
        let dir = s.data_dir.join(JOURNAL_DIR);
        let journal =
            meshca_journal::Journal::open_with(&dir, meshca_journal::DEFAULT_SEGMENT_BYTES, idle)
                .map_err(|e| anyhow::anyhow!("opening {e}"))?;
        ca.journal_issuance(Arc::new(journal));
    }
    if s.ca_config_given && ca.published().config != s.initial_ca {
        tracing::warn!(
            "connect.ca_config (and ca_provider) in the configuration file only seed a new CA: \
             this CA's configuration differs from the file's and stays as it is; change it with \
             PUT /v1/connect/ca/configuration (meshca connect ca set-config)"
        );
    }
    let acl = open_acl(&s, &acl_store)?;
    if matches!(s.store, StoreBackend::Etcd(_)) {
        // Other servers commit to the same store: publish their CA
        // changes and load their ACL changes here too.
        ca.spawn_store_follower();
        if let Some(acl) = &acl {
            spawn_acl_follower(
                acl.clone(),
                acl_store.store().watch(meshca_store::schema::ACL),
            );
        }
    }
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let p = ca.published();
    let acl_enabled = acl.is_some();
    let mut state = AppState::new(ca.clone());
    if let Some(acl) = acl {
        state = state.with_acl(acl);
    }
    let router = meshca_server::router(state.clone());
    let limits = meshca_server::listener::Limits {
        drain: s.shutdown_grace,
        ..Default::default()
    };
    // One shutdown signal for every listener.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    // Bind every listener first: who leads is settled before any request
    // is served (a server alone on its store leads from its first request).
    let tls_on = s.tls.is_some();
    let https = match (s.tls.take(), s.https_port) {
        (Some(opts), Some(port)) => {
            let tls = meshca_server::tls::TlsServer::start(opts, ca.clone())
                .await
                .context("setting up TLS on the HTTP API")?;
            let listener = tokio::net::TcpListener::bind((s.bind.as_str(), port))
                .await
                .with_context(|| format!("binding {}:{port} (HTTPS)", s.bind))?;
            Some((listener, tls))
        }
        _ => None,
    };
    let http = match s.http_port {
        Some(port) => Some(
            tokio::net::TcpListener::bind((s.bind.as_str(), port))
                .await
                .with_context(|| format!("binding {}:{port}", s.bind))?,
        ),
        None => None,
    };
    // The API address the other servers reach this one at (HTTP first).
    let me = match (&http, &https) {
        (Some(l), _) => format!("http://{}", advertise(&s, l.local_addr()?)),
        (None, Some((l, _))) => format!("https://{}", advertise(&s, l.local_addr()?)),
        (None, None) => anyhow::bail!("no listener to advertise"),
    };
    match (&etcd, &s.store) {
        (Some(etcd), StoreBackend::Etcd(settings)) => {
            let mut elected = etcd.campaign(me, settings.lease_ttl);
            tokio::spawn(async move {
                loop {
                    leadership.send_replace(elected.borrow_and_update().clone());
                    if elected.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        _ => {
            leadership.send_replace(Leadership::alone(&me));
        }
    }
    seeding.wait();
    let mut listeners = tokio::task::JoinSet::new();
    // HTTPS first, so that its line is logged before HTTP's.
    if let Some((listener, tls)) = https {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "meshca listening on https://{addr}");
        listeners.spawn(meshca_server::listener::serve_tls(
            listener,
            router.clone(),
            limits,
            tls,
            until_stopped(),
        ));
    }
    if let Some(listener) = http {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, trust_domain = %p.trust_domain, datacenter = %s.datacenter, "meshca listening on http://{addr}");
        listeners.spawn(meshca_server::listener::serve(
            listener,
            router.clone(),
            limits,
            until_stopped(),
        ));
    }
    log_ready(&s, &p, acl_enabled, tls_on);
    ca.spawn_maintenance(MAINTENANCE_PERIOD);
    ca.spawn_follower();
    shutdown_signal().await;
    tracing::info!(grace = ?s.shutdown_grace,
        "shutting down: parked blocking queries answer now, requests in flight may finish");
    state.shut_down();
    if let Some(etcd) = &etcd {
        // Another server takes over now rather than after the lease.
        tokio::task::block_in_place(|| etcd.resign());
    }
    let _ = stop.send(true);
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal: exiting now, without waiting for requests in flight");
        // Every acknowledged change is already on disk (a commit is synced
        // before it is acknowledged), so nothing is lost by not unwinding.
        flush_log();
        std::process::exit(130);
    });
    while let Some(done) = listeners.join_next().await {
        done.context("a listener task failed")??;
    }
    if !s.dev {
        let _ = std::fs::remove_file(s.data_dir.join(PID_FILE));
    }
    tracing::info!("meshca stopped");
    Ok(())
}

/// The listener address `bound` as the other servers reach it.
fn advertise(s: &Settings, bound: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(s.advertise_addr.unwrap_or(bound.ip()), bound.port())
}

/// Reloads the ACL tables whenever a commit (another server's, on a
/// shared store) writes an ACL record.
fn spawn_acl_follower(acl: Arc<Acl>, mut changes: tokio::sync::watch::Receiver<u64>) {
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            changes.borrow_and_update();
            let acl = acl.clone();
            let reloaded = tokio::task::spawn_blocking(move || acl.reload()).await;
            if let Ok(Err(e)) = reloaded {
                tracing::warn!(error = %e, "could not reload the ACLs another server changed");
            }
        }
    });
}

/// Refuses a data dir whose CA issues for another datacenter: the SPIFFE ID
/// of every leaf names it, so a restart with another `--datacenter` would
/// silently change the identities issued under the same root.
fn check_datacenter(s: &Settings, store: &Records) -> anyhow::Result<()> {
    let recorded = store
        .record_datacenter(&s.datacenter)
        .context("reading the store's datacenter")?;
    if recorded != s.datacenter {
        anyhow::bail!(
            "data dir {} holds the CA of datacenter {recorded:?}, but this server is configured \
             as datacenter {:?}: its leaves' SPIFFE IDs name the datacenter, so a CA never \
             changes it. Start with --datacenter {recorded}, or use another data dir for {:?}",
            s.data_dir.display(),
            s.datacenter,
            s.datacenter
        );
    }
    Ok(())
}

/// The CA engine: a primary's, or a secondary's that follows its primary.
async fn start_ca(s: &Settings, store: Arc<Records>) -> anyhow::Result<Arc<CaEngine>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (dc, initial, factory) = (
        s.datacenter.clone(),
        s.initial_ca.clone(),
        default_provider_factory(),
    );
    let Some(sec) = &s.secondary else {
        return Ok(CaEngine::start(store, clock, dc, initial, factory).await?);
    };
    tracing::info!(primary_datacenter = %sec.primary_datacenter,
        addresses = ?sec.primary_addresses, "secondary datacenter: following the primary");
    let link = meshca_server::PrimaryLink {
        primary: Arc::new(meshca_server::primary::HttpPrimary::new(
            primary_client(sec)?,
            &sec.primary_addresses,
            sec.replication_token.clone(),
        )),
        primary_datacenter: sec.primary_datacenter.clone(),
    };
    let ca = CaEngine::start_secondary(
        store,
        clock,
        dc,
        initial,
        factory,
        link,
        PRIMARY_WAIT_AT_START,
    )
    .await?;
    Ok(ca)
}

/// The HTTP client to an https primary: its CA file as the only trust
/// anchors, and our client certificate when one is configured.
fn primary_client(sec: &SecondarySettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &sec.ca_file {
        builder = builder.tls_built_in_root_certs(false);
        for cert in crate::client::trust_anchors(ca)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &sec.client_cert {
        builder = builder.identity(crate::client::identity(cert, key)?);
    }
    builder
        .build()
        .context("building the HTTP client to the primary datacenter")
}

/// One line that says what runs: where the data is, which datacenter and
/// trust domain, and which protections are on.
fn log_ready(s: &Settings, p: &meshca_server::Published, acls: bool, tls: bool) {
    let on = |b: bool| if b { "on" } else { "off" };
    let data_dir = match s.dev {
        true => "(in memory: --dev)".to_string(),
        false => s.data_dir.display().to_string(),
    };
    let role = match &s.secondary {
        Some(sec) => format!("secondary of {}", sec.primary_datacenter),
        None => "primary".to_string(),
    };
    tracing::info!(data_dir = %data_dir, datacenter = %s.datacenter, role = %role,
        trust_domain = %p.trust_domain, active_root = %p.active_root_id, acls = on(acls),
        tls = on(tls), encryption_at_rest = "on",
        "meshca ready: data dir {data_dir}, datacenter {} ({role}), ACLs {}, TLS {}, keys \
         encrypted at rest", s.datacenter, on(acls), on(tls));
}

/// The file in the data dir that names the process holding it.
const PID_FILE: &str = "meshca.pid";
/// The issuance journal's segments, under the data dir.
const JOURNAL_DIR: &str = "journal";

/// A store held by another process: say which, when its pid file tells.
fn name_the_holder(data_dir: &std::path::Path, e: meshca_store::StoreError) -> anyhow::Error {
    if !e.to_string().contains("in use by another process") {
        return e.into();
    }
    let pid = std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let holder = match pid {
        Some(pid) => format!("another meshca process (pid {pid})"),
        None => "another meshca process".to_string(),
    };
    anyhow::anyhow!(
        "data dir {} is in use by {holder}: stop it first, or give this server another --data-dir",
        data_dir.display()
    )
}

/// Name of the file the first start writes the management token to.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// The ACL system, or `None` when ACLs are off. On the first start (unless
/// a token comes from the configuration or auto-bootstrap is off) a
/// management token is created and its SecretID written to
/// `<data-dir>/bootstrap-token`, mode 0600. The file is written before the
/// token is committed: a crash in between leaves no token that nobody
/// knows, and the next start writes a new one.
fn open_acl(s: &Settings, store: &Records) -> anyhow::Result<Option<Arc<Acl>>> {
    if !s.acl.enabled {
        tracing::warn!(
            "ACLs are disabled: every API request is allowed; bind to a trusted address only"
        );
        return Ok(None);
    }
    let acl = Acl::open(store.store().clone(), Arc::new(SystemClock))
        .context("loading the ACL records")?;
    if let Some(secret) = &s.acl.initial_management {
        if acl.ensure_initial_management(secret)? {
            tracing::info!("ACL initial management token from the configuration created");
        }
    } else if s.acl.auto_bootstrap && !s.dev && acl.bootstrapped_at().is_none() {
        let secret = SecretString::from(uuid::Uuid::new_v4().to_string());
        let path = s.data_dir.join(BOOTSTRAP_TOKEN_FILE);
        write_private(&path, secret.expose_secret())?;
        let token = acl.bootstrap(Some(secret))?;
        tracing::warn!(accessor = %token.record.accessor_id, path = %path.display(),
            "ACLs bootstrapped: the management token's SecretID is in {}; keep it secret",
            path.display());
    } else if acl.bootstrapped_at().is_none() {
        tracing::warn!("ACLs are not bootstrapped yet: run `meshca acl bootstrap` to get the first management token");
    }
    tracing::info!("ACLs enabled (default deny)");
    Ok(Some(Arc::new(acl)))
}

/// Writes `contents` to `path` (mode 0600) through a temporary file and a
/// rename, synced, so the file is either whole or absent.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
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
