//! The app's lifecycle on this node: its web handler mounted, and its readiness, from which its
//! web requests come here and its singletons are followed.

use std::sync::atomic::Ordering;

use immutant_foundation::sync::lock;
use tracing::info;

use super::Session;
use crate::apps::singletons;
use immutant_contracts::deployment::Status;

impl Session {
    /// The app serves HTTP on its web socket and, with `handoff`, the client connections it
    /// is handed.
    pub(super) fn web(&self, id: u64, handoff: bool) {
        let deployment = &self.deployment;
        deployment.web.store(true, Ordering::Relaxed);
        self.context.web.mount(&deployment.mount());
        let backend = lock(&deployment.backend).clone();
        if let (true, Some(backend)) = (handoff, backend) {
            self.context.web.takes_connections(&backend);
        }
        if *deployment.status.borrow() == Status::Running {
            self.serve_web();
        }
        self.answer(id, Ok(()));
    }

    pub(super) fn ready(&self) {
        // Web requests go to this process before anyone hears it is ready (a redeploy stops
        // the old process then).
        if self.deployment.web.load(Ordering::Relaxed) {
            self.serve_web();
        }
        self.deployment.set_status(Status::Running);
        info!("Deployed \"{}\"", self.deployment.name);
        let (deployment, outbox) = (self.deployment.clone(), self.outbox.clone());
        let (context, ended) = (self.context.clone(), self.ended.clone());
        if context.engine.membership.clustered() {
            tokio::spawn(singletons::follow(deployment, context, outbox, ended));
        }
    }

    /// What the app answered on the connections it serves itself.
    pub(super) fn web_counts(&self, in_flight: u64, statuses: &[(u16, u64)], seconds: &[u64]) {
        if let Some(backend) = lock(&self.deployment.backend).as_ref() {
            backend.report_in_flight(in_flight);
        }
        if let Some(context_path) = self.context.web.context_path(&self.deployment.name) {
            crate::web::proxy::record_answered(&context_path, statuses, seconds);
        }
    }

    /// Routes the app's web requests to this process.
    fn serve_web(&self) {
        if let Some(backend) = lock(&self.deployment.backend).clone() {
            self.context.web.up(&self.deployment.mount(), backend);
        }
    }
}
