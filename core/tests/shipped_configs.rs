//! Every file in `config/` and `examples/configs/` is parsed and built.

use std::path::Path;

use gemini_proxy_core::config::load_str;
use gemini_proxy_core::runtime::Runtime;

fn check(path: &Path, scratch: &Path) {
    let mut text = std::fs::read_to_string(path).unwrap();
    // TLS file paths must exist to validate: point them at placeholders.
    for (k, name) in [("cert_path", "cert.pem"), ("key_path", "key.pem")] {
        if let Some(line) = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{k}:")))
            .map(str::to_string)
        {
            let p = scratch.join(name);
            std::fs::write(&p, "placeholder").unwrap();
            let indent = &line[..line.len() - line.trim_start().len()];
            text = text.replace(&line, &format!("{indent}{k}: {}", p.display()));
        }
    }
    let env = |k: &str| match k {
        "GEMINI_API_KEY" => Some("AIzaFromEnvironment".to_string()),
        "JWT_SECRET" => Some("Env-Secret-For-Shipped-Config-Tests-0123!".to_string()),
        "ADMIN_PASSWORD" => Some("Adm1n-Password-From-Env!".to_string()),
        _ => None,
    };
    let mut loaded =
        load_str(&text, &path.display().to_string(), &env).unwrap_or_else(|e| panic!("{e}"));
    // Paths in the file (scripts, modules) resolve against its folder, as when served.
    loaded.path = Some(path.to_path_buf());
    let rt = Runtime::build(
        &loaded,
        &gemini_proxy_core::builtin_registry(),
        None,
        &gemini_proxy_core::pool::KeyPool::default(),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!rt.keys.is_empty());
}

#[test]
fn shipped_configs_load() {
    let root =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .parent()
            .unwrap()
            .to_path_buf();
    let scratch = std::env::temp_dir().join(format!("gp-shipped-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut n = 0;
    for dir in ["config", "examples/configs"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            // config/proxy.yaml is the operator's own (git-ignored) file.
            if name == "proxy.yaml" || !(name.ends_with(".yaml") || name.starts_with("proxy.yaml."))
            {
                continue;
            }
            check(&p, &scratch);
            n += 1;
        }
    }
    assert!(n >= 6, "expected the shipped configs, found {n}");
}
