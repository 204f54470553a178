//! The `meshca` command: parses flags and dispatches to the server or to a
//! client command. All behaviour lives in the modules it calls.

mod acl_cli;
mod cli;
mod client;
mod config;
mod keygen;
mod server;
mod tls;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Server(args) => server::run(args),
        cli::Command::Connect { command } => client::connect(&cli.http, command),
        cli::Command::Leaf(args) => client::leaf(&cli.http, args),
        cli::Command::Acl { command } => acl_cli::run(&cli.http, command),
        cli::Command::Tls { command } => tls::run(command),
        cli::Command::Keygen(args) => keygen::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
