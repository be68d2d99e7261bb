//! `token` and `hash-password`.

use super::TokenArgs;
use crate::config;

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
    if auth.jwt_secret.is_none() {
        eprintln!(
            "error: {}: auth.jwt_secret: not set (nor JWT_SECRET)",
            a.config.display()
        );
        return 2;
    }
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
    match auth.sign(claims) {
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
