//! Durations in config: `"30s"`, `"500ms"`, `"2m"`, `"1h"`, or a bare number of seconds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A config duration that round-trips through its human form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use 500ms, 30s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h, d)"
            ));
        }
    };
    bounded(secs).ok_or_else(|| format!("`{s}` is not a duration of at most 1000000d"))
}

/// The longest duration a config may give (a million days): deadlines are added to clocks,
/// which must not overflow.
const MAX_SECS: f64 = 1_000_000.0 * 86_400.0;

fn bounded(secs: f64) -> Option<Duration> {
    (secs.is_finite() && (0.0..=MAX_SECS).contains(&secs))
        .then(|| Duration::try_from_secs_f64(secs).ok())
        .flatten()
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => bounded(s as f64).map(ConfigDuration).ok_or_else(|| {
                serde::de::Error::custom(format!("{s} is not a duration of at most 1000000d"))
            }),
            Raw::Float(f) => bounded(f).map(ConfigDuration).ok_or_else(|| {
                serde::de::Error::custom(format!("{f} is not a duration of at most 1000000d"))
            }),
            Raw::Text(t) => parse_duration(&t)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
        // Past a million days is refused, never a panic (deadlines are added to clocks).
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3650 * 86_400)
        );
        for huge in ["1000001d", "99999999999999999999999d", "1e30", "1e400s"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        for raw in ["1e30", "18446744073709551615", "-1", "NaN"] {
            assert!(
                serde_json::from_str::<ConfigDuration>(raw).is_err(),
                "{raw}"
            );
        }
        assert_eq!(
            ConfigDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }
}
