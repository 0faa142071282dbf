//! Durations written the way people write them: `"250ms"`, `"2s"`, `"1m30s"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in the config, written as a string such as `"250ms"`, `"10s"`
/// or `"1m30s"` (units: `ns`, `us`, `ms`, `s`, `m`, `h`).
///
/// A bare number is refused: `timeout = 5` could mean seconds or
/// milliseconds, and guessing wrong is an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(StdDuration::from_millis(millis))
    }

    /// The standard library value.
    pub const fn get(self) -> StdDuration {
        self.0
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Self(d)
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"250ms\", \"2s\" or \"1m\""))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)
            .map_err(|_| serde::de::Error::custom("a duration is a string such as \"250ms\" or \"2s\""))?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            "250ms".parse::<Duration>().map(Duration::get),
            Ok(StdDuration::from_millis(250))
        );
        assert_eq!(
            "2s".parse::<Duration>().map(Duration::get),
            Ok(StdDuration::from_secs(2))
        );
        assert_eq!(
            "1m30s".parse::<Duration>().map(Duration::get),
            Ok(StdDuration::from_secs(90))
        );
    }

    #[test]
    fn refuses_numbers_without_unit() {
        let err = "5".parse::<Duration>().unwrap_err();
        assert!(err.contains("invalid duration \"5\""), "{err}");
    }
}
