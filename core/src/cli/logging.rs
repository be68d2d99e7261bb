//! Logging for every command: the filter (secret-bearing targets capped) and the writer.

use crate::config::LogFormat;

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
