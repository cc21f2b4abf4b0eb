//! When a scheduled job fires: a [`JobSpec`] checked and turned into a [`Schedule`], which gives
//! the firing times in milliseconds since the Unix epoch. Cron expressions are Quartz-style, as
//! Immutant 1.x took them, and are evaluated in the node's local time zone.

mod quartz;

use chrono::{DateTime, Local, Utc};
use croner::Cron;
use immutant_protocol::JobSpec;
use quartz::{next_cron, parse_cron};

/// A checked [`JobSpec`]: when its job fires first, and after each firing.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: JobSpec,
    cron: Option<Box<Cron>>,
    now_ms: u64,
}

/// Why a [`JobSpec`] cannot be scheduled; the text is meant for the app's developer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    /// `cron` was given with some of at/in/every/repeat/until.
    #[error(
        "a job with `cron` cannot also have {given}: give the cron expression alone, \
         or drop `cron` and use at/in/every/repeat/until"
    )]
    CronCombined { given: String },
    /// Both `at` and `in` were given.
    #[error("`at` and `in` both set the first firing: give only one of them")]
    AtAndIn,
    /// `repeat` without `every`.
    #[error("`repeat` needs `every` to say how far apart the firings are, e.g. every 1s, repeat 5")]
    RepeatWithoutEvery,
    /// `every` of 0.
    #[error("`every` is 0: give an interval of at least 1 ms")]
    ZeroEvery,
    /// A cron expression of 5 fields, as Unix cron takes them.
    #[error(
        "cron expression {expression:?} has 5 fields, but Quartz cron needs seconds first \
         (sec min hour day-of-month month day-of-week [year]): \
         e.g. \"0 */5 * * * ?\" fires every 5 minutes"
    )]
    CronWithoutSeconds { expression: String },
    /// A cron expression of neither 6 nor 7 fields.
    #[error(
        "cron expression {expression:?} has {count} fields, but Quartz cron takes 6 or 7 \
         (sec min hour day-of-month month day-of-week [year]): \
         e.g. \"0 0 12 ? * MON-FRI\" fires at noon on weekdays"
    )]
    CronFieldCount { expression: String, count: usize },
    /// One field of a cron expression is wrong: `position` counts from 1.
    #[error(
        "invalid cron expression {expression:?}: field {position} ({field}) is {text:?}: {problem}"
    )]
    CronField {
        expression: String,
        position: usize,
        field: &'static str,
        text: String,
        problem: String,
    },
    /// Both day-of-month and day-of-week restricted, which Quartz does not support.
    #[error(
        "invalid cron expression {expression:?}: day-of-month {day_of_month:?} and day-of-week \
         {day_of_week:?} are both restricted, which Quartz cron does not support: put ? in one \
         of them, e.g. \"0 0 12 15 * ?\" (the 15th) or \"0 0 12 ? * MON\" (Mondays)"
    )]
    CronBothDays {
        expression: String,
        day_of_month: String,
        day_of_week: String,
    },
    /// A cron expression whose fields pass one by one, but not together.
    #[error("invalid cron expression {expression:?}: {reason}")]
    CronInvalid { expression: String, reason: String },
    /// A schedule with no firing left (Quartz: "the given trigger will never fire").
    #[error(
        "the job would never fire ({schedule}): its `until` is before its first firing, or its \
         cron expression matches no time to come"
    )]
    NeverFires { schedule: String },
    /// A job without a name.
    #[error("a job needs a name, such as \"report\"")]
    NoName,
}

