//! Command-line flags, with Consul's agent flag names.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Consul's Go-style flags (`-dev`, `-config-file=F`) as the double-dash
/// form clap parses. A single dash followed by two or more letters is a long
/// flag in Consul; `-1` (a value) and `-h` stay as they are, and nothing
/// after a `--` separator changes.
pub fn consul_style_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut after_separator = false;
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else {
                return arg;
            };
            after_separator |= text == "--";
            let mut chars = text.chars();
            let go_style = !after_separator
                && chars.next() == Some('-')
                && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '-');
            match go_style {
                true => format!("-{text}").into(),
                false => arg,
            }
        })
        .collect()
}

#[derive(Debug, Parser)]
#[command(
    name = "meshca",
    version,
    about = "A service-mesh certificate authority speaking Consul's Connect CA API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach the server (only client commands take these).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address of the meshca HTTP API: a URL, or host:port for http://
    /// [env: MESHCA_HTTP_ADDR, then CONSUL_HTTP_ADDR; default
    /// http://127.0.0.1:8500].
    #[arg(long = "http-addr", global = true)]
    pub addr: Option<String>,
    /// ACL token sent as X-Consul-Token.
    #[arg(
        long = "token",
        env = "MESHCA_HTTP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate(s) to verify an https:// server with, instead of the
    /// system's roots [env: MESHCA_CACERT, then CONSUL_CACERT].
    #[arg(long = "ca-file", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for servers that verify clients
    /// [env: MESHCA_CLIENT_CERT, then CONSUL_CLIENT_CERT].
    #[arg(long = "client-cert", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key
    /// [env: MESHCA_CLIENT_KEY, then CONSUL_CLIENT_KEY].
    #[arg(long = "client-key", global = true)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the meshca server.
    #[command(after_help = "Examples:
  meshca server                                  # ./meshca-data, 127.0.0.1:8500, ACLs on
  meshca server -dev                             # in memory, ACLs off
  meshca server --config-file /etc/meshca/meshca.hcl
  meshca server --datacenter dc2 --primary-datacenter dc1 --primary-address https://10.0.0.1:8501")]
    Server(ServerArgs),
    /// Connect CA commands.
    #[command(after_help = "Examples:
  meshca connect ca roots
  meshca connect ca get-config
  meshca connect ca set-config --merge --config-file p384.json   # {\"Config\": {\"PrivateKeyBits\": 384, …}}")]
    Connect {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: ConnectCommand,
    },
    /// Fetch a leaf certificate for a service and write it to files.
    #[command(after_help = "Examples:
  meshca leaf web --out-dir ./certs      # web.pem, web-key.pem (0600), ca.pem
  meshca leaf web --token $TOKEN --http-addr 10.0.0.1:8500")]
    Leaf {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        args: LeafArgs,
    },
    /// ACL commands: bootstrap, tokens and policies.
    #[command(after_help = "Examples:
  meshca acl bootstrap
  meshca acl policy create --name web --rules 'service \"web\" { policy = \"write\" }'
  meshca acl token list")]
    Acl {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Save the whole store to a file, or restore it from one (a running
    /// server; needs operator:write).
    #[command(after_help = "Examples:
  meshca snapshot save backup.snap
  meshca snapshot restore backup.snap")]
    Snapshot {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// TLS helpers.
    #[command(after_help = "Examples:
  meshca tls ca create                   # consul-agent-ca.pem, consul-agent-ca-key.pem
  meshca tls cert create --server --dc dc1
  meshca tls cert create --client")]
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Make a new store key: print it as base64, or write it to a file.
    #[command(after_help = "Examples:
  meshca keygen --out /etc/meshca/store.key
  meshca server --store-key-file /etc/meshca/store.key")]
    Keygen(KeygenArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a checksummed snapshot of the server's store to FILE (a new
    /// file, mode 0600; secrets stay sealed under the store key).
    ///
    /// Example: meshca snapshot save backup.snap
    Save { file: PathBuf },
    /// Replace the server's whole store with the snapshot in FILE and
    /// publish its CA. Refused, changing nothing, unless the snapshot opens
    /// under the server's store key and matches its schema and datacenter.
    ///
    /// Example: meshca snapshot restore backup.snap
    Restore { file: PathBuf },
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
    /// Certificate commands.
    Cert {
        #[command(subcommand)]
        command: TlsCertCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Create a server, client or CLI certificate signed by the agent CA:
    /// writes <dc>-<kind>-<domain>-<N>.pem and <dc>-<kind>-<domain>-<N>-key.pem
    /// in the current directory, N being the first free number.
    Create(TlsCertCreateArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["server", "client", "cli"])))]
pub struct TlsCertCreateArgs {
    /// A server certificate (server.<dc>.<domain>, localhost, 127.0.0.1).
    #[arg(long)]
    pub server: bool,
    /// A client certificate (client.<dc>.<domain>, localhost, 127.0.0.1).
    #[arg(long)]
    pub client: bool,
    /// A certificate for the CLI (cli.client.<dc>.<domain>, localhost).
    #[arg(long)]
    pub cli: bool,
    /// Datacenter.
    #[arg(long, default_value = "dc1")]
    pub dc: String,
    /// Domain.
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Node name (server only): adds <node>.server.<dc>.<domain>.
    #[arg(long)]
    pub node: Option<String>,
    /// A further DNS name (repeatable).
    #[arg(long = "additional-dnsname")]
    pub additional_dnsname: Vec<String>,
    /// A further IP address (repeatable).
    #[arg(long = "additional-ipaddress")]
    pub additional_ipaddress: Vec<std::net::IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// The CA certificate (default <domain>-agent-ca.pem).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The CA's private key (default <domain>-agent-ca-key.pem).
    #[arg(long)]
    pub key: Option<PathBuf>,
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
    /// The primary datacenter (default: this one). A server whose
    /// datacenter differs is a secondary: it gets its intermediate from the
    /// primary at --primary-address.
    #[arg(long = "primary-datacenter")]
    pub primary_datacenter: Option<String>,
    /// The primary datacenter's HTTP(S) URL, for a secondary (repeatable:
    /// tried in turn).
    #[arg(long = "primary-address")]
    pub primary_address: Vec<String>,
    /// Address the HTTP API binds to (default 127.0.0.1).
    #[arg(long)]
    pub client: Option<String>,
    /// With the etcd store: the IP the other servers reach this one's API
    /// at (default: the address it binds to; needed when that is 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP port (default 8500; 0 picks a free port; -1 turns HTTP off).
    /// Given twice, the last one counts (as in Consul).
    #[arg(
        long = "http-port",
        allow_negative_numbers = true,
        overrides_with = "http_port"
    )]
    pub http_port: Option<i64>,
    /// HTTPS port (off by default; needs a tls block; 0 picks a free port).
    #[arg(long = "https-port", allow_negative_numbers = true)]
    pub https_port: Option<i64>,
    /// Store key file (32-byte key ID + 16/24/32-byte AES key, or base64 of
    /// them; `meshca keygen` makes one). Mode 0600 or stricter.
    #[arg(long = "store-key-file")]
    pub store_key_file: Option<PathBuf>,
    /// The previous store key file, while changing store keys: the store is
    /// re-sealed from it to --store-key-file.
    #[arg(long = "old-store-key-file")]
    pub old_store_key_file: Option<PathBuf>,
    /// Store backend: `sled` (default: embedded in the data dir) or `etcd`
    /// (shared by several servers; needs --etcd-endpoints and
    /// --store-key-file).
    #[arg(long = "store")]
    pub store: Option<String>,
    /// The etcd members, comma-separated: http://10.0.0.1:2379,http://10.0.0.2:2379
    /// (https://… with --etcd-ca-file)
    #[arg(long = "etcd-endpoints")]
    pub etcd_endpoints: Option<String>,
    /// PEM file of the CA that signed the etcd members' certificates: TLS
    /// to https:// endpoints trusts it alone.
    #[arg(long = "etcd-ca-file")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM certificate this server presents to etcd members that ask for
    /// client certificates (with --etcd-key-file).
    #[arg(long = "etcd-cert-file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long = "etcd-key-file")]
    pub etcd_key_file: Option<PathBuf>,
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
        /// The whole configuration as the API takes it:
        /// {"Provider": …, "Config": {…}}.
        #[arg(long = "config-file")]
        config_file: PathBuf,
        /// Change only the keys the file names: the current configuration
        /// is read first and the file's `Config` keys replace their
        /// counterparts (without it, keys the file leaves out return to
        /// their defaults, as in Consul).
        #[arg(long)]
        merge: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(args: &[&str]) -> Vec<String> {
        consul_style_flags(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn every_command_shows_examples() {
        use clap::CommandFactory;
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:")
                    && help.contains(&format!("meshca {}", sub.get_name())),
                "{}: {help:?}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn go_style_flags_become_long_flags_and_nothing_else_changes() {
        assert_eq!(
            converted(&[
                "meshca",
                "server",
                "-dev",
                "-config-file=a.hcl",
                "-http-port",
                "-1"
            ]),
            [
                "meshca",
                "server",
                "--dev",
                "--config-file=a.hcl",
                "--http-port",
                "-1"
            ]
        );
        assert_eq!(
            converted(&["meshca", "-h", "--dev"]),
            ["meshca", "-h", "--dev"]
        );
        assert_eq!(
            converted(&["meshca", "acl", "--", "-dev"]),
            ["meshca", "acl", "--", "-dev"]
        );
    }
}
