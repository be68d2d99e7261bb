//! The `gemini-proxy` command line: the commands and their arguments; each command runs in its
//! own file.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod admin_client;
mod audit;
mod check;
mod demo;
mod logging;
mod token;

pub use audit::{run_export, run_query};
pub use check::{load_for_serve, run_check};
pub use demo::{demo_banner, demo_config};
pub use logging::{init_logging, log_filter};
pub use token::{run_hash_password, run_token};

#[derive(Parser, Debug)]
#[command(
    name = "gemini-proxy",
    version,
    about = "A programmable gateway for Google's Gemini API, on Pingora."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file for the default `serve` command.
    #[arg(long, short, global = false)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the gateway with an embedded mock Gemini upstream: no key, no network needed.
    Demo(DemoArgs),
    /// Validate a config file and report problems; `--migrate` prints the upgraded file.
    Check(CheckArgs),
    /// Run only the mock Gemini upstream (for local development and benchmarks).
    Mock(MockArgs),
    /// Print a signed gateway token (uses auth.jwt_secret or JWT_SECRET from the config).
    Token(TokenArgs),
    /// Print the Argon2 hash of a password read from stdin (for auth.admin_password_hash).
    HashPassword,
    /// Run read-only SQL on the audit database: through the running gateway's admin API, or on
    /// the database file (opened read-only) when the gateway is not running.
    Query(QueryArgs),
    /// Write the audit tables as Parquet, one folder per table and day.
    Export(ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum TableFormat {
    #[default]
    Table,
    Json,
    Csv,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Config file.
    #[arg(long, short, default_value = "config/proxy.yaml")]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    pub format: TableFormat,
    /// Most rows (at most audit.sql_max_rows through the gateway).
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Never use the admin API: open the database file (fails while the gateway holds it).
    #[arg(long)]
    pub offline: bool,
    /// One read-only statement.
    pub sql: String,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Config file.
    #[arg(long, short, default_value = "config/proxy.yaml")]
    pub config: PathBuf,
    /// First UTC day to export (YYYY-MM-DD).
    #[arg(long)]
    pub since: String,
    /// Output folder. While the gateway runs, the export is made by the gateway itself and
    /// must land inside its `audit.export_dir`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Subject: the user or service the token is for.
    #[arg(long)]
    pub sub: String,
    /// `user` or `admin`.
    #[arg(long, default_value = "user")]
    pub role: String,
    /// Lifetime (e.g. 1h, 30d).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Models the token may use (globs, comma-separated); default any.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Tenant the caller acts for: what it creates is shared by the tenant's tokens.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct MockArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep no record of requests (benchmarks).
    #[arg(long)]
    pub no_record: bool,
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Config file (default: config/proxy.yaml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Take over the listening sockets of a running instance (send it SIGQUIT).
    #[arg(long)]
    pub upgrade: bool,
    /// Unix socket the listening sockets are handed over on (the same for both processes;
    /// default `gemini-proxy-{uid}/upgrade.sock` in the temp folder; the folder must be
    /// writable by this user only).
    #[arg(long)]
    pub upgrade_sock: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Proxy port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Admin (metrics, health) port.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
}

#[derive(Clone, Copy, Debug, ValueEnum, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Config file to check.
    #[arg(long, short, default_value = "config/proxy.yaml")]
    pub config: PathBuf,
    /// Print the file upgraded to the current config version.
    #[arg(long)]
    pub migrate: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}
