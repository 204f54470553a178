//! Issuance: a validated request becomes a leaf signed by the published
//! signer, with that signer's chain, audit-logged with the serial the
//! provider chose.

use crate::keygen::LeafKey;
use crate::observe::IssueKind;
use crate::published::Published;
use crate::{blocking, provider_call, CaEngine, CaError};
use meshca_core::csr::{validate_csr, ValidatedCsr};
use meshca_core::leaf::leaf_validity;
use meshca_core::x509::cert_pem;
use meshca_core::{Serial, ServiceName, SpiffeId};
use meshca_journal::Linger;
use meshca_provider::{LeafRequest, SignedLeaf};
use secrecy::SecretString;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use time::OffsetDateTime;

/// A leaf the CA issued, in domain terms (the server renders `IssuedCert`).
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub serial: Serial,
    /// The leaf followed by the active root's intermediates, as PEM.
    pub cert_pem: String,
    /// Set only when the CA generated the key (agent leaf endpoint).
    pub private_key_pem: Option<SecretString>,
    pub spiffe_id: SpiffeId,
    pub valid_after: OffsetDateTime,
    pub valid_before: OffsetDateTime,
    /// A leaf's `CreateIndex`/`ModifyIndex`: unique and increasing.
    pub index: u64,
    /// `SigningKeyID` of the certificate that signed this leaf.
    pub signing_key_id: String,
}

/// The name of the audit event of an issued certificate (not printed): the
/// one audit line per request, which the binary writes to stderr from a
/// thread of its own.
pub const ISSUED_AUDIT_EVENT: &str = "issued certificate";

/// How an inline signing goes, as the caller's [`SigningTurn`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// On the request's own runtime worker, and the journal entry may wait
    /// for others to share a sync: the cheapest per certificate. For a
    /// client alone, or clients with one request each.
    Batched,
    /// On the worker, and the journal syncs the entry without waiting for
    /// entries still being signed. For a client with one request beside a
    /// busy one: it should not wait for the other's work.
    Prompt,
    /// On one of the engine's signing threads, which the kernel preempts
    /// for the runtime's workers, so that they stay free for the other
    /// clients' requests while this one signs. For a client with many
    /// requests beside others; the hand-over costs it some throughput.
    Background,
}

impl Pace {
    /// Its name as a metric's label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Batched => "batched",
            Self::Prompt => "prompt",
            Self::Background => "background",
        }
    }
}

/// A caller's pacing of an issuance: a turn to sign, taken right before the
/// signing work and given back when it is over (`signed`), before the
/// journal's sync is awaited. The server hands its turns round-robin between
/// clients, so that a flood's signings wait parked for theirs instead of
/// queueing on the runtime ahead of everyone else's, and sets each
/// signing's [`Pace`].
///
/// A closure is a caller with no turns to take: [`Pace::Batched`], and it
/// runs when the signing is over.
pub trait SigningTurn: Send {
    /// Waits for this request's turn to sign inline, and sets its pace.
    /// Only inline signing (local EC keys) takes it: an RSA signing runs on
    /// a blocking thread, and a remote provider's on its own machine.
    fn take(&mut self) -> impl std::future::Future<Output = Pace> + Send;
    /// Whether, when its turn came, this was the only request in the
    /// server: then no other request is ready to run first, and it signs
    /// without yielding to them.
    fn alone(&self) -> bool {
        false
    }
    /// The signing is over, whether it succeeded or not.
    fn signed(&mut self);
}

impl<F: FnMut() + Send> SigningTurn for F {
    async fn take(&mut self) -> Pace {
        Pace::Batched
    }

    fn signed(&mut self) {
        self()
    }
}

/// Who asked for a certificate, as the audit trail records it. Never a
/// secret: a token is named by its AccessorID.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// `accessor:<AccessorID>`, `anonymous`, `acl-disabled`, …
    pub identity: String,
    /// The client's address, when known.
    pub remote: Option<String>,
    /// The ID of the request that asked, when it came through the API.
    pub request_id: Option<String>,
}

