//! What the app answered on its handed connections, for the node's metrics: requests by status,
//! how long each took until its answer's head (by the node's histogram buckets), and how many
//! are in flight. Kept in shards, one per thread that serves (as far as there are shards), so
//! that counting a request touches nothing another thread touches; the reporter sums them.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use immutant_protocol::Header;
use immutant_protocol::web::SECONDS_BUCKETS;

use super::connection::ConnectionState;

/// The statuses counted one by one (100 to 599).
const STATUSES: usize = 500;
/// Shards of the counts: threads beyond these share them.
const SHARDS: usize = 8;

/// What the app answered on its handed connections since it last told the node.
pub(super) struct Counts {
    shards: Box<[Shard]>,
    /// What the node was told last of the requests in flight.
    told_in_flight: AtomicU64,
}

/// One thread's counts, on cache lines of their own.
#[repr(align(128))]
struct Shard {
    /// Begun less answered (a request may end on another thread than it began).
    in_flight: AtomicI64,
    /// By status, from 100.
    statuses: [AtomicU64; STATUSES],
    /// By [`SECONDS_BUCKETS`], and one more for longer.
    seconds: [AtomicU64; SECONDS_BUCKETS.len() + 1],
}

impl Default for Counts {
    fn default() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                in_flight: AtomicI64::new(0),
                statuses: std::array::from_fn(|_| AtomicU64::new(0)),
                seconds: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        Counts {
            shards,
            told_in_flight: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// This thread's shard.
    static SHARD: Cell<usize> = Cell::new({
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    });
}

impl Counts {
    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(Cell::get)]
    }

    /// A request answered with `status`, its answer's head after `took`.
    pub(super) fn answered(&self, status: StatusCode, took: Duration) {
        let shard = self.shard();
        let status = usize::from(status.as_u16()).wrapping_sub(100);
        if let Some(count) = shard.statuses.get(status) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let took = took.as_secs_f64();
        let bucket = SECONDS_BUCKETS
            .iter()
            .position(|upper| took <= *upper)
            .unwrap_or(SECONDS_BUCKETS.len());
        shard.seconds[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// What to tell the node, if anything changed since it was last told.
    pub(super) fn take(&self) -> Option<Header> {
        let mut statuses = vec![0; STATUSES];
        let mut seconds = vec![0; SECONDS_BUCKETS.len() + 1];
        let mut in_flight = 0;
        for shard in self.shards.iter() {
            in_flight += shard.in_flight.load(Ordering::Acquire);
            for (sum, count) in statuses.iter_mut().zip(&shard.statuses) {
                *sum += count.swap(0, Ordering::Relaxed);
            }
            for (sum, count) in seconds.iter_mut().zip(&shard.seconds) {
                *sum += count.swap(0, Ordering::Relaxed);
            }
        }
        let statuses: Vec<(u16, u64)> = (100..)
            .zip(statuses)
            .filter(|(_, count)| *count > 0)
            .collect();
        let in_flight = u64::try_from(in_flight).unwrap_or(0);
        let told = self.told_in_flight.swap(in_flight, Ordering::AcqRel);
        if statuses.is_empty() && in_flight == told {
            return None;
        }
        Some(Header::WebCounts {
            in_flight,
            statuses,
            seconds,
        })
    }
}

/// A request being answered, until its answer's body is all given (or dropped).
pub(super) struct Answering {
    state: Arc<ConnectionState>,
    /// Whether its body has been read to its end, if it has one (see [`Answering::watch`]).
    body_read: Option<Arc<AtomicBool>>,
}

impl Answering {
    pub(super) fn begin(state: &Arc<ConnectionState>) -> Answering {
        state.answering.fetch_add(1, Ordering::AcqRel);
        let counts = &state.served.counts;
        counts.shard().in_flight.fetch_add(1, Ordering::AcqRel);
        Answering {
            state: state.clone(),
            body_read: None,
        }
    }

    /// Watches `body` (the request's, not empty) to learn whether it is read to its end.
    pub(super) fn watch(&mut self, body: Body) -> Body {
        let read = Arc::new(AtomicBool::new(false));
        self.body_read = Some(read.clone());
        Body::new(Tracked {
            body,
            read: Some(read),
            _answering: None,
        })
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let counts = &self.state.served.counts;
        counts.shard().in_flight.fetch_sub(1, Ordering::AcqRel);
        let body_read = self
            .body_read
            .as_ref()
            .is_none_or(|read| read.load(Ordering::Acquire));
        self.state.answered(body_read);
    }
}

/// A body passed on as it is: a request's, telling when it has been read to its end, or an
/// answer's, holding its request's [`Answering`] until it is all given.
pub(super) struct Tracked {
    body: Body,
    read: Option<Arc<AtomicBool>>,
    _answering: Option<Answering>,
}

impl Tracked {
    /// An answer's `body`, its request `answering` until it is all given.
    pub(super) fn answer(body: Body, answering: Answering) -> Body {
        Body::new(Tracked {
            body,
            read: None,
            _answering: Some(answering),
        })
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(read) = &self.read
            && (matches!(polled, Poll::Ready(None)) || self.body.is_end_stream())
        {
            read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_told_once_and_by_bucket() {
        let counts = Counts::default();
        assert!(counts.take().is_none(), "nothing to tell");
        counts.answered(StatusCode::OK, Duration::from_micros(300));
        counts.answered(StatusCode::OK, Duration::from_millis(2));
        counts.answered(StatusCode::NOT_FOUND, Duration::from_secs(90));
        let Some(Header::WebCounts {
            statuses, seconds, ..
        }) = counts.take()
        else {
            panic!("counts to tell");
        };
        assert_eq!(statuses, vec![(200, 2), (404, 1)]);
        assert_eq!(seconds[0], 1, "under half a millisecond");
        assert_eq!(seconds[2], 1, "under 2.5 ms");
        assert_eq!(seconds[SECONDS_BUCKETS.len()], 1, "longer than a minute");
        assert!(counts.take().is_none(), "told once");
    }
}
