//! One handed connection as the app sees it: what was read of it since its last answer (to give
//! it back to the node with), whether it waits for a request, and the signals that reach the
//! task serving it (a request to give back, the app stopping, a look for silence). Each is kept
//! per connection, so that serving a request touches nothing another thread touches.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::Request;
use futures_util::task::AtomicWaker;
use immutant_protocol::handoff::{MAX_READ, Observer, Prefixed};
use immutant_protocol::web::Mounted;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::Served;

/// A request of this connection is another app's: give the connection back.
pub(super) const GIVE_BACK: u8 = 1;
/// The app stops.
pub(super) const STOP: u8 = 2;
/// Time to see whether the connection said anything since the last look.
pub(super) const LOOK: u8 = 4;

/// The most headers a request given back may have (as the node looks at a first request).
const MAX_HEADERS: usize = 64;

/// What one handed connection is doing.
pub(super) struct ConnectionState {
    pub(super) served: Arc<Served>,
    /// What was read from the first read after the last answer was written: the request being
    /// answered (checked as hyper hands it over), then what comes of the next.
    read: Mutex<Read>,
    /// An answer was written since the last read.
    wrote: AtomicBool,
    /// Part of an answer is not written yet (the client reads slowly).
    unwritten: AtomicBool,
    /// A request's body was not read to its end: where the next request begins in what was
    /// read is not known, so the connection cannot go back to the node.
    tainted: AtomicBool,
    /// Requests whose answers are not all given yet.
    pub(super) answering: AtomicUsize,
    /// Requests whose heads came, ever.
    pub(super) begun: AtomicU64,
    /// Signals for the task serving the connection, and its waker.
    signals: AtomicU8,
    waker: AtomicWaker,
    /// The request going back, with what was read of it, and who hears whether it went.
    giving_back: Mutex<Option<(Vec<u8>, oneshot::Sender<bool>)>>,
    /// The routes this connection's requests were last routed by, and their version.
    routes: Mutex<(u64, Option<Arc<Vec<Mounted>>>)>,
}

#[derive(Default)]
struct Read {
    bytes: Vec<u8>,
    /// More than a hand-off carries was read since the last answer.
    overflowed: bool,
    /// How many of the bytes the request being answered spans (its head and body).
    extent: Option<usize>,
}

impl ConnectionState {
    pub(super) fn new(served: Arc<Served>) -> ConnectionState {
        ConnectionState {
            served,
            read: Mutex::default(),
            wrote: AtomicBool::new(false),
            unwritten: AtomicBool::new(false),
            tainted: AtomicBool::new(false),
            answering: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            giving_back: Mutex::new(None),
            routes: Mutex::new((u64::MAX, None)),
        }
    }

