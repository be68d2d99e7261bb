//! A routing module for gemini-proxy's `wasm` stage, in Rust (ABI 1; the layout is documented
//! in `plugins/src/wasm_stage.rs` and the README). No dependencies, no WASI.
//!
//! - `route`: prompts estimated under 2,000 tokens for `gemini-2.5-pro` go to
//!   `gemini-2.5-flash`, tagged `route=short-prompt`.
//! - `weigh`: weight = configured weight x 1000 / (latency EWMA ms + 100), at least 1; 0 for a
//!   key with no requests left this minute.
//!
//! Build: `scripts/build-wasm-guest` (needs `rustup target add wasm32-unknown-unknown`).

use std::cell::RefCell;

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

const FLASH: &str = "gemini-2.5-flash";
const TAG_KEY: &str = "route";
const TAG_VALUE: &str = "short-prompt";

/// The ABI version this module speaks.
#[unsafe(no_mangle)]
pub extern "C" fn gp_abi_version() -> i32 {
    1
}

/// A buffer of at least `size` bytes for the host to write the input into.
#[unsafe(no_mangle)]
pub extern "C" fn gp_buffer(size: i32) -> i32 {
    INPUT.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.resize(size.max(0) as usize, 0);
        b.as_mut_ptr() as i32
    })
}

fn u32_at(addr: usize) -> u32 {
    // SAFETY: the host wrote the input at addresses inside our memory.
    unsafe { (addr as *const u32).read_unaligned() }
}

fn u64_at(addr: usize) -> u64 {
    // SAFETY: as above.
    unsafe { (addr as *const u64).read_unaligned() }
}

fn f64_at(addr: usize) -> f64 {
    // SAFETY: as above.
    unsafe { (addr as *const f64).read_unaligned() }
}

fn str_at(addr: usize) -> &'static str {
    let (ptr, len) = (u32_at(addr) as usize, u32_at(addr + 4) as usize);
    // SAFETY: the host writes UTF-8 strings inside our memory.
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr as *const u8, len)) }
}

fn base() -> usize {
    INPUT.with(|b| b.borrow().as_ptr() as usize)
}

fn put(out: &mut Vec<u8>, at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `route(len) -> 0 | result address`.
#[unsafe(no_mangle)]
pub extern "C" fn route(_len: i32) -> i32 {
    let req = base();
    let tokens = u64_at(req + 16);
    if str_at(req + 56) != "gemini-2.5-pro" || tokens >= 2000 {
        return 0;
    }
    OUTPUT.with(|o| {
        let mut out = o.borrow_mut();
        out.clear();
        out.resize(64, 0);
        let start = out.as_ptr() as usize;
        put(&mut out, 0, 1); // change
        put(&mut out, 8, FLASH.as_ptr() as u32);
        put(&mut out, 12, FLASH.len() as u32);
        put(&mut out, 32, 1); // one tag, at +40
        put(&mut out, 36, (start + 40) as u32);
        put(&mut out, 40, TAG_KEY.as_ptr() as u32);
        put(&mut out, 44, TAG_KEY.len() as u32);
        put(&mut out, 48, TAG_VALUE.as_ptr() as u32);
        put(&mut out, 52, TAG_VALUE.len() as u32);
        start as i32
    })
}

/// `weigh(len, n) -> -2` after writing new weights into the candidates.
#[unsafe(no_mangle)]
pub extern "C" fn weigh(_len: i32, n: i32) -> i32 {
    let first = u32_at(base() + 120) as usize;
    for i in 0..n.max(0) as usize {
        let c = first + i * 64;
        let exhausted = u32_at(c + 28) & 1 == 1 && u64_at(c + 40) == 0;
        let weight = if exhausted {
            0
        } else {
            let w = f64::from(u32_at(c + 16)) * 1000.0 / (f64_at(c + 32) + 100.0);
            w.max(1.0) as u32
        };
        // SAFETY: the candidate record is inside the input buffer.
        unsafe { ((c + 16) as *mut u32).write_unaligned(weight) };
    }
    -2
}
