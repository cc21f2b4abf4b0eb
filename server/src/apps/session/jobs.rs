//! The app's jobs: scheduled, unscheduled, and each firing's end as the app reports it.

use immutant_protocol::{Frame, Header, JobSpec};

use super::{Session, refusal};

impl Session {
    pub(super) fn schedule(&self, id: u64, name: &str, spec: JobSpec, singleton: bool) {
        let scheduled = self
            .deployment
            .jobs
            .schedule(&self.jobs, name, spec, singleton);
        let header = match scheduled {
            Ok(()) => Header::Ok { id },
            Err(error) => refusal(id, error),
        };
        self.send(header);
    }

    pub(super) fn unschedule(&self, id: u64, name: String) {
        let (deployment, jobs) = (self.deployment.clone(), self.jobs.clone());
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let found = deployment.jobs.unschedule(&jobs, &name).await;
            let _ = outbox.send(Frame::new(Header::Found { id, found }).into());
        });
    }

    pub(super) fn job_done(&self, name: &str, run: u64, error: Option<String>) {
        self.deployment.jobs.finished(name, run, error);
    }
}