    /// Tells the task serving the connection.
    pub(super) fn signal(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The signals since the last call, if any; wakes `cx` at the next.
    pub(super) fn poll_signals(&self, cx: &mut Context<'_>) -> Option<u8> {
        self.waker.register(cx.waker());
        let signals = self.signals.swap(0, Ordering::AcqRel);
        (signals != 0).then_some(signals)
    }

    /// Whether a request for `host` and `path` is this app's, by the routes the node said
    /// last (until it has said any: whether it is under the app's context path).
    pub(super) fn serves(&self, host: &str, path: &str) -> bool {
        let served = &self.served;
        let mut routes = lock(&self.routes);
        let version = served.routes_version.load(Ordering::Acquire);
        if routes.0 != version {
            *routes = (version, served.routes());
        }
        match &routes.1 {
            None => served.mounted.covers(path),
            Some(mounts) => immutant_protocol::web::find(mounts, host, path).is_some_and(|mount| {
                mount.app == served.mounted.app && mount.context_path == served.mounted.context_path
            }),
        }
    }

    fn recorded(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut read = lock(&self.read);
        if self.wrote.swap(false, Ordering::AcqRel) {
            self.check_overrun(&read);
            *read = Read::default();
        }
        if read.overflowed || read.bytes.len() + bytes.len() > MAX_READ {
            read.overflowed = true;
            read.bytes = Vec::new();
        } else {
            read.bytes.extend_from_slice(bytes);
        }
    }

    /// Taints the connection if more was read than the request being answered spans: the
    /// client sent its next request before this answer, and hyper holds part of it.
    fn check_overrun(&self, read: &Read) {
        if read.extent.is_some_and(|extent| read.bytes.len() > extent) {
            self.tainted.store(true, Ordering::Release);
        }
    }

    /// hyper hands `request` over: what was read since the last answer must be where it
    /// begins and no more than it spans, or where later requests begin is not known (a client
    /// that sends ahead, a body of unknown length, more than a hand-off carries).
    pub(super) fn dispatched<B>(&self, request: &Request<B>) {
        let mut read = lock(&self.read);
        let extent = match self.wrote.load(Ordering::Acquire) || read.overflowed {
            true => None,
            false => extent(&read.bytes, request),
        };
        match extent {
            Some(extent) if read.bytes.len() <= extent => read.extent = Some(extent),
            _ => self.tainted.store(true, Ordering::Release),
        }
    }

    /// What was read since the last answer, if a hand-off can carry it and it is all there
    /// is: nothing of an answer waits to be written, and where requests begin is known.
    fn read_since_answer(&self) -> Option<Vec<u8>> {
        if self.unwritten.load(Ordering::Acquire) {
            return None;
        }
        let read = lock(&self.read);
        if self.wrote.load(Ordering::Acquire) {
            self.check_overrun(&read);
        }
        if self.tainted.load(Ordering::Acquire) || read.overflowed {
            return None;
        }
        match self.wrote.load(Ordering::Acquire) {
            true => Some(Vec::new()),
            false => Some(read.bytes.clone()),
        }
    }

    /// Keeps the request being answered (another app's) to give back, with what was read of
    /// it (exactly its head and no more than its body: see [`ConnectionState::dispatched`]);
    /// the receiver hears whether it went.
    pub(super) fn give_back(&self) -> Option<oneshot::Receiver<bool>> {
        let read = self.read_since_answer()?;
        let (told, hears) = oneshot::channel();
        *lock(&self.giving_back) = Some((read, told));
        self.signal(GIVE_BACK);
        Some(hears)
    }

    /// The request kept to give back, if any.
    pub(super) fn taken_back(&self) -> Option<(Vec<u8>, oneshot::Sender<bool>)> {
        lock(&self.giving_back).take()
    }

    /// What to give back with the connection now if it is idle: no request being answered
    /// (hyper hands a request over in the same poll that reads the end of its head, and this is
    /// never asked during one), and of the next only part of the head (or nothing) read.
    pub(super) fn idle(&self) -> Option<Vec<u8>> {
        if self.answering.load(Ordering::Acquire) != 0 {
            return None;
        }
        let read = self.read_since_answer()?;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let partial = read.is_empty()
            || matches!(
                httparse::Request::new(&mut headers).parse(&read),
                Ok(httparse::Status::Partial)
            );
        partial.then_some(read)
    }

    /// Whether the connection may still go back to the node: where its requests begin in
    /// what is read of it is known.
    pub(super) fn can_go_back(&self) -> bool {
        !self.tainted.load(Ordering::Acquire)
    }

    /// A request's answer is all given; `body_read`: its body was read to its end.
    pub(super) fn answered(&self, body_read: bool) {
        if !body_read {
            self.tainted.store(true, Ordering::Release);
        }
        self.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many bytes `request` spans in `read` if `read` begins with its head (method, target and
/// host as hyper read them) and its body's length is said (`Content-Length`, or none).
fn extent<B>(read: &[u8], request: &Request<B>) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(length)) = head.parse(read) else {
        return None;
    };
    let target = request.uri().path_and_query().map(|target| target.as_str());
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .map(|host| host.as_bytes());
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let same = head.method == Some(request.method().as_str())
        && head.path == target
        && header("host") == host;
    if !same || header("transfer-encoding").is_some() {
        return None;
    }
    let body = match header("content-length") {
        None => 0,
        Some(length) => std::str::from_utf8(length)
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()?,
    };
    length.checked_add(body)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handed connection: what the node read of it first, then the socket; every read recorded
/// and every write marked in its [`ConnectionState`].
pub(super) type Recorded = Prefixed<TcpStream, Recording>;

/// Records a handed connection's reads and writes in its [`ConnectionState`].
pub(super) struct Recording(pub(super) Arc<ConnectionState>);

impl Observer for Recording {
    fn read(&self, bytes: &[u8]) {
        self.0.recorded(bytes);
    }

    fn wrote(&self, wanted: usize, written: &Poll<std::io::Result<usize>>) {
        self.0.wrote.store(true, Ordering::Release);
        let all = matches!(written, Poll::Ready(Ok(written)) if *written == wanted);
        self.0.unwritten.store(!all, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> Request<()> {
        Request::get(target)
            .header("host", "127.0.0.1")
            .body(())
            .unwrap()
    }

    #[test]
    fn only_a_request_read_from_its_beginning_goes_back() {
        let head = b"GET /other?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert_eq!(extent(head, &get("/other?x=1")), Some(head.len()));
        assert_eq!(extent(head, &get("/other")), None, "another target");
        assert_eq!(
            extent(&head[..20], &get("/other?x=1")),
            None,
            "not all of it"
        );
        let tail = b"tail of a body GET /other?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert_eq!(
            extent(tail, &get("/other?x=1")),
            None,
            "what came before it"
        );
        let post = b"POST /other HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nab";
        let request = Request::post("/other")
            .header("host", "127.0.0.1")
            .body(())
            .unwrap();
        assert_eq!(
            extent(post, &request),
            Some(post.len() + 2),
            "its body counted"
        );
    }

    fn state() -> ConnectionState {
        let (_, end) = immutant_protocol::handoff::HandoffChannel::pair().unwrap();
        let channel = immutant_protocol::handoff::HandoffChannel::new(end).unwrap();
        let served = Served::new("app", "/app", axum::Router::new(), channel);
        ConnectionState::new(served)
    }

    #[tokio::test]
    async fn a_client_that_sends_ahead_can_no_longer_go_back() {
        let state = state();
        let first = b"GET /app/a HTTP/1.1\r\nHost: h\r\n\r\n";
        state.recorded(first);
        let request = Request::get("/app/a").header("host", "h").body(()).unwrap();
        state.dispatched(&request);
        assert_eq!(
            state.read_since_answer(),
            Some(first.to_vec()),
            "its own request"
        );
        // The next request came before this answer was written.
        state.recorded(b"GET /other HTTP/1.1\r\n");
        state.wrote.store(true, Ordering::Release);
        assert_eq!(
            state.read_since_answer(),
            None,
            "where the next begins is hyper's"
        );
        assert!(!state.can_go_back());
    }
}
