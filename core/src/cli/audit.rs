//! `query` and `export`: through the running gateway's admin API, else on the database file.

use super::admin_client::{admin_addr_of, admin_call, admin_refusal, cli_admin_token};
use super::{ExportArgs, QueryArgs, TableFormat};
use crate::config::{self, LoadedConfig};

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
