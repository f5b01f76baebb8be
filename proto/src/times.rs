//! How times and durations read to a person: to the second, never with a fraction or a
//! `+00:00:00`.
//!
//! Where a time is shown decides how it reads: in Discord a timestamp that each reader's client
//! shows in their own time zone (`<t:UNIX:f>`, `<t:UNIX:R>`), on a terminal the machine's local
//! time with its offset, in a record (the postmortem, the agent's answers) UTC. What the agent
//! stores in an event's free text (an escalation's reason) holds no absolute time at all: the
//! envelope's `at` says when, and each front end shows it its own way.

use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// How a time is written where it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeStyle {
    /// A Discord timestamp: each reader sees their own time zone, and relative times stay current.
    Discord,
    /// A wall-clock time at this offset (the console's local time, or UTC in records).
    Offset(UtcOffset),
}

impl TimeStyle {
    /// UTC, as records keep it.
    pub const UTC: TimeStyle = TimeStyle::Offset(UtcOffset::UTC);

    /// The instant: `<t:UNIX:f> (<t:UNIX:R>)` in Discord, else `2026-12-06 03:12:07 UTC` or
    /// `2026-12-06 04:12:07 +01:00`.
    pub fn at(self, at: OffsetDateTime) -> String {
        match self {
            TimeStyle::Discord => {
                let unix = at.unix_timestamp();
                format!("<t:{unix}:f> (<t:{unix}:R>)")
            }
            TimeStyle::Offset(offset) => wall_clock(at, offset),
        }
    }

    /// The time of day, for a line that already says which day (a thread's output header):
    /// `<t:UNIX:T>` in Discord, else `03:12:07` with the offset as in [`TimeStyle::at`].
    pub fn time_of_day(self, at: OffsetDateTime) -> String {
        match self {
            TimeStyle::Discord => format!("<t:{}:T>", at.unix_timestamp()),
            TimeStyle::Offset(offset) => {
                let local = at.to_offset(offset);
                let clock = local
                    .format(format_description!("[hour]:[minute]:[second]"))
                    .unwrap_or_default();
                format!("{clock}{}", offset_suffix(offset))
            }
        }
    }
}

/// `2026-12-06 03:12:07 UTC`: second precision, the offset written once and plainly.
pub fn utc(at: OffsetDateTime) -> String {
    wall_clock(at, UtcOffset::UTC)
}

fn wall_clock(at: OffsetDateTime, offset: UtcOffset) -> String {
    let local = at.to_offset(offset);
    let text = local
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    format!("{text}{}", offset_suffix(offset))
}

fn offset_suffix(offset: UtcOffset) -> String {
    if offset.is_utc() {
        return " UTC".to_owned();
    }
    let (h, m, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    format!(" {sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

/// `text` with every UTC time written as [`utc`] writes it rewritten by `local`: how the console
/// shows the agent's answers in local time.
pub fn rewrite_utc_times(text: &str, local: impl Fn(OffsetDateTime) -> String) -> String {
    const STAMP: usize = "2026-12-06 03:12:07".len();
    const SUFFIX: &str = " UTC";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(SUFFIX) {
        let end = i + SUFFIX.len();
        let parsed = i
            .checked_sub(STAMP)
            .filter(|&start| rest.is_char_boundary(start))
            .and_then(|start| {
                let stamp = &rest[start..i];
                let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
                let at = time::PrimitiveDateTime::parse(stamp, format).ok()?;
                Some((start, at.assume_utc()))
            });
        match parsed {
            Some((start, at)) => {
                out.push_str(&rest[..start]);
                out.push_str(&local(at));
            }
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A duration in words, to the unit a person cares about: `45 s`, `20 min`, `1 h 5 min`,
/// `2 d 3 h`. Negative durations read as `0 s`.
pub fn duration_words(d: time::Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let (days, hours, mins) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    match () {
        _ if secs < 60 => format!("{secs} s"),
        _ if secs < 3_600 => format!("{mins} min"),
        _ if days == 0 && mins == 0 => format!("{hours} h"),
        _ if days == 0 => format!("{hours} h {mins} min"),
        _ if hours == 0 => format!("{days} d"),
        _ => format!("{days} d {hours} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    // With nanoseconds, as a clock gives them.
    const AT: OffsetDateTime = datetime!(2026-12-06 03:12:07.123456789 UTC);

    #[test]
    fn times_read_to_the_second_in_each_style() {
        assert_eq!(TimeStyle::UTC.at(AT), "2026-12-06 03:12:07 UTC");
        assert_eq!(utc(AT), "2026-12-06 03:12:07 UTC");
        assert_eq!(
            TimeStyle::Offset(offset!(+1)).at(AT),
            "2026-12-06 04:12:07 +01:00"
        );
        assert_eq!(
            TimeStyle::Offset(offset!(-5:30)).at(AT),
            "2026-12-05 21:42:07 -05:30"
        );
        let unix = AT.unix_timestamp();
        assert_eq!(
            TimeStyle::Discord.at(AT),
            format!("<t:{unix}:f> (<t:{unix}:R>)")
        );
        assert_eq!(TimeStyle::Discord.time_of_day(AT), format!("<t:{unix}:T>"));
        assert_eq!(TimeStyle::UTC.time_of_day(AT), "03:12:07 UTC");
    }

    #[test]
    fn utc_times_in_a_text_are_rewritten_and_nothing_else() {
        let text = format!(
            "Started {}\nUTC alone, 03:12:07 UTC and é UTC stay\nNothing since {}",
            utc(AT),
            utc(AT + time::Duration::HOUR)
        );
        let local = rewrite_utc_times(&text, |at| TimeStyle::Offset(offset!(+1)).at(at));
        assert_eq!(
            local,
            "Started 2026-12-06 04:12:07 +01:00\nUTC alone, 03:12:07 UTC and é UTC stay\n\
             Nothing since 2026-12-06 05:12:07 +01:00"
        );
    }

    #[test]
    fn durations_read_in_the_units_a_person_uses() {
        let s = time::Duration::seconds;
        assert_eq!(duration_words(s(-3)), "0 s");
        assert_eq!(duration_words(time::Duration::milliseconds(45_900)), "45 s");
        assert_eq!(duration_words(s(20 * 60 + 59)), "20 min");
        assert_eq!(duration_words(s(3_600)), "1 h");
        assert_eq!(duration_words(s(3_600 + 5 * 60)), "1 h 5 min");
        assert_eq!(duration_words(s(2 * 86_400)), "2 d");
        assert_eq!(duration_words(s(2 * 86_400 + 3 * 3_600 + 7)), "2 d 3 h");
    }
}
