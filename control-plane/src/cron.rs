//! Cron schedules as CronJobs write them (the standard five fields of robfig/cron's
//! `ParseStandard`, which Kubernetes uses): minute, hour, day of month, month, day of
//! week, with `*`, `?`, lists, ranges, steps, month and weekday names, and the
//! `@yearly`/`@monthly`/`@weekly`/`@daily`/`@hourly` descriptors. Errors read as
//! robfig/cron's.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{ToSpan, Zoned};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day of month or day of week was `*`: then both must match (robfig/cron);
    /// otherwise either may.
    any_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + offset);
    }
    s.parse::<u32>()
        .map_err(|_| format!("failed to parse int from {s}"))
}

/// One field: a bit per allowed value; and whether it was a bare `*`/`?`.
fn field(f: &str, lo: u32, hi: u32, names: &[&str], offset: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s
                    .parse()
                    .map_err(|_| format!("failed to parse int from {s}"))?;
                if s == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(s))
            }
            None => (part, None),
        };
        let (a, b) = if range == "*" || range == "?" {
            star |= step.is_none();
            (lo, hi)
        } else {
            match range.split_once('-') {
                Some((a, b)) => (value(a, names, offset)?, value(b, names, offset)?),
                None => {
                    let a = value(range, names, offset)?;
                    // `5/10` means from 5 to the end, every 10.
                    (a, if step.is_some() { hi } else { a })
                }
            }
        };
        if a < lo {
            return Err(format!(
                "beginning of range ({a}) below minimum ({lo}): {part}"
            ));
        }
        if b > hi {
            return Err(format!("end of range ({b}) above maximum ({hi}): {part}"));
        }
        if a > b {
            return Err(format!(
                "beginning of range ({a}) beyond end of range ({b}): {part}"
            ));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with('@') => return Err(format!("unrecognized descriptor: {d}")),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, dom_star) = field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, 1)?;
        let (mut weekdays, dow_star) = field(fields[4], 0, 7, &WEEKDAYS, 0)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day: dom_star || dow_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `t` the schedule fires, in `t`'s time zone (`None` if it never
    /// does within five years, e.g. February 30th).
    pub fn next_after(&self, t: &Zoned) -> Option<Zoned> {
        let tz: TimeZone = t.time_zone().clone();
        let start = t.datetime();
        let mut dt = DateTime::from_parts(
            start.date(),
            jiff::civil::time(start.hour(), start.minute(), 0, 0),
        )
        .checked_add(1.minute())
        .ok()?;
        let limit = start.date().year() + 5;
        while dt.year() <= limit {
            if self.months & (1 << dt.month()) == 0 {
                let first = dt.date().first_of_month().checked_add(1.month()).ok()?;
                dt = first.to_datetime(jiff::civil::time(0, 0, 0, 0));
                continue;
            }
            if !self.day_matches(dt.date()) {
                dt = dt
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(jiff::civil::time(0, 0, 0, 0));
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = DateTime::from_parts(dt.date(), jiff::civil::time(dt.hour(), 0, 0, 0))
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            let z = tz.to_zoned(dt).ok()?;
            // A wall time skipped by a DST change maps past `t` anyway; never go back.
            if z.timestamp() > t.timestamp() {
                return Some(z);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Zoned {
        format!("{s}[UTC]").parse().unwrap()
    }

    fn next(schedule: &str, from: &str) -> String {
        let z = Schedule::parse(schedule)
            .unwrap()
            .next_after(&at(from))
            .unwrap();
        z.datetime().to_string()
    }

    #[test]
    fn next_times() {
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:30"),
            "2026-01-01T10:01:00"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:00:00"),
            "2026-01-01T10:15:00"
        );
        assert_eq!(
            next("0 3 * * *", "2026-01-01T10:00:00"),
            "2026-01-02T03:00:00"
        );
        assert_eq!(
            next("@monthly", "2026-01-31T10:00:00"),
            "2026-02-01T00:00:00"
        );
        assert_eq!(
            next("0 0 * * mon-fri", "2026-01-02T12:00:00"),
            "2026-01-05T00:00:00"
        );
        assert_eq!(
            next("30 8 1 jan,jul *", "2026-02-01T00:00:00"),
            "2026-07-01T08:30:00"
        );
        // Day of month OR day of week when both are restricted.
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00"),
            "2026-01-02T00:00:00"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00"),
            "2026-01-04T00:00:00"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T00:06:00"),
            "2026-01-01T00:25:00"
        );
        assert!(Schedule::parse("0 0 30 2 *")
            .unwrap()
            .next_after(&at("2026-01-01T00:00:00"))
            .is_none());
    }

    #[test]
    fn time_zones() {
        let berlin: Zoned = "2026-06-01T10:00:00[Europe/Berlin]".parse().unwrap();
        let n = Schedule::parse("0 12 * * *")
            .unwrap()
            .next_after(&berlin)
            .unwrap();
        assert_eq!(n.timestamp().to_string(), "2026-06-01T10:00:00Z");
    }

    #[test]
    fn errors_read_as_robfig_crons() {
        let err = |s: &str| Schedule::parse(s).unwrap_err();
        assert_eq!(
            err("* * * *"),
            "expected exactly 5 fields, found 4: * * * *"
        );
        assert_eq!(
            err("61 * * * *"),
            "end of range (61) above maximum (59): 61"
        );
        assert_eq!(err("x * * * *"), "failed to parse int from x");
        assert_eq!(err("@often"), "unrecognized descriptor: @often");
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
    }
}
