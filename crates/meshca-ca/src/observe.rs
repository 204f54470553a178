//! A window on issuance for the edges that measure it (metrics): the engine
//! tells an [`IssueObserver`] about every leaf it signs or fails to sign.
//! The engine counts nothing itself; it only reports.

use crate::{Pace, Reaction};
use std::time::Duration;
use time::OffsetDateTime;

/// Which entry point asked for a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// `POST /v1/connect/ca/sign`: a CSR.
    Csr,
    /// The agent leaf endpoint: a key the CA generates.
    AgentLeaf,
    /// The server's own HTTPS certificate (`auto_tls`).
    ServerTls,
}

impl IssueKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Csr => "csr",
            Self::AgentLeaf => "agent_leaf",
            Self::ServerTls => "server_tls",
        }
    }
}

/// Told about every issuance, after it ended. Called on the request's task:
/// keep it quick.
pub trait IssueObserver: Send + Sync + 'static {
    /// A leaf was signed under the root `root_id`, valid until `not_after`.
    fn issued(&self, kind: IssueKind, root_id: &str, not_after: OffsetDateTime, took: Duration);

    /// No leaf: the request was refused or the CA failed (`reaction` says
    /// which).
    fn failed(&self, kind: IssueKind, reaction: Reaction, took: Duration);

    /// An inline signing (local EC keys) begins at `pace`.
    fn paced(&self, pace: Pace);
}
