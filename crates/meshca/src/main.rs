//! The `meshca` command: parses flags and dispatches to the server or to a
//! client command. All behaviour lives in the modules it calls.

mod acl_cli;
mod batched_log;
mod cli;
mod client;
mod config;
mod keygen;
mod server;
mod tls;

use clap::Parser;

/// mimalloc instead of the system allocator: per-request buffers are
/// allocated and freed across threads, which glibc handles slowly
/// (docs/BENCHMARKS.md has the before and after).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse_from(cli::consul_style_flags(std::env::args_os()));
    let result = match cli.command {
        cli::Command::Server(args) => server::run(args),
        cli::Command::Connect { http, command } => client::connect(&http, command),
        cli::Command::Leaf { http, args } => client::leaf(&http, args),
        cli::Command::Acl { http, command } => acl_cli::run(&http, command),
        cli::Command::Snapshot { http, command } => client::snapshot(&http, command),
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
