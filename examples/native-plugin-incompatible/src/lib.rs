//! Test fixture: a library exporting a gemini-proxy root module that claims sdk 9.0.0, as a
//! plugin built against a future, incompatible sdk would. The gateway must refuse it with a
//! clear error before running any of its code.

use abi_stable::library::RootModule;
use abi_stable::std_types::RStr;
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// The root module (its layout is irrelevant: the version check comes first).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = FuturePluginRef)))]
#[sabi(missing_field(panic))]
pub struct FuturePlugin {
    /// A name.
    #[sabi(last_prefix_field)]
    pub name: extern "C" fn() -> RStr<'static>,
}

impl RootModule for FuturePluginRef {
    declare_root_module_statics! {FuturePluginRef}
    const BASE_NAME: &'static str = "gemini_proxy_native";
    const NAME: &'static str = "gemini-proxy native plugin";
    // This crate's version, 9.0.0.
    const VERSION_STRINGS: abi_stable::sabi_types::VersionStrings = package_version_strings!();
}

extern "C" fn name() -> RStr<'static> {
    RStr::from_str("future")
}

/// Exported root module.
#[abi_stable::export_root_module]
pub fn root() -> FuturePluginRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    FuturePlugin { name }.leak_into_prefix()
}
