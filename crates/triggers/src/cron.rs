//! Cron ticks: when a schedule falls due, and which due ticks a pass fires under the
//! missed-tick policy.
//!
//! A trigger keeps a cursor: the latest tick it fired (its creation time before the first).
//! A pass at `now_ms` fires the ticks after the cursor and at or before `now_ms`, the latest
//! `ticks_max` of them, oldest first (`skip`: 1; `catch_up`: its cap), and moves the cursor to
//! the last one fired. Ticks are found backwards from `now_ms`, so a pass after a long outage
//! looks at no more than `ticks_max` of them however many fell due.

use crate::Error;
use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// The largest `catch_up_max`: ticks fired by one pass at most.
pub const CATCH_UP_MAX: u32 = 1_000;

/// A parsed cron schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    timezone: chrono_tz::Tz,
}

/// Ticks fall on whole seconds (croner keeps the sub-second part of where a search starts).
fn to_ms<Tz: TimeZone>(t: &DateTime<Tz>) -> u64 {
    u64::try_from(t.timestamp())
        .unwrap_or(0)
        .saturating_mul(1000)
}

impl Schedule {
    /// Parses five fields (minute, hour, day of month, month, day of week) or six (seconds
    /// first); `timezone` is a name of the tz database.
    pub fn parse(schedule: &str, timezone: &str) -> Result<Schedule, Error> {
        let timezone: chrono_tz::Tz = timezone.parse().map_err(|_| {
            Error::input(format!(
                "{timezone:?} is not a time zone of the tz database (e.g. UTC, Europe/Berlin)"
            ))
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| Error::input(format!("cron schedule {schedule:?} does not parse: {e}")))?;
        let parsed = Schedule { cron, timezone };
        // A schedule that matches no date (30 February) would never fire: refused now.
        if parsed.next_after(0).is_none() {
            return Err(Error::input(format!(
                "cron schedule {schedule:?} never falls due"
            )));
        }
        Ok(parsed)
    }

    /// `ms` in the schedule's time zone, down to the whole second.
    fn local(&self, ms: u64) -> DateTime<chrono_tz::Tz> {
        let utc = Utc
            .timestamp_opt(i64::try_from(ms / 1000).unwrap_or(i64::MAX), 0)
            .single()
            .unwrap_or_default();
        utc.with_timezone(&self.timezone)
    }

    /// The first tick strictly after `after_ms`, if the schedule has one.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let t = self
            .cron
            .find_next_occurrence(&self.local(after_ms), false)
            .ok()?;
        Some(to_ms(&t))
    }

