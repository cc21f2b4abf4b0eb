//! `status`: the cluster at a glance. Every running node of the install is asked for its
//! `/status` (with its management token), and so is every other member of the views they see
//! whose management API answers from here; the answers are shown as tables, or as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use immutant_contracts::status::{EngineKind, EngineStatus, NodeStatus, SingletonStatus};
use serde::Serialize;

use crate::list::{NodeRecord, running_nodes, span};
use crate::locations::Locations;

/// How `status` shows what it found.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusOptions {
    /// JSON for scripts instead of tables.
    pub json: bool,
    /// Redraw every second until interrupted.
    pub watch: bool,
}

/// What `status` found: every node that answered, those that did not, and what the balancers
/// the nodes speak to know.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub nodes: Vec<serde_json::Value>,
    pub unreachable: Vec<Unreachable>,
    pub balancers: Vec<BalancerView>,
}

/// A balancer's view of the nodes, or why it could not be had.
#[derive(Debug, Serialize)]
pub struct BalancerView {
    /// Its MCMP address.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node that was asked and did not answer.
#[derive(Debug, Serialize)]
pub struct Unreachable {
    pub name: String,
    pub management: String,
    pub error: String,
}

/// Shows the status once, or (`watch`) every second until interrupted.
pub fn status(locations: &Locations, options: StatusOptions) -> Result<()> {
    loop {
        let found = gather(locations)?;
        let text = match options.json {
            true => serde_json::to_string(&found)?,
            false => render(&found),
        };
        if !options.watch {
            println!("{text}");
            return Ok(());
        }
        match options.json {
            // One document a line: a stream a script can read as it comes.
            true => println!("{text}"),
            // Home, clear, then the tables: the terminal shows the latest alone.
            false => println!("\x1b[H\x1b[2J{text}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Who `status` asks.
enum Asked {
    /// A node of the install: its token goes along.
    Local(NodeRecord),
    /// Another member of a view: without a token, which is not this user's to have.
    Member { name: String, management: String },
}

impl Asked {
    fn name(&self) -> &str {
        match self {
            Asked::Local(record) => &record.name,
            Asked::Member { name, .. } => name,
        }
    }

    fn management(&self) -> &str {
        match self {
            Asked::Local(record) => &record.management,
            Asked::Member { management, .. } => management,
        }
    }

    fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        match self {
            Asked::Local(record) => record.get(client, path),
            Asked::Member { management, .. } => client.get(format!("{management}{path}")),
        }
    }
}

/// Asks every running node of the install, then the members of their views not asked yet.
pub fn gather(locations: &Locations) -> Result<ClusterStatus> {
    let records = running_nodes(locations);
    crate::http::block_on(async {
        let client = crate::http::client(Some(Duration::from_secs(3)))?;
        let asked: BTreeSet<String> = records.iter().map(|node| node.name.clone()).collect();
        let asks = records
            .into_iter()
            .map(|node| ask(&client, Asked::Local(node)));
        let mut answers = futures_util::future::join_all(asks).await;
        let members: BTreeMap<String, String> = answers
            .iter()
            .flat_map(|(_, answer)| answer.as_ref().ok())
            .flat_map(|status| typed(status).cluster.map(|cluster| cluster.view))
            .flatten()
            .filter(|member| !asked.contains(&member.name))
            .filter_map(|member| Some((member.name, member.management?)))
            .collect();
        let remote = members
            .into_iter()
            .map(|(name, management)| ask(&client, Asked::Member { name, management }));
        answers.extend(futures_util::future::join_all(remote).await);
        let mut found = ClusterStatus {
            nodes: Vec::new(),
            unreachable: Vec::new(),
            balancers: Vec::new(),
        };
        for (asked, answer) in answers {
            match answer {
                Ok(status) => found.nodes.push(status),
                Err(error) => found.unreachable.push(Unreachable {
                    name: asked.name().to_string(),
                    management: asked.management().to_string(),
                    error,
                }),
            }
        }
        let addresses: BTreeSet<String> = found
            .nodes
            .iter()
            .flat_map(|status| typed(status).balancers)
            .map(|balancer| balancer.address)
            .collect();
        let views = addresses.into_iter().map(|address| {
            let client = client.clone();
            async move {
                match crate::balancer::fetch_view(&client, &address).await {
                    Ok(view) => BalancerView {
                        address,
                        view: Some(view),
                        error: None,
                    },
                    Err(error) => BalancerView {
                        address,
                        view: None,
                        error: Some(format!("{error:#}")),
                    },
                }
            }
        });
        found.balancers = futures_util::future::join_all(views).await;
        anyhow::Ok(found)
    })?
}

/// A node's `/status`, if it answers as the node it is meant to be (a member's management
/// address may be loopback on its own host, and reach another node from here).
async fn ask(client: &reqwest::Client, node: Asked) -> (Asked, Result<serde_json::Value, String>) {
    let answer = async {
        let response = node
            .get(client, "/status")
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        let status: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| error.to_string())?;
        match status["name"].as_str() == Some(node.name()) {
            true => Ok(status),
            false => Err(format!(
                "{} answers as another node ({})",
                node.management(),
                status["name"]
            )),
        }
    }
    .await;
    (node, answer)
}

/// The engine, and whether the node reaches it (the embedded one always does).
fn engine(engine: &EngineStatus) -> String {
    match (engine.kind, engine.connected) {
        (EngineKind::Nats, true) => "nats (connected)".to_string(),
        (EngineKind::Nats, false) => "nats (NOT CONNECTED)".to_string(),
        (kind, _) => kind.to_string(),
    }
}

/// A node's `/status` as the contract reads it; what it cannot read is left out.
fn typed(status: &serde_json::Value) -> NodeStatus {
    serde_json::from_value(status.clone()).unwrap_or_default()
}

/// The tables `status` prints.
pub fn render(found: &ClusterStatus) -> String {
    let mut nodes: Vec<NodeStatus> = found.nodes.iter().map(typed).collect();
    nodes.sort_by(|a, b| (a.started_ms, &a.name).cmp(&(b.started_ms, &b.name)));
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut out = String::new();
    let clusters: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|node| Some(node.cluster.as_ref()?.name.as_str()))
        .collect();
    out.push_str(&match (nodes.len(), clusters.len()) {
        (0, _) => "No node of this install is running.\n".to_string(),
        (_, 0) => "Standalone nodes (not clustered):\n".to_string(),
        _ => format!(
            "Cluster {}:\n",
            clusters.into_iter().collect::<Vec<_>>().join(", ")
        ),
    });
    let mut rows = vec![row([
        "NODE", "ADDRESS", "STARTED", "UPTIME", "MEMORY", "LOAD", "ENGINE", "VIEW",
    ])];
    for node in &nodes {
        // When it started is its age in the cluster: the view lists the oldest first.
        let started = chrono::DateTime::from_timestamp_millis(node.started_ms as i64)
            .map_or("-".to_string(), |at| at.format("%H:%M:%S").to_string());
        rows.push(vec![
            node.name.clone(),
            node.bind_address.clone(),
            started,
            span(node.uptime_ms as f64 / 1000.0),
            node.memory_bytes.map_or("-".into(), mebibytes),
            node.load
                .map_or("-".into(), |load| format!("{:.2}", load[0])),
            node.cluster
                .as_ref()
                .map_or("-".into(), |cluster| engine(&cluster.engine)),
            match &node.cluster {
                Some(cluster) => names(cluster.view.iter().map(|member| &member.name)),
                None => "(standalone)".to_string(),
            },
        ]);
    }
    table(&mut out, rows);
    let mut rows = vec![row(["NOT ANSWERING", "MANAGEMENT", "WHY"])];
    for node in &found.unreachable {
        rows.push(vec![
            node.name.clone(),
            node.management.clone(),
            node.error.clone(),
        ]);
    }
    section(&mut out, rows);

    let mut apps = vec![row(["APP", "NODE", "STATUS", "RESTARTS"])];
    for node in &nodes {
        for app in &node.deployments {
            apps.push(vec![
                app.name.clone(),
                node.name.clone(),
                app.status.to_string(),
                app.restarts.to_string(),
            ]);
        }
    }
    apps.sort();
    section(&mut out, apps);

    let singletons: BTreeSet<&SingletonStatus> = nodes.iter().flat_map(|n| &n.singletons).collect();
    let mut rows = vec![row(["SINGLETONS OF", "RUN ON", "EPOCH"])];
    rows.extend(singletons.into_iter().map(|singleton| {
        vec![
            singleton.app.clone(),
            singleton.node.clone(),
            singleton.epoch.to_string(),
        ]
    }));
    section(&mut out, rows);

    let mut rows = vec![row([
        "QUEUE",
        "NODE",
        "DEPTH",
        "IN/S",
        "OUT/S",
        "CONSUMERS",
        "IN FLIGHT",
        "DEAD LETTERS",
    ])];
    for node in &nodes {
        for queue in &node.queues {
            let (stats, rates) = (&queue.stats, &queue.rates);
            rows.push(vec![
                stats.name.clone(),
                node.name.clone(),
                stats.depth.to_string(),
                format!("{:.1}", rates.rate_in),
                format!("{:.1}", rates.rate_out),
                stats.consumers.to_string(),
                stats.in_flight.to_string(),
                stats.dead_lettered.to_string(),
            ]);
        }
    }
    section(&mut out, rows);

    let mut rows = vec![row(["JOB", "FIRES ON", "SCHEDULE", "NEXT", "LAST RUN"])];
    for node in &nodes {
        for app in &node.deployments {
            for job in app.jobs.iter().filter(|job| job.fires_here) {
                let next = match (job.next_ms, job.done) {
                    (Some(next), _) => format!("in {}", span(since(now_ms, next))),
                    (None, true) => "done".to_string(),
                    (None, false) => "-".to_string(),
                };
                let last = job.last.as_ref().map_or("-".to_string(), |last| {
                    format!(
                        "#{} {} ago: {}",
                        last.run,
                        span(since(last.fired_ms, now_ms)),
                        last.outcome.name()
                    )
                });
                rows.push(vec![
                    format!("{}/{}", app.name, job.name),
                    node.name.clone(),
                    job.schedule.clone(),
                    next,
                    last,
                ]);
            }
        }
    }
    section(&mut out, rows);

    let mut rows = vec![row([
        "CACHE",
        "NODE",
        "MODE",
        "ENTRIES",
        "HIT RATIO",
        "HELD BY",
    ])];
    for node in &nodes {
        for cache in &node.caches {
            let stats = &cache.stats;
            let reads = stats.hits + stats.misses;
            rows.push(vec![
                stats.name.clone(),
                node.name.clone(),
                stats.mode.clone(),
                stats.entries.to_string(),
                match reads {
                    0 => "-".to_string(),
                    _ => format!("{:.0}%", 100.0 * stats.hits as f64 / reads as f64),
                },
                names(&cache.held_by),
            ]);
        }
    }
    section(&mut out, rows);

    let mut rows = vec![row([
        "WEB CONTEXT",
        "NODE",
        "BALANCERS SEND",
        "SERVING",
        "IN FLIGHT",
    ])];
    for node in &nodes {
        for context in &node.web {
            rows.push(vec![
                context.context_path.clone(),
                node.name.clone(),
                context.control.to_string(),
                if context.serving { "yes" } else { "no" }.to_string(),
                context.in_flight.to_string(),
            ]);
        }
    }
    section(&mut out, rows);

    let mut rows = vec![row(["BALANCER", "TOLD BY", "UP TO DATE"])];
    for node in &nodes {
        for balancer in &node.balancers {
            rows.push(vec![
                balancer.address.clone(),
                node.name.clone(),
                if balancer.up_to_date {
                    "yes"
                } else {
                    "not yet"
                }
                .to_string(),
            ]);
        }
    }
    section(&mut out, rows);
    for balancer in &found.balancers {
        let seen = match (&balancer.view, &balancer.error) {
            (Some(view), _) => {
                crate::balancer::render_view(view).unwrap_or_else(|e| format!("{e:#}\n"))
            }
            (None, Some(error)) => format!("{error}\n"),
            (None, None) => String::new(),
        };
        out.push_str(&format!("\nThe balancer at {} sees:\n", balancer.address));
        for line in seen.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.map(str::to_string).to_vec()
}

/// Seconds from `from_ms` to `to_ms`.
fn since(from_ms: u64, to_ms: u64) -> f64 {
    (to_ms as f64 - from_ms as f64) / 1000.0
}

fn names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names.into_iter().cloned().collect::<Vec<_>>().join(", ")
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A table after a blank line, if it has more than its heading.
fn section(out: &mut String, rows: Vec<Vec<String>>) {
    if rows.len() > 1 {
        out.push('\n');
        table(out, rows);
    }
}

/// Rows in columns as wide as their widest cell, two spaces apart.
fn table(out: &mut String, rows: Vec<Vec<String>>) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_draws_a_table_for_each_thing_a_node_runs() {
        let node = |name: &str, view: &[&str]| {
            serde_json::json!({
                "name": name, "uptime_ms": 65_000, "bind_address": "127.0.0.1",
                "started_ms": 1, "memory_bytes": 23_068_672, "load": [0.5, 0.4, 0.3],
                "cluster": {"name": "demo", "engine": {"kind": "nats", "connected": name == "one"},
                    "view": view.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>()},
                "deployments": [{"name": "example", "status": "running", "restarts": 2, "jobs": []}],
                "singletons": [{"app": "example", "node": "one", "epoch": 1025}],
                "queues": [{"name": "/queue/work", "depth": 7, "rate_in": 2.5}],
            })
        };
        let found = ClusterStatus {
            nodes: vec![node("one", &["one", "two"]), node("two", &["one", "two"])],
            unreachable: vec![Unreachable {
                name: "three".to_string(),
                management: "http://127.0.0.1:10190".to_string(),
                error: "connection refused".to_string(),
            }],
            balancers: vec![BalancerView {
                address: "127.0.0.1:6666".to_string(),
                view: None,
                error: Some("no balancer answers at 127.0.0.1:6666".to_string()),
            }],
        };
        let text = render(&found);
        assert!(text.starts_with("Cluster demo:\n"), "{text}");
        assert!(
            text.contains(
                "one   127.0.0.1  00:00:00  1m 5s   22.0 MiB  0.50  nats (connected)      one, two"
            ),
            "{text}"
        );
        assert!(
            text.contains("0.50  nats (NOT CONNECTED)  one, two"),
            "{text}"
        );
        assert!(
            text.contains("three          http://127.0.0.1:10190  connection refused"),
            "{text}"
        );
        assert!(text.contains("example  one   running  2"), "{text}");
        assert!(text.contains("example        one     1025"), "{text}");
        assert!(text.contains("/queue/work  two   7      2.5"), "{text}");
        assert!(!text.contains("CACHE"), "no caches, no table: {text}");
        assert!(
            text.ends_with(
                "The balancer at 127.0.0.1:6666 sees:\n  no balancer answers at 127.0.0.1:6666\n"
            ),
            "{text}"
        );
    }
}
