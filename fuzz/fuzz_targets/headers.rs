//! Any bytes as a request target and headers: parsing must answer, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gemini_proxy_core::proxy::fuzz_inbound(data);
});
