//! Scheduled jobs, as `immutant.jobs` had them: the node fires each job on its schedule (a
//! Quartz cron expression with seconds, or `at`/`after`/`every`/`repeat`/`until`), and the app
//! runs the job's function each time.
//!
//! ```no_run
//! # async fn example(app: immutant::App) -> immutant::Result<()> {
//! use std::time::Duration;
//!
//! app.job("report").cron("0 */5 * * * ?").schedule(|run| async move {
//!     println!("report {} due at {:?}", run.run, run.scheduled);
//!     Ok(())
//! }).await?;
//! app.job("warm-up").every(Duration::from_secs(1)).repeat(5).schedule(|_| async { Ok(()) }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! In a cluster a job is a singleton unless `singleton(false)`: each firing happens on one node
//! (the one running the app's singletons) and moves to another within a second if that node
//! dies; its count of firings is kept by the cluster, so a `repeat` is never exceeded. A
//! firing late by less than the node's misfire threshold (60 s) runs late; one later than that
//! runs once, with no flood of catch-up runs. Scheduling a name again replaces the job.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use immutant_protocol::{Frame, Header, JobSpec};

use crate::connection::Connection;
use crate::error::{BoxError, Result};
use crate::fence::under_lease;
use crate::sync::lock;

/// One firing of a job, as its function sees it.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// The job's name.
    pub name: String,
    /// Which firing this is, counted from 1 across the cluster.
    pub run: u64,
    /// When the firing was due.
    pub scheduled: SystemTime,
    /// When the node fired it (later than `scheduled` if it ran late).
    pub fired: SystemTime,
    /// The fencing epoch of the node that fired it: it grows with every handover of the
    /// app's singletons, so work stamped with an older epoch is stale.
    pub epoch: u64,
}

type JobFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type JobFn = Arc<dyn Fn(JobRun) -> JobFuture + Send + Sync>;

/// The app's jobs, by name. Cheap to clone: the clones share them.
#[derive(Clone, Default)]
pub struct Jobs {
    functions: Arc<Mutex<HashMap<String, JobFn>>>,
}

impl Jobs {
    /// Runs a firing of the job `name` on a task of its own, and tells the node how it went.
    pub fn fire(&self, connection: &Connection, run: JobRun) {
        let Some(function) = lock(&self.functions).get(&run.name).cloned() else {
            return;
        };
        let connection = connection.clone();
        tokio::spawn(async move {
            let (name, number) = (run.name.clone(), run.run);
            // A panicking job is a failed firing, not a dead app.
            let outcome = tokio::spawn(function(run)).await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(panic) => Some(format!("the job panicked: {panic}")),
            };
            if let Some(error) = &error {
                eprintln!("job {name} failed: {error}");
            }
            let done = Header::JobDone {
                name,
                run: number,
                error,
            };
            let _ = connection.send(Frame::new(done));
        });
    }

    /// Unschedules the job `name`; true if it was scheduled.
    pub(crate) async fn unschedule(&self, connection: &Connection, name: &str) -> Result<bool> {
        let id = connection.next_id();
        let request = Header::Unschedule {
            id,
            name: name.to_string(),
        };
        let answer = connection.call(id, Frame::new(request)).await?;
        lock(&self.functions).remove(name);
        Ok(matches!(answer.header, Header::Found { found: true, .. }))
    }
}

/// A job about to be scheduled: say when, then `schedule` it with its function.
pub struct JobBuilder {
    connection: Connection,
    jobs: Jobs,
    name: String,
    spec: JobSpec,
    singleton: bool,
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

impl JobBuilder {
    pub(crate) fn new(connection: Connection, jobs: Jobs, name: &str) -> Self {
        JobBuilder {
            connection,
            jobs,
            name: name.to_string(),
            spec: JobSpec::default(),
            singleton: true,
        }
    }

    /// Fires on a Quartz cron expression: `sec min hour day-of-month month day-of-week [year]`,
    /// such as `"*/5 * * * * ?"`, in the node's local time. Not combined with the others.
    pub fn cron(mut self, expression: &str) -> Self {
        self.spec.cron = Some(expression.to_string());
        self
    }

    /// Fires first at `time` (Immutant's `:at`).
    pub fn at(mut self, time: SystemTime) -> Self {
        self.spec.at_ms = Some(unix_millis(time));
        self
    }

    /// Fires first this long after scheduling (Immutant's `:in`).
    pub fn after(mut self, delay: Duration) -> Self {
        self.spec.in_ms = Some(millis(delay));
        self
    }

    /// Fires again at this interval, forever unless `repeat` or `until` ends it.
    pub fn every(mut self, interval: Duration) -> Self {
        self.spec.every_ms = Some(millis(interval));
        self
    }

    /// Fires this many times after the first (so `repeat(5)` fires 6 times); needs `every`.
    pub fn repeat(mut self, times: u64) -> Self {
        self.spec.repeat = Some(times);
        self
    }

    /// Fires no more after `time`.
    pub fn until(mut self, time: SystemTime) -> Self {
        self.spec.until_ms = Some(unix_millis(time));
        self
    }

    /// Whether the job fires on one node of a cluster only (the default, as in Immutant) or
    /// on every node.
    pub fn singleton(mut self, singleton: bool) -> Self {
        self.singleton = singleton;
        self
    }

    /// Schedules the job to run `function` at each firing (replacing a job of the same name).
    /// With no schedule given it fires once, now. A bad schedule, such as an invalid cron
    /// expression, is refused with an error that says what is wrong.
    pub async fn schedule<F, Fut>(self, function: F) -> Result<()>
    where
        F: Fn(JobRun) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let function: JobFn = match self.singleton {
            false => Arc::new(move |run| Box::pin(function(run)) as JobFuture),
            // A singleton job runs while the lease it was fired under holds, and not after.
            true => Arc::new(move |run: JobRun| {
                let epoch = run.epoch;
                let work = function(run);
                Box::pin(async move {
                    under_lease(epoch, work)
                        .await
                        .unwrap_or_else(|lapsed| Err(lapsed.into()))
                }) as JobFuture
            }),
        };
        let jobs = &self.jobs.functions;
        let previous = lock(jobs).insert(self.name.clone(), function);
        let id = self.connection.next_id();
        let request = Header::Schedule {
            id,
            name: self.name.clone(),
            spec: self.spec,
            singleton: self.singleton,
        };
        let scheduled = self.connection.request(id, Frame::new(request)).await;
        if scheduled.is_err() {
            // A refused schedule leaves the job as it was.
            let mut jobs = lock(jobs);
            match previous {
                Some(previous) => jobs.insert(self.name, previous),
                None => jobs.remove(&self.name),
            };
        }
        scheduled.map(|_| ())
    }
}

/// A time the node sent, in Unix milliseconds.
pub(crate) fn time_of(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}
