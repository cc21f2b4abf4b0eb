//! Descriptors the node hands down to the app's process (its socket, its web listener): each
//! is taken at most once, since two owners of one descriptor would close it under each other.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use immutant_protocol::SOCKET_FD_VAR;

use crate::error::{Error, Result};

/// A descriptor the node hands down at the number in an environment variable.
pub struct Inherited {
    var: &'static str,
    /// The SDK call that takes it, and what to do instead of calling it again.
    taken_by: &'static str,
    instead: &'static str,
    taken: AtomicBool,
}

/// The app's end of its socket to the node.
pub static SOCKET: Inherited = Inherited {
    var: SOCKET_FD_VAR,
    taken_by: "App::connect",
    instead: "connect once and clone the App, which is cheap to clone",
    taken: AtomicBool::new(false),
};

/// The listening socket the node reaches the app's web handler on.
#[cfg(feature = "web")]
pub static WEB: Inherited = Inherited {
    var: immutant_protocol::WEB_FD_VAR,
    taken_by: "App::web",
    instead: "merge your routers into one (Router::merge or Router::nest) and mount that",
    taken: AtomicBool::new(false),
};

/// The app's end of the socket pair the node hands it client connections over (taken with
/// the web listener: see [`WEB`]).
#[cfg(feature = "web")]
pub static WEB_HANDOFF: Inherited = Inherited {
    var: immutant_protocol::handoff::WEB_HANDOFF_FD_VAR,
    taken_by: "App::web",
    instead: "mount one router, once (Router::merge or Router::nest make one of many)",
    taken: AtomicBool::new(false),
};

impl Inherited {
    /// The variable that names the descriptor.
    pub fn var(&self) -> &'static str {
        self.var
    }

    /// The descriptor, the first time it is asked for; `None` if the node handed none down;
    /// refused after the first time.
    pub fn take(&self) -> Result<Option<OwnedFd>> {
        let Some(fd) = std::env::var(self.var)
            .ok()
            .and_then(|value| value.parse::<i32>().ok())
        else {
            return Ok(None);
        };
        if self.taken.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyTaken {
                call: self.taken_by,
                var: self.var,
                instead: self.instead,
            });
        }
        // SAFETY: the node started this process with this descriptor open for the app, and
        // nothing else in the process owns it: `taken` lets only this first call take it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A process the app starts does not inherit it.
        immutant_protocol::handoff::close_on_exec(fd.as_fd())?;
        Ok(Some(fd))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;

    #[test]
    fn a_descriptor_is_taken_once() {
        const VAR: &str = "IMMUTANT_TEST_INHERITED_FD";
        let inherited = Inherited {
            var: VAR,
            taken_by: "the test",
            instead: "take it once",
            taken: AtomicBool::new(false),
        };
        assert!(matches!(inherited.take(), Ok(None)), "none handed down");
        let (end, _other) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        let fd = end.into_raw_fd();
        // SAFETY: no other test of this crate reads or writes the environment.
        unsafe { std::env::set_var(VAR, fd.to_string()) };
        let taken = inherited.take().expect("taken the first time");
        assert_eq!(taken.as_ref().map(AsRawFd::as_raw_fd), Some(fd));
        let again = inherited.take().map(|_| ()).expect_err("refused after");
        assert!(matches!(again, Error::AlreadyTaken { var: VAR, .. }));
        assert!(again.to_string().contains("take it once"), "{again}");
        // SAFETY: as above.
        unsafe { std::env::remove_var(VAR) };
    }
}
