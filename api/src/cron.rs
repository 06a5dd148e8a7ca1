//! Cron schedules as Kubernetes reads a CronJob's `spec.schedule`: the syntax and error messages
//! of robfig/cron v3's `ParseStandard`, which both kube-apiserver's validation and
//! kube-controller-manager use. The API server validates with [`Schedule::from_str`] and the
//! CronJob controller computes its run times with the same [`Schedule`].
//!
//! - Five fields, `minute hour day-of-month month day-of-week`, each a comma-separated list of
//!   `*`, `?` (the same as `*`), `N`, `N-M`, with an optional step: `*/5`, `1-10/2`, and `5/15`
//!   meaning `5-59/15`. Months and days of the week also take names (`JAN`-`DEC`, `SUN`-`SAT`,
//!   any case). Day of week is 0-6: robfig refuses 7.
//! - Descriptors: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
//!   `@hourly`, and `@every <Go duration>` (`@every 1h30m`), rounded down to whole seconds, at
//!   least one second.
//! - An optional `CRON_TZ=<zone> ` or `TZ=<zone> ` prefix. Validation refuses it on new objects
//!   (Kubernetes has `spec.timeZone` instead), but older objects may still carry one.
//!
//! Days: when the day-of-month or day-of-week field starts with `*` or `?` (without a step
//! above 1), a day must match both fields; when both are restricted, either (Vixie cron's rule,
//! so `0 0 1,15 * MON` runs on the 1st, the 15th and every Monday).
//!
//! Times are computed in a [`Tz`]: a wall-clock time that a DST change skips does not run that
//! day, and one that it repeats runs twice, as with robfig's `Next`.

use std::str::FromStr;

use chrono::{
    DateTime, Datelike as _, LocalResult, NaiveDate, TimeDelta, TimeZone as _, Timelike as _, Utc,
};
use chrono_tz::Tz;

/// Why a schedule does not parse; each message is robfig/cron's (so also Kubernetes').
/// None is retryable: the schedule has to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty spec string")]
    Empty,
    /// Not five fields (Go prints the list as `[a b c]`).
    #[error("expected exactly 5 fields, found {}: [{}]", fields.len(), fields.join(" "))]
    FieldCount { fields: Vec<String> },
    #[error("unrecognized descriptor: {0}")]
    UnrecognizedDescriptor(String),
    /// `@every` with something Go's `time.ParseDuration` refuses.
    #[error("failed to parse duration {descriptor}: {message}")]
    Duration { descriptor: String, message: String },
    /// A `CRON_TZ=`/`TZ=` prefix naming no known zone.
    #[error("provided bad location {name}: {message}")]
    BadLocation { name: String, message: String },
    /// `message` is Go's `strconv.Atoi` error, e.g. `strconv.Atoi: parsing "x": invalid syntax`.
    #[error("failed to parse int from {text}: {message}")]
    ParseInt { text: String, message: String },
    #[error("negative number ({value}) not allowed: {expr}")]
    Negative { value: i64, expr: String },
    #[error("too many hyphens: {0}")]
    TooManyHyphens(String),
    #[error("too many slashes: {0}")]
    TooManySlashes(String),
    #[error("beginning of range ({start}) below minimum ({min}): {expr}")]
    BelowMinimum { start: u64, min: u64, expr: String },
    #[error("end of range ({end}) above maximum ({max}): {expr}")]
    AboveMaximum { end: u64, max: u64, expr: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {expr}")]
    Inverted { start: u64, end: u64, expr: String },
    #[error("step of range should be a positive number: {0}")]
    ZeroStep(String),
}

