//! Durations written the short way (`500ms`, `30s`, `10m`, `1h30m`, `7d`), parsed and printed.

use std::fmt::Write as _;
use std::time::Duration;

/// Units from largest to smallest; a duration names each at most once, in this order.
const UNITS: [(&str, Duration); 7] = [
    ("d", Duration::from_secs(86_400)),
    ("h", Duration::from_secs(3_600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("ms", Duration::from_millis(1)),
    ("us", Duration::from_micros(1)),
    ("ns", Duration::from_nanos(1)),
];

/// Every message of a [`DurationError`] starts with this, so the parser can tell a bad
/// duration from other serde errors.
pub(crate) const BAD_DURATION: &str = "bad duration";

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("bad duration: the text is empty; write e.g. \"30s\", \"10m\" or \"1h30m\"")]
    Empty,
    /// A number with no unit after it, a unit with no number, or a stray character.
    #[error(
        "bad duration `{text}`: write numbers with units, e.g. \"500ms\", \"30s\", \"10m\", \"1h30m\""
    )]
    Malformed {
        /// The text as written.
        text: String,
    },
    /// A unit outside d, h, m, s, ms, us, ns.
    #[error("bad duration `{text}`: unknown unit `{unit}` (use d, h, m, s, ms, us or ns)")]
    UnknownUnit {
        /// The text as written.
        text: String,
        /// The unit that is not known.
        unit: String,
    },
    /// A unit repeated, or smaller before larger (`30m1h`).
    #[error("bad duration `{text}`: name each unit once, largest first (e.g. \"1h30m\")")]
    OutOfOrder {
        /// The text as written.
        text: String,
    },
    /// Longer than a `Duration` holds.
    #[error("bad duration `{text}`: too long")]
    Overflow {
        /// The text as written.
        text: String,
    },
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1h30m`, `7d` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed {
        text: text.to_owned(),
    };
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut next_unit = 0; // index into UNITS of the largest unit still allowed
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(malformed());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow {
                text: text.to_owned(),
            })?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(malformed());
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        };
        if index < next_unit {
            return Err(DurationError::OutOfOrder {
                text: text.to_owned(),
            });
        }
        next_unit = index + 1;
        total = scaled(number, UNITS[index].1)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::Overflow {
                text: text.to_owned(),
            })?;
    }
    Ok(total)
}

/// `number` × `unit`, or `None` past what a `Duration` holds.
fn scaled(number: u64, unit: Duration) -> Option<Duration> {
    let nanos = u128::from(number).checked_mul(unit.as_nanos())?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Prints a duration in the short form [`parse_duration`] reads (`1h30m`, `500ms`, `0s`).
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut left = duration.as_nanos();
    for (name, unit) in UNITS {
        let unit = unit.as_nanos();
        let count = left / unit;
        if count > 0 {
            let _ = write!(out, "{count}{name}");
            left %= unit;
        }
    }
    out
}

/// Serde support for a `Duration` field written as text: `#[serde(with = "duration::text")]`.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the short form.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    /// Reads the short form.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde support for an `Option<Duration>` field written as text.
pub mod option_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the short form, or nothing.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::text::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads the short form.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("2h", Duration::from_secs(7_200)),
            ("1h30m", Duration::from_secs(5_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1s500ms", Duration::from_millis(1_500)),
            ("0s", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn formats_back_to_the_short_form() {
        for text in [
            "500ms",
            "30s",
            "10m",
            "2h",
            "1h30m",
            "1d12h",
            "1s500ms",
            "0s",
            "1m1s1ms1us1ns",
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3_600)), "1h");
    }

    #[test]
    fn every_duration_round_trips() {
        for d in [
            Duration::new(0, 1),
            Duration::new(86_399, 999_999_999),
            Duration::new(u64::MAX, 999_999_999),
            Duration::from_millis(123_456_789),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_duration_round_trips_through_text(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn refuses_bad_text() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in ["10", "s", "1.5h", "10 m", " 10m", "-5s", "1h 30m", "10m!"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Malformed { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(
            matches!(parse_duration("10x"), Err(DurationError::UnknownUnit { unit, .. }) if unit == "x")
        );
        assert!(matches!(
            parse_duration("10min"),
            Err(DurationError::UnknownUnit { .. })
        ));
        for bad in ["30m1h", "1m1m", "5ms1s"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::OutOfOrder { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
        for err in [
            parse_duration(""),
            parse_duration("10x"),
            parse_duration("30m1h"),
            parse_duration("1"),
        ] {
            assert!(err.unwrap_err().to_string().starts_with(BAD_DURATION));
        }
    }
}
