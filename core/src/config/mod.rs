//! Gateway configuration: schema, loading, migration, validation.

mod duration;
mod load;
mod model;
mod upstream;

pub use duration::{ConfigDuration, parse_duration};
pub use load::{
    ConfigError, EnvLookup, LoadedConfig, apply_env, load_file, load_str, migrate, migrated_yaml,
    process_env, validate,
};
pub use model::*;
pub use upstream::UpstreamTarget;

/// True for `localhost` and loopback addresses: listeners nobody else can reach.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
