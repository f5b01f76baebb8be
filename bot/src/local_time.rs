//! The machine's local time, which the console prints: the offset from UTC at an instant, as
//! the system's time zone database has it (daylight saving included).

use rollback_proto::TimeStyle;
use rollback_proto::times::rewrite_utc_times;
use time::{OffsetDateTime, UtcOffset};

/// The machine's offset from UTC at `at`; UTC when the system cannot say.
pub fn offset_at(at: OffsetDateTime) -> UtcOffset {
    // `time_t` is 64 bits on the platforms the bot runs on.
    let t = at.unix_timestamp() as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `localtime_r` reads `t` and writes only into `tm`, which is ours and zeroed. What
    // could race with it is a change to the environment's `TZ`, and the bot never changes its
    // environment.
    let filled = unsafe { !libc::localtime_r(&t, tm.as_mut_ptr()).is_null() };
    if !filled {
        return UtcOffset::UTC;
    }
    // SAFETY: `localtime_r` filled it (and it was zeroed before).
    let tm = unsafe { tm.assume_init() };
    i32::try_from(tm.tm_gmtoff)
        .ok()
        .and_then(|s| UtcOffset::from_whole_seconds(s).ok())
        .unwrap_or(UtcOffset::UTC)
}

/// How a time reads on this machine's console.
pub fn style_at(at: OffsetDateTime) -> TimeStyle {
    TimeStyle::Offset(offset_at(at))
}

/// An answer of the agent (its times in UTC) with its times in local time.
pub fn localise(text: &str) -> String {
    rewrite_utc_times(text, |at| style_at(at).at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_whole_and_the_local_time_is_the_same_instant() {
        let at = OffsetDateTime::from_unix_timestamp(1_796_526_727).unwrap();
        let offset = offset_at(at);
        assert!(offset.whole_hours().abs() <= 14, "{offset}");
        let text = format!("since {}", rollback_proto::times::utc(at));
        let local = localise(&text);
        assert!(!local.contains("+00:00:00"), "{local}");
        let stamp = local.trim_start_matches("since ");
        let (clock, zone) = stamp.rsplit_once(' ').unwrap();
        let parsed = time::PrimitiveDateTime::parse(
            clock,
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        )
        .unwrap();
        let back = if zone == "UTC" {
            parsed.assume_utc()
        } else {
            parsed.assume_offset(offset)
        };
        assert_eq!(back, at, "{local}");
    }
}
