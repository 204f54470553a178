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
        match parse_nanos(s.trim()) {
            Ok(nanos) if nanos <= MAX_NANOS => Ok(Self(Duration::from_nanos(nanos as u64))),
            _ => Err(DurationError(s.to_string())),
        }
    }
}

impl GoDuration {
    /// Parses like [`FromStr`], but a well-formed duration longer than `max`
    /// (even past Go's range) is `max`: for limits the server clamps anyway,
    /// such as a blocking query's `wait`. `None` when `s` is not a duration.
    pub fn parse_at_most(s: &str, max: Duration) -> Option<Duration> {
        let max_nanos = max.as_nanos();
        match parse_nanos(s.trim()) {
            Ok(nanos) if nanos < max_nanos => Some(Duration::from_nanos(nanos as u64)),
            Ok(_) => Some(max),
            Err(Malformed::TooLong) => Some(max),
            Err(Malformed::Syntax) => None,
        }
    }
}

/// Why a string is not a duration.
#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    Syntax,
    /// Well-formed, but its nanoseconds do not fit in 128 bits.
    TooLong,
}

/// Go's largest duration, in nanoseconds (`2562047h47m16.854775807s`).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Go's `time.ParseDuration`, restricted to durations that are not
/// negative: an optional sign, then one or more `<number><unit>` with
/// optional fraction, units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`; a bare
/// `0` is zero. Values past Go's range are returned as they are, for the
/// caller to refuse or clamp.
///
/// Written here because the `go-parse-duration` crate panics on a
/// non-ASCII unit (`1µs`, `1és`): a request with such a `wait` closed the
/// connection without an answer.
fn parse_nanos(s: &str) -> Result<u128, Malformed> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(Malformed::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int_part, after) = split_digits(rest);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(r) => split_digits(r),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(Malformed::Syntax);
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        let unit = unit_nanos(unit).ok_or(Malformed::Syntax)?;
        let term = term_nanos(int_part, frac_part, unit).ok_or(Malformed::TooLong)?;
        total = total.checked_add(term).ok_or(Malformed::TooLong)?;
    }
    if negative && total != 0 {
        return Err(Malformed::Syntax);
    }
    Ok(total)
}

/// The leading ASCII digits of `s`, and the rest.
fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    s.split_at(n)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // Go accepts the micro sign (U+00B5) and the Greek mu (U+03BC).
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// `<int>.<frac>` of a unit, in nanoseconds; the fraction is truncated to
/// whole nanoseconds, as Go does. Digits past the 20th of a fraction cannot
/// change the result. `None` when the value does not fit in 128 bits.
fn term_nanos(int_part: &str, frac_part: &str, unit: u128) -> Option<u128> {
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut nanos = int.checked_mul(unit)?;
    let frac = &frac_part[..frac_part.len().min(20)];
    if !frac.is_empty() {
        let value: u128 = frac.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        nanos = nanos.checked_add(value.checked_mul(unit)? / scale)?;
    }
    Some(nanos)
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

    #[test]
    fn parse_at_most_clamps_long_durations_and_refuses_malformed_ones() {
        let max = Duration::from_secs(600);
        let at_most = |s: &str| GoDuration::parse_at_most(s, max);
        assert_eq!(at_most("30s"), Some(Duration::from_secs(30)));
        assert_eq!(at_most("1h"), Some(max));
        // Past Go's range, and past 128 bits: still a duration, so clamped.
        assert_eq!(at_most("2562048h"), Some(max));
        assert_eq!(at_most(&format!("{}h", "9".repeat(60))), Some(max));
        assert_eq!(at_most("0"), Some(Duration::ZERO));
        for bad in ["", "10", "soon", "-5s", "5x", "."] {
            assert_eq!(at_most(bad), None, "{bad:?}");
        }
        // FromStr still refuses what Go refuses.
        assert!("2562048h".parse::<GoDuration>().is_err());
    }

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
        for bad in [
            "", "h", "72", "72 hours", "-1h", "1d", "abc", "1h-", ".s", "1..5s", "1h1", "+",
        ] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn every_unit_go_knows_including_both_micro_signs() {
        let nanos = |s: &str| s.parse::<GoDuration>().unwrap().as_std().as_nanos();
        assert_eq!(nanos("1ns"), 1);
        assert_eq!(nanos("1us"), 1_000);
        assert_eq!(nanos("1\u{b5}s"), 1_000);
        assert_eq!(nanos("1\u{3bc}s"), 1_000);
        assert_eq!(nanos("1ms"), 1_000_000);
        assert_eq!(nanos(".5s"), 500_000_000);
        assert_eq!(nanos("1.s"), 1_000_000_000);
        assert_eq!(nanos("+2h"), 7_200_000_000_000);
        assert_eq!(nanos("-0"), 0);
        assert_eq!(nanos("1.0000000009s"), 1_000_000_000, "truncated like Go");
    }

    #[test]
    fn the_whole_go_range_and_not_beyond() {
        let max: GoDuration = "2562047h47m16.854775807s".parse().unwrap();
        assert_eq!(max.as_std().as_nanos(), i64::MAX as u128);
        assert!("2562047h".parse::<GoDuration>().is_ok());
        for too_big in [
            "2562048h",
            "2562047h47m16.854775808s",
            "99999999999999999999999999h",
        ] {
            assert!(too_big.parse::<GoDuration>().is_err(), "{too_big}");
        }
    }

    /// Regression: `1µs` was fine but `1és` (and `1h\u{e9}`) panicked in the
    /// parsing crate this replaces. No input may panic.
    #[test]
    fn non_ascii_and_arbitrary_text_is_an_error_never_a_panic() {
        for bad in [
            "1\u{e9}s",
            "1h\u{e9}",
            "\u{e9}",
            "1\u{b5}",
            "1\u{1f600}h",
            "1h\u{0}",
        ] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?}");
        }
        let alphabet = [
            '1', '0', '.', 'h', 'm', 's', 'n', 'u', '\u{b5}', '\u{3bc}', '\u{e9}', '-', '+', ' ',
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (seed % 9) as usize;
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = text.parse::<GoDuration>();
        }
    }
}
