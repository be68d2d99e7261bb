//! The bytes a guest reads and writes: the request and candidates laid out for its memory, and the strings it returns.

use super::*;

/// Serialises the request and candidates into bytes laid out for guest address `base`.
pub(super) struct Writer {
    base: u32,
    bytes: Vec<u8>,
}

impl Writer {
    fn new(base: u32, fixed: usize) -> Writer {
        Writer {
            base,
            bytes: vec![0; fixed],
        }
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put_f64(&mut self, at: usize, v: f64) {
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// Appends `s` and writes its (address, length) at `at`.
    fn put_str(&mut self, at: usize, s: &str) {
        let addr = self.base as usize + self.bytes.len();
        self.bytes.extend_from_slice(s.as_bytes());
        self.put_u32(at, addr as u32);
        self.put_u32(at + 4, s.len() as u32);
    }
    fn reserve(&mut self, n: usize) -> usize {
        let at = self.bytes.len();
        self.bytes.resize(at + n, 0);
        at
    }
    fn addr(&self, at: usize) -> u32 {
        self.base + at as u32
    }
}

/// Lays out the request (and candidates) for a guest buffer at `base`; returns the bytes and
/// the offset of the first candidate record.
pub(super) fn encode(base: u32, req: &HookRequest, cands: &[HookCandidate]) -> (Vec<u8>, usize) {
    let mut w = Writer::new(base, REQUEST_SIZE);
    w.put_u32(0, ABI_VERSION as u32);
    let flags = u32::from(req.stream)
        | if req.model.is_some() { 2 } else { 0 }
        | if req.subject.is_some() { 4 } else { 0 };
    w.put_u32(4, flags);
    w.put_u64(8, req.body_size);
    w.put_u64(16, req.prompt_tokens_estimate);
    w.put_u64(24, req.unix_ms);
    w.put_u32(32, req.attempt);
    w.put_u32(36, cands.len() as u32);
    let cand_at = w.reserve(cands.len() * CANDIDATE_SIZE);
    let headers_at = w.reserve(req.headers.len() * 16);
    w.put_u32(112, req.headers.len() as u32);
    let headers_addr = w.addr(headers_at);
    w.put_u32(116, headers_addr);
    let cand_addr = w.addr(cand_at);
    w.put_u32(120, cand_addr);
    w.put_str(40, &req.method);
    w.put_str(48, &req.path);
    w.put_str(56, req.model.as_deref().unwrap_or(""));
    w.put_str(64, req.api);
    w.put_str(72, req.action);
    w.put_str(80, req.subject.as_deref().unwrap_or(""));
    w.put_str(88, req.role.unwrap_or(""));
    w.put_str(96, req.client_ip.as_deref().unwrap_or(""));
    let claims = if req.claims.is_null() {
        String::new()
    } else {
        req.claims.to_string()
    };
    w.put_str(104, &claims);
    for (i, (k, v)) in req.headers.iter().enumerate() {
        let at = headers_at + i * 16;
        w.put_str(at, k);
        w.put_str(at + 8, v);
    }
    for (i, c) in cands.iter().enumerate() {
        let at = cand_at + i * CANDIDATE_SIZE;
        w.put_str(at, &c.id);
        w.put_str(at + 8, &c.project);
        w.put_u32(at + 16, c.weight);
        w.put_u32(at + 20, u32::from(c.state.code()));
        w.put_u32(at + 24, c.in_flight);
        let flags = u32::from(c.remaining_rpm.is_some())
            | if c.remaining_tpm.is_some() { 2 } else { 0 }
            | if c.remaining_rpd.is_some() { 4 } else { 0 };
        w.put_u32(at + 28, flags);
        w.put_f64(at + 32, c.latency_ewma_ms);
        w.put_u64(at + 40, c.remaining_rpm.unwrap_or(0));
        w.put_u64(at + 48, c.remaining_tpm.unwrap_or(0));
        w.put_u64(at + 56, c.remaining_rpd.unwrap_or(0));
    }
    (w.bytes, cand_at)
}

pub(super) fn invalid(m: impl Into<String>) -> HookError {
    HookError::new("invalid", m)
}

pub(super) fn read_u32(mem: &[u8], at: usize) -> Result<u32, HookError> {
    mem.get(at..at.saturating_add(4))
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| invalid(format!("address {at} is outside memory")))
}

pub(super) fn read_str(mem: &[u8], at: usize) -> Result<String, HookError> {
    let (ptr, len) = (read_u32(mem, at)? as usize, read_u32(mem, at + 4)? as usize);
    if len > 64 * 1024 {
        return Err(invalid("a string longer than 64 KiB"));
    }
    let bytes = mem
        .get(ptr..ptr.saturating_add(len))
        .ok_or_else(|| invalid("a string outside memory"))?;
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| invalid("a string that is not UTF-8"))
}
