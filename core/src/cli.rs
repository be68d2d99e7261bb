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
    for (flag, value) in [("--sub", Some(&a.sub)), ("--tenant", a.tenant.as_ref())] {
        if let Some(Err(e)) = value.map(|v| gemini_proxy_plugins::auth::check_subject(v)) {
            eprintln!("error: {flag}: {e}");
            return 2;
        }
    }
    let mut claims = gemini_proxy_plugins::auth::new_claims(&a.sub, role, ttl, a.models.clone());
    claims.tenant = a.tenant.clone();
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

  # Every call is a row in DuckDB (data/audit.duckdb); ask it in SQL:
  curl -s http://127.0.0.1:{admin_port}/api/sql -H 'content-type: application/json' \
    -d '{{"sql":"SELECT key_id, model, requests, p50_ms, p95_ms FROM latency_by_key_model"}}'

Ctrl+C stops it.
"#
    )
}

/// A plain HTTP/1.1 call to the admin listener (loopback; the CLI needs nothing more).
/// `Err(None)`: nothing listens there.
fn admin_call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: std::time::Duration,
) -> Result<(u16, Vec<u8>), Option<String>> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Some(format!("admin address {addr}: {e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(2))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => None,
            _ => Some(format!("admin API at {addr}: {e}")),
        })?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    let io = |e: std::io::Error| Some(format!("admin API at {addr}: {e}"));
    s.write_all(req.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let split = memchr::memmem::find(&raw, b"\r\n\r\n")
        .ok_or_else(|| Some(format!("admin API at {addr}: malformed answer")))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Some(format!("admin API at {addr}: malformed status line")))?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = memchr::memmem::find(rest, b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            if size == 0 || eol + 2 + size > rest.len() {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Ok((status, body))
}

/// Prints the admin API's error answer; returns the exit code.
fn admin_refusal(status: u16, body: &[u8]) -> i32 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let msg = v["error"]["message"].as_str().unwrap_or("no message");
    eprintln!("error: {status}: {msg}");
    1
}

/// An admin token for the CLI's own calls (signed with the config's secret), if auth is on.
fn cli_admin_token(loaded: &LoadedConfig) -> Result<Option<String>, String> {
    let auth = &loaded.config.auth;
    if !auth.enabled {
        return Ok(None);
    }
    let Some(secret) = auth.jwt_secret.as_deref() else {
        return Err("auth is on but auth.jwt_secret (or JWT_SECRET) is not set: the CLI cannot sign an admin token".into());
    };
    let mut claims = gemini_proxy_plugins::auth::new_claims(
        "cli",
        gemini_proxy_sdk::Role::Admin,
        std::time::Duration::from_secs(300),
        Vec::new(),
    );
    claims.iss = auth.issuer.clone();
    claims.aud = auth.audience.clone();
    gemini_proxy_plugins::auth::sign(
        secret,
        auth.algorithm.as_deref().unwrap_or("HS256"),
        None,
        &claims,
    )
    .map(Some)
}

fn admin_addr_of(loaded: &LoadedConfig) -> Option<String> {
    let m = &loaded.config.metrics;
    m.enabled.then(|| {
        let host = if m.host == "0.0.0.0" || m.host.is_empty() {
            "127.0.0.1"
        } else if m.host == "::" {
            "::1"
        } else {
            m.host.as_str()
        };
        if host.contains(':') {
            format!("[{host}]:{}", m.prometheus_port)
        } else {
            format!("{host}:{}", m.prometheus_port)
        }
    })
}

fn db_options(
    loaded: &LoadedConfig,
    lock_down: bool,
) -> Result<crate::audit::db::DbOptions, String> {
    let a = &loaded.config.audit;
    if a.db_path.is_empty() {
        return Err("audit.db_path is empty: there is no audit database".into());
    }
    Ok(crate::audit::db::DbOptions {
        path: loaded.config_dir().join(&a.db_path),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
        memory_limit: a.db_memory_limit.clone(),
        export_dir: None,
        read_only: true,
        lock_down,
    })
}

