//! Scheduled jobs: the node keeps each job's [`schedule`] and tells the app when to run it
//! (`fire-job`); the app answers how the run went (`job-done`).
//!
//! In a cluster a singleton job fires only where the app's singletons run (the oldest member
//! with the app), and starts there the moment that node is elected. Its progress (how many
//! times it fired, and when the last firing was due) lives in a replicated cache that every
//! member with the app holds, and is written before each firing: the node taking over resumes
//! from it, so no firing happens twice and a `repeat` is never exceeded. Firings late by less
//! than the misfire threshold run late; one later than that runs once, now (Quartz's
//! fire-once-now), and the schedule goes on from there.

pub mod schedule;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use immutant_contracts::deployment::{JobReport, LastRun, Outcome};
use immutant_protocol::{CacheMode, CacheOp, CacheOptions, Frame, Header, JobSpec, Open};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::engine::CacheService;
use crate::vocabulary::cache::CacheError;
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;
use immutant_protocol::Outbox;
pub use schedule::{Schedule, ScheduleError};

/// How long a job waits before trying again when its progress cannot be recorded.
const RETRY: Duration = Duration::from_millis(200);
/// How long a job waits to read its progress again after another node recorded it first.
const RECORD_RETRY: Duration = Duration::from_millis(20);

/// What a job's task keeps up to date for the management API.
#[derive(Debug, Default)]
struct JobStatus {
    fires_here: bool,
    next_ms: Option<u64>,
    last: Option<LastRun>,
    done: bool,
}

/// A scheduled job: its task and status.
struct Job {
    description: String,
    singleton: bool,
    status: Arc<Mutex<JobStatus>>,
    task: JoinHandle<()>,
}

/// How far a job has got, as recorded for the whole cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// The schedule and the build of the app it belongs to: a new schedule, or a new build of
    /// the app, starts again from the beginning.
    spec: JobSpec,
    build: String,
    fired: u64,
    /// When the last firing was due (or ran, after a misfire): the next one follows it.
    last_ms: u64,
}

/// What every job of an app's connection needs.
#[derive(Clone)]
pub struct JobContext {
    pub app: String,
    /// The app's artifact's name: which build of the app this is.
    pub build: String,
    pub outbox: Outbox,
    /// The epoch this node runs the app's singletons under, while it does; always `Some(1)`
    /// where jobs need no election (standalone).
    pub singleton_epoch: watch::Receiver<Option<u64>>,
    /// The caches, when clustered: where singleton jobs record their progress.
    pub caches: Option<CacheService>,
    pub misfire_threshold_ms: u64,
    /// False while an earlier process of the app still runs on this node: jobs wait for it.
    pub exclusive: watch::Receiver<bool>,
}

/// The jobs of one app's connection.
#[derive(Default)]
pub struct AppJobs {
    jobs: Mutex<BTreeMap<String, Job>>,
}

impl AppJobs {
    /// Schedules (or reschedules) the job `name`.
    pub fn schedule(
        &self,
        context: &JobContext,
        name: &str,
        spec: JobSpec,
        singleton: bool,
    ) -> Result<(), ScheduleError> {
        if name.trim().is_empty() {
            return Err(ScheduleError::NoName);
        }
        let schedule = Schedule::parse(&spec, now_ms())?;
        if schedule.first().is_none() {
            let schedule = schedule.describe();
            return Err(ScheduleError::NeverFires { schedule });
        }
        let status = Arc::new(Mutex::new(JobStatus::default()));
        // A singleton in a cluster fires where it is elected, and records its progress there.
        let coordination = context.caches.clone().filter(|_| singleton);
        let firing = Firing {
            name: name.to_string(),
            spec,
            schedule: schedule.clone(),
            context: context.clone(),
            status: status.clone(),
        };
        let task = tokio::spawn(firing.run(coordination));
        let job = Job {
            description: schedule.describe(),
            singleton,
            status,
            task,
        };
        if let Some(old) = lock(&self.jobs).insert(name.to_string(), job) {
            old.task.abort();
        }
        Ok(())
    }

    /// Unschedules the job `name` and forgets its progress; false if there was no such job.
    pub async fn unschedule(&self, context: &JobContext, name: &str) -> bool {
        let Some(job) = lock(&self.jobs).remove(name) else {
            return false;
        };
        job.task.abort();
        if let Some(caches) = &context.caches {
            let remove = CacheOp::Remove {
                key: name.to_string(),
            };
            let _ = caches
                .call(&progress_cache(&context.app), remove, Bytes::new(), None)
                .await;
        }
        true
    }