/// The result of parsing a schedule.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parsed schedule: when a CronJob runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// From a `CRON_TZ=`/`TZ=` prefix: `Some` for a named zone, `None` for none or `Local`.
    zone: Option<Tz>,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every`: this many whole seconds after the previous run.
    Every(i64),
}

/// The five fields as bit sets (bit `n` set: value `n` matches), with [`STAR`] marking a field
/// that started with `*` or `?` (only day of month and day of week use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

/// Set in a field's bits when it was `*` or `?` (robfig's `starBit`).
const STAR: u64 = 1 << 63;

/// The values a field takes, and its names (the first name is `min`).
#[derive(Clone, Copy, Debug)]
struct Bounds {
    min: u64,
    max: u64,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// robfig's `Next` gives up on a schedule that does not come round within five years
/// (`0 0 30 2 *`); so do we, looking forward and back.
const YEARS_SEARCHED: i32 = 5;

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        if spec.is_empty() {
            return Err(Error::Empty);
        }
        let mut spec = spec;
        let mut zone = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let after_eq = spec.split_once('=').map_or("", |(_, rest)| rest);
            // robfig slices up to the first space and panics without one; here the schedule
            // after the zone is then empty, which fails as zero fields.
            let (name, rest) = after_eq.split_once(' ').unwrap_or((after_eq, ""));
            zone = load_location(name).map_err(|message| Error::BadLocation {
                name: name.to_owned(),
                message,
            })?;
            spec = rest.trim();
        }
        if spec.starts_with('@') {
            return Ok(Self {
                zone,
                kind: descriptor(spec)?,
            });
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(Error::FieldCount {
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            });
        };
        Ok(Self {
            zone,
            kind: Kind::Fields(Fields {
                minute: field(minute, MINUTES)?,
                hour: field(hour, HOURS)?,
                dom: field(dom, DAYS_OF_MONTH)?,
                month: field(month, MONTHS)?,
                dow: field(dow, DAYS_OF_WEEK)?,
            }),
        })
    }
}

/// Resolves a zone name as Go's `time.LoadLocation` does: `""` and `UTC` are UTC, `Local` is
/// `Ok(None)` (the controller's own zone), anything else an IANA name. The error is Go's.
pub fn load_location(name: &str) -> Result<Option<Tz>, String> {
    match name {
        "" | "UTC" => Ok(Some(Tz::UTC)),
        "Local" => Ok(None),
        _ if name.contains("..") || name.starts_with(['/', '\\']) => {
            Err("time: invalid location name".to_owned())
        }
        _ => name
            .parse::<Tz>()
            .map(Some)
            .map_err(|_| format!("unknown time zone {name}")),
    }
}

fn descriptor(spec: &str) -> Result<Kind> {
    let all = |b: Bounds| bits(b.min, b.max, 1) | STAR;
    let first = |b: Bounds| 1 << b.min;
    let fields = |hour, dom, month, dow| {
        Kind::Fields(Fields {
            minute: first(MINUTES),
            hour,
            dom,
            month,
            dow,
        })
    };
    Ok(match spec {
        "@yearly" | "@annually" => fields(
            first(HOURS),
            first(DAYS_OF_MONTH),
            first(MONTHS),
            all(DAYS_OF_WEEK),
        ),
        "@monthly" => fields(
            first(HOURS),
            first(DAYS_OF_MONTH),
            all(MONTHS),
            all(DAYS_OF_WEEK),
        ),
        "@weekly" => fields(
            first(HOURS),
            all(DAYS_OF_MONTH),
            all(MONTHS),
            first(DAYS_OF_WEEK),
        ),
        "@daily" | "@midnight" => fields(
            first(HOURS),
            all(DAYS_OF_MONTH),
            all(MONTHS),
            all(DAYS_OF_WEEK),
        ),
        "@hourly" => fields(
            all(HOURS),
            all(DAYS_OF_MONTH),
            all(MONTHS),
            all(DAYS_OF_WEEK),
        ),
        _ => match spec.strip_prefix("@every ") {
            Some(duration) => {
                let nanos = go_duration(duration).map_err(|message| Error::Duration {
                    descriptor: spec.to_owned(),
                    message,
                })?;
                // robfig's `Every`: at least a second, and whole seconds.
                Kind::Every(nanos.max(NANOS_PER_SECOND) / NANOS_PER_SECOND)
            }
            None => return Err(Error::UnrecognizedDescriptor(spec.to_owned())),
        },
    })
}

/// One field: a comma-separated list of ranges (empty items are skipped, as by Go's
/// `strings.FieldsFunc`).
fn field(text: &str, bounds: Bounds) -> Result<u64> {
    text.split(',')
        .filter(|r| !r.is_empty())
        .try_fold(0, |acc, r| Ok(acc | range(r, bounds)?))
}

/// `*`, `?`, `N` or `N-M`, optionally `/step`; the checks in robfig's order.
fn range(expr: &str, b: Bounds) -> Result<u64> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let (start, mut end, mut extra);
    // `*-5` is a star too: robfig looks no further than the first part.
    if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (start, end, extra) = (b.min, b.max, STAR);
    } else {
        start = int_or_name(low_and_high[0], b)?;
        end = match low_and_high[..] {
            [_] => start,
            [_, high] => int_or_name(high, b)?,
            _ => return Err(Error::TooManyHyphens(expr.to_owned())),
        };
        extra = 0;
    }
    let step = match range_and_step[..] {
        [_] => 1,
        [_, step] => {
            let step = non_negative_int(step)?;
            // `N/step` means `N-max/step`.
            if low_and_high.len() == 1 {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(Error::TooManySlashes(expr.to_owned())),
    };
    let expr = expr.to_owned();
    if start < b.min {
        return Err(Error::BelowMinimum {
            start,
            min: b.min,
            expr,
        });
    }
    if end > b.max {
        return Err(Error::AboveMaximum {
            end,
            max: b.max,
            expr,
        });
    }
    if start > end {
        return Err(Error::Inverted { start, end, expr });
    }
    if step == 0 {
        return Err(Error::ZeroStep(expr));
    }
    Ok(bits(start, end, step) | extra)
}

fn int_or_name(text: &str, b: Bounds) -> Result<u64> {
    let lower = text.to_ascii_lowercase();
    match b.names.iter().position(|n| *n == lower) {
        Some(i) => Ok(b.min + i as u64),
        None => non_negative_int(text),
    }
}

/// robfig's `mustParseInt`: Go's `strconv.Atoi`, then no negatives.
fn non_negative_int(text: &str) -> Result<u64> {
    let value = text.parse::<i64>().map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        Error::ParseInt {
            text: text.to_owned(),
            message: format!("strconv.Atoi: parsing {}: {why}", go_quote(text)),
        }
    })?;
    u64::try_from(value).map_err(|_| Error::Negative {
        value,
        expr: text.to_owned(),
    })
}

/// The values `min..=max` stepping by `step`, as bits (all below 64: the bounds were checked).
fn bits(min: u64, max: u64, step: u64) -> u64 {
    let mut bits = 0;
    let mut v = min;
    while v <= max {
        bits |= 1 << v;
        v = v.saturating_add(step);
    }
    bits
}

/// Go's `strconv.Quote`, enough for error messages.
fn go_quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The quoting of Go's `time` package: non-ASCII and control bytes as `\xNN`.
fn time_quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out.push('"');
    out
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Go's `time.ParseDuration` (`1h30m`, `1.5h`, `90s`, `-2m`, `0`) in nanoseconds, with its
/// error messages.
fn go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("time: invalid duration {}", time_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        (negative, s) = (true, rest);
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        // The integer part.
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for d in s[..digits].bytes() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(d - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let before_point = digits > 0;
        s = &s[digits..];
        // The fraction: digits past what fits are ignored.
        let (mut fraction, mut scale, mut after_point) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for d in rest[..digits].bytes() {
                if overflow || fraction > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let next = fraction * 10 + u64::from(d - b'0');
                if next > LIMIT {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            after_point = digits > 0;
            s = &rest[digits..];
        }
        if !before_point && !after_point {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!(
                "time: missing unit in duration {}",
                time_quote(orig)
            ));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u64 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    time_quote(unit),
                    time_quote(orig)
                ));
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if fraction > 0 {
            // As Go: float64 is exact enough for fractions of the largest unit.
            v += (fraction as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        // `total` is at most 2^63, whose negation is `i64::MIN`.
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

// ---------------------------------------------------------------------------------------------
// Run times

impl Schedule {
    /// The zone a `CRON_TZ=`/`TZ=` prefix names; `None` without one (or for `Local`).
    pub fn zone(&self) -> Option<Tz> {
        self.zone
    }

    /// For `@every`, the interval.
    pub fn every(&self) -> Option<TimeDelta> {
        match self.kind {
            Kind::Every(secs) => Some(TimeDelta::seconds(secs)),
            Kind::Fields(_) => None,
        }
    }

    /// The first run strictly after `after` (robfig's `Next`): for `@every`, `after` (in whole
    /// seconds) plus the interval. Wall-clock times are read in the prefix's zone if the
    /// schedule has one, else in `tz`. `None` if nothing comes within five years.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self.kind {
            Kind::Every(secs) => whole_seconds(after).checked_add_signed(TimeDelta::seconds(secs)),
            Kind::Fields(f) => f.next_after(after, self.zone.unwrap_or(tz)),
        }
    }

    /// The latest run in `(earliest, now]` of the runs counted from `earliest` (the last run,
    /// or the CronJob's creation), as Kubernetes' controller finds a missed run. `@every`
    /// runs fall at `earliest` plus whole intervals.
    pub fn most_recent(
        &self,
        earliest: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        match self.kind {
            Kind::Every(secs) => {
                let first = self.next_after(earliest, tz)?;
                if first > now {
                    return None;
                }
                let periods = (now - first).num_seconds() / secs;
                first.checked_add_signed(TimeDelta::seconds(periods.checked_mul(secs)?))
            }
            Kind::Fields(f) => f
                .last_at_or_before(now, earliest, self.zone.unwrap_or(tz))
                .filter(|at| *at > earliest),
        }
    }

    /// The first run after `now` of the runs counted from `earliest`: when the controller
    /// should look again.
    pub fn next_run(
        &self,
        earliest: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let base = self.most_recent(earliest, now, tz).unwrap_or(earliest);
        self.next_after(base, tz)
    }
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

fn set(bits: u64, n: u32) -> bool {
    n < 63 && bits & (1 << n) != 0
}

impl Fields {
    fn day_matches(&self, date: NaiveDate) -> bool {
        if !set(self.month, date.month()) {
            return false;
        }
        let dom = set(self.dom, date.day());
        let dow = set(self.dow, date.weekday().num_days_from_sunday());
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The runs on local `date` in hours that `keep_hour` keeps: none for a time a DST change
    /// skips, two for one it repeats.
    fn runs_on(
        &self,
        date: NaiveDate,
        tz: Tz,
        keep_hour: impl Fn(u32) -> bool,
    ) -> impl Iterator<Item = DateTime<Utc>> {
        let minute = self.minute;
        (0..24)
            .filter(move |h| set(self.hour, *h) && keep_hour(*h))
            .flat_map(move |h| {
                (0..60)
                    .filter(move |m| set(minute, *m))
                    .map(move |m| (h, m))
            })
            .flat_map(move |(h, m)| {
                let local = date.and_hms_opt(h, m, 0);
                let (a, b) = match local.map(|l| tz.from_local_datetime(&l)) {
                    Some(LocalResult::Single(a)) => (Some(a), None),
                    Some(LocalResult::Ambiguous(a, b)) => (Some(a), Some(b)),
                    _ => (None, None),
                };
                a.into_iter().chain(b).map(|t| t.with_timezone(&Utc))
            })
    }

    fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // The earliest instant of a local hour's start (`None` inside a DST gap).
        let hour_start = |date: NaiveDate, hour: u32| {
            let local = date.and_hms_opt(hour, 0, 0)?;
            Some(
                tz.from_local_datetime(&local)
                    .earliest()?
                    .with_timezone(&Utc),
            )
        };
        let local = after.with_timezone(&tz).date_naive();
        let last_year = local.year() + YEARS_SEARCHED;
        // From the day before: a clock set back over midnight shows an earlier date later.
        let mut date = local.pred_opt()?;
        let mut best: Option<(DateTime<Utc>, NaiveDate)> = None;
        while date.year() <= last_year {
            if best.is_some_and(|(_, day)| day < date) {
                // Found on the day before; this day was scanned too, for the same reason.
                break;
            }
            if self.day_matches(date) {
                // Skip hours that end by `after`.
                let ended = |h: u32| {
                    let end = match h {
                        23 => date.succ_opt().and_then(|d| hour_start(d, 0)),
                        h => hour_start(date, h + 1),
                    };
                    end.is_some_and(|end| end <= after)
                };
                for at in self.runs_on(date, tz, |h| !ended(h)) {
                    if at > after && best.is_none_or(|(b, _)| at < b) {
                        best = Some((at, best.map_or(date, |(_, day)| day)));
                    }
                }
            }
            date = date.succ_opt()?;
        }
        best.map(|(at, _)| at)
    }

    /// The latest run at or before `now`, looking back no further than the day before
    /// `earliest`'s (and five years).
    fn last_at_or_before(
        &self,
        now: DateTime<Utc>,
        earliest: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let hour_start = |date: NaiveDate, hour: u32| {
            let local = date.and_hms_opt(hour, 0, 0)?;
            Some(
                tz.from_local_datetime(&local)
                    .earliest()?
                    .with_timezone(&Utc),
            )
        };
        let local = now.with_timezone(&tz).date_naive();
        let stop =
            earliest
                .with_timezone(&tz)
                .date_naive()
                .pred_opt()?
                .max(NaiveDate::from_ymd_opt(
                    local.year() - YEARS_SEARCHED,
                    1,
                    1,
                )?);
        // From the day after, for a clock set back over midnight.
        let mut date = local.succ_opt()?;
        let mut best: Option<(DateTime<Utc>, NaiveDate)> = None;
        while date >= stop {
            if best.is_some_and(|(_, day)| day > date) {
                break;
            }
            if self.day_matches(date) {
                // Skip hours that start after `now`.
                let later = |h: u32| hour_start(date, h).is_some_and(|start| start > now);
                for at in self.runs_on(date, tz, |h| !later(h)) {
                    if at <= now && best.is_none_or(|(b, _)| at > b) {
                        best = Some((at, best.map_or(date, |(_, day)| day)));
                    }
                }
            }
            date = date.pred_opt()?;
        }
        best.map(|(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fields(spec: &str) -> Fields {
        match spec.parse::<Schedule>().unwrap().kind {
            Kind::Fields(f) => f,
            Kind::Every(_) => panic!("{spec} is @every"),
        }
    }

    fn values(bits: u64) -> Vec<u32> {
        (0..63).filter(|b| bits & (1 << b) != 0).collect()
    }

    fn error(spec: &str) -> String {
        spec.parse::<Schedule>().unwrap_err().to_string()
    }

    /// The next `count` runs after `after`, in `tz`, as RFC 3339 UTC.
    fn runs(spec: &str, after: &str, tz: &str, count: usize) -> Vec<String> {
        let s: Schedule = spec.parse().unwrap();
        let tz: Tz = tz.parse().unwrap();
        let mut t = utc(after);
        (0..count)
            .map(|_| {
                t = s.next_after(t, tz).unwrap();
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .collect()
    }

    fn next(spec: &str, after: &str, tz: &str) -> String {
        runs(spec, after, tz, 1).remove(0)
    }

    #[test]
    fn fields_take_lists_ranges_steps_and_names() {
        let f = fields("*/15 9-17/4 1,15 JAN-mar mon-FRI");
        assert_eq!(values(f.minute), [0, 15, 30, 45]);
        assert_eq!(values(f.hour), [9, 13, 17]);
        assert_eq!(values(f.dom), [1, 15]);
        assert_eq!(values(f.month), [1, 2, 3]);
        assert_eq!(values(f.dow), [1, 2, 3, 4, 5]);
        assert_eq!(f.dom & STAR, 0);
        // `N/step` runs from N to the maximum.
        assert_eq!(values(fields("5/20 * * * *").minute), [5, 25, 45]);
        assert_eq!(values(fields("1-10/3 * * * *").minute), [1, 4, 7, 10]);
        // `?` is `*`, in any field (robfig accepts it everywhere); `*/1` keeps the star.
        let f = fields("? ? ? * ?");
        assert_eq!(values(f.minute).len(), 60);
        assert_ne!(f.dom & STAR, 0);
        assert_ne!(f.dow & STAR, 0);
        assert_ne!(fields("0 0 */1 * 1").dom & STAR, 0);
        assert_eq!(fields("0 0 */2 * 1").dom & STAR, 0);
        // robfig reads only the first part of `*-…`; empty list items are skipped.
        assert_eq!(values(fields("*-5 * * * *").minute).len(), 60);
        assert_eq!(values(fields("1,,2 * * * *").minute), [1, 2]);
        assert_eq!(values(fields("+5 * * * *").minute), [5]);
        assert_eq!(values(fields("0 0 * * sun,SAT").dow), [0, 6]);
        assert_eq!(values(fields("0 0 * dec *").month), [12]);
        // Tabs and repeated spaces separate fields too.
        assert_eq!(values(fields(" 0\t0  * * *").hour), [0]);
    }

    #[test]
    fn errors_read_like_robfig() {
        for (spec, message) in [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("   ", "expected exactly 5 fields, found 0: []"),
            (
                "0 0 0 * * *",
                "expected exactly 5 fields, found 6: [0 0 0 * * *]",
            ),
            (" @hourly", "expected exactly 5 fields, found 1: [@hourly]"),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@every", "unrecognized descriptor: @every"),
            ("@HOURLY", "unrecognized descriptor: @HOURLY"),
            ("@hourly ", "unrecognized descriptor: @hourly "),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            (
                "-5 * * * *",
                "failed to parse int from : strconv.Atoi: parsing \"\": invalid syntax",
            ),
            (
                "99999999999999999999 * * * *",
                "failed to parse int from 99999999999999999999: strconv.Atoi: parsing \"99999999999999999999\": value out of range",
            ),
            ("*/-5 * * * *", "negative number (-5) not allowed: -5"),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("1/2/3 * * * *", "too many slashes: 1/2/3"),
            ("0-70 * * * *", "end of range (70) above maximum (59): 0-70"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("0 24 * * *", "end of range (24) above maximum (23): 24"),
            ("0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("0 0 * 13 *", "end of range (13) above maximum (12): 13"),
            // Day of week stops at 6: robfig has no 7 for Sunday.
            ("0 0 * * 7", "end of range (7) above maximum (6): 7"),
            ("0 0 * * 1-7", "end of range (7) above maximum (6): 1-7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            (
                "MON * * * *",
                "failed to parse int from MON: strconv.Atoi: parsing \"MON\": invalid syntax",
            ),
            (
                "0 0 * * monday",
                "failed to parse int from monday: strconv.Atoi: parsing \"monday\": invalid syntax",
            ),
            (
                "@every 1d",
                "failed to parse duration @every 1d: time: unknown unit \"d\" in duration \"1d\"",
            ),
            (
                "@every 90",
                "failed to parse duration @every 90: time: missing unit in duration \"90\"",
            ),
            (
                "@every  1h",
                "failed to parse duration @every  1h: time: invalid duration \" 1h\"",
            ),
            (
                "@every 1h 30m",
                "failed to parse duration @every 1h 30m: time: unknown unit \"h \" in duration \"1h 30m\"",
            ),
            (
                "@every ",
                "failed to parse duration @every : time: invalid duration \"\"",
            ),
            (
                "CRON_TZ=Mars/Olympus 0 * * * *",
                "provided bad location Mars/Olympus: unknown time zone Mars/Olympus",
            ),
            (
                "TZ=../etc/passwd 0 * * * *",
                "provided bad location ../etc/passwd: time: invalid location name",
            ),
            ("TZ=UTC", "expected exactly 5 fields, found 0: []"),
        ] {
            assert_eq!(error(spec), message, "{spec:?}");
        }
    }

    #[test]
    fn every_macro_is_a_descriptor() {
        // The descriptors are the fields robfig gives them.
        for (spec, same_as) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ] {
            assert_eq!(fields(spec), fields(same_as), "{spec}");
        }
        let after = "2024-03-01T10:20:30Z";
        assert_eq!(next("@hourly", after, "UTC"), "2024-03-01T11:00:00Z");
        assert_eq!(next("@daily", after, "UTC"), "2024-03-02T00:00:00Z");
        assert_eq!(next("@midnight", after, "UTC"), "2024-03-02T00:00:00Z");
        // 2024-03-01 is a Friday.
        assert_eq!(next("@weekly", after, "UTC"), "2024-03-03T00:00:00Z");
        assert_eq!(next("@monthly", after, "UTC"), "2024-04-01T00:00:00Z");
        assert_eq!(next("@yearly", after, "UTC"), "2025-01-01T00:00:00Z");
        assert_eq!(next("@annually", after, "UTC"), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn every_takes_go_durations() {
        let every = |spec: &str| spec.parse::<Schedule>().unwrap().every().unwrap();
        assert_eq!(every("@every 1h30m"), TimeDelta::seconds(5400));
        assert_eq!(every("@every 90s"), TimeDelta::seconds(90));
        assert_eq!(every("@every 1.5h"), TimeDelta::seconds(5400));
        assert_eq!(every("@every 2m0.9s"), TimeDelta::seconds(120));
        assert_eq!(every("@every 1500ms"), TimeDelta::seconds(1));
        // Under a second (even zero or negative) is a second.
        for short in ["@every 10ms", "@every 0", "@every -1h", "@every 1\u{b5}s"] {
            assert_eq!(every(short), TimeDelta::seconds(1), "{short}");
        }
        assert_eq!("@hourly".parse::<Schedule>().unwrap().every(), None);
        // The next run is the interval after, counted from the whole second.
        assert_eq!(
            runs("@every 90s", "2024-03-01T10:00:00.750Z", "UTC", 3),
            [
                "2024-03-01T10:01:30Z",
                "2024-03-01T10:03:00Z",
                "2024-03-01T10:04:30Z"
            ]
        );
        // Runs fall at the start plus whole intervals, whatever the wall clock.
        let s: Schedule = "@every 1h30m".parse().unwrap();
        let created = utc("2024-03-01T10:07:00Z");
        let tz = Tz::UTC;
        assert_eq!(
            s.most_recent(created, utc("2024-03-01T11:36:59Z"), tz),
            None
        );
        assert_eq!(
            s.most_recent(created, utc("2024-03-01T11:37:00Z"), tz),
            Some(utc("2024-03-01T11:37:00Z"))
        );
        assert_eq!(
            s.most_recent(created, utc("2024-03-01T17:00:00Z"), tz),
            Some(utc("2024-03-01T16:07:00Z"))
        );
        assert_eq!(
            s.next_run(created, utc("2024-03-01T17:00:00Z"), tz),
            Some(utc("2024-03-01T17:37:00Z"))
        );
        assert_eq!(
            s.next_run(created, utc("2024-03-01T10:30:00Z"), tz),
            Some(utc("2024-03-01T11:37:00Z"))
        );
        // A year suspended is arithmetic, not a year of steps.
        let s: Schedule = "@every 1s".parse().unwrap();
        assert_eq!(
            s.most_recent(created, utc("2025-03-01T10:07:00.5Z"), tz),
            Some(utc("2025-03-01T10:07:00Z"))
        );
    }

    #[test]
    fn time_zone_prefixes() {
        let s: Schedule = "CRON_TZ=Asia/Tokyo 0 9 * * *".parse().unwrap();
        assert_eq!(s.zone(), Some(chrono_tz::Asia::Tokyo));
        let t: Schedule = "TZ=Asia/Tokyo   0 9 * * *".parse().unwrap();
        assert_eq!(s, t);
        // The prefix's zone wins over the one the caller passes.
        assert_eq!(
            next(
                "CRON_TZ=Asia/Tokyo 0 9 * * *",
                "2024-06-01T12:00:00Z",
                "Europe/Paris"
            ),
            "2024-06-02T00:00:00Z"
        );
        assert_eq!(
            next("TZ=America/New_York @daily", "2024-06-01T12:00:00Z", "UTC"),
            "2024-06-02T04:00:00Z"
        );
        let every: Schedule = "TZ=Europe/Paris @every 5m".parse().unwrap();
        assert_eq!(every.every(), Some(TimeDelta::minutes(5)));
        // `TZ=` alone and `UTC` are UTC; `Local` is the caller's zone.
        assert_eq!(
            "TZ= 0 0 * * *".parse::<Schedule>().unwrap().zone(),
            Some(Tz::UTC)
        );
        assert_eq!(
            "TZ=Local 0 0 * * *".parse::<Schedule>().unwrap().zone(),
            None
        );
        assert_eq!("0 0 * * *".parse::<Schedule>().unwrap().zone(), None);
        // Only at the very start.
        assert_eq!(
            error(" TZ=UTC 0 0 * * *"),
            "expected exactly 5 fields, found 6: [TZ=UTC 0 0 * * *]"
        );
    }

    #[test]
    fn next_runs_in_utc() {
        assert_eq!(
            next("* * * * *", "2024-03-01T10:00:30Z", "UTC"),
            "2024-03-01T10:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-03-01T10:01:00Z", "UTC"),
            "2024-03-01T10:02:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "2024-03-01T10:00:00Z", "UTC"),
            "2024-03-02T02:30:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 9 * * MON", "2024-03-01T00:00:00Z", "UTC"),
            "2024-03-04T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1 JAN *", "2024-03-01T00:00:00Z", "UTC"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("59 23 31 12 *", "2024-12-31T23:59:00Z", "UTC"),
            "2025-12-31T23:59:00Z"
        );
        // Never (no 30 February): robfig gives up after five years.
        let s: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(s.next_after(utc("2024-03-01T00:00:00Z"), Tz::UTC), None);
    }

    #[test]
    fn day_of_month_and_day_of_week() {
        // Both restricted: either. 2024-03-01 is a Friday; the 4th a Monday.
        assert_eq!(
            runs("0 0 10 * 1", "2024-03-01T00:00:00Z", "UTC", 3),
            [
                "2024-03-04T00:00:00Z",
                "2024-03-10T00:00:00Z",
                "2024-03-11T00:00:00Z"
            ]
        );
        // One a star (or `?`, or `*/1`): both.
        for spec in ["0 0 * * 1", "0 0 ? * 1", "0 0 */1 * MON"] {
            assert_eq!(
                runs(spec, "2024-03-01T00:00:00Z", "UTC", 2),
                ["2024-03-04T00:00:00Z", "2024-03-11T00:00:00Z"],
                "{spec}"
            );
        }
        assert_eq!(
            runs("0 0 1,15 * *", "2024-03-01T00:00:00Z", "UTC", 2),
            ["2024-03-15T00:00:00Z", "2024-04-01T00:00:00Z"]
        );
        // A stepped star is a restriction: odd days, or Sundays.
        assert_eq!(
            runs("0 0 */2 * SUN", "2024-03-01T00:00:00Z", "UTC", 3),
            [
                "2024-03-03T00:00:00Z",
                "2024-03-05T00:00:00Z",
                "2024-03-07T00:00:00Z"
            ]
        );
        assert_eq!(
            runs("0 0 */2 * SUN", "2024-03-08T00:00:00Z", "UTC", 3),
            [
                "2024-03-09T00:00:00Z",
                "2024-03-10T00:00:00Z",
                "2024-03-11T00:00:00Z"
            ]
        );
        // The 13th or any Friday.
        assert_eq!(
            next("0 0 13 * FRI", "2024-09-01T00:00:00Z", "UTC"),
            "2024-09-06T00:00:00Z"
        );
    }

    #[test]
    fn next_runs_in_time_zones() {
        assert_eq!(
            next("0 9 * * *", "2024-06-01T12:00:00Z", "Asia/Tokyo"),
            "2024-06-02T00:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2024-06-01T12:00:00Z", "America/New_York"),
            "2024-06-01T13:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2024-01-10T15:00:00Z", "America/New_York"),
            "2024-01-11T14:00:00Z"
        );
        assert_eq!(
            next("0 0 * * *", "2024-06-01T12:00:00Z", "Asia/Kolkata"),
            "2024-06-01T18:30:00Z"
        );
        assert_eq!(
            next("0 0 * * 1", "2024-06-01T00:00:00Z", "Asia/Tokyo"),
            "2024-06-02T15:00:00Z"
        );
    }

    #[test]
    fn dst_skips_missing_times_and_repeats_doubled_ones() {
        // New York springs forward at 02:00 on 2024-03-10: 02:30 does not exist that day.
        assert_eq!(
            runs("30 2 * * *", "2024-03-09T12:00:00Z", "America/New_York", 2),
            ["2024-03-11T06:30:00Z", "2024-03-12T06:30:00Z"]
        );
        // … and hourly goes from 01:00 EST to 03:00 EDT.
        assert_eq!(
            runs("@hourly", "2024-03-10T05:30:00Z", "America/New_York", 2),
            ["2024-03-10T06:00:00Z", "2024-03-10T07:00:00Z"]
        );
        // It falls back at 02:00 EDT on 2024-11-03: 01:30 happens twice, and runs twice.
        assert_eq!(
            runs("30 1 * * *", "2024-11-03T04:00:00Z", "America/New_York", 3),
            [
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-04T06:30:00Z"
            ]
        );
        // Runs in the repeated hour interleave in time order.
        assert_eq!(
            runs(
                "0,30 1 * * *",
                "2024-11-03T05:15:00Z",
                "America/New_York",
                3
            ),
            [
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T06:30:00Z"
            ]
        );
        assert_eq!(
            runs("@hourly", "2024-11-03T04:30:00Z", "America/New_York", 3),
            [
                "2024-11-03T05:00:00Z",
                "2024-11-03T06:00:00Z",
                "2024-11-03T07:00:00Z"
            ]
        );
        // Looking back agrees: the latest 01:30 before 07:00 UTC is the second one.
        let s: Schedule = "30 1 * * *".parse().unwrap();
        let tz: Tz = "America/New_York".parse().unwrap();
        let since = utc("2024-11-02T00:00:00Z");
        assert_eq!(
            s.most_recent(since, utc("2024-11-03T06:00:00Z"), tz),
            Some(utc("2024-11-03T05:30:00Z"))
        );
        assert_eq!(
            s.most_recent(since, utc("2024-11-03T07:00:00Z"), tz),
            Some(utc("2024-11-03T06:30:00Z"))
        );
        // Europe/London: 01:30 is skipped on 2024-03-31 (it goes 01:00 GMT → 02:00 BST).
        assert_eq!(
            next("30 1 * * *", "2024-03-30T12:00:00Z", "Europe/London"),
            "2024-04-01T00:30:00Z"
        );
    }

    #[test]
    fn most_recent_finds_the_latest_missed_run() {
        let s: Schedule = "*/5 * * * *".parse().unwrap();
        let tz = Tz::UTC;
        let since = utc("2024-03-01T10:00:00Z");
        assert_eq!(
            s.most_recent(since, utc("2024-03-01T10:17:30Z"), tz),
            Some(utc("2024-03-01T10:15:00Z"))
        );
        // `earliest` itself does not count: it already ran (or is the creation time).
        assert_eq!(s.most_recent(since, utc("2024-03-01T10:04:59Z"), tz), None);
        assert_eq!(
            s.most_recent(since, utc("2024-03-01T10:05:00Z"), tz),
            Some(utc("2024-03-01T10:05:00Z"))
        );
        // Years behind: still the latest.
        let yearly: Schedule = "@yearly".parse().unwrap();
        assert_eq!(
            yearly.most_recent(utc("2019-06-01T00:00:00Z"), utc("2024-03-01T00:00:00Z"), tz),
            Some(utc("2024-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_run(since, utc("2024-03-01T10:17:30Z"), tz),
            Some(utc("2024-03-01T10:20:00Z"))
        );
    }
}
