//! Durations in Go syntax (`72h`, `8760h0m0s`, `90m`), as Consul's API speaks them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A non-negative duration that parses and prints in Go's `time.Duration` syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}")]
pub struct DurationError(pub String);

impl GoDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn from_hours(hours: u64) -> Self {
        Self(Duration::from_secs(hours * 3600))
    }

    pub fn as_std(&self) -> Duration {
        self.0
    }

    pub fn as_time(&self) -> time::Duration {
        time::Duration::try_from(self.0).unwrap_or(time::Duration::MAX)
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nanos = go_parse_duration::parse_duration(s.trim())
            .map_err(|_| DurationError(s.to_string()))?;
        let nanos = u64::try_from(nanos).map_err(|_| DurationError(s.to_string()))?;
        Ok(Self(Duration::from_nanos(nanos)))
    }
}

/// Prints like Go: `72h0m0s`, `1h30m0s`, `1m30s`, `500ms`, `0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0;
        if total.is_zero() {
            return f.write_str("0s");
        }
        if total < Duration::from_secs(1) {
            let nanos = total.subsec_nanos();
            return match nanos {
                n if n % 1_000_000 == 0 => write!(f, "{}ms", n / 1_000_000),
                n if n % 1_000 == 0 => write!(f, "{}µs", n / 1_000),
                n => write!(f, "{n}ns"),
            };
        }
        let secs = total.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        let frac = total.subsec_nanos();
        let sec_str = if frac == 0 {
            format!("{s}s")
        } else {
            let digits = format!("{frac:09}");
            format!("{s}.{}s", digits.trim_end_matches('0'))
        };
        match (h, m) {
            (0, 0) => f.write_str(&sec_str),
            (0, m) => write!(f, "{m}m{sec_str}"),
            (h, m) => write!(f, "{h}h{m}m{sec_str}"),
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, secs: u64, printed: &str) {
        let d: GoDuration = input.parse().unwrap();
        assert_eq!(d.as_std(), Duration::from_secs(secs), "{input}");
        assert_eq!(d.to_string(), printed, "{input}");
    }

    #[test]
    fn parses_and_prints_go_syntax() {
        check("72h", 72 * 3600, "72h0m0s");
        check("8760h0m0s", 8760 * 3600, "8760h0m0s");
        check("90m", 5400, "1h30m0s");
        check("1h30m", 5400, "1h30m0s");
        check("45s", 45, "45s");
        check("2m3s", 123, "2m3s");
        check("0", 0, "0s");
    }

    #[test]
    fn fractions_and_sub_second_values() {
        let d: GoDuration = "1.5h".parse().unwrap();
        assert_eq!(d.as_std(), Duration::from_secs(5400));
        let d: GoDuration = "500ms".parse().unwrap();
        assert_eq!(d.to_string(), "500ms");
        let d: GoDuration = "1.25s".parse().unwrap();
        assert_eq!(d.to_string(), "1.25s");
    }

    #[test]
    fn rejects_garbage_and_negative_values() {
        for bad in ["", "h", "72", "72 hours", "-1h", "1d", "abc", "1h-"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} should fail");
        }
    }
}
