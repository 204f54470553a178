//! `meshca keygen`: a new store key, printed as base64 or written to a new
//! file in the binary layout. The only place meshca prints key material.

use crate::cli::KeygenArgs;
use anyhow::Context;
use meshca_store::StoreKey;
use std::io::Write as _;

pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    match &args.out {
        Some(path) => {
            let key = StoreKey::write_new_raw(path)
                .with_context(|| format!("writing a new store key to {}", path.display()))?;
            // The ID is public: it names the key in meshca's messages.
            eprintln!("wrote store key {} to {}", key.id(), path.display());
        }
        None => {
            let key = StoreKey::generate()?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", &*key.to_base64()).context("writing to standard output")?;
        }
    }
    Ok(())
}
