//! `relay`: the collaboration server. Wiring only: the subcommands live in
//! `cmd/` (serve and its shutdown sequence, migrate, token, healthcheck,
//! config), logging and metrics in the library's `telemetry`.

mod cmd;

use clap::Parser;
use cmd::{Cli, Command};

// jemalloc: the write path allocates and frees many small buffers across
// threads; with glibc's malloc, malloc and free were about a third of the
// server's CPU time in `relay-commit-bench` (see docs/performance.md for the
// figures with each).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => cmd::serve::run(cli.serve),
        Some(Command::Serve(args)) => cmd::serve::run(args),
        Some(Command::Token(args)) => cmd::token::run(&args),
        Some(Command::Migrate(args)) => {
            cmd::init_logging();
            cmd::migrate::run(args.settings.into_config()?)
        }
        Some(Command::Healthcheck { url }) => cmd::healthcheck::run(&url),
        Some(Command::Config(args)) => cmd::print_config(args),
    }
}
