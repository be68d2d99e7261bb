//! Keeps pooled secrets out of everything the gateway relays or keeps.
//!
//! Google echoes the caller's key in some answers (a suspended consumer's 403 names
//! `api_key:AIza...` in its message and its metadata), and an upstream may put it in a header or
//! a redirect. Every upstream body and header value goes through [`Scrubber`] on its way to the
//! client, and so does every message the gateway stores (audit rows, `/errors`, logs). It masks,
//! byte for byte, so a body's length and framing never change:
//! - every pooled key (configured or added through the API; validation keeps them at least
//!   [`MIN_SECRET`] bytes of characters that JSON, headers and URLs spell as they are);
//! - anything shaped like a Google API key (`AIza` and 35 more key characters), pooled or not;
//! - the value after `api_key:` (Google's way of naming a consumer).

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};

/// Shorter secrets are not looked for (they would mask ordinary words); config validation
/// refuses pooled keys that short.
pub const MIN_SECRET: usize = crate::config::MIN_KEY_LEN;
const GOOGLE_KEY_PREFIX: &[u8] = b"AIza";
const GOOGLE_KEY_LEN: usize = 39;
const CONSUMER_PREFIX: &[u8] = b"api_key:";
/// Longest consumer value masked after `api_key:` (Google keys are 39).
const CONSUMER_MAX: usize = 128;
const MASK: u8 = b'*';

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The secrets of one runtime's pool, compiled once per (re)build.
pub struct Scrubber {
    patterns: AhoCorasick,
    /// Index of the first generic pattern: those before it are pooled keys.
    generic_from: usize,
    /// Proper prefixes of pooled keys, to know when a chunk may end inside one.
    prefixes: HashSet<Box<[u8]>>,
    /// First bytes of pooled keys (a cheap test before the prefix lookup).
    first: [bool; 256],
    /// Bytes a stream may have to hold back at most.
    hold_max: usize,
}

impl Scrubber {
    /// A scrubber for these secrets (shorter than [`MIN_SECRET`] are skipped).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrubber {
        let mut keys: Vec<&[u8]> = secrets
            .into_iter()
            .map(|s| s.trim().as_bytes())
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut prefixes = HashSet::new();
        let mut first = [false; 256];
        for k in &keys {
            first[usize::from(k[0])] = true;
            for n in 1..k.len() {
                prefixes.insert(k[..n].into());
            }
        }
        let longest = keys.iter().map(|k| k.len()).max().unwrap_or(0);
        let generic_from = keys.len();
        let mut all = keys;
        all.push(GOOGLE_KEY_PREFIX);
        all.push(CONSUMER_PREFIX);
        let patterns = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&all)
            .expect("literal patterns always build");
        Scrubber {
            patterns,
            generic_from,
            prefixes,
            first,
            hold_max: longest
                .max(GOOGLE_KEY_LEN)
                .max(CONSUMER_PREFIX.len() + CONSUMER_MAX),
        }
    }

    /// The byte ranges to mask in `buf`.
    fn spans(&self, buf: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for m in self.patterns.find_iter(buf) {
            let (start, end) = (m.start(), m.end());
            let id = m.pattern().as_usize();
            if id < self.generic_from {
                out.push((start, end));
            } else if id == self.generic_from {
                let tail = &buf[end..];
                let want = GOOGLE_KEY_LEN - GOOGLE_KEY_PREFIX.len();
                if tail.len() >= want && tail[..want].iter().all(|b| key_char(*b)) {
                    out.push((start, end + want));
                }
            } else {
                let n = buf[end..]
                    .iter()
                    .take(CONSUMER_MAX)
                    .take_while(|b| key_char(**b))
                    .count();
                if n > 0 {
                    out.push((end, end + n));
                }
            }
        }
        out
    }

    /// True when `buf` holds something to mask.
    pub fn finds(&self, buf: &[u8]) -> bool {
        !self.spans(buf).is_empty()
    }

    /// Masks every secret in `buf` in place; true if anything was masked.
    pub fn mask(&self, buf: &mut [u8]) -> bool {
        let spans = self.spans(buf);
        for (s, e) in &spans {
            buf[*s..*e].fill(MASK);
        }
        !spans.is_empty()
    }

    /// `b` with every secret masked (no copy when there is none).
    pub fn masked(&self, b: Bytes) -> Bytes {
        if !self.finds(&b) {
            return b;
        }
        let mut m = BytesMut::from(&b[..]);
        self.mask(&mut m);
        m.freeze()
    }

    /// `s` with every secret masked, for messages that are stored or logged.
    pub fn redact(&self, s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        self.mask(&mut b);
        // Masks replace ASCII key characters with ASCII: still UTF-8.
        String::from_utf8(b).unwrap_or_default()
    }

    /// How many bytes at the end of `buf` could be the start of a secret that continues in the
    /// next chunk (a stream holds them back until it knows).
    pub fn open_tail(&self, buf: &[u8]) -> usize {
        let from = buf.len().saturating_sub(self.hold_max);
        (from..buf.len())
            .find(|&s| self.may_start_secret(&buf[s..]))
            .map_or(0, |s| buf.len() - s)
    }

    fn may_start_secret(&self, tail: &[u8]) -> bool {
        let generic = |prefix: &[u8], max: usize| {
            let n = tail.len().min(prefix.len());
            tail[..n] == prefix[..n] && tail[n..].iter().all(|b| key_char(*b)) && tail.len() < max
        };
        generic(GOOGLE_KEY_PREFIX, GOOGLE_KEY_LEN)
            || generic(CONSUMER_PREFIX, CONSUMER_PREFIX.len() + CONSUMER_MAX)
            || (self.first[usize::from(tail[0])] && self.prefixes.contains(tail))
    }
}