    /// The app says how a firing went.
    pub fn finished(&self, name: &str, run: u64, error: Option<String>) {
        if let Some(job) = lock(&self.jobs).get(name) {
            let mut status = lock(&job.status);
            if let Some(last) = status.last.as_mut().filter(|last| last.run == run) {
                last.outcome = match error {
                    Some(reason) => Outcome::Failed(reason),
                    None => Outcome::Ok,
                };
            }
        }
    }

    /// The app is gone: its jobs stop firing here.
    pub fn stop_all(&self) {
        for (_, job) in std::mem::take(&mut *lock(&self.jobs)) {
            job.task.abort();
        }
    }

    pub fn reports(&self) -> Vec<JobReport> {
        lock(&self.jobs)
            .iter()
            .map(|(name, job)| {
                let status = lock(&job.status);
                JobReport {
                    name: name.clone(),
                    schedule: job.description.clone(),
                    singleton: job.singleton,
                    fires_here: status.fires_here,
                    next_ms: status.next_ms,
                    last: status.last.clone(),
                    done: status.done,
                }
            })
            .collect()
    }
}

/// The replicated cache where an app's singleton jobs record their progress.
fn progress_cache(app: &str) -> String {
    format!("immutant.jobs/{app}")
}

/// One job's firing loop.
struct Firing {
    name: String,
    spec: JobSpec,
    schedule: Schedule,
    context: JobContext,
    status: Arc<Mutex<JobStatus>>,
}

