//! Fuzzing entry for every parser a request meets before routing (`fuzz/`, `scripts/fuzz`).

use http::HeaderValue;

use super::{Cidr, Inbound, client_ip, inbound, model, split_key_param, tenancy};

/// Fuzzing entry: interprets bytes as a request target line followed by header lines and runs
/// every parser a request meets before routing. Must never panic.
pub fn fuzz_inbound(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    let _ = inbound::path_is_suspicious(target);
    if let Some((_, q)) = target.split_once('?') {
        let _ = split_key_param(q);
    }
    let _ = tenancy::resource_refs(target, target.split_once('?').map(|(_, q)| q), Some(data));
    let _ = client_ip(
        Some(std::net::IpAddr::from([10, 0, 0, 1])),
        &headers,
        &[Cidr::parse("10.0.0.0/8").expect("cidr")],
    );
    if let Ok(uri) = target.parse::<http::Uri>()
        && let Ok(path) = inbound::normalized_path(uri.path())
    {
        for m in ["GET", "POST", "DELETE", "PATCH"] {
            if let Some(i) = Inbound::parse(m, &path, uri.query(), &headers) {
                let _ = i.route.model.as_deref().map(model::valid_model);
            }
        }
    }
    let _ = model::OpenAiHead::parse(data);
}

#[cfg(test)]
mod tests {
    /// Bounded pseudo-random and mutated inputs through every pre-routing parser (the stable
    /// stand-in for `fuzz/`'s cargo-fuzz target; `scripts/fuzz`).
    #[test]
    fn fuzz_inbound_never_panics() {
        let seeds: &[&[u8]] = &[
            b"/v1beta/models/gemini-2.5-flash:generateContent?key=abc&alt=sse\nx-goog-api-key: t\nx-forwarded-for: 1.2.3.4, 10.0.0.2",
            b"/upload/v1beta/files?upload_id=u1&upload_protocol=resumable\nauthorization: Bearer x",
            b"http://generativelanguage.googleapis.com/v1beta/openai/chat/completions\ncontent-length: 99999999999999999999",
            b"/v1beta/files/abc:download?%%%\nx-forwarded-for: ::1, garbage, 999.1.1.1",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        const ALPHABET: &[u8] = b"/:?&=%.,;\\\n -_aZ09\x00\xff\xc3\xa9[]@#";
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let r = next();
                let pos = (r as usize >> 8) % (input.len() + 1);
                match r % 4 {
                    0 => input.insert(pos, ALPHABET[(r >> 40) as usize % ALPHABET.len()]),
                    1 if pos < input.len() => {
                        input.remove(pos);
                    }
                    2 if pos < input.len() => input[pos] = (r >> 32) as u8,
                    _ => {
                        let chunk: Vec<u8> = input[pos..].iter().take(16).copied().collect();
                        input.splice(pos..pos, chunk);
                    }
                }
            }
            super::fuzz_inbound(&input);
        }
    }
}
