//! Command-line flags, with Consul's agent flag names.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meshca",
    version,
    about = "A service-mesh certificate authority speaking Consul's Connect CA API"
)]
pub struct Cli {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach the server.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address of the meshca HTTP API.
    #[arg(
        long = "http-addr",
        env = "MESHCA_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500",
        global = true
    )]
    pub addr: String,
    /// ACL token sent as X-Consul-Token.
    #[arg(
        long = "token",
        env = "MESHCA_HTTP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the meshca server.
    Server(ServerArgs),
    /// Connect CA commands.
    Connect {
        #[command(subcommand)]
        command: ConnectCommand,
    },
    /// Fetch a leaf certificate for a service and write it to files.
    Leaf(LeafArgs),
    /// ACL commands: bootstrap, tokens and policies.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
    /// TLS helpers.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Make a new store key: print it as base64, or write it to a file.
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the key to this new file (mode 0600; 32-byte key ID then the
    /// 32-byte key) instead of printing it. Never overwrites.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Certificate authority commands.
    Ca {
        #[command(subcommand)]
        command: TlsCaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Create a CA: writes <domain>-agent-ca.pem and <domain>-agent-ca-key.pem
    /// in the current directory (never overwriting).
    Create(TlsCaCreateArgs),
}

#[derive(Debug, Args)]
pub struct TlsCaCreateArgs {
    /// Validity in days.
    #[arg(long, default_value_t = 1825)]
    pub days: u32,
    /// Domain of the agents; names the files and the name constraint.
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Cluster ID (TrustDomain without ".consul"): adds the SPIFFE URI SAN so
    /// the CA can be supplied as the Connect root.
    #[arg(long = "cluster-id")]
    pub cluster_id: Option<uuid::Uuid>,
    /// Common name (default "Consul Agent CA <serial>").
    #[arg(long = "common-name")]
    pub common_name: Option<String>,
    /// Permit only DNS names under the domain and localhost.
    #[arg(long = "name-constraint")]
    pub name_constraint: bool,
    /// Further permitted DNS names (repeatable; implies --name-constraint).
    #[arg(long = "additional-name-constraint")]
    pub additional_name_constraint: Vec<String>,
}

#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    /// In-memory server for development: nothing is written to disk.
    #[arg(long)]
    pub dev: bool,
    /// Configuration file (JSON or HCL); repeatable, later files win.
    #[arg(long = "config-file")]
    pub config_file: Vec<PathBuf>,
    /// Directory of the store (default ./meshca-data).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Datacenter name (default dc1).
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Address the HTTP API binds to (default 127.0.0.1).
    #[arg(long)]
    pub client: Option<String>,
    /// HTTP port (default 8500; 0 picks a free port).
    #[arg(long = "http-port")]
    pub http_port: Option<u16>,
    /// Store key file (32-byte key ID + 16/24/32-byte AES key, or base64 of
    /// them; `meshca keygen` makes one). Mode 0600 or stricter.
    #[arg(long = "store-key-file")]
    pub store_key_file: Option<PathBuf>,
    /// The previous store key file, while changing store keys: the store is
    /// re-sealed from it to --store-key-file.
    #[arg(long = "old-store-key-file")]
    pub old_store_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConnectCommand {
    /// CA commands.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the trusted roots.
    Roots,
    /// Print the CA configuration (secrets redacted).
    GetConfig,
    /// Replace the CA configuration from a JSON file.
    SetConfig {
        #[arg(long = "config-file")]
        config_file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LeafArgs {
    /// Service name.
    pub service: String,
    /// Directory to write <service>.pem, <service>-key.pem and ca.pem into.
    #[arg(long = "out-dir", default_value = ".")]
    pub out_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the first management token (once; when the server did not
    /// create one itself) and print it.
    Bootstrap(AclFormat),
    /// Token commands.
    Token {
        #[command(subcommand)]
        command: AclTokenCommand,
    },
    /// Policy commands.
    Policy {
        #[command(subcommand)]
        command: AclPolicyCommand,
    },
}

/// Output format of the ACL commands.
#[derive(Debug, Clone, Args)]
pub struct AclFormat {
    /// `pretty` (Consul's text layout) or `json`.
    #[arg(long, default_value = "pretty", value_parser = ["pretty", "json"])]
    pub format: String,
}

#[derive(Debug, Subcommand)]
pub enum AclTokenCommand {
    /// Create a token.
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// Policy to link, by name; repeatable.
        #[arg(long = "policy-name")]
        policy_name: Vec<String>,
        /// Policy to link, by ID; repeatable.
        #[arg(long = "policy-id")]
        policy_id: Vec<String>,
        /// Service the token may act as (write on it and its sidecar); repeatable.
        #[arg(long = "service-identity")]
        service_identity: Vec<String>,
        #[command(flatten)]
        format: AclFormat,
    },
    /// List tokens (SecretIDs are not shown: only their hashes are kept).
    List(AclFormat),
    /// Read one token.
    Read {
        #[arg(long = "id")]
        id: String,
        #[command(flatten)]
        format: AclFormat,
    },
    /// Delete one token.
    Delete {
        #[arg(long = "id")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclPolicyCommand {
    /// Create a policy.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Rules in Consul's JSON or HCL form; `@FILE` reads them from a file.
        #[arg(long, default_value = "")]
        rules: String,
        #[command(flatten)]
        format: AclFormat,
    },
    /// List policies.
    List(AclFormat),
    /// Delete a policy.
    Delete {
        #[arg(long = "id")]
        id: String,
    },
}
