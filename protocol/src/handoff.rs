//! Handing a client's connection between the node and an app's process, so that the app
//! serves the connection's requests itself rather than the node passing each one on over a
//! second connection. The node tells the app where every app of the node is mounted (and again
//! whenever that changes), routes a connection's first request, then sends the connection (its
//! descriptor, `SCM_RIGHTS`) over a socket pair it made for the app's process
//! (`IMMUTANT_WEB_HANDOFF_FD`); the app serves the requests that are its own and gives the
//! connection back, with whatever it has read of it, when one is not (or when it stops while
//! the connection is idle).
//!
//! Each message is one datagram of the sequenced-packet pair: a kind byte, then the kind's
//! body: `C` a connection (the descriptor beside it; the body is what was read of it already),
//! `R` the routes (JSON, a list of [`Mounted`]).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::web::Mounted;

/// The environment variable holding the number of the app's end of its hand-off socket pair.
pub const WEB_HANDOFF_FD_VAR: &str = "IMMUTANT_WEB_HANDOFF_FD";

/// The most a message holds (below what a Unix socket takes in one datagram by default): what
/// was read of a connection is bounded well below it by [`MAX_READ`], the routes of a node by
/// its apps.
pub const MAX_MESSAGE: usize = 128 * 1024;
/// The most of a connection one side may have read and hand on with it.
pub const MAX_READ: usize = 64 * 1024;

const CONNECTION: u8 = b'C';
const ROUTES: u8 = b'R';

/// What came over the channel.
pub enum Handoff {
    /// A client's connection, and the bytes already read from it (to be read first).
    Connection { read: Vec<u8>, stream: OwnedFd },
    /// The apps mounted on the node now.
    Routes(Vec<Mounted>),
    /// A connection was sent, but its descriptor did not come: this process had no room for
    /// one more (both sides raise their limit: [`raise_open_files_limit`]).
    Lost,
}

/// Raises this process's limit of open descriptors to the most it may have: every client
/// connection a process serves holds one.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Marks `fd` (one inherited from the node) closed at exec, so that a process the app starts
/// does not inherit it.
pub fn close_on_exec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    Ok(rustix::io::fcntl_setfd(
        fd,
        flags | rustix::io::FdFlags::CLOEXEC,
    )?)
}

/// One end of a hand-off socket pair.
pub struct HandoffChannel {
    socket: AsyncFd<OwnedFd>,
}

impl HandoffChannel {
    /// A new pair of ends, non-blocking, closed at exec (a child inherits its end by `dup2`).
    pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
        let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
        Ok(rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            flags,
            None,
        )?)
    }

    /// Uses `end` (one made by [`HandoffChannel::pair`], or inherited from the node) on the
    /// current tokio runtime.
    pub fn new(end: OwnedFd) -> std::io::Result<HandoffChannel> {
        rustix::io::ioctl_fionbio(&end, true)?;
        let interest = Interest::READABLE | Interest::WRITABLE;
        // SAFETY: the `OwnedFd` keeps its descriptor open, and the same, as long as it lives in
        // the `AsyncFd`.
        let socket = unsafe { AsyncFd::register_with_interest(end, interest) }?;
        Ok(HandoffChannel { socket })
    }

    /// Sends `stream`, of which `read` has been read already. The caller closes its own
    /// descriptor of the stream afterwards: the other side has one of its own.
    pub async fn send_connection(
        &self,
        read: &[u8],
        stream: BorrowedFd<'_>,
    ) -> std::io::Result<()> {
        if read.len() > MAX_READ {
            return Err(std::io::Error::other(format!(
                "{} bytes read of a connection are more than a hand-off carries ({MAX_READ})",
                read.len()
            )));
        }
        self.send(CONNECTION, read, Some(stream)).await
    }

    /// Sends the routes of every app on the node.
    pub async fn send_routes(&self, routes: &[Mounted]) -> std::io::Result<()> {
        let body = serde_json::to_vec(routes).map_err(std::io::Error::other)?;
        self.send(ROUTES, &body, None).await
    }

    async fn send(&self, kind: u8, body: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        if body.len() + 1 > MAX_MESSAGE {
            return Err(std::io::Error::other(format!(
                "a hand-off message of {} bytes is more than the {MAX_MESSAGE} one may hold",
                body.len() + 1
            )));
        }
        let fds = fd.map(|fd| [fd]);
        loop {
            let mut ready = self.socket.writable().await?;
            let sent = ready.try_io(|socket| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if let Some(fds) = &fds {
                    control.push(SendAncillaryMessage::ScmRights(fds));
                }
                let kind = [kind];
                let parts = [IoSlice::new(&kind), IoSlice::new(body)];
                Ok(rustix::net::sendmsg(
                    socket.as_fd(),
                    &parts,
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?)
            });
            match sent {
                Ok(sent) => return sent.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message, read into `buffer` (kept by the caller between calls); `None` once
    /// the other end is closed. A message this side cannot read is skipped (its descriptor
    /// closed).
    pub async fn recv(&self, buffer: &mut Vec<u8>) -> std::io::Result<Option<Handoff>> {
        buffer.resize(MAX_MESSAGE, 0);
        loop {
            let mut ready = self.socket.readable().await?;
            let received = ready.try_io(|socket| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut parts = [IoSliceMut::new(buffer)];
                let message = rustix::net::recvmsg(
                    socket.as_fd(),
                    &mut parts,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for ancillary in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = ancillary {
                        fds.extend(received);
                    }
                }
                // Its descriptor did not come (this process had no room for one more).
                let truncated = message.flags.contains(ReturnFlags::CTRUNC);
                Ok((message.bytes, fds, truncated))
            });
            let (length, mut fds, truncated) = match received {
                Ok(received) => received?,
                Err(_would_block) => continue,
            };
            if length == 0 && fds.is_empty() && !truncated {
                return Ok(None);
            }
            if truncated {
                return Ok(Some(Handoff::Lost));
            }
            let message = &buffer[..length.min(buffer.len())];
            match (message.split_first(), fds.pop()) {
                (Some((&CONNECTION, read)), Some(stream)) if fds.is_empty() => {
                    return Ok(Some(Handoff::Connection {
                        read: read.to_vec(),
                        stream,
                    }));
                }
                (Some((&ROUTES, body)), None) => {
                    if let Ok(routes) = serde_json::from_slice(body) {
                        return Ok(Some(Handoff::Routes(routes)));
                    }
                }
                // Not a message of this protocol: skipped, its descriptors closed.
                _ => {}
            }
        }
    }
}

/// A connection handed over (its descriptor), as a tokio stream, and its client's address.
pub fn tcp_stream(stream: OwnedFd) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    let peer = stream.peer_addr()?;
    Ok((stream, peer))
}

