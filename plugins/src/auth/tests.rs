use super::*;

const SECRET: &str = "Sup3r-secret-for-tests-only-0123456789!";

fn verifier(extra: serde_json::Value) -> Verifier {
    let mut v = serde_json::json!({ "jwt_secret": SECRET });
    if let serde_json::Value::Object(m) = extra {
        for (k, x) in m {
            v[k] = x;
        }
    }
    let c: AuthStageConfig = serde_json::from_value(v).unwrap();
    Verifier::new(&c, Path::new(".")).unwrap()
}

fn token(claims: &Claims) -> String {
    sign(SECRET, "HS256", None, claims).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn accepts_a_good_token_and_refuses_every_bad_one() {
    let v = verifier(serde_json::json!({}));
    let good = new_claims("alice", Role::User, Duration::from_secs(60), vec![]);
    assert_eq!(v.verify(&token(&good)).unwrap().sub, "alice");
    let mut expired = good.clone();
    expired.exp = now() - 120;
    assert_eq!(v.verify(&token(&expired)), Err(AuthError::Expired));
    let mut early = good.clone();
    early.nbf = Some(now() + 3600);
    assert_eq!(v.verify(&token(&early)), Err(AuthError::NotYetValid));
    let forged = sign("another-secret", "HS256", None, &good).unwrap();
    assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
    assert_eq!(v.verify("not.a.token"), Err(AuthError::Malformed));
    assert_eq!(v.verify(""), Err(AuthError::Missing));
    // alg none: header {"alg":"none"} with no signature.
    use base64_like::b64;
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(serde_json::to_string(&good).unwrap().as_bytes())
    );
    assert!(v.verify(&none).is_err());
    // HS384 token for an HS256 key: the key pins its algorithm.
    let hs384 = sign(SECRET, "HS384", None, &good).unwrap();
    assert_eq!(v.verify(&hs384), Err(AuthError::AlgorithmNotAllowed));
    let mut bad_role = good.clone();
    bad_role.role = Some("root".into());
    assert_eq!(v.verify(&token(&bad_role)), Err(AuthError::BadRole));
    // A subject that would forge a log line.
    let mut forging = good.clone();
    forging.sub = "alice\n2026-01-01T00:00:00Z INFO admin logged in".into();
    assert_eq!(v.verify(&token(&forging)), Err(AuthError::Malformed));
    forging.sub = "x".repeat(MAX_SUBJECT + 1);
    assert_eq!(v.verify(&token(&forging)), Err(AuthError::Malformed));
}

#[test]
fn checks_issuer_audience_and_revocation() {
    let dir = tempfile_dir();
    let v = verifier(serde_json::json!({
        "issuer": "gw", "audience": "apps",
        "revocations_file": dir.join("revoked.json").display().to_string()
    }));
    let mut c = new_claims("bob", Role::Admin, Duration::from_secs(60), vec![]);
    c.aud = Some("apps".into());
    assert_eq!(
        v.verify(&token(&c)),
        Err(AuthError::WrongIssuer),
        "missing iss"
    );
    c.iss = Some("elsewhere".into());
    assert_eq!(v.verify(&token(&c)), Err(AuthError::WrongIssuer));
    c.iss = Some("gw".into());
    c.aud = Some("others".into());
    assert_eq!(v.verify(&token(&c)), Err(AuthError::WrongAudience));
    c.aud = None;
    assert_eq!(
        v.verify(&token(&c)),
        Err(AuthError::WrongAudience),
        "missing aud"
    );
    c.aud = Some("apps".into());
    assert!(v.verify(&token(&c)).is_ok());
    v.revocations().revoke(c.jti.as_deref().unwrap()).unwrap();
    assert_eq!(v.verify(&token(&c)), Err(AuthError::Revoked));
    // Another verifier on the same file sees it (restart).
    let again = Revocations::for_file(Some(&dir.join("revoked.json"))).unwrap();
    assert!(again.contains(c.jti.as_deref().unwrap()));
    let saved = std::fs::read_to_string(dir.join("revoked.json")).unwrap();
    assert!(saved.contains(c.jti.as_deref().unwrap()));
}

#[test]
fn a_broken_revocation_file_is_an_error_and_no_file_still_shares() {
    let dir = tempfile_dir();
    let f = dir.join("broken.json");
    std::fs::write(&f, b"[\"jti-1\", oops").unwrap();
    let Err(e) = Revocations::for_file(Some(&f)) else {
        panic!("a broken file was accepted")
    };
    assert!(e.contains("revoked tokens would work again"), "{e}");
    let c: AuthStageConfig = serde_json::from_value(serde_json::json!({
        "jwt_secret": SECRET, "revocations_file": f.display().to_string()
    }))
    .unwrap();
    assert!(Verifier::new(&c, Path::new(".")).is_err());
    // Without a file, two verifiers (proxy and admin API) share one list.
    let (a, b) = (
        verifier(serde_json::json!({})),
        verifier(serde_json::json!({})),
    );
    let t = new_claims("x", Role::User, Duration::from_secs(60), vec![]);
    a.revocations().revoke(t.jti.as_deref().unwrap()).unwrap();
    assert_eq!(b.verify(&token(&t)), Err(AuthError::Revoked));
}

#[test]
fn cached_tokens_still_expire() {
    let v = verifier(serde_json::json!({"leeway_seconds": 0}));
    let mut c = new_claims("eve", Role::User, Duration::from_secs(2), vec![]);
    c.exp = now() + 1;
    let t = token(&c);
    assert!(v.verify(&t).is_ok());
    assert!(v.verify(&t).is_ok(), "from the cache");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(v.verify(&t), Err(AuthError::Expired));
    // A different token that only shares a prefix is not a hit.
    let other = format!("{}x", &t[..t.len() - 1]);
    assert!(v.verify(&other).is_err());
}

