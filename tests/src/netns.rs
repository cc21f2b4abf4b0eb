//! Private networks made of Linux network namespaces, for partition tests.
//!
//! A [`Lan`] is a switch (a bridge in a namespace of its own) and hosts: each host a namespace
//! with one veth link to the switch and an address of `10.213.0.0/24`, which exists only
//! inside these namespaces. Nodes run in hosts with `ip netns exec`, bound to their host's
//! address, each with the whole port range to itself; multicast goes through the bridge.
//! [`Lan::cut`] takes a host's link off the switch without a word to the host (its interface
//! stays up, frames go nowhere), as a pulled cable further along would; [`Lan::heal`] puts it
//! back. Nothing here sends anything outside the namespaces it made, and the host's own
//! network is not touched. Making namespaces needs root: the tests that need a [`Lan`] are
//! ignored (and counted so) unless built as root (`tests/build.rs` sets `cfg(as_root)`), and
//! [`Lan::make`], which they call, fails the test if it cannot make one.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A switch and the hosts linked to it.
pub struct Lan {
    switch: String,
    hosts: Vec<String>,
}

impl Lan {
    /// A switch and `hosts` hosts, host `i` at `10.213.0.(i + 1)`; fails the test, with the
    /// reason, where network namespaces cannot be made. For tests marked
    /// `#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]`: they run
    /// only where they can make one.
    pub fn make(hosts: usize) -> Lan {
        Lan::try_new(hosts).unwrap_or_else(|why| {
            panic!("cannot make a network namespace: {why}; partition tests need root and iproute2")
        })
    }

    /// A switch and `hosts` hosts, as [`Lan::make`]; `None`, after saying why on stderr,
    /// where network namespaces cannot be made and the run is not root (the takeover
    /// benchmark then skips its partition trials). As root, failing to make one fails.
    pub fn new(hosts: usize) -> Option<Lan> {
        match Lan::try_new(hosts) {
            Ok(lan) => Some(lan),
            Err(why) => {
                // As root they can be made: a failure there is the caller's.
                // SAFETY: geteuid has no preconditions.
                assert_ne!(
                    unsafe { libc::geteuid() },
                    0,
                    "cannot make a network namespace as root: {why}"
                );
                eprintln!(
                    "skipped: network namespaces cannot be made here ({why}); partition tests need root and iproute2"
                );
                None
            }
        }
    }

    /// A switch and `hosts` hosts; the error is why the switch's namespace could not be made
    /// (once it is, a host that cannot be fails the test).
    fn try_new(hosts: usize) -> Result<Lan, String> {
        remove_abandoned();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{prefix}-sw");
        ip(&["netns", "add", &switch])?;
        let mut lan = Lan {
            switch,
            hosts: Vec::new(),
        };
        lan.on_switch(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        lan.on_switch(&["link", "set", "br0", "up"]);
        for i in 0..hosts {
            let host = format!("{prefix}-h{i}");
            ip(&["netns", "add", &host]).expect("a host namespace");
            lan.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n",
                &host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.switch,
            ])
            .expect("a veth pair between the host and the switch");
            lan.on_switch(&["link", "set", &port, "master", "br0"]);
            lan.on_switch(&["link", "set", &port, "up"]);
            let address = format!("{}/24", lan.address(i));
            for args in [
                vec!["addr", "add", &address, "dev", "eth0"],
                vec!["link", "set", "eth0", "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let mut all = vec!["-n", &host];
                all.extend(args);
                ip(&all).expect("the host's link set up");
            }
        }
        Ok(lan)
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 0, i as u8 + 1)
    }

    /// `command`, run in host `i` (its environment kept).
    pub fn command(&self, i: usize, command: Command) -> Command {
        let mut within = Command::new("ip");
        within
            .args(["netns", "exec", &self.hosts[i]])
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => within.env(name, value),
                None => within.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            within.current_dir(dir);
        }
        within
    }

    /// Runs `work` on a thread of its own in host `i` (sockets it opens, and threads it starts,
    /// are in the host's network), and answers what it answers.
    pub fn within<T: Send>(&self, i: usize, work: impl FnOnce() -> T + Send) -> T {
        within(&self.hosts[i], work)
    }

    /// The name of host `i`'s network namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Clustered node `name` of `cluster` of `base`'s install, in host `i` bound to the host's
    /// address, with `extra` arguments; started.
    pub fn node(
        &self,
        base: &crate::Base,
        i: usize,
        (name, cluster): (&str, &str),
        extra: &[String],
    ) -> crate::Proc {
        let mut args = vec!["run".to_string(), "--clustered".to_string()];
        args.extend(base.node_args(name, 0));
        args.push(format!("-Djboss.bind.address={}", self.address(i)));
        args.push(format!("-Dimmutant.cluster.name={cluster}"));
        args.extend_from_slice(extra);
        let proc = crate::Proc::spawn(self.command(i, base.cli(args)));
        proc.wait_for("started in", crate::PATIENCE);
        proc
    }

    /// Takes host `i` off the switch: nothing it sends arrives, nothing reaches it; its own
    /// link stays up, so it is not told.
    pub fn cut(&self, i: usize) {
        self.on_switch(&["link", "set", &format!("p{i}"), "nomaster"]);
    }

    /// Puts host `i` back on the switch.
    pub fn heal(&self, i: usize) {
        self.on_switch(&["link", "set", &format!("p{i}"), "master", "br0"]);
    }

    fn on_switch(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.switch];
        all.extend(args);
        ip(&all).unwrap_or_else(|why| panic!("ip {}: {why}", all.join(" ")));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // A namespace goes with its links; processes still in one keep it until they end.
        for namespace in self.hosts.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", namespace]);
        }
    }
}

/// Runs `work` on a thread of its own in the network namespace `namespace`, and answers what
/// it answers.
pub fn within<T: Send>(namespace: &str, work: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{namespace}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let namespace = std::fs::File::open(&path).expect("the host's namespace");
                // SAFETY: setns on a descriptor this thread holds open; it changes only this
                // thread's network namespace.
                let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(entered, 0, "entering {path}");
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip ARGS`; the error is what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_string()),
    }
}

/// How the namespaces made here are named: the prefix, the test process's id, a number, and
/// `sw` or `h<i>`.
const PREFIX: &str = "immutant-e2e-";

/// Deletes the namespaces of test processes that ended without deleting theirs (killed): only
/// names of the form above, and only those whose process is gone.
fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let numeric = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let ours = match rest.split('-').collect::<Vec<_>>()[..] {
            [pid, number, role] => {
                numeric(pid)
                    && numeric(number)
                    && (role == "sw" || role.strip_prefix('h').is_some_and(numeric))
                    && !std::path::Path::new("/proc").join(pid).exists()
            }
            _ => false,
        };
        if ours {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