/// What a [`Prefixed`] connection tells of its reads and writes (nothing, by default).
pub trait Observer: Unpin {
    /// `bytes` were read.
    fn read(&self, _bytes: &[u8]) {}
    /// A write of `wanted` bytes gave `written`.
    fn wrote(&self, _wanted: usize, _written: &Poll<std::io::Result<usize>>) {}
}

impl Observer for () {}

/// A connection with bytes already read from it, which are read again first; what is read and
/// written is told to its [`Observer`].
pub struct Prefixed<S, O: Observer = ()> {
    read: Vec<u8>,
    offset: usize,
    stream: S,
    observer: O,
}

impl<S> Prefixed<S> {
    /// `stream`, of which `read` was read already.
    pub fn new(read: Vec<u8>, stream: S) -> Prefixed<S> {
        Prefixed::observed(read, stream, ())
    }
}

impl<S, O: Observer> Prefixed<S, O> {
    /// `stream`, of which `read` was read already, its reads and writes told to `observer`.
    pub fn observed(read: Vec<u8>, stream: S, observer: O) -> Prefixed<S, O> {
        Prefixed {
            read,
            offset: 0,
            stream,
            observer,
        }
    }
}

impl<S: AsyncRead + Unpin, O: Observer> AsyncRead for Prefixed<S, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if this.offset < this.read.len() {
            let rest = &this.read[this.offset..];
            let taken = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..taken]);
            this.offset += taken;
            if this.offset == this.read.len() {
                this.read = Vec::new();
                this.offset = 0;
            }
            this.observer.read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.observer.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, O: Observer> AsyncWrite for Prefixed<S, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.observer.wrote(buf.len(), &written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        let wanted = bufs.iter().map(|buf| buf.len()).sum();
        self.observer.wrote(wanted, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[tokio::test]
    async fn a_connection_and_the_routes_pass_with_what_was_read() {
        let (node, app) = HandoffChannel::pair().unwrap();
        let (node, app) = (
            HandoffChannel::new(node).unwrap(),
            HandoffChannel::new(app).unwrap(),
        );
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        node.send_connection(b"GET / HTTP/1.1\r\n", server.as_fd())
            .await
            .unwrap();
        drop(server);
        let routes = vec![Mounted {
            app: "shop".to_string(),
            context_path: "/shop".to_string(),
            hosts: vec![],
        }];
        node.send_routes(&routes).await.unwrap();
        let mut buffer = Vec::new();
        let Some(Handoff::Connection { read, stream }) = app.recv(&mut buffer).await.unwrap()
        else {
            panic!("a connection first");
        };
        assert_eq!(read, b"GET / HTTP/1.1\r\n");
        let mut stream = std::os::unix::net::UnixStream::from(stream);
        stream.write_all(b"hello").unwrap();
        let mut heard = [0; 5];
        client.read_exact(&mut heard).unwrap();
        assert_eq!(&heard, b"hello", "the same connection");
        let Some(Handoff::Routes(heard)) = app.recv(&mut buffer).await.unwrap() else {
            panic!("the routes next");
        };
        assert_eq!(heard, routes);
        drop(node);
        assert!(app.recv(&mut buffer).await.unwrap().is_none(), "closed");
    }

    #[tokio::test]
    async fn more_read_than_a_hand_off_carries_is_refused() {
        let (node, _app) = HandoffChannel::pair().unwrap();
        let node = HandoffChannel::new(node).unwrap();
        let (_client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let read = vec![b'x'; MAX_READ + 1];
        let refused = node.send_connection(&read, server.as_fd()).await;
        assert!(refused.unwrap_err().to_string().contains("more than"));
    }
}
