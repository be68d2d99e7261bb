//! Small helpers every layer may use; they import nothing else from the crate.

pub mod cidr;
pub mod clock;

pub use cidr::Cidr;
pub use gemini_proxy_sdk::write_private;
