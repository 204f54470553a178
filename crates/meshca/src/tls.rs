//! `meshca tls ca create` (a CA for agent TLS or for recovering the Connect
//! CA) and `meshca tls cert create` (server, client and CLI certificates
//! signed by that CA), with Consul's flags and file names.

use crate::cli::{TlsCaCommand, TlsCaCreateArgs, TlsCertCommand, TlsCertCreateArgs, TlsCommand};
use anyhow::Context;
use meshca_core::{Clock, SystemClock};
use meshca_provider::profile::{
    agent_ca, agent_cert, AgentCaOptions, AgentCertKind, AgentCertOptions,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Ca {
            command: TlsCaCommand::Create(args),
        } => create_ca(&args, Path::new(".")),
        TlsCommand::Cert {
            command: TlsCertCommand::Create(args),
        } => create_cert(&args, Path::new(".")).map(|_| ()),
    }
}

/// Creates `path` with `mode`, refusing to replace an existing file.
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("{} already exists or cannot be created", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The longest validity `--days` takes (100 years): more is a typo, and
/// would write a NotAfter centuries away.
const MAX_DAYS: u32 = 36_500;

/// `--domain` (and `--dc`) name files and DNS names: each must be a DNS
/// name, checked before anything is written; `--days` must be sensible.
fn check_names(domain: &str, dc: Option<&str>, days: u32) -> anyhow::Result<()> {
    crate::config::check_domain(domain).context("--domain")?;
    if let Some(dc) = dc {
        anyhow::ensure!(
            !dc.contains('.') && crate::config::check_domain(dc).is_ok(),
            "--dc {dc:?} is not a DNS label (letters, digits and '-')"
        );
    }
    anyhow::ensure!(
        (1..=MAX_DAYS).contains(&days),
        "--days must be between 1 and {MAX_DAYS}, got {days}"
    );
    Ok(())
}

fn create_ca(args: &TlsCaCreateArgs, dir: &Path) -> anyhow::Result<()> {
    let cert_path = dir.join(format!("{}-agent-ca.pem", args.domain));
    let key_path = dir.join(format!("{}-agent-ca-key.pem", args.domain));
    for p in [&cert_path, &key_path] {
        anyhow::ensure!(
            !p.exists(),
            "{} already exists; not overwriting",
            p.display()
        );
    }
    check_names(&args.domain, None, args.days)?;
    let opts = AgentCaOptions {
        common_name: args.common_name.clone(),
        domain: args.domain.clone(),
        cluster_id: args.cluster_id,
        days: args.days,
        name_constraint: args.name_constraint || !args.additional_name_constraint.is_empty(),
        additional_name_constraints: args.additional_name_constraint.clone(),
    };
    let (cert, key) = agent_ca(&opts, SystemClock.now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_new(&cert_path, &cert, 0o644)?;
    write_new(&key_path, &key, 0o600)?;
    println!("==> Saved {}", cert_path.display());
    println!("==> Saved {}", key_path.display());
    Ok(())
}

/// Creates a certificate and key signed by the agent CA in `dir`, named as
/// Consul names them with the first free counter; returns both paths.
fn create_cert(
    args: &TlsCertCreateArgs,
    dir: &Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let kind = match (args.server, args.client, args.cli) {
        (true, false, false) => AgentCertKind::Server,
        (false, true, false) => AgentCertKind::Client,
        (false, false, true) => AgentCertKind::Cli,
        _ => anyhow::bail!("choose exactly one of --server, --client and --cli"),
    };
    anyhow::ensure!(
        args.node.is_none() || kind == AgentCertKind::Server,
        "--node is only valid with --server"
    );
    check_names(&args.domain, Some(&args.dc), args.days)?;
    let ca_path = args
        .ca
        .clone()
        .unwrap_or_else(|| dir.join(format!("{}-agent-ca.pem", args.domain)));
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| dir.join(format!("{}-agent-ca-key.pem", args.domain)));
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading the CA certificate {}", ca_path.display()))?;
    let ca_key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading the CA key {}", key_path.display()))?;
    let opts = AgentCertOptions {
        kind,
        datacenter: args.dc.clone(),
        domain: args.domain.clone(),
        node: args.node.clone(),
        additional_dns_names: args.additional_dnsname.clone(),
        additional_ips: args.additional_ipaddress.clone(),
        days: args.days,
    };
    let (cert, key) = agent_cert(&opts, &ca_pem, &ca_key, SystemClock.now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let prefix = format!("{}-{}-{}", args.dc, kind.file_word(), args.domain);
    // The first number whose files are both free (as Consul counts);
    // create_new below still refuses to replace one made meanwhile.
    let (cert_out, key_out) = (0..10_000)
        .map(|n| {
            (
                dir.join(format!("{prefix}-{n}.pem")),
                dir.join(format!("{prefix}-{n}-key.pem")),
            )
        })
        .find(|(c, k)| !c.exists() && !k.exists())
        .context("no free file name")?;
    println!("==> Using {} and {}", ca_path.display(), key_path.display());
    write_new(&cert_out, &cert, 0o644)?;
    write_new(&key_out, &key, 0o600)?;
    println!("==> Saved {}", cert_out.display());
    println!("==> Saved {}", key_out.display());
    Ok((cert_out, key_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_args(kind: &str) -> TlsCertCreateArgs {
        TlsCertCreateArgs {
            server: kind == "server",
            client: kind == "client",
            cli: kind == "cli",
            dc: "dc1".into(),
            domain: "consul".into(),
            node: None,
            additional_dnsname: vec![],
            additional_ipaddress: vec![],
            days: 365,
            ca: None,
            key: None,
        }
    }

    #[test]
    fn certs_take_consul_file_names_and_count_up() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(&args("consul"), dir.path()).unwrap();
        let (c0, k0) = create_cert(&cert_args("server"), dir.path()).unwrap();
        assert!(c0.ends_with("dc1-server-consul-0.pem"), "{c0:?}");
        assert!(k0.ends_with("dc1-server-consul-0-key.pem"), "{k0:?}");
        let (c1, _) = create_cert(&cert_args("server"), dir.path()).unwrap();
        assert!(c1.ends_with("dc1-server-consul-1.pem"), "{c1:?}");
        let (c, _) = create_cert(&cert_args("cli"), dir.path()).unwrap();
        assert!(c.ends_with("dc1-cli-consul-0.pem"), "{c:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k0).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut node = cert_args("client");
        node.node = Some("n1".into());
        assert!(
            create_cert(&node, dir.path()).is_err(),
            "--node is server-only"
        );
        let mut nothing = cert_args("server");
        nothing.domain = "other".into();
        let err = create_cert(&nothing, dir.path()).unwrap_err().to_string();
        assert!(err.contains("other-agent-ca.pem"), "{err}");
    }

    fn args(domain: &str) -> TlsCaCreateArgs {
        TlsCaCreateArgs {
            days: 365,
            domain: domain.into(),
            cluster_id: None,
            common_name: None,
            name_constraint: false,
            additional_name_constraint: vec![],
        }
    }

    #[test]
    fn writes_consul_file_names_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(&args("consul"), dir.path()).unwrap();
        let key = dir.path().join("consul-agent-ca-key.pem");
        assert!(dir.path().join("consul-agent-ca.pem").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let before = std::fs::read(&key).unwrap();
        assert!(create_ca(&args("consul"), dir.path()).is_err());
        assert_eq!(std::fs::read(&key).unwrap(), before, "key untouched");
    }

    #[test]
    fn bad_domains_dcs_and_days_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_ca(&args("Bad Domain!"), dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("--domain"), "{err:#}");
        let mut long = args("consul");
        long.days = 999_999;
        let err = create_ca(&long, dir.path()).unwrap_err().to_string();
        assert!(err.contains("--days must be between 1 and 36500"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        create_ca(&args("consul"), dir.path()).unwrap();
        let mut bad_dc = cert_args("server");
        bad_dc.dc = "dc 1/..".into();
        let err = create_cert(&bad_dc, dir.path()).unwrap_err().to_string();
        assert!(err.contains("--dc"), "{err}");
        let mut forever = cert_args("client");
        forever.days = 0;
        assert!(create_cert(&forever, dir.path()).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "only the CA"
        );
    }
}
