//! The app's lifecycle on this node: its web handler mounted, and its readiness, from which its
//! web requests come here and its singletons are followed.

use std::sync::atomic::Ordering;

use immutant_foundation::sync::lock;
use tracing::info;

use super::Session;
use crate::apps::singletons;
use immutant_contracts::deployment::Status;

impl Session {
    pub(super) fn web(&self, id: u64) {
        let deployment = &self.deployment;
        deployment.web.store(true, Ordering::Relaxed);
        self.context.web.mount(&deployment.mount());
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

    /// Routes the app's web requests to this process.
    fn serve_web(&self) {
        if let Some(backend) = lock(&self.deployment.backend).clone() {
            self.context.web.up(&self.deployment.mount(), backend);
        }
    }
}
