//! Quartz cron expressions, as Immutant 1.x took them: checked field by field so that an error
//! points at its field, made into croner's syntax, and their next match in local time.

use chrono::{DateTime, Local, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::ScheduleError;

/// A cron field: its name, its value range, and that range said for people.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    range: &'static str,
}

const DAY_OF_MONTH: usize = 3;
const MONTH: usize = 4;
const DAY_OF_WEEK: usize = 5;

#[rustfmt::skip]
const FIELDS: [Field; 7] = [
    Field { name: "second", min: 0, max: 59, range: "seconds run 0-59" },
    Field { name: "minute", min: 0, max: 59, range: "minutes run 0-59" },
    Field { name: "hour", min: 0, max: 23, range: "hours run 0-23" },
    Field { name: "day-of-month", min: 1, max: 31,
            range: "days of the month run 1-31 (L and W allowed, e.g. L or 15W; ? for any)" },
    Field { name: "month", min: 1, max: 12, range: "months run 1-12 or JAN-DEC" },
    Field { name: "day-of-week", min: 1, max: 7, range: "days of the week run 1-7 (1 = SUN) \
            or SUN-SAT (L and # allowed, e.g. 6L or MON#2; ? for any)" },
    Field { name: "year", min: 1970, max: 2099, range: "years run 1970-2099" },
];

#[rustfmt::skip]
const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The Quartz-compatible croner parser: seconds first, optional year, 1 = SUN, `0/15` steps.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Optional)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build()
}

/// Parses a Quartz cron expression, checking each field on its own so errors point at it.
pub(super) fn parse_cron(given: &str) -> Result<Cron, ScheduleError> {
    let expression = given.trim().to_string();
    let texts: Vec<&str> = given.split_whitespace().collect();
    match texts.len() {
        5 => return Err(ScheduleError::CronWithoutSeconds { expression }),
        6 | 7 => {}
        count => return Err(ScheduleError::CronFieldCount { expression, count }),
    }
    let parser = parser();
    let mut fields = Vec::with_capacity(7);
    for (index, text) in texts.iter().enumerate() {
        let checked = normalize_field(index, text).and_then(|normal| {
            // The field alone, every other one a wildcard: croner's errors do not say where.
            let mut alone = ["*"; 7];
            alone[index] = &normal;
            match parser.parse(&alone.join(" ")) {
                Ok(_) => Ok(normal),
                Err(_) => Err(format!(
                    "write a number, a list (1,15), a range (1-5) or a step (*/5 or 0/5); {}",
                    FIELDS[index].range
                )),
            }
        });
        match checked {
            Ok(normal) => fields.push(normal),
            Err(problem) => {
                let (position, field, text) = (index + 1, FIELDS[index].name, text.to_string());
                let error = ScheduleError::CronField {
                    expression,
                    position,
                    field,
                    text,
                    problem,
                };
                return Err(error);
            }
        }
    }
    let restricted = |text: &str| text != "*" && text != "?";
    if restricted(&fields[DAY_OF_MONTH]) && restricted(&fields[DAY_OF_WEEK]) {
        let day_of_month = texts[DAY_OF_MONTH].to_string();
        let day_of_week = texts[DAY_OF_WEEK].to_string();
        return Err(ScheduleError::CronBothDays {
            expression,
            day_of_month,
            day_of_week,
        });
    }
    parser.parse(&fields.join(" ")).map_err(|error| {
        let reason = error.to_string();
        ScheduleError::CronInvalid { expression, reason }
    })
}

/// One field upper-cased, its names made numbers and its wrapping ranges split in two, once its
/// characters and values are checked; or what is wrong with it.
fn normalize_field(index: usize, text: &str) -> Result<String, String> {
    let field = &FIELDS[index];
    let (names, extra): (&[&str], &[char]) = match index {
        DAY_OF_MONTH => (&[], &['L', 'W', '?']),
        MONTH => (&MONTHS, &[]),
        DAY_OF_WEEK => (&WEEKDAYS, &['L', '#', '?']),
        _ => (&[], &[]),
    };
    let mut normal = text.to_ascii_uppercase();
    for (number, name) in (field.min..).zip(names) {
        normal = normal.replace(name, &number.to_string());
    }
    let allowed = |c: char| c.is_ascii_digit() || "*/,-".contains(c) || extra.contains(&c);
    if let Some(bad) = normal.chars().find(|&c| !allowed(c)) {
        let shown = text
            .chars()
            .find(|c| c.to_ascii_uppercase() == bad)
            .unwrap_or(bad);
        return Err(format!("{shown:?} is not allowed here; {}", field.range));
    }
    let mut parts = Vec::new();
    for part in normal.split(',') {
        // Quartz: `L` alone in day-of-week is the last day of the week, SAT.
        let part = if index == DAY_OF_WEEK && part == "L" {
            "7"
        } else {
            part
        };
        let base = part.split(['/', '#']).next().unwrap_or_default();
        let mut values = Vec::new();
        for number in base
            .split('-')
            .map(|number| number.trim_matches(['L', 'W']))
        {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match number.parse() {
                Ok(value) if (field.min..=field.max).contains(&value) => values.push(value),
                _ => return Err(field.range.to_string()),
            }
        }
        let plain = part.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        match values[..] {
            // Quartz ranges may wrap around, e.g. FRI-MON or 22-2.
            [first, last] if first > last && plain => {
                parts.push(format!("{first}-{},{}-{last}", field.max, field.min));
            }
            _ => parts.push(part.to_string()),
        }
    }
    Ok(parts.join(","))
}

/// The first match of `cron` on a whole second after `from_ms`'s second, in local time.
pub(super) fn next_cron(cron: &Cron, from_ms: u64) -> Option<u64> {
    let from = DateTime::<Utc>::from_timestamp_millis(i64::try_from(from_ms).ok()?)?;
    let next = cron
        .find_next_occurrence(&from.with_timezone(&Local), false)
        .ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}