    /// The ticks after `cursor_ms` and at or before `now_ms`: the latest `ticks_max` of them,
    /// oldest first.
    pub fn due(&self, cursor_ms: u64, now_ms: u64, ticks_max: u32) -> Vec<u64> {
        let mut ticks = Vec::new();
        if now_ms <= cursor_ms {
            return ticks;
        }
        let mut at = self.local(now_ms);
        let mut inclusive = true;
        while ticks.len() < ticks_max as usize {
            let Ok(t) = self.cron.find_previous_occurrence(&at, inclusive) else {
                break;
            };
            let ms = to_ms(&t);
            if ms <= cursor_ms || ms > now_ms {
                break;
            }
            ticks.push(ms);
            at = self.local(ms);
            inclusive = false;
        }
        ticks.reverse();
        ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use proptest::prelude::*;

    /// 2024-03-31 00:59:30 UTC: half a minute before Europe/Berlin moves to summer time.
    const BEFORE_DST_MS: u64 = 1_711_846_770_000;

    fn check(
        schedule: &str,
        timezone: &str,
        cursor_ms: u64,
        now_ms: u64,
        max: u32,
        expected: Expect,
    ) {
        let s = Schedule::parse(schedule, timezone).unwrap();
        let ticks: Vec<String> = s
            .due(cursor_ms, now_ms, max)
            .into_iter()
            .map(|ms| {
                let t = s.local(ms);
                format!("{} ({ms})", t.to_rfc3339())
            })
            .collect();
        expected.assert_debug_eq(&ticks);
    }

    #[test]
    fn skip_fires_only_the_latest_due_tick() {
        // Every 5 minutes; the cluster was down for an hour.
        check(
            "*/5 * * * *",
            "UTC",
            BEFORE_DST_MS - 3_600_000,
            BEFORE_DST_MS,
            1,
            expect![[r#"
                [
                    "2024-03-31T00:55:00+00:00 (1711846500000)",
                ]
            "#]],
        );
    }

    #[test]
    fn catch_up_fires_the_latest_ticks_oldest_first_up_to_its_cap() {
        check(
            "*/5 * * * *",
            "UTC",
            BEFORE_DST_MS - 3_600_000,
            BEFORE_DST_MS,
            3,
            expect![[r#"
                [
                    "2024-03-31T00:45:00+00:00 (1711845900000)",
                    "2024-03-31T00:50:00+00:00 (1711846200000)",
                    "2024-03-31T00:55:00+00:00 (1711846500000)",
                ]
            "#]],
        );
    }

    #[test]
    fn seconds_are_an_optional_sixth_field() {
        check(
            "*/10 * * * * *",
            "UTC",
            BEFORE_DST_MS - 30_000,
            BEFORE_DST_MS,
            10,
            expect![[r#"
                [
                    "2024-03-31T00:59:10+00:00 (1711846750000)",
                    "2024-03-31T00:59:20+00:00 (1711846760000)",
                    "2024-03-31T00:59:30+00:00 (1711846770000)",
                ]
            "#]],
        );
    }

    #[test]
    fn local_time_follows_the_time_zone_across_daylight_saving() {
        // Hourly at minute 30 in Berlin: 01:30 CET, then 02:30 does not exist (clocks jump
        // from 02:00 to 03:00), then 03:30 CEST, one hour of real time later.
        check(
            "30 * * * *",
            "Europe/Berlin",
            BEFORE_DST_MS - 3_600_000,
            BEFORE_DST_MS + 2 * 3_600_000,
            10,
            expect![[r#"
                [
                    "2024-03-31T01:30:00+01:00 (1711845000000)",
                    "2024-03-31T03:30:00+02:00 (1711848600000)",
                    "2024-03-31T04:30:00+02:00 (1711852200000)",
                ]
            "#]],
        );
    }

    #[test]
    fn nothing_is_due_at_or_before_the_cursor() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert!(s.due(BEFORE_DST_MS, BEFORE_DST_MS, 5).is_empty());
        assert!(s.due(BEFORE_DST_MS, BEFORE_DST_MS + 999, 5).is_empty());
        assert_eq!(
            s.due(BEFORE_DST_MS, BEFORE_DST_MS + 1_000, 5),
            [BEFORE_DST_MS + 1_000]
        );
        assert_eq!(s.next_after(BEFORE_DST_MS), Some(BEFORE_DST_MS + 1_000));
    }

    proptest! {
        /// Passes at random times, each firing what is due and moving the cursor to the last
        /// tick it fired: no tick fires twice, none after the pass's `now`, no pass fires more
        /// than its cap; with a cap no pass reaches, no tick is lost either.
        #[test]
        fn passes_fire_each_tick_at_most_once_and_never_early(
            every_s in 1u64..120,
            steps_ms in proptest::collection::vec(0u64..400_000, 1..40),
            cap in 1u32..20,
        ) {
            let s = Schedule::parse(&format!("*/{every_s} * * * * *"), "UTC").unwrap();
            let start = BEFORE_DST_MS;
            let mut cursor = start;
            let mut now = start;
            let mut fired: Vec<u64> = Vec::new();
            let mut capped = false;
            for step in steps_ms {
                now += step;
                let due = s.due(cursor, now, cap);
                prop_assert!(due.len() <= cap as usize);
                capped |= due.len() == cap as usize;
                for &t in &due {
                    prop_assert!(t > cursor && t <= now);
                    prop_assert!(fired.last().is_none_or(|&last| t > last), "tick {t} twice or out of order");
                    fired.push(t);
                }
                if let Some(&last) = due.last() {
                    cursor = last;
                }
            }
            if !capped {
                // Every tick between the start and the last pass fired.
                let mut expected = Vec::new();
                let mut t = start;
                while let Some(next) = s.next_after(t).filter(|&n| n <= now) {
                    expected.push(next);
                    t = next;
                }
                prop_assert_eq!(fired, expected);
            }
        }
    }
}