#[test]
fn rotates_secrets_by_kid() {
    let v = verifier(serde_json::json!({"keys": [
        {"kid": "2026-11", "algorithm": "HS512", "secret": "new-secret-0123456789abcdef-XYZ!"}
    ]}));
    let c = new_claims("carol", Role::User, Duration::from_secs(60), vec![]);
    let old = token(&c);
    let new = sign(
        "new-secret-0123456789abcdef-XYZ!",
        "HS512",
        Some("2026-11"),
        &c,
    )
    .unwrap();
    assert!(
        v.verify(&old).is_ok(),
        "tokens signed before the rotation still work"
    );
    assert!(v.verify(&new).is_ok());
    let unknown = sign("x", "HS512", Some("nope"), &c).unwrap();
    assert_eq!(v.verify(&unknown), Err(AuthError::UnknownKey));
}

#[test]
fn public_keys_verify_and_hs_rs_confusion_fails() {
    let kp = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let public = kp.public_key_pem();
    let v = verifier(serde_json::json!({"keys": [
        {"kid": "ec", "algorithm": "ES256", "public_key": public}
    ]}));
    let c = new_claims("dave", Role::User, Duration::from_secs(60), vec![]);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec".into());
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let good = jsonwebtoken::encode(&h, &c, &enc).unwrap();
    assert_eq!(v.verify(&good).unwrap().sub, "dave");
    // The classic confusion: HMAC-sign with the public key as the secret.
    let forged = sign(&public, "HS256", Some("ec"), &c).unwrap();
    assert_eq!(v.verify(&forged), Err(AuthError::AlgorithmNotAllowed));
}

/// Bounded pseudo-random and mutated tokens (the stable stand-in for `fuzz/`'s cargo-fuzz
/// target; `scripts/fuzz`): every one is refused or accepted, none panics, and no mutation
/// of a valid token is accepted with different claims.
#[test]
fn fuzz_tokens_never_panic_and_mutations_never_pass_as_other_claims() {
    let v = verifier(serde_json::json!({}));
    let good = token(&new_claims(
        "fuzz",
        Role::User,
        Duration::from_secs(60),
        vec![],
    ));
    let mut state: u64 = 42;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(state)
    };
    let alphabet = b"ABCxyz019-_.=+/ \x00";
    for _ in 0..20_000 {
        let mut t = good.clone().into_bytes();
        for _ in 0..(1 + next() % 4) {
            let r = next();
            let pos = (r as usize >> 8) % t.len();
            match r % 3 {
                0 => t[pos] = alphabet[(r >> 40) as usize % alphabet.len()],
                1 => {
                    t.remove(pos);
                }
                _ => t.insert(pos, alphabet[(r >> 40) as usize % alphabet.len()]),
            }
        }
        let s = String::from_utf8_lossy(&t).into_owned();
        if let Ok(c) = v.verify(&s) {
            // Base64 slack can leave the decoded bytes unchanged; the claims must be the same.
            assert_eq!(
                c.sub, "fuzz",
                "a mutated token passed with other claims: {s}"
            );
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gp-auth-test-{}", rand_u128()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

mod base64_like {
    /// URL-safe base64 without padding (enough for a forged test token).
    pub fn b64(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn an_ephemeral_token_speaks_for_its_creator_only_while_vouched_and_never_as_admin() {
    use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    let dir = tempfile_dir();
    let auth = Auth {
        verifier: verifier(serde_json::json!({
            "revocations_file": dir.join("revoked-eph.json").display().to_string()
        })),
    };
    let live =
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";
    let call = |cred: ClientCredential, model: &str| {
        let mut cx = gemini_proxy_sdk::testing::request("GET", live);
        cx.request.model = Some(model.into());
        cx.credential = Some(cred);
        let r = auth.admit_sync(&mut cx);
        (r.map_err(|r| r.status), cx.identity)
    };
    let eph = || ClientCredential::new(CredentialSource::EphemeralToken, "auth_tokens/t1");
    // Not vouched for: refused, whatever the token says.
    assert_eq!(call(eph(), "gemini-live").0, Err(401));
    let mut creator = new_claims(
        "carol",
        Role::Admin,
        Duration::from_secs(60),
        vec!["gemini-live*".into()],
    );
    creator.role = Some("admin".into());
    let vouched = || eph().vouched_for(serde_json::to_value(&creator).unwrap());
    let (ok, id) = call(vouched(), "gemini-live-2.5");
    assert_eq!(ok, Ok(()));
    let id = id.unwrap();
    assert_eq!((id.subject.as_str(), id.role), ("carol", Role::User));
    assert!(id.claims.get("role").is_none(), "no admin claim either");
    // The creator's models still bind the session.
    assert_eq!(call(vouched(), "gemini-2.5-pro").0, Err(403));
    // Revoking the creator's token ends its ephemeral tokens too.
    auth.verifier
        .revocations()
        .revoke(creator.jti.as_deref().unwrap())
        .unwrap();
    assert_eq!(call(vouched(), "gemini-live-2.5").0, Err(401));
    // A gateway token presented as a vouched bearer is still verified as a token.
    let bearer = ClientCredential::new(CredentialSource::Bearer, "not-a-token")
        .vouched_for(serde_json::to_value(&creator).unwrap());
    assert_eq!(call(bearer, "gemini-live-2.5").0, Err(401));
}
