//! What an engine's singleton driver reports of this node's lease on an app's singletons, the
//! same way on both engines: `apps` turns these into frames for the app without knowing which
//! engine sent them.

/// A change in this node's lease on an app's singletons, or on a cache's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This node holds the lease of `epoch` until `until_ns` (on the host's boot clock): the
    /// first such event of an epoch starts the singletons here, each later one extends it.
    Held { epoch: u64, until_ns: u64 },
    /// The lease of `epoch` ended as `end` says: work under it is refused from now on, and the
    /// singletons stop at once (unless the app's process ended already).
    Ended { epoch: u64, end: LeaseEnd },
}

/// Why this node stopped holding an app's singletons' lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The app's process ended.
    AppEnded,
    /// This node was deposed: its side of the cluster lost its quorum, or another node holds
    /// the lease now.
    Deposed,
    /// The lease was not confirmed or renewed in time.
    Lapsed,
}
