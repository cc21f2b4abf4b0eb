//! The app's daemons: registered (and started at once when they may run here), and their
//! running state as the app reports it.

use immutant_foundation::sync::lock;
use immutant_protocol::Header;

use super::Session;
use immutant_contracts::deployment::DaemonState;

impl Session {
    pub(super) fn register_daemon(&self, id: u64, name: String, singleton: bool) {
        lock(&self.deployment.daemons).insert(
            name.clone(),
            DaemonState {
                singleton,
                running: false,
            },
        );
        self.answer(id, Ok(()));
        if let Some(epoch) = self.start_epoch(singleton) {
            self.send(Header::StartDaemon { name, epoch });
        }
    }

    pub(super) fn daemon_status(&self, name: &str, running: bool) {
        if let Some(daemon) = lock(&self.deployment.daemons).get_mut(name) {
            daemon.running = running;
        }
    }

    /// The epoch to start a daemon under now, if it should start now: a daemon that is not a
    /// singleton, or any daemon of a standalone node, at once; a singleton once this node is
    /// elected to run the app's singletons.
    fn start_epoch(&self, singleton: bool) -> Option<u64> {
        if !*self.deployment.exclusive.borrow() {
            return None;
        }
        if !singleton || !self.context.engine.membership.clustered() {
            return Some(1);
        }
        *self.deployment.singleton_epoch.borrow()
    }
}