/// Masks a streamed body chunk by chunk, holding back a chunk's last bytes only when they may
/// begin a secret that the next chunk completes.
#[derive(Default)]
pub struct StreamScrub {
    held: BytesMut,
}

impl StreamScrub {
    /// The bytes to send for `chunk` (`last`: the body ends with it).
    pub fn feed(&mut self, s: &Scrubber, chunk: Bytes, last: bool) -> Bytes {
        if self.held.is_empty() && !s.finds(&chunk) && (last || s.open_tail(&chunk) == 0) {
            return chunk;
        }
        self.held.extend_from_slice(&chunk);
        // Decide what to hold on the raw bytes: a masked partial secret would no longer be
        // recognised once the next chunk completes it.
        let spans = s.spans(&self.held);
        let keep = if last { 0 } else { s.open_tail(&self.held) };
        let cut = self.held.len() - keep;
        for (a, b) in spans.into_iter().filter(|(a, _)| *a < cut) {
            self.held[a..b].fill(MASK);
        }
        self.held.split_to(cut).freeze()
    }

    /// What is still held back when the body ends without a last chunk.
    pub fn finish(&mut self, s: &Scrubber) -> Option<Bytes> {
        if self.held.is_empty() {
            return None;
        }
        s.mask(&mut self.held);
        Some(std::mem::take(&mut self.held).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOLED: &str = "AIzaSyPOOLEDKEY000000000000000000000001";

    #[test]
    fn masks_pooled_keys_google_shapes_and_consumers_keeping_length() {
        let s = Scrubber::new([POOLED, "valid-secret-1", "abc"]);
        let msg = format!(
            "Permission denied: Consumer 'api_key:{POOLED}' has been suspended. other AIzaSyOTHERKEY1111111111111111111111111 valid-secret-1 abc"
        );
        let out = s.redact(&msg);
        assert_eq!(out.len(), msg.len());
        assert!(!out.contains("POOLEDKEY"), "{out}");
        assert!(!out.contains("OTHERKEY"), "{out}");
        assert!(!out.contains("valid-secret-1"), "{out}");
        assert!(out.contains("abc"), "too short to be looked for: {out}");
        assert!(out.contains("Consumer 'api_key:****"), "{out}");
        // `api_key:` with any value.
        assert_eq!(s.redact("api_key:xyz'"), "api_key:***'");
        // A shorter AIza run is not a key.
        assert_eq!(s.redact("AIzaShort"), "AIzaShort");
    }

    #[test]
    fn streams_hold_back_only_a_possible_secret_start() {
        let s = Scrubber::new([POOLED]);
        let body =
            format!("data: {{\"text\": \"x {POOLED} y api_key:valid-secret-22 z\"}}\r\n\r\n");
        for cut in 0..body.len() {
            for cut2 in cut..body.len().min(cut + 60) {
                let mut st = StreamScrub::default();
                let mut out = Vec::new();
                out.extend_from_slice(&st.feed(&s, Bytes::from(body[..cut].to_string()), false));
                out.extend_from_slice(&st.feed(
                    &s,
                    Bytes::from(body[cut..cut2].to_string()),
                    false,
                ));
                out.extend_from_slice(&st.feed(&s, Bytes::from(body[cut2..].to_string()), true));
                let text = String::from_utf8(out).unwrap();
                assert_eq!(text.len(), body.len());
                assert!(!text.contains("POOLED"), "{cut}/{cut2}: {text}");
                assert!(!text.contains("secret-22"), "{cut}/{cut2}: {text}");
            }
        }
        // An SSE event ending in a blank line is never held.
        let mut st = StreamScrub::default();
        let ev = Bytes::from_static(b"data: {\"a\": 1}\r\n\r\n");
        assert_eq!(st.feed(&s, ev.clone(), false), ev);
        // A chunk ending in the start of a key waits for the next one.
        let mut st = StreamScrub::default();
        assert_eq!(
            &st.feed(&s, Bytes::from_static(b"hello AIzaSy"), false)[..],
            b"hello "
        );
        assert_eq!(
            &st.feed(&s, Bytes::from_static(b"Q, bye"), false)[..],
            b"AIzaSyQ, bye"
        );
        assert!(st.finish(&s).is_none());
    }
}
