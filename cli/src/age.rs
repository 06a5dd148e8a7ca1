//! Ages as kubectl prints them (`5s`, `3m2s`, `2d4h`): precise when recent, coarse when old.

use chrono::{DateTime, Utc};

/// The age of something created at `timestamp` (RFC 3339), or `<unknown>`.
pub fn since(timestamp: Option<&str>, now: DateTime<Utc>) -> String {
    timestamp
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| {
                human(
                    now.signed_duration_since(t.with_timezone(&Utc))
                        .num_seconds(),
                )
            },
        )
}

/// `seconds` as kubectl's `HumanDuration`.
pub fn human(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    let pair = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        pair(minutes, "m", seconds % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        pair(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        pair(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        pair(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_round_like_kubectl() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(-1), "0s");
        assert_eq!(human(-5), "<invalid>");
        assert_eq!(human(119), "119s");
        assert_eq!(human(125), "2m5s");
        assert_eq!(human(600), "10m");
        assert_eq!(human(3 * 3600 + 60), "3h1m");
        assert_eq!(human(10 * 3600), "10h");
        assert_eq!(human(3 * 86400 + 3600), "3d1h");
        assert_eq!(human(30 * 86400), "30d");
        assert_eq!(human(800 * 86400), "2y70d");
    }

    #[test]
    fn timestamps_are_parsed() {
        let now = DateTime::parse_from_rfc3339("2025-01-01T00:01:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(since(Some("2025-01-01T00:00:00Z"), now), "60s");
        assert_eq!(since(None, now), "<unknown>");
    }
}
