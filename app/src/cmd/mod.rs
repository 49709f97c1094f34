//! The `relay` command line: one module per subcommand, plus the
//! development key and the shutdown signal.

pub mod devkey;
pub mod healthcheck;
pub mod migrate;
pub mod serve;
pub mod shutdown;
pub mod token;

use clap::{Parser, Subcommand};
use relay_app::config::Settings;
use relay_app::telemetry;
use relay_ports::protocol::Role;
use std::path::PathBuf;
use uuid::Uuid;

/// `relay`: with no subcommand it serves, configured by the environment
/// variables listed below (each also a flag of the same name).
#[derive(Parser, Debug)]
#[command(
    name = "relay",
    version,
    about = "Real-time collaboration server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve (the default). Configuration comes from the environment.
    Serve(ServeArgs),
    /// Mint a development token, signed with the development key of a
    /// `relay` running without JWT_PUBLIC_KEY_URL.
    Token(TokenArgs),
    /// Apply pending database migrations (DATABASE_URL) and exit.
    Migrate(ConfigArgs),
    /// Check a running server's /health (for container health checks).
    Healthcheck {
        /// Base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        url: String,
    },
    /// Print the effective configuration (passwords redacted) and check it.
    Config(ConfigArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// Where the development signing key is kept (created if missing).
    #[arg(long, env = "RELAY_DEV_KEY_FILE", value_name = "RELAY_DEV_KEY_FILE")]
    pub dev_key_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user id (a UUID); a random one if omitted.
    #[arg(long)]
    pub sub: Option<Uuid>,
    /// A document UUID, or `*` for every document.
    #[arg(long, default_value = "*")]
    pub doc: String,
    /// owner, editor or viewer.
    #[arg(long, default_value = "editor")]
    pub role: Role,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// The development key file of the running server.
    #[arg(long, env = "RELAY_DEV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// `relay config`: every variable, then whether the whole is valid.
pub fn print_config(args: ConfigArgs) -> anyhow::Result<()> {
    print!("{}", relay_app::config::describe(|k| std::env::var(k).ok()));
    match args.settings.into_config() {
        Ok(_) => {
            println!("# the configuration is valid");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("invalid configuration")),
    }
}

/// Logging for the subcommands (LOG_FORMAT=json honoured even when the
/// rest of the configuration is not read).
pub fn init_logging() {
    telemetry::init_logging(std::env::var("LOG_FORMAT").is_ok_and(|v| v.trim() == "json"));
}
