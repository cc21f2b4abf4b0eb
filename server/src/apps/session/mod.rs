//! An app's session: what the node does with each frame the app sends, one handler per domain
//! (mini-redis's `Command::apply` is the model): [`messaging`], [`daemons`], [`jobs`],
//! [`caches`], and the app's [`lifecycle`] (its web handler, and its readiness). Operations an
//! app makes under a singleton lease are checked first ([`fencing`]).

mod caches;
mod daemons;
mod fencing;
mod jobs;
mod lifecycle;
mod messaging;

use std::sync::Arc;

use immutant_protocol::{Frame, Header, Outbox};

use super::{AppContext, Deployment};
use crate::jobs::JobContext;
use crate::vocabulary::messaging::MessagingError;
use immutant_foundation::shutdown::Shutdown;

/// One app connection's frames, handled.
pub(super) struct Session {
    pub connection: u64,
    pub outbox: Outbox,
    pub deployment: Arc<Deployment>,
    pub context: Arc<AppContext>,
    /// What the app's jobs need.
    pub jobs: JobContext,
    /// Cancelled when the app's connection ends.
    pub ended: Shutdown,
}

impl Session {
    /// Carries out one frame from the app.
    pub async fn handle(&self, frame: Frame) {
        let body = frame.body;
        match frame.header {
            Header::Start {
                id,
                destination,
                kind,
            } => self.start(id, &destination, kind).await,
            Header::Publish {
                id,
                destination,
                options,
                epoch,
            } => self.publish(id, destination, options, epoch, body),
            Header::Listen {
                id,
                destination,
                concurrency,
                client_id,
            } => {
                self.listen(id, &destination, concurrency, client_id.as_deref())
                    .await
            }
            Header::Unlisten { id, consumer } => self.unlisten(id, consumer),
            Header::Ack { delivery } => self.ack(delivery),
            Header::Nack { delivery, reason } => self.nack(delivery, &reason),
            Header::Receive {
                id,
                destination,
                timeout_ms,
                client_id,
            } => {
                self.receive(id, &destination, timeout_ms, client_id.as_deref())
                    .await
            }
            Header::RegisterDaemon {
                id,
                name,
                singleton,
            } => self.register_daemon(id, name, singleton),
            Header::DaemonStatus { name, running } => self.daemon_status(&name, running),
            Header::Schedule {
                id,
                name,
                spec,
                singleton,
            } => self.schedule(id, &name, spec, singleton),
            Header::Unschedule { id, name } => self.unschedule(id, name),
            Header::JobDone { name, run, error } => self.job_done(&name, run, error),
            Header::OpenCache {
                id,
                name,
                open,
                options,
            } => self.open_cache(id, name, open, options),
            Header::CacheCall {
                id,
                cache,
                call,
                epoch,
            } => self.cache_call(id, cache, call, epoch, body),
            Header::Web { id, handoff } => self.web(id, handoff),
            Header::WebCounts {
                in_flight,
                statuses,
                seconds,
            } => self.web_counts(in_flight, &statuses, &seconds),
            Header::Ready {} => self.ready(),
            _ => {}
        }
    }

    fn send(&self, header: Header) {
        let _ = self.outbox.send(Frame::new(header).into());
    }

    fn answer(&self, id: u64, outcome: Result<(), MessagingError>) {
        let _ = self.outbox.send(answer(id, outcome).into());
    }
}

/// The frame answering request `id`.
fn answer(id: u64, outcome: Result<(), MessagingError>) -> Frame {
    Frame::new(match outcome {
        Ok(()) => Header::Ok { id },
        Err(error) => refusal(id, error),
    })
}

/// The header refusing request `id`, saying why.
fn refusal(id: u64, error: impl std::fmt::Display) -> Header {
    Header::Error {
        id,
        message: error.to_string(),
    }
}
