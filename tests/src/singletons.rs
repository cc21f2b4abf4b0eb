//! The probe's `runner`, a singleton daemon that records each instant it runs, and what the
//! fault tests and the takeover benchmark read from its record: `<unix µs> <epoch> <node>` per
//! line, every 5 ms while its lease holds, all nodes appending to one file.

use std::path::Path;
use std::time::{Duration, Instant};

/// The view line of a partitionable trio whole.
pub const ALL_THREE: &str = "Cluster view: [one, two, three]";

/// The bound a takeover is held to in tests (the benchmark measures the real time).
pub const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

/// One instant the runner recorded.
#[derive(Debug, Clone)]
pub struct Tick {
    pub at_us: u64,
    pub epoch: u64,
    pub node: String,
}

pub fn ticks(path: &Path) -> Vec<Tick> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some(Tick {
                at_us: parts.next()?.parse().ok()?,
                epoch: parts.next()?.parse().ok()?,
                node: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// One epoch's run: on which node, from its first to its last recorded instant.
#[derive(Debug)]
pub struct Run {
    pub epoch: u64,
    pub node: String,
    pub first_us: u64,
    pub last_us: u64,
}

/// The runs in the ticks, in time order, after checking that there were never two runners:
/// each epoch on one node, no two epochs' runs overlapping, epochs growing with time.
pub fn single_runs(ticks: &[Tick]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for tick in ticks {
        match runs.iter_mut().find(|run| run.epoch == tick.epoch) {
            Some(run) => {
                assert_eq!(run.node, tick.node, "epoch {} ran on two nodes", tick.epoch);
                run.first_us = run.first_us.min(tick.at_us);
                run.last_us = run.last_us.max(tick.at_us);
            }
            None => runs.push(Run {
                epoch: tick.epoch,
                node: tick.node.clone(),
                first_us: tick.at_us,
                last_us: tick.at_us,
            }),
        }
    }
    runs.sort_by_key(|run| run.first_us);
    for pair in runs.windows(2) {
        assert!(
            pair[0].last_us < pair[1].first_us,
            "two runners at once: {:?} and {:?} overlap by {} µs",
            pair[0],
            pair[1],
            pair[0].last_us - pair[1].first_us
        );
        assert!(
            pair[0].epoch < pair[1].epoch,
            "the epoch went back at a handover: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    runs
}

/// Microseconds since the Unix epoch now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The node the runner recorded its latest instant on, once that is recent (within 100 ms) and
/// has been for half a second: the singleton's holder.
pub fn holder(path: &Path) -> String {
    let deadline = Instant::now() + TAKEOVER_BOUND;
    let mut since: Option<(String, Instant)> = None;
    loop {
        let latest = ticks(path).into_iter().max_by_key(|tick| tick.at_us);
        match (latest, &since) {
            (Some(tick), Some((node, at)))
                if tick.node == *node
                    && now_us() - tick.at_us < 100_000
                    && at.elapsed() > Duration::from_millis(500) =>
            {
                return tick.node;
            }
            (Some(tick), _) if now_us() - tick.at_us < 100_000 => {
                if since.as_ref().is_none_or(|(node, _)| *node != tick.node) {
                    since = Some((tick.node, Instant::now()));
                }
            }
            _ => since = None,
        }
        assert!(
            Instant::now() < deadline,
            "no runner has recorded steadily for {TAKEOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Clustered nodes of one install running the probe's runner, all recording into one ticks
/// file.
pub struct Runners {
    _base: crate::Base,
    pub ticks: std::path::PathBuf,
    /// Each node's name, port offset, and process.
    pub nodes: Vec<(String, u16, crate::Proc)>,
}

impl Runners {
    /// Two nodes, `one` and `two`, on 127.0.0.1, in one view, the runner deployed on both.
    pub fn pair() -> Runners {
        Runners::pair_with(&[])
    }

    /// [`Runners::pair`], each node started with `more` arguments too.
    pub fn pair_with(more: &[String]) -> Runners {
        let base = crate::Base::installed();
        base.deploy(&crate::probe(), Some("runner"));
        let ticks = base.path().join("ticks");
        let cluster = crate::cluster_name();
        let nodes: Vec<(String, u16, crate::Proc)> = ["one", "two"]
            .into_iter()
            .map(|name| {
                let offset = crate::free_offset();
                let mut extra = vec![format!("-Dprobe.ticks={}", ticks.display())];
                extra.extend_from_slice(more);
                let node = crate::clustered_with(&base, name, offset, &cluster, &extra);
                (name.to_string(), offset, node)
            })
            .collect();
        for (_, _, node) in &nodes {
            node.wait_for("Cluster view: [one, two]", crate::PATIENCE);
            node.wait_for("Deployed \"runner\"", crate::BUILD_PATIENCE);
        }
        Runners {
            _base: base,
            ticks,
            nodes,
        }
    }

    /// Three nodes, `one`, `two` and `three`, in hosts 0, 1 and 2 of `lan`, with a quorum of 2,
    /// in one view, the runner deployed on all.
    pub fn partitionable(lan: &crate::netns::Lan) -> Runners {
        let base = crate::Base::installed();
        base.deploy(&crate::probe(), Some("runner"));
        let ticks = base.path().join("ticks");
        let cluster = crate::cluster_name();
        let extra = [
            format!("-Dprobe.ticks={}", ticks.display()),
            "-Dimmutant.singleton.quorum=2".to_string(),
        ];
        let nodes: Vec<(String, u16, crate::Proc)> = ["one", "two", "three"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let node = lan.node(&base, i, (name, &cluster), &extra);
                (name.to_string(), 0, node)
            })
            .collect();
        for (_, _, node) in &nodes {
            node.wait_for(ALL_THREE, crate::PATIENCE);
            node.wait_for("Deployed \"runner\"", crate::BUILD_PATIENCE);
        }
        Runners {
            _base: base,
            ticks,
            nodes,
        }
    }

    /// The position of the node called `name`: its host, in a partitionable trio.
    pub fn position(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|(named, _, _)| named == name)
            .expect("a node of that name")
    }

    /// The node called `name`: its port offset and process.
    pub fn node(&self, name: &str) -> (u16, &crate::Proc) {
        let (_, offset, node) = self
            .nodes
            .iter()
            .find(|(named, _, _)| named == name)
            .expect("a node of that name");
        (*offset, node)
    }
}

/// The pids of the server at `offset` and of its runner app.
pub fn server_and_app(offset: u16) -> [i32; 2] {
    let server = crate::get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    let app = crate::get_json_at(9990 + offset, "deployments")[0]["pid"]
        .as_i64()
        .expect("the runner has a process") as i32;
    [server, app]
}

/// Sends `signal` to each of `pids`.
pub fn signal(pids: &[i32], signal: i32) {
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid, signal) };
    }
}

/// Waits for the first instant recorded after `since_us` under an epoch newer than `old`: the
/// takeover's first run.
pub fn first_after(path: &Path, since_us: u64, old: u64) -> Tick {
    let deadline = Instant::now() + TAKEOVER_BOUND;
    loop {
        let first = ticks(path)
            .into_iter()
            .filter(|tick| tick.at_us > since_us && tick.epoch > old)
            .min_by_key(|tick| tick.at_us);
        if let Some(first) = first {
            return first;
        }
        assert!(
            Instant::now() < deadline,
            "no takeover within {TAKEOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
