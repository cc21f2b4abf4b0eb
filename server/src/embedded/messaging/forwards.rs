//! What travels between nodes: a message forwarded to another node, a reply for an app on
//! another node, and the origins of the forwards this node has taken, so that a retried forward
//! is taken once.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::watch;

use super::message::Message;

/// How many forward origins a node remembers.
const SEEN_LIMIT: usize = 20_000;

/// A message for another node: what the bridge with `delivery` was handed, for `destination`
/// there (a queue, or with `topic`, a topic).
#[derive(Debug)]
pub struct Forward {
    pub delivery: u64,
    pub destination: String,
    pub topic: bool,
    pub message: Message,
}

/// A reply for the app on `connection` of the node `node`.
#[derive(Debug)]
pub struct Reply {
    pub node: String,
    pub connection: u64,
    pub message: Message,
}

/// The origins of recent forwards, oldest first out.
#[derive(Default)]
pub struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
    /// The forwards being stored now, each with what says when its copy is on disk (or
    /// failed to be).
    storing: HashMap<String, watch::Sender<bool>>,
}

impl Seen {
    /// What says when the first copy of `origin` is stored, if one is being stored now.
    pub(super) fn being_stored(&self, origin: &str) -> Option<watch::Receiver<bool>> {
        self.storing.get(origin).map(|done| done.subscribe())
    }

    /// Takes `origin`, whose copy is being stored from now on.
    pub(super) fn begin(&mut self, origin: String) {
        self.insert(origin.clone());
        self.storing.insert(origin, watch::channel(false).0);
    }

    /// The copy of `origin` is stored (`stored`), or failed to be: its retries are answered.
    pub(super) fn end(&mut self, origin: &str, stored: bool) {
        if !stored {
            self.forget(origin);
        }
        if let Some(done) = self.storing.remove(origin) {
            done.send_replace(true);
        }
    }

    pub fn contains(&self, origin: &str) -> bool {
        self.set.contains(origin)
    }

    /// Forgets an origin whose message could not be stored, so that its retry is taken.
    pub fn forget(&mut self, origin: &str) {
        self.set.remove(origin);
        // Out of the order too: taken again, it must not be pushed out by its older entry.
        self.order.retain(|seen| seen != origin);
    }

    pub fn insert(&mut self, origin: String) {
        if self.set.insert(origin.clone()) {
            self.order.push_back(origin);
            if self.order.len() > SEEN_LIMIT
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}