impl Firing {
    /// Fires the job on its schedule while this node should: with `coordination`, only while
    /// elected, recording its progress in the cluster; without, always, keeping it in memory.
    async fn run(mut self, coordination: Option<CacheService>) {
        let elected = coordination.is_some();
        let mut exclusive = self.context.exclusive.clone();
        if !*exclusive.borrow_and_update() {
            // The app's earlier process fired the job until now: the schedule starts from
            // when this one may fire, not from when the app asked for it.
            let _ = exclusive.wait_for(|exclusive| *exclusive).await;
            if let Ok(schedule) = Schedule::parse(&self.spec, now_ms()) {
                self.schedule = schedule;
            }
        }
        let mut epochs = self.context.singleton_epoch.clone();
        let mut local: Option<Progress> = None;
        // The record as the primary answered a compare and swap that failed: read again from it,
        // not from this node's copy, which may be behind.
        let mut answered: Option<(Option<Progress>, Option<Bytes>)> = None;
        // Every member with the job holds its progress, so that whichever takes over has it.
        if let Some(caches) = &coordination {
            while let Err(error) = self.open_progress(caches).await {
                warn!("job {} of {}: {error}", self.name, self.context.app);
                tokio::time::sleep(RETRY).await;
            }
        }
        loop {
            let epoch = match elected {
                true => *epochs.borrow_and_update(),
                false => Some(1),
            };
            let Some(epoch) = epoch else {
                {
                    // Not firing here: only the last run on this node is left to show.
                    let mut status = lock(&self.status);
                    let last = status.last.take();
                    *status = JobStatus {
                        last,
                        ..JobStatus::default()
                    };
                }
                if epochs.changed().await.is_err() {
                    return;
                }
                continue;
            };
            // What the cluster recorded, as it is stored (to swap it for the next record).
            let (progress, stored) = match (&coordination, answered.take()) {
                (Some(_), Some(answered)) => answered,
                (Some(caches), None) => match self.recorded(caches).await {
                    Ok(recorded) => recorded,
                    Err(error) => {
                        warn!("job {} of {}: {error}", self.name, self.context.app);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
                (None, _) => (local.clone(), None),
            };
            let (fired, next) = match &progress {
                Some(progress) => (
                    progress.fired,
                    self.schedule.after(progress.last_ms, progress.fired),
                ),
                // A cron job that never fired starts from now, wherever it was scheduled.
                None if self.spec.cron.is_some() => {
                    (0, self.schedule.after(now_ms().saturating_sub(1), 0))
                }
                None => (0, self.schedule.first()),
            };
            {
                let mut status = lock(&self.status);
                status.fires_here = true;
                status.next_ms = next;
                status.done = next.is_none();
            }
            let Some(due) = next else {
                // Done: nothing more to fire, unless the role moves and comes back.
                if epochs.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            };
            let wait = Duration::from_millis(due.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = epochs.changed(), if elected => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let now = now_ms();
            // Beyond the threshold, one run now, and on from now: no flood of catch-up runs.
            let misfired = now.saturating_sub(due) > self.context.misfire_threshold_ms;
            let next_progress = Progress {
                spec: self.spec.clone(),
                build: self.context.build.clone(),
                fired: fired + 1,
                last_ms: if misfired { now } else { due },
            };
            // Recorded before it fires: a node taking over never fires it again.
            match &coordination {
                Some(caches) => {
                    // A compare and swap: if another node recorded this firing first (two
                    // masters for a moment), this one does not fire it.
                    match self.record(caches, stored, &next_progress).await {
                        Ok(None) => {}
                        Ok(Some(current)) => {
                            answered = Some(current);
                            tokio::time::sleep(RECORD_RETRY).await;
                            continue;
                        }
                        Err(error) => {
                            warn!("job {} of {}: {error}", self.name, self.context.app);
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                    }
                    if *epochs.borrow() != Some(epoch) {
                        continue;
                    }
                }
                None => local = Some(next_progress),
            }
            let fire = Header::FireJob {
                name: self.name.clone(),
                run: fired + 1,
                scheduled_ms: due,
                fired_ms: now,
                epoch,
            };
            let _ = self.context.outbox.send(Frame::new(fire).into());
            let labels = [
                ("app", self.context.app.clone()),
                ("job", self.name.clone()),
            ];
            metrics::counter!("immutant_job_firings_total", &labels).increment(1);
            if misfired {
                metrics::counter!("immutant_job_misfires_total", &labels).increment(1);
            }
            metrics::histogram!("immutant_job_lateness_seconds", &labels)
                .record(now.saturating_sub(due) as f64 / 1000.0);
            lock(&self.status).last = Some(LastRun {
                run: fired + 1,
                scheduled_ms: due,
                fired_ms: now,
                outcome: Outcome::Running,
            });
        }
    }

    /// The progress the cluster recorded for this job and build, if any, and the record as
    /// it is stored (whatever it is for): read at the cache's primary, for a node that has
    /// just taken the job over must not start from a copy that missed the last tick.
    async fn recorded(
        &self,
        caches: &CacheService,
    ) -> Result<(Option<Progress>, Option<Bytes>), CacheError> {
        let get = CacheOp::GetLatest {
            key: self.name.clone(),
        };
        let (outcome, value) = caches
            .call(&progress_cache(&self.context.app), get, Bytes::new(), None)
            .await?;
        Ok(self.decode(outcome.found.then_some(value)))
    }

    /// A stored record, and the progress it holds for this job and build (none if it is for
    /// another schedule or build).
    fn decode(&self, stored: Option<Bytes>) -> (Option<Progress>, Option<Bytes>) {
        let progress = stored
            .as_ref()
            .and_then(|value| serde_json::from_slice::<Progress>(value).ok())
            .filter(|progress| progress.spec == self.spec && progress.build == self.context.build);
        (progress, stored)
    }

    /// Records `progress` in place of `stored` (or where there was none). If the record had
    /// changed meanwhile, nothing is written and the answer is the record as it is now.
    async fn record(
        &self,
        caches: &CacheService,
        stored: Option<Bytes>,
        progress: &Progress,
    ) -> Result<Option<(Option<Progress>, Option<Bytes>)>, CacheError> {
        let key = self.name.clone();
        let value = serde_json::to_vec(progress).unwrap_or_default();
        let (op, body) = match stored {
            Some(stored) => {
                let op = CacheOp::Replace {
                    key,
                    expected_len: stored.len() as u64,
                    expiry: None,
                };
                (op, Bytes::from([stored.as_ref(), &value].concat()))
            }
            None => (
                CacheOp::PutIfAbsent { key, expiry: None },
                Bytes::from(value),
            ),
        };
        let cache = progress_cache(&self.context.app);
        let (outcome, current) = caches.call(&cache, op, body, None).await?;
        Ok((!outcome.applied).then(|| self.decode(outcome.found.then_some(current))))
    }

    /// Opens the app's progress cache (replicated, synchronous) on this node.
    async fn open_progress(&self, caches: &CacheService) -> Result<(), CacheError> {
        let options = CacheOptions {
            mode: CacheMode::Replicated,
            ..CacheOptions::default()
        };
        let name = progress_cache(&self.context.app);
        caches.open(&name, Open::LookupOrCreate, options).await?;
        Ok(())
    }
}