impl CaEngine {
    /// `POST /v1/connect/ca/sign`: validates a CSR, asks `authorize`
    /// whether the requester may have a certificate for its SPIFFE ID (an
    /// `Err` is the denial message), and signs it in its `turn`, which is
    /// over before the journal entry is awaited (see [`CaEngine::issue`]).
    pub async fn sign_csr(
        &self,
        csr_pem: String,
        requester: Requester,
        authorize: impl FnOnce(&SpiffeId) -> Result<(), String> + Send + 'static,
        turn: impl SigningTurn,
    ) -> Result<IssuedLeaf, CaError> {
        let p = self.published();
        let policy = p.policy.clone();
        let prepare = move || {
            let csr = validate_csr(&csr_pem, &policy)?;
            authorize(csr.spiffe_id()).map_err(CaError::Denied)?;
            Ok((csr, None))
        };
        self.issue(IssueKind::Csr, p, requester, prepare, turn)
            .await
    }

    /// The agent leaf endpoint: a leaf for `service` with a fresh key the CA
    /// generates (EC P-256, whatever the CA's key type, as Consul does).
    /// `turn` as for [`CaEngine::sign_csr`].
    pub async fn issue_service_leaf(
        &self,
        service: &ServiceName,
        requester: Requester,
        turn: impl SigningTurn,
    ) -> Result<IssuedLeaf, CaError> {
        let p = self.published();
        let id = SpiffeId::service(
            &p.trust_domain,
            "default",
            &self.datacenter,
            service.as_str(),
        )
        .map_err(|e| CaError::Rejected(e.to_string()))?;
        let needs_csr = p.signer.keys().local().is_none();
        let prepare = move || {
            let key = LeafKey::generate_p256_now()?;
            let csr = ValidatedCsr::for_public_key(id, &key.spki_der)?;
            Ok((key.carry_in_csr(csr, needs_csr)?, Some(key)))
        };
        self.issue(IssueKind::AgentLeaf, p, requester, prepare, turn)
            .await
    }

    /// A TLS certificate for this server's own HTTPS listener (`auto_tls`):
    /// a fresh EC P-256 key, the server SPIFFE ID
    /// (`spiffe://<td>/agent/server/dc/<dc>`, as Consul's servers carry)
    /// plus the host names and addresses clients reach it at. It is signed
    /// and checked like every leaf (SVID profile, chain to the root) and
    /// audit-logged; its lifetime is `LeafCertTTL`.
    pub async fn issue_server_tls(
        &self,
        dns_names: Vec<String>,
        ips: Vec<std::net::IpAddr>,
    ) -> Result<IssuedLeaf, CaError> {
        let p = self.published();
        let id = SpiffeId::server(&p.trust_domain, &self.datacenter)
            .map_err(|e| CaError::Rejected(e.to_string()))?;
        let requester = Requester {
            identity: "auto-tls".into(),
            ..Requester::default()
        };
        let needs_csr = p.signer.keys().local().is_none();
        let prepare = move || {
            let key = LeafKey::generate_p256_now()?;
            let csr =
                ValidatedCsr::for_public_key(id, &key.spki_der)?.with_names(&dns_names, &ips)?;
            Ok((key.carry_in_csr(csr, needs_csr)?, Some(key)))
        };
        self.issue(IssueKind::ServerTls, p, requester, prepare, || {})
            .await
    }

    /// Issues a leaf for the request `prepare` makes (CSR validation or key
    /// generation: CPU work), signed by `p`'s signer. Everything about the
    /// result — the key that signed, the chain, the SigningKeyID — comes
    /// from `p`. With local keys, preparing, signing and checking are one
    /// step: for EC keys on the request's own worker (about 0.3 ms of CPU;
    /// a hop to a blocking thread costs as much as a signature) or, at the
    /// caller's [`Pace::Background`], on a signing thread; on a blocking
    /// thread for RSA keys (milliseconds). Remote keys are awaited
    /// afterwards.
    ///
    /// `turn` is taken right before inline signing and is over when the
    /// signing is, whether it succeeded or not, and before the journal entry
    /// is awaited: a caller bounding how many requests sign at once
    /// (`CSRMaxConcurrent`, and its turns at the CPU) gives its permit back
    /// there, since waiting for a disk sync is not signing.
    async fn issue(
        &self,
        kind: IssueKind,
        p: Arc<Published>,
        requester: Requester,
        prepare: impl FnOnce() -> Result<(ValidatedCsr, Option<LeafKey>), CaError> + Send + 'static,
        turn: impl SigningTurn,
    ) -> Result<IssuedLeaf, CaError> {
        let started = std::time::Instant::now();
        let root_id = p.active_root_id.clone();
        let result = self
            .sign_and_record(kind, p, requester, prepare, turn)
            .await;
        if let Some(observer) = self.observer.get() {
            match &result {
                Ok(leaf) => observer.issued(kind, &root_id, leaf.valid_before, started.elapsed()),
                Err(e) => observer.failed(kind, e.reaction(), started.elapsed()),
            }
        }
        result
    }

