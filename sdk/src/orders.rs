//! What the node asks of the app unasked, carried out: start and stop its daemons, fire its
//! jobs, and take the lease's news (a renewal starts again the singletons a lapse cancelled).

use immutant_protocol::Header;

use crate::connection::{Connection, Orders};
use crate::daemon::Daemons;
use crate::jobs::{JobRun, Jobs, time_of};
use crate::lease::lease;

/// The app's services that the node orders about: its daemons and its jobs. Cheap to clone:
/// the clones share them.
#[derive(Clone, Default)]
pub struct Services {
    pub daemons: Daemons,
    pub jobs: Jobs,
}

impl Orders for Services {
    fn order(&self, connection: &Connection, order: Header) {
        match order {
            Header::StartDaemon { name, epoch } => {
                self.daemons.start(connection, &name, epoch);
            }
            Header::Lease { epoch, until_ns } => {
                lease().set(epoch, until_ns);
                if lease().covers(epoch) {
                    self.daemons.renewed(connection, epoch);
                }
            }
            Header::StopDaemon { name } => {
                // Taken out of its slot now, in the order the node asked: a start that follows
                // starts anew.
                if let Some(stopping) = self.daemons.take(&name) {
                    let connection = connection.clone();
                    tokio::spawn(async move { stopping.finish(&connection, None).await });
                }
            }
            Header::FireJob {
                name,
                run,
                scheduled_ms,
                fired_ms,
                epoch,
            } => {
                let run = JobRun {
                    name,
                    run,
                    scheduled: time_of(scheduled_ms),
                    fired: time_of(fired_ms),
                    epoch,
                };
                self.jobs.fire(connection, run);
            }
            _ => {}
        }
    }
}