/// `query`: returns the exit code.
pub fn run_query(a: &QueryArgs) -> i32 {
    let loaded = match config::load_file(&a.config, &config::process_env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let limits = crate::audit::db::QueryLimits {
        max_rows: a
            .max_rows
            .unwrap_or(loaded.config.audit.sql_max_rows)
            .max(1),
        timeout: loaded.config.audit.sql_timeout.0,
    };
    let mut result: Option<crate::audit::db::QueryResult> = None;
    if !a.offline
        && let Some(addr) = admin_addr_of(&loaded)
    {
        let token = match cli_admin_token(&loaded) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        let body = serde_json::json!({"sql": a.sql, "format": "json", "max_rows": limits.max_rows});
        match admin_call(
            &addr,
            "POST",
            "/api/sql",
            token.as_deref(),
            body.to_string().as_bytes(),
            limits.timeout + std::time::Duration::from_secs(5),
        ) {
            Ok((200, body)) => match serde_json::from_slice(&body) {
                Ok(r) => result = Some(r),
                Err(e) => {
                    eprintln!("error: unexpected answer from the admin API: {e}");
                    return 1;
                }
            },
            Ok((status, body)) => return admin_refusal(status, &body),
            Err(Some(e)) => {
                eprintln!("error: {e}");
                return 1;
            }
            Err(None) => {} // Not running: read the file.
        }
    }
    let result = match result {
        Some(r) => r,
        None => {
            let opts = match db_options(&loaded, true) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            let run = crate::audit::db::open(&opts)
                .and_then(|c| crate::audit::db::query(&c, &a.sql, limits));
            match run {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
        }
    };
    match a.format {
        TableFormat::Table => print!("{}", crate::audit::db::to_table(&result)),
        TableFormat::Csv => print!("{}", crate::audit::db::to_csv(&result)),
        TableFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        ),
    }
    0
}

/// `export`: returns the exit code.
pub fn run_export(a: &ExportArgs) -> i32 {
    let loaded = match config::load_file(&a.config, &config::process_env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let Some(since) = crate::util::clock::parse_date(&a.since) else {
        eprintln!("error: --since {}: not a date (YYYY-MM-DD)", a.since);
        return 2;
    };
    if let Some(addr) = admin_addr_of(&loaded) {
        let token = match cli_admin_token(&loaded) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        let export_dir = loaded.config_dir().join(&loaded.config.audit.export_dir);
        let out_abs = std::path::absolute(&a.out).unwrap_or_else(|_| a.out.clone());
        let base_abs = std::path::absolute(&export_dir).unwrap_or(export_dir.clone());
        let inside = out_abs
            .strip_prefix(&base_abs)
            .ok()
            .map(|p| p.display().to_string());
        let (path, body) = match &inside {
            Some(rel) => (
                "/api/export",
                serde_json::json!({"since": a.since, "out": rel}).to_string(),
            ),
            // Only asks whether the gateway runs: it cannot write outside its export folder.
            None => ("/health", String::new()),
        };
        let method = if inside.is_some() { "POST" } else { "GET" };
        match admin_call(
            &addr,
            method,
            path,
            token.as_deref(),
            body.as_bytes(),
            std::time::Duration::from_secs(600),
        ) {
            Err(None) => {} // Not running: export from the file.
            Err(Some(e)) => {
                eprintln!("error: {e}");
                return 1;
            }
            Ok(_) if inside.is_none() => {
                eprintln!(
                    "error: the gateway is running and holds the database; it exports only inside audit.export_dir ({}). Use --out {}/NAME, or stop the gateway.",
                    base_abs.display(),
                    base_abs.display()
                );
                return 1;
            }
            Ok((200, body)) => {
                println!("{}", String::from_utf8_lossy(&body));
                return 0;
            }
            Ok((status, body)) => return admin_refusal(status, &body),
        }
    }
    let opts = match db_options(&loaded, false) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match crate::audit::db::open(&opts).and_then(|c| crate::audit::db::export(&c, since, &a.out)) {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