    /// [`CaEngine::issue`]'s work.
    async fn sign_and_record(
        &self,
        kind: IssueKind,
        p: Arc<Published>,
        requester: Requester,
        prepare: impl FnOnce() -> Result<(ValidatedCsr, Option<LeafKey>), CaError> + Send + 'static,
        mut turn: impl SigningTurn,
    ) -> Result<IssuedLeaf, CaError> {
        let signing = self.sign(&p, prepare, &mut turn).await;
        turn.signed();
        let Signing {
            request,
            key,
            signed,
            announced,
            pace,
        } = signing?;
        let mut leaf = self.record(&p, &request, signed, &requester);
        if let (Some(journal), Some(announced)) = (self.journal.get(), announced) {
            let linger = match pace {
                Pace::Prompt => Linger::Never,
                Pace::Batched | Pace::Background => Linger::ForSiblings,
            };
            journal
                .append_expected(&journal_entry(kind, &leaf, &requester), announced, linger)
                .await
                .map_err(|e| CaError::Unavailable(e.to_string()))?;
        }
        leaf.private_key_pem = key.map(|k| k.private_key_pem);
        Ok(leaf)
    }

    /// The CPU (or provider) part of [`CaEngine::issue`]: prepares the
    /// request, signs it with `p`'s signer and checks the result.
    async fn sign(
        &self,
        p: &Arc<Published>,
        prepare: impl FnOnce() -> Result<(ValidatedCsr, Option<LeafKey>), CaError> + Send + 'static,
        turn: &mut impl SigningTurn,
    ) -> Result<Signing, CaError> {
        let now = self.clock.now();
        let signer = p.clone();
        let work = move || {
            let (csr, key) = prepare()?;
            let request = leaf_request(&signer, csr, now)?;
            let signed = signer.signer.sign_leaf_now(&request).transpose()?;
            Ok((request, key, signed))
        };
        let quick = p
            .signer
            .keys()
            .local()
            .is_some_and(|k| k.signs_in_microseconds());
        // The entry is announced before the signing work, so that the
        // journal's writer can wait for it to share a sync with others; but
        // not before the turn, or a batch would wait for entries whose
        // signing has not begun.
        let (pace, announced, (request, key, signed)) = if quick {
            let pace = turn.take().await;
            if let Some(observer) = self.observer.get() {
                observer.paced(pace);
            }
            let announced = self.announce();
            let others_first = !turn.alone();
            (
                pace,
                announced,
                self.sign_inline(pace, others_first, work).await?,
            )
        } else {
            (Pace::Batched, self.announce(), blocking(work).await?)
        };
        let signed = match signed {
            Some(signed) => signed,
            None => provider_call(p.signer.sign_leaf(request.clone())).await?,
        };
        Ok(Signing {
            request,
            key,
            signed,
            announced,
            pace,
        })
    }

