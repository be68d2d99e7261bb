//! `check`: validation, the security assessment, `--migrate`.

use std::path::Path;

use super::{CheckArgs, OutputFormat};
use crate::config::{self, LoadedConfig};

/// `check`: returns the process exit code.
pub fn run_check(args: &CheckArgs) -> i32 {
    match config::load_file(&args.config, &config::process_env) {
        Ok(loaded) => {
            let built = crate::runtime::Runtime::build(
                &loaded,
                &crate::builtin_registry(),
                None,
                &crate::pool::KeyPool::default(),
                None,
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
