//! The `gemini-proxy` command line.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, LoadedConfig, LogFormat};

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
}

/// `token`: prints a token, or an error; returns the exit code.
pub fn run_token(a: &TokenArgs) -> i32 {
    let loaded = match config::load_file(&a.config, &config::process_env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let auth = &loaded.config.auth;
    let Some(secret) = auth.jwt_secret.as_deref() else {
        eprintln!(
            "error: {}: auth.jwt_secret: not set (nor JWT_SECRET)",
            a.config.display()
        );
        return 2;
    };
    let role = match a.role.as_str() {
        "user" => gemini_proxy_sdk::Role::User,
        "admin" => gemini_proxy_sdk::Role::Admin,
        other => {
            eprintln!("error: --role `{other}` is not user or admin");
            return 2;
        }
    };
    let ttl = match config::parse_duration(&a.ttl) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            eprintln!("error: --ttl must be above 0");
            return 2;
        }
        Err(e) => {
            eprintln!("error: --ttl: {e}");
            return 2;
        }
    };
    let mut claims = gemini_proxy_plugins::auth::new_claims(&a.sub, role, ttl, a.models.clone());
    claims.iss = auth.issuer.clone();
    claims.aud = auth.audience.clone();
    match gemini_proxy_plugins::auth::sign(
        secret,
        auth.algorithm.as_deref().unwrap_or("HS256"),
        None,
        &claims,
    ) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `hash-password`: reads one line from stdin, prints its Argon2id hash.
pub fn run_hash_password() -> i32 {
    use argon2::PasswordHasher;
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() || line.trim_end().is_empty() {
        eprintln!("error: give the password on stdin");
        return 2;
    }
    let salt = argon2::password_hash::SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .expect("16 bytes make a salt");
    match argon2::Argon2::default()
        .hash_password(line.trim_end_matches(['\n', '\r']).as_bytes(), &salt)
    {
        Ok(h) => {
            println!("{h}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
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

/// Targets whose debug/trace output dumps raw headers (credentials): capped at `info` whatever
/// `RUST_LOG` asks for, so no level setting can put a key in the log.
pub const SECRET_BEARING_TARGETS: &[&str] = &[
    // All of pingora_core: its app layer traces whole request heads (Authorization included).
    "pingora_core",
    "pingora_proxy",
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "reqwest",
];

/// The log filter: `RUST_LOG` if set, else `level`, with the secret-bearing targets capped.
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| level.to_string());
    let mut filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"));
    for t in SECRET_BEARING_TARGETS {
        if let Ok(d) = format!("{t}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

///
/// Lines go to stdout through a background writer thread, so a call never waits on the
/// terminal or a pipe; if the writer falls 64k lines behind, lines are dropped (counted by
/// tracing-appender) rather than stalling the proxy. Keep the returned guard alive: dropping
/// it flushes what is queued.
pub fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(65_536)
        .thread_name("log-writer")
        // Buffered: the worker flushes whenever its queue runs dry, so a busy gateway writes
        // many lines per syscall and an idle one still shows each line at once.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(level))
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
    guard
}

/// `check`: returns the process exit code.
pub fn run_check(args: &CheckArgs) -> i32 {
    match config::load_file(&args.config, &config::process_env) {
        Ok(loaded) => {
            let built = crate::runtime::Runtime::build(
                &loaded,
                &crate::builtin_registry(),
                None,
                &crate::pool::KeyPool::default(),
            );
            if args.migrate {
                print!("{}", config::migrated_yaml(&loaded));
                for w in &loaded.warnings {
                    eprintln!("migrated: {w}");
                }
            }
            let security = crate::security::assess(&loaded);
            let production = loaded.config.server.mode == config::ServerMode::Production;
            // In production mode the gateway would refuse to start: so does the check.
            let code = if production && security.blocks_production {
                1
            } else {
                0
            };
            match (built, args.format) {
                (Ok(_), OutputFormat::Text) => {
                    if !args.migrate {
                        for w in &loaded.warnings {
                            println!("warning: {w}");
                        }
                        print!("{}", security.text());
                        if code == 0 {
                            println!("{}: ok", args.config.display());
                        } else {
                            println!(
                                "{}: production mode would refuse to start (critical finding or score under {})",
                                args.config.display(),
                                security.min_score
                            );
                        }
                    }
                    code
                }
                (Ok(_), OutputFormat::Json) => {
                    println!(
                        "{}",
                        serde_json::json!({"file": args.config.display().to_string(), "ok": code == 0, "warnings": loaded.warnings, "security": security})
                    );
                    code
                }
                (Err(e), OutputFormat::Text) => {
                    eprintln!("error: {e}");
                    1
                }
                (Err(e), OutputFormat::Json) => {
                    println!(
                        "{}",
                        serde_json::json!({"file": e.file, "ok": false, "error": {"path": e.path, "message": e.message}})
                    );
                    1
                }
            }
        }
        Err(e) => {
            match args.format {
                OutputFormat::Text => eprintln!("error: {e}"),
                OutputFormat::Json => {
                    println!(
                        "{}",
                        serde_json::json!({"file": e.file, "ok": false, "error": {"path": e.path, "message": e.message}})
                    )
                }
            }
            1
        }
    }
}

pub fn load_for_serve(path: &Path) -> Result<LoadedConfig, String> {
    config::load_file(path, &config::process_env).map_err(|e| e.to_string())
}

/// The config the demo runs with, pointed at the embedded mock.
pub fn demo_config(mock_base: &str, port: u16, admin_port: u16) -> LoadedConfig {
    let yaml = format!(
        r#"
server: {{ host: "127.0.0.1", port: {port} }}
gemini:
  base_url: "{mock_base}"
  api_keys:
    - {{ id: demo-a, key: demo-key-a, weight: 3 }}
    - {{ id: demo-b, key: demo-key-b, weight: 1 }}
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
pool: {{ state_file: "" }}
pipeline:
  - request_log
  - key_select: {{ strategy: weighted_round_robin }}
"#
    );
    config::load_str(&yaml, "(demo)", &|_| None).expect("demo config is valid")
}

pub fn demo_banner(port: u16, admin_port: u16, mock: &str) -> String {
    format!(
        r#"
gemini-proxy demo
  proxy:        http://127.0.0.1:{port}
  admin:        http://127.0.0.1:{admin_port}  (/health /metrics /performance /errors /api/keys)
  mock Gemini:  {mock}  (embedded; keys demo-a x3, demo-b x1)

Try it:
  curl -s http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent \
    -H 'x-goog-api-key: demo' -H 'content-type: application/json' \
    -d '{{"contents":[{{"parts":[{{"text":"why is the sky blue?"}}]}}]}}'

  curl -sN 'http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse' \
    -H 'x-goog-api-key: demo' -H 'content-type: application/json' -H 'x-mock-event-delay-ms: 300' \
    -d '{{"contents":[{{"parts":[{{"text":"stream please"}}]}}]}}'

  python3 - <<'PY'
from google import genai
from google.genai import types
client = genai.Client(api_key="demo", http_options=types.HttpOptions(base_url="http://127.0.0.1:{port}"))
print(client.models.generate_content(model="gemini-2.5-flash", contents="hello").text)
PY

Ctrl+C stops it.
"#
    )
}