    /// Runs a quick signing on the worker or, at [`Pace::Background`], a
    /// signing thread; on the worker after the tasks already ready if
    /// `others_first`.
    async fn sign_inline<T: Send + 'static>(
        &self,
        pace: Pace,
        others_first: bool,
        work: impl FnOnce() -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, CaError> {
        if let (Pace::Background, Some(threads)) = (pace, self.signing_threads()) {
            return threads.run(work).await;
        }
        // Work done inline never returns Pending, so go to the back of the
        // runtime's queue first: the tasks already ready run before these
        // few hundred microseconds. Among them are requests whose journal
        // entry is durable, with only their answer left to write; and a
        // request just handed a fair place or turn was woken from inside
        // another's poll, which the runtime runs next, ahead of everything
        // else. One busy client's /sign and agent leaf took 5-15% less CPU
        // per request, a quiet client beside a flood waited less
        // (docs/BENCHMARKS.md). A request alone in the server skips it:
        // the yield made the runtime wake its other, idle worker to take
        // the task, which then signed on the other core (at one connection
        // a tenth of a /sign's CPU and most of its moves between cores).
        if others_first {
            tokio::task::yield_now().await;
        }
        work()
    }

    /// Tells the journal an entry is coming (see [`CaEngine::sign`]).
    fn announce(&self) -> Option<meshca_journal::Expected> {
        self.journal.get().map(|j| j.expect())
    }

    /// The issued leaf as the API returns it, with its index, audit-logged.
    fn record(
        &self,
        p: &Published,
        request: &LeafRequest,
        signed: SignedLeaf,
        requester: &Requester,
    ) -> IssuedLeaf {
        let index = self.issue_index.fetch_add(1, Ordering::Relaxed) + 1;
        let spiffe_id = request.csr.spiffe_id().clone();
        tracing::info!(name: ISSUED_AUDIT_EVENT, target: "audit", serial = %signed.serial, spiffe_id = %spiffe_id,
            requester = %requester.identity, remote = requester.remote.as_deref().unwrap_or("-"),
            request_id = requester.request_id.as_deref().unwrap_or("-"),
            valid_after = %rfc3339(request.not_before), valid_before = %rfc3339(request.not_after),
            signing_key_id = %p.signer.signing_key_id(), "issued certificate");
        IssuedLeaf {
            serial: signed.serial,
            cert_pem: format!("{}{}", cert_pem(&signed.der), p.signer.chain_pem()),
            private_key_pem: None,
            spiffe_id,
            valid_after: request.not_before,
            valid_before: request.not_after,
            index,
            signing_key_id: p.signer.signing_key_id().to_string(),
        }
    }
}

/// A signed leaf on its way to the journal: its request, the key the CA
/// generated for it (agent leaf), and the announcement of its entry.
struct Signing {
    request: LeafRequest,
    key: Option<LeafKey>,
    signed: SignedLeaf,
    announced: Option<meshca_journal::Expected>,
    pace: Pace,
}

/// What the issuance journal keeps of `leaf`.
fn journal_entry(
    kind: IssueKind,
    leaf: &IssuedLeaf,
    requester: &Requester,
) -> meshca_journal::Entry {
    meshca_journal::Entry {
        serial: leaf.serial.to_string(),
        spiffe_id: leaf.spiffe_id.uri(),
        valid_after: leaf.valid_after,
        valid_before: leaf.valid_before,
        signing_key_id: leaf.signing_key_id.clone(),
        kind: kind.as_str().to_string(),
        requester: requester.identity.clone(),
        remote: requester.remote.clone(),
        request_id: requester.request_id.clone(),
    }
}

/// A time as the audit trail writes it (RFC 3339, like the API).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// What to sign for `csr` at `now`: NotBefore one minute back, NotAfter
/// after `LeafCertTTL` and never past the signing certificate's.
fn leaf_request(
    p: &Published,
    csr: ValidatedCsr,
    now: OffsetDateTime,
) -> Result<LeafRequest, CaError> {
    let (not_before, not_after) =
        leaf_validity(now, p.config.leaf_cert_ttl(), p.signer.not_after());
    if not_after <= now {
        return Err(CaError::Unavailable(
            "the signing certificate has expired".into(),
        ));
    }
    Ok(LeafRequest {
        csr,
        not_before,
        not_after,
    })
}

/// Where leaf indexes start in this run: above the store index and above
/// any index an earlier run gave out (milliseconds since the epoch grow
/// faster than issuance), so a blocked client holding an index from before a
/// restart never mistakes a new leaf for its own.
pub(crate) fn leaf_index_base(store_index: u64, now: OffsetDateTime) -> u64 {
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    store_index.max(millis)
}
