//! `meshca tls ca create`: a CA for agent TLS or for recovering the Connect
//! CA, with Consul's flags and file names.

use crate::cli::{TlsCaCommand, TlsCaCreateArgs, TlsCommand};
use anyhow::Context;
use meshca_core::{Clock, SystemClock};
use meshca_provider::profile::{agent_ca, AgentCaOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    let TlsCommand::Ca {
        command: TlsCaCommand::Create(args),
    } = cmd;
    create_ca(&args, Path::new("."))
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
    anyhow::ensure!(args.days > 0, "--days must be at least 1");
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
