//! What a scheduled job is told to do: when it fires.

use serde::{Deserialize, Serialize};

/// When a job fires: a Quartz cron expression with seconds (`"*/5 * * * * ?"`), or any sensible
/// combination of `at`/`in`, `every`, `repeat` and `until`. Empty: once, now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct JobSpec {
    /// `sec min hour day-of-month month day-of-week [year]`, in the node's local time.
    pub cron: Option<String>,
    /// The first firing, in milliseconds since the Unix epoch.
    pub at_ms: Option<u64>,
    /// The first firing, this many milliseconds after scheduling.
    pub in_ms: Option<u64>,
    /// The interval between firings; forever unless `repeat` or `until` ends it.
    pub every_ms: Option<u64>,
    /// How many firings after the first (so `repeat: 5` fires 6 times); needs `every`.
    pub repeat: Option<u64>,
    /// No firing after this time, in milliseconds since the Unix epoch.
    pub until_ms: Option<u64>,
}