impl Schedule {
    /// Checks and parses `spec`, scheduled at `now_ms`. An `until` before the first firing is
    /// not an error: [`Schedule::first`] is then `None`, as it is for a cron expression that
    /// never matches again (e.g. a past year, or February 30).
    pub fn parse(spec: &JobSpec, now_ms: u64) -> Result<Schedule, ScheduleError> {
        let mut cron = None;
        if let Some(expression) = &spec.cron {
            let given: Vec<&str> = [
                ("at", spec.at_ms.is_some()),
                ("in", spec.in_ms.is_some()),
                ("every", spec.every_ms.is_some()),
                ("repeat", spec.repeat.is_some()),
                ("until", spec.until_ms.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                let given = given.join(", ");
                return Err(ScheduleError::CronCombined { given });
            }
            cron = Some(Box::new(parse_cron(expression)?));
        } else if spec.at_ms.is_some() && spec.in_ms.is_some() {
            return Err(ScheduleError::AtAndIn);
        } else if spec.repeat.is_some() && spec.every_ms.is_none() {
            return Err(ScheduleError::RepeatWithoutEvery);
        } else if spec.every_ms == Some(0) {
            return Err(ScheduleError::ZeroEvery);
        }
        let spec = spec.clone();
        Ok(Schedule { spec, cron, now_ms })
    }

    /// The first firing: `at`, or `now + in`, or now if neither; for cron, the first match at or
    /// after now (on a whole second). `None` if it would never fire (e.g. `until` already past).
    pub fn first(&self) -> Option<u64> {
        if let Some(cron) = &self.cron {
            return next_cron(cron, self.now_ms.checked_sub(1)?);
        }
        let delay = self.spec.in_ms.unwrap_or(0);
        self.by_until(self.spec.at_ms.unwrap_or(self.now_ms.saturating_add(delay)))
    }

    /// The firing after the one due at `previous_ms`, given `fired` firings so far (counting that
    /// one). `None` when the job is done: after its single firing (no `every` or cron), after
    /// 1 + `repeat` firings, or past `until`.
    pub fn after(&self, previous_ms: u64, fired: u64) -> Option<u64> {
        if let Some(cron) = &self.cron {
            return next_cron(cron, previous_ms);
        }
        if self.spec.repeat.is_some_and(|repeat| fired > repeat) {
            return None;
        }
        self.by_until(previous_ms.checked_add(self.spec.every_ms?)?)
    }

    /// A short text for people: the cron expression as given, or e.g.
    /// "every 1s, 5 repeats, until 2026-11-27 16:00:00", "once at 2026-11-27 16:00:00", "once, now".
    pub fn describe(&self) -> String {
        let spec = &self.spec;
        if let Some(expression) = &spec.cron {
            return expression.trim().to_string();
        }
        let start = match (spec.at_ms, spec.in_ms) {
            (Some(at), _) => Some(format!("at {}", local_time(at))),
            (None, Some(delay)) => Some(format!("in {}", duration(delay))),
            (None, None) => None,
        };
        let mut text = match (spec.every_ms, start) {
            (None, None) => "once, now".to_string(),
            (None, Some(start)) => format!("once {start}"),
            (Some(every), None) => format!("every {}", duration(every)),
            (Some(every), Some(start)) => format!("every {}, starting {start}", duration(every)),
        };
        match spec.repeat {
            Some(1) => text.push_str(", 1 repeat"),
            Some(repeat) => text.push_str(&format!(", {repeat} repeats")),
            None => {}
        }
        if let Some(until) = spec.until_ms {
            text.push_str(&format!(", until {}", local_time(until)));
        }
        text
    }

    /// `time`, unless it is past `until`.
    fn by_until(&self, time: u64) -> Option<u64> {
        self.spec
            .until_ms
            .is_none_or(|until| time <= until)
            .then_some(time)
    }
}

/// `ms` since the epoch as local time, e.g. "2026-11-27 16:00:00".
fn local_time(ms: u64) -> String {
    let format = if ms.is_multiple_of(1000) {
        "%Y-%m-%d %H:%M:%S"
    } else {
        "%Y-%m-%d %H:%M:%S%.3f"
    };
    let time = i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    time.map_or_else(
        || format!("{ms} ms after the epoch"),
        |time| time.with_timezone(&Local).format(format).to_string(),
    )
}

/// A duration in its largest whole unit, e.g. "1s", "5m", "1500ms".
fn duration(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    /// 2026-11-27 15:33:20.000 UTC, a Friday.
    const NOW: u64 = 1_795_793_600_000;

    fn cron(expression: &str) -> Result<Schedule, ScheduleError> {
        let cron = Some(expression.to_string());
        Schedule::parse(
            &JobSpec {
                cron,
                ..JobSpec::default()
            },
            NOW,
        )
    }

    /// A schedule of at, in, every, repeat and until.
    fn simple(
        at_ms: Option<u64>,
        in_ms: Option<u64>,
        every_ms: Option<u64>,
        repeat: Option<u64>,
        until_ms: Option<u64>,
    ) -> Result<Schedule, ScheduleError> {
        let spec = JobSpec {
            cron: None,
            at_ms,
            in_ms,
            every_ms,
            repeat,
            until_ms,
        };
        Schedule::parse(&spec, NOW)
    }

    /// Up to `count` firings, walking `first` and `after`.
    fn firings(schedule: &Schedule, count: usize) -> Vec<u64> {
        let mut times: Vec<u64> = schedule.first().into_iter().collect();
        while let Some(&last) = times.last().filter(|_| times.len() < count) {
            match schedule.after(last, times.len() as u64) {
                Some(next) => times.push(next),
                None => break,
            }
        }
        times
    }

    /// The first `count` firings of a cron expression, in local time.
    fn local_firings(expression: &str, count: usize) -> Vec<DateTime<Local>> {
        let times = firings(&cron(expression).expect("valid"), count);
        times.into_iter().map(local).collect()
    }

    fn local(ms: u64) -> DateTime<Local> {
        Local
            .timestamp_millis_opt(ms as i64)
            .single()
            .expect("a valid time")
    }

    fn weekdays(expression: &str) -> Vec<Weekday> {
        local_firings(expression, 3)
            .iter()
            .map(|time| time.weekday())
            .collect()
    }

    #[test]
    fn every_second_cron_fires_on_consecutive_seconds() {
        for expression in ["* * * * * *", "* * * * * ?", "*/1 * * * * ? *"] {
            let times = firings(&cron(expression).expect("valid"), 5);
            assert_eq!(times, [NOW, NOW + 1000, NOW + 2000, NOW + 3000, NOW + 4000]);
        }
        let spec = JobSpec {
            cron: Some("* * * * * ?".into()),
            ..JobSpec::default()
        };
        let later = Schedule::parse(&spec, NOW + 300).expect("valid");
        assert_eq!(later.first(), Some(NOW + 1000), "the next whole second");
        let quarters = local_firings("0/15 * * * * ?", 4);
        assert!(quarters.iter().all(|time| time.second() % 15 == 0));
    }

    #[test]
    fn question_mark_leaves_the_other_day_field_in_charge() {
        for time in local_firings("0 0 12 15 * ?", 3) {
            assert_eq!(
                (time.day(), time.hour(), time.minute(), time.second()),
                (15, 12, 0, 0)
            );
        }
        let daily = local_firings("0 30 6 ? * *", 3);
        assert!(daily.windows(2).all(|pair| pair[0].day() != pair[1].day()));
        assert!(
            daily
                .iter()
                .all(|time| (time.hour(), time.minute()) == (6, 30))
        );
    }

    #[test]
    fn weekdays_are_numbered_the_quartz_way() {
        assert_eq!(weekdays("0 0 12 ? * 1"), [Weekday::Sun; 3]);
        assert_eq!(weekdays("0 0 12 ? * sun"), [Weekday::Sun; 3]);
        assert_eq!(weekdays("0 0 12 ? * 7"), [Weekday::Sat; 3]);
        assert_eq!(weekdays("0 0 12 ? * 6L"), [Weekday::Fri; 3]);
        let weekend = [Weekday::Sat, Weekday::Sun, Weekday::Sat];
        assert_eq!(weekdays("0 0 12 ? * SAT-SUN"), weekend, "a wrapping range");
        let days: Vec<Weekday> = local_firings("0 0 12 ? * MON-FRI", 10)
            .iter()
            .map(|time| time.weekday())
            .collect();
        assert!(
            days.iter().all(|day| day.num_days_from_monday() < 5),
            "{days:?}"
        );
        assert!(days.contains(&Weekday::Mon) && days.contains(&Weekday::Fri));
    }

    #[test]
    fn a_monday_cron_fires_weekly_at_its_time() {
        assert_eq!(weekdays("0 0 12 ? * 2"), [Weekday::Mon; 3]);
        for time in local_firings("0 15 10 ? * MON", 4) {
            assert_eq!(time.weekday(), Weekday::Mon);
            assert_eq!((time.hour(), time.minute(), time.second()), (10, 15, 0));
        }
        let year = local_firings("0 0 12 1 JAN ? 2099", 1);
        assert_eq!(
            year.iter()
                .map(|time| (time.year(), time.month(), time.day()))
                .collect::<Vec<_>>(),
            [(2099, 1, 1)]
        );
        assert_eq!(cron("0 0 12 1 1 ? 2020").expect("valid").first(), None);
    }

    #[test]
    fn errors_point_at_the_bad_field() {
        assert_eq!(
            cron("*/5 * 25 * * ?").expect_err("hour 25").to_string(),
            r#"invalid cron expression "*/5 * 25 * * ?": field 3 (hour) is "25": hours run 0-23"#
        );
        for (expression, position, name, bad) in [
            ("60 * * * * ?", 1, "second", "60"),
            ("0 */x * * * ?", 2, "minute", "*/x"),
            ("0 5-61 * * * ?", 2, "minute", "5-61"),
            ("0 0 ? * * *", 3, "hour", "?"),
            ("0 0 0 32 * ?", 4, "day-of-month", "32"),
            ("0 0 0 1-/ * ?", 4, "day-of-month", "1-/"),
            ("0 0 0 ? 13 *", 5, "month", "13"),
            ("0 0 0 1 MON ?", 5, "month", "MON"),
            ("0 0 0 ? * 8", 6, "day-of-week", "8"),
            ("0 0 0 ? * 0", 6, "day-of-week", "0"),
            ("0 0 0 ? * MONDAY", 6, "day-of-week", "MONDAY"),
            ("0 0 0 ? * * 2100", 7, "year", "2100"),
        ] {
            match cron(expression) {
                Err(ScheduleError::CronField {
                    position: at,
                    field,
                    text,
                    ..
                }) => {
                    assert_eq!(
                        (at, field, text.as_str()),
                        (position, name, bad),
                        "{expression}"
                    );
                }
                other => panic!("{expression}: expected a field error, got {other:?}"),
            }
        }
        let message = cron("0 0 0 ? * 9").expect_err("day-of-week 9").to_string();
        assert!(message.contains("1-7 (1 = SUN) or SUN-SAT"), "{message}");
    }

    #[test]
    fn field_counts_and_day_conflicts_are_explained() {
        let message = cron("*/5 * * * *").expect_err("5 fields").to_string();
        assert!(message.contains("needs seconds first") && message.contains("\"0 */5 * * * ?\""));
        let message = cron("0 0 0 * * * * *").expect_err("8 fields").to_string();
        assert!(
            message.contains("has 8 fields, but Quartz cron takes 6 or 7"),
            "{message}"
        );
        assert!(matches!(
            cron("  "),
            Err(ScheduleError::CronFieldCount { count: 0, .. })
        ));
        let both = cron("0 0 12 15 * MON").expect_err("both days").to_string();
        assert!(both.contains("put ? in one of them"), "{both}");
    }

    #[test]
    fn wrong_combinations_are_refused() {
        let spec = JobSpec {
            cron: Some("* * * * * ?".into()),
            every_ms: Some(1),
            until_ms: Some(NOW),
            ..JobSpec::default()
        };
        let given = "every, until".to_string();
        assert_eq!(
            Schedule::parse(&spec, NOW).expect_err("cron"),
            ScheduleError::CronCombined { given }
        );
        let error = simple(Some(NOW), Some(5), None, None, None).expect_err("at and in");
        assert_eq!(error, ScheduleError::AtAndIn);
        let error = simple(None, None, None, Some(5), None).expect_err("repeat alone");
        assert_eq!(error, ScheduleError::RepeatWithoutEvery);
        let error = simple(None, None, Some(0), None, None).expect_err("every 0");
        assert_eq!(error, ScheduleError::ZeroEvery);
    }

    #[test]
    fn every_with_repeat_fires_one_more_time_than_repeat() {
        let repeating = simple(None, None, Some(1000), Some(5), None).expect("valid");
        let expected: Vec<u64> = (0..6).map(|n| NOW + n * 1000).collect();
        assert_eq!(firings(&repeating, 100), expected);
        assert_eq!(repeating.describe(), "every 1s, 5 repeats");
    }

    #[test]
    fn until_stops_the_firings() {
        let until = simple(None, None, Some(1000), None, Some(NOW + 2500)).expect("valid");
        assert_eq!(firings(&until, 100), [NOW, NOW + 1000, NOW + 2000]);
        let past = simple(None, Some(5000), None, None, Some(NOW + 10)).expect("valid");
        assert_eq!(past.first(), None);
    }

    #[test]
    fn single_firings_start_now_at_or_in() {
        let now = simple(None, None, None, None, None).expect("valid");
        assert_eq!((now.first(), now.after(NOW, 1)), (Some(NOW), None));
        assert_eq!(now.describe(), "once, now");
        let delayed = simple(None, Some(90_000), Some(60_000), None, None).expect("valid");
        assert_eq!(firings(&delayed, 2), [NOW + 90_000, NOW + 150_000]);
        assert_eq!(delayed.describe(), "every 1m, starting in 90s");
        let hour = NOW + 3_600_000;
        let at = simple(Some(hour), None, None, None, None).expect("valid");
        assert_eq!((at.first(), at.after(hour, 1)), (Some(hour), None));
        let text = local(hour).format("%Y-%m-%d %H:%M:%S");
        assert_eq!(at.describe(), format!("once at {text}"));
        assert_eq!(
            cron(" 0 0 12 ? * MON-FRI ").expect("valid").describe(),
            "0 0 12 ? * MON-FRI"
        );
    }
}
