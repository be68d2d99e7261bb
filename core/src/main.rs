use std::path::PathBuf;

// Pingora and the proxy allocate per call; glibc malloc was ~13% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use gemini_proxy_core::cli::{self, Cli, Command, ServeArgs};
use gemini_proxy_core::config::LogFormat;
use gemini_proxy_core::runtime::Shared;
use gemini_proxy_core::server::{ServeOptions, build_server};

/// Flushes and stops the audit writer however the function holding it returns: the process
/// exits right after, and exiting with DuckDB's threads running can crash.
struct CloseAuditOnReturn(std::sync::Arc<Shared>);

impl Drop for CloseAuditOnReturn {
    fn drop(&mut self) {
        if let Some(a) = &self.0.audit {
            a.close();
        }
    }
}

fn serve(args: ServeArgs) -> i32 {
    let path = args
        .config
        .unwrap_or_else(|| PathBuf::from("config/proxy.yaml"));
    let loaded = match cli::load_for_serve(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let c = &loaded.config;
    let _log_guard = cli::init_logging(c.logging.format, &c.logging.level);
    for w in &loaded.warnings {
        tracing::warn!(migration = %w, "config migrated; run `gemini-proxy check --migrate` to upgrade the file");
    }
    let security = gemini_proxy_core::security::assess(&loaded);
    for f in &security.findings {
        tracing::warn!(target: "gemini_proxy::security", id = f.id, severity = ?f.severity, cwe = f.cwe, fix = f.fix, "{}", f.title);
    }
    if let Some(why) = gemini_proxy_core::security::production_refusal(&loaded) {
        eprintln!("error: production mode refuses to start {why}");
        return 2;
    }
    let mut opts = ServeOptions {
        upgrade: args.upgrade,
        ..ServeOptions::default()
    };
    if let Some(p) = &args.upgrade_sock {
        opts.upgrade_sock = p.display().to_string();
    }
    // Refused before any thread starts: exiting with the audit writer running can crash.
    let sock = std::path::Path::new(&opts.upgrade_sock);
    if let Err(e) = gemini_proxy_core::util::private_dir::ensure_private_parent(sock) {
        eprintln!("error: {e}");
        return 2;
    }
    let shared = match Shared::new(&loaded, gemini_proxy_core::builtin_registry()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let _close_audit = CloseAuditOnReturn(shared.clone());
    let shared_for_exit = shared.clone();
    match build_server(shared, &opts) {
        Ok(server) => {
            tracing::info!(listen = %format!("{}:{}", c.server.host, c.server.port), admin = c.metrics.prometheus_port, "gemini-proxy starting");
            server.run(pingora::server::RunArgs {
                shutdown_signal: Box::new(gemini_proxy_core::server::ProcessSignals {
                    shared: shared_for_exit.clone(),
                }),
            });
            if let Err(e) = shared_for_exit.pool.save() {
                tracing::warn!(error = %e, "cannot write the pool state file");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn demo(args: cli::DemoArgs) -> i32 {
    let _log_guard = cli::init_logging(LogFormat::Human, "info");
    let mock = match gemini_proxy_core::mock::MockGemini::start() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot start the mock upstream: {e}");
            return 2;
        }
    };
    let loaded = cli::demo_config(&mock.base_url(), args.port, args.admin_port);
    let shared = match Shared::new(&loaded, gemini_proxy_core::builtin_registry()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let _close_audit = CloseAuditOnReturn(shared.clone());
    let signals = gemini_proxy_core::server::ProcessSignals {
        shared: shared.clone(),
    };
    let server = match build_server(shared, &ServeOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    println!(
        "{}",
        cli::demo_banner(args.port, args.admin_port, &mock.base_url())
    );
    // The mock lives on its own thread for the life of the process.
    std::mem::forget(mock);
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    0
}

fn mock(args: cli::MockArgs) -> i32 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    match gemini_proxy_core::mock::MockGemini::start_on(addr, args.threads) {
        Ok(m) => {
            m.set_recording(!args.no_record);
            println!("mock Gemini on {}", m.base_url());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("error: cannot start the mock on {addr}: {e}");
            2
        }
    }
}

fn main() {
    // Everything the gateway writes (audit database and its WAL, logs, state, exports) is its
    // own user's only, whatever the folder it lands in allows.
    #[cfg(unix)]
    unsafe {
        libc::umask(0o077);
    }
    // No transparent huge pages: mimalloc asks for them on its arenas, and each 2 MiB page a
    // few bytes touch stays resident (idle RSS 77 MB with them, 63 MB without; throughput the
    // same on the benchmark).
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        None => serve(ServeArgs {
            config: cli.config,
            upgrade: false,
            upgrade_sock: None,
        }),
        Some(Command::Serve(mut a)) => {
            if a.config.is_none() {
                a.config = cli.config;
            }
            serve(a)
        }
        Some(Command::Demo(a)) => demo(a),
        Some(Command::Check(a)) => cli::run_check(&a),
        Some(Command::Mock(a)) => mock(a),
        Some(Command::Token(a)) => cli::run_token(&a),
        Some(Command::HashPassword) => cli::run_hash_password(),
        Some(Command::Query(a)) => cli::run_query(&a),
        Some(Command::Export(a)) => cli::run_export(&a),
    };
    std::process::exit(code);
}
