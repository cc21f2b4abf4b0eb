//! `list`: what is deployed to the Immutant home, and (`--installs`) which versions are installed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use immutant_contracts::deployment::DeploymentReport;
use immutant_contracts::descriptor::deployment_of;
use serde::Deserialize;

use crate::descriptor;
use crate::install::release;
use crate::locations::Locations;

/// Prints the installed versions, `*` marking the one in use.
pub fn print_installs(locations: &Locations) -> Result<()> {
    let via = match locations.home_from {
        Some(variable) => variable.to_string(),
        None => locations.current().display().to_string(),
    };
    println!(
        "The following versions of Immutant are installed to {}\n(* is currently active via {via}):",
        locations.base.display()
    );
    let active = std::fs::canonicalize(&locations.home).ok();
    for dir in installs(locations) {
        let mark = if std::fs::canonicalize(&dir).ok() == active {
            "*"
        } else {
            " "
        };
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let from =
            release::record(&dir).map_or_else(|| "unknown".to_string(), |record| record.from);
        println!(" {mark} {name:<50} (from: {from})");
    }
    Ok(())
}

/// The managed installs, by version.
fn installs(locations: &Locations) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(locations.releases())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| release::is_installed(dir))
        .collect();
    dirs.sort();
    dirs
}

/// Prints each deployment in the home's deployments folder with its status on every running
/// node of the install.
pub fn print_deployments(locations: &Locations) -> Result<()> {
    println!(
        "The following applications are deployed to {}:",
        locations.home.display()
    );
    let nodes = running_nodes(locations);
    let reports = crate::http::block_on(async {
        let client = crate::http::client(Some(Duration::from_secs(3)))?;
        let asks = nodes.iter().map(|node| deployments_on(&client, node));
        anyhow::Ok(futures_util::future::join_all(asks).await)
    })??;
    for name in deployment_names(locations) {
        let statuses: Vec<String> = nodes
            .iter()
            .zip(&reports)
            .map(|(node, report)| format!("{}: {}", node.name, status_of(report, &name)))
            .collect();
        let mut status = if statuses.is_empty() {
            "no node is running".to_string()
        } else {
            statuses.join("; ")
        };
        let singletons = reports
            .iter()
            .flatten()
            .flatten()
            .filter(|report| report.name == name)
            // Not every node runs every app (server groups): the first that knows.
            .find_map(|report| report.singletons_on.as_deref());
        if let Some(node) = singletons {
            status.push_str(&format!("; singletons on {node}"));
        }
        let group = reports
            .iter()
            .flatten()
            .flatten()
            .filter(|report| report.name == name)
            .find_map(|report| report.group.clone())
            .or_else(|| descriptor::group_of(&descriptor::path(&locations.deployments(), &name)))
            .map(|group| format!("group {group}; "))
            .unwrap_or_default();
        println!("  {name:<40} ({group}status: {status})");
        for line in job_lines(&reports, &name) {
            println!("      {line}");
        }
    }
    Ok(())
}

/// A line for each job of the deployment `name`: its schedule, where it fires, when it fires
/// next and how its last run went, as the node firing it tells.
fn job_lines(reports: &[Result<Vec<DeploymentReport>, String>], name: &str) -> Vec<String> {
    let deployments: Vec<&DeploymentReport> = reports
        .iter()
        .flatten()
        .flatten()
        .filter(|report| report.name == name)
        .collect();
    let mut names: Vec<&str> = deployments
        .iter()
        .flat_map(|report| report.jobs.iter().map(|job| job.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let seconds = |ms: u64| (ms as i64 - now) as f64 / 1000.0;
    names
        .into_iter()
        .filter_map(|job| {
            let (deployment, report) = deployments
                .iter()
                .flat_map(|d| d.jobs.iter().map(move |j| (*d, j)))
                .filter(|(_, j)| j.name == job)
                .max_by_key(|(_, j)| j.fires_here)?;
            let place = match (report.singleton, &deployment.singletons_on) {
                (false, _) => "fires on every node that runs it".to_string(),
                (true, Some(node)) => format!("singleton, fires on {node}"),
                (true, None) => "singleton, fires nowhere yet".to_string(),
            };
            let mut line = format!("job {job}: {} ({place})", report.schedule);
            match report.next_ms {
                Some(next) => line.push_str(&format!("; next in {}", span(seconds(next)))),
                None if report.done => line.push_str("; done"),
                None => {}
            }
            if let Some(last) = &report.last {
                line.push_str(&format!(
                    "; last run #{} {} ago: {}",
                    last.run,
                    span(-seconds(last.fired_ms)),
                    last.outcome
                ));
            }
            Some(line)
        })
        .collect()
}

/// The deployment names: the descriptors' file names, without `.toml`.
fn deployment_names(locations: &Locations) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(locations.deployments())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            deployment_of(&file).map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// A node of this install, as it recorded itself in `<home>/nodes/`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NodeRecord {
    pub name: String,
    pub pid: i32,
    pub management: String,
    /// Where it keeps its data, its management token among them.
    pub data_dir: std::path::PathBuf,
}

impl NodeRecord {
    /// The node's management token, from its data dir (readable by the node's user alone).
    pub(crate) fn token(&self) -> std::io::Result<String> {
        let text = std::fs::read_to_string(self.token_file())?;
        Ok(text.trim().to_string())
    }

    pub(crate) fn token_file(&self) -> std::path::PathBuf {
        self.data_dir.join(immutant_contracts::data_dir::TOKEN_FILE)
    }

    /// `GET` of `path` on the node's management API, with its token when this user can read
    /// it (a node whose management port is bound beyond loopback answers nothing without).
    pub(crate) fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .client(client)
            .get(format!("{}{path}", self.management));
        match self.token() {
            Ok(token) => request.bearer_auth(token),
            Err(_) => request,
        }
    }

    /// What asks the node: `client` on loopback; beyond it (`https://`), a client that trusts
    /// the certificate the node serves, as its data dir's `management.pin` has it, and nothing
    /// else (none at all if that cannot be read: the answer is refused, saying why).
    pub(crate) fn client(&self, client: &reqwest::Client) -> reqwest::Client {
        if !self.management.starts_with("https://") {
            return client.clone();
        }
        let pin = self.data_dir.join(immutant_contracts::data_dir::PIN_FILE);
        let timeout = Some(std::time::Duration::from_secs(10));
        // Building one fails only where TLS cannot be set up at all: then a client that trusts
        // no certificate, which refuses the node's too.
        crate::http::pinned_client(&pin, timeout)
            .or_else(|_| {
                reqwest::Client::builder()
                    .tls_certs_only(Vec::new())
                    .build()
            })
            .unwrap_or_else(|_| client.clone())
    }
}

/// The nodes whose records say they run and whose process lives.
pub(crate) fn running_nodes(locations: &Locations) -> Vec<NodeRecord> {
    let mut nodes: Vec<NodeRecord> = std::fs::read_dir(locations.home.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        // SAFETY: signal 0 only asks whether the process exists.
        .filter(|node: &NodeRecord| unsafe { libc::kill(node.pid, 0) } == 0)
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The running nodes of the install, or only `node` if given; none is an error that says how
/// to start one.
pub(crate) fn running_nodes_named(
    locations: &Locations,
    node: Option<&str>,
) -> anyhow::Result<Vec<NodeRecord>> {
    let nodes: Vec<NodeRecord> = running_nodes(locations)
        .into_iter()
        .filter(|record| node.is_none_or(|name| record.name == name))
        .collect();
    match (nodes.is_empty(), node) {
        (false, _) => Ok(nodes),
        (true, Some(name)) => anyhow::bail!(
            "no node named '{name}' of {} is running; `cargo immutant status` shows the nodes",
            locations.home.display()
        ),
        (true, None) => anyhow::bail!(
            "no node of {} is running; start one with `cargo immutant run`",
            locations.home.display()
        ),
    }
}

async fn deployments_on(
    client: &reqwest::Client,
    node: &NodeRecord,
) -> Result<Vec<DeploymentReport>, String> {
    let response = node
        .get(client, "/deployments")
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let body = response.bytes().await.map_err(|error| error.to_string())?;
    serde_json::from_slice(&body).map_err(|error| error.to_string())
}

fn status_of(report: &Result<Vec<DeploymentReport>, String>, name: &str) -> String {
    match report {
        Err(error) => format!("unreachable ({error})"),
        Ok(deployments) => match deployments
            .iter()
            .find(|deployment| deployment.name == name)
        {
            None => "not deployed yet".to_string(),
            Some(deployment) => deployment.status.to_string(),
        },
    }
}

/// A span of `seconds` for people: "0.4 s", "12m 5s", "5h 3m", "2d 3h".
pub(crate) fn span(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    let whole = seconds as u64;
    match whole {
        0..60 => format!("{seconds:.1} s"),
        60..3600 => format!("{}m {}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h {}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d {}h", whole / 86400, whole % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(0.44), "0.4 s");
        assert_eq!(span(-1.0), "0.0 s");
        assert_eq!(span(725.0), "12m 5s");
        assert_eq!(span(5.0 * 3600.0 + 180.0), "5h 3m");
        assert_eq!(span(2.0 * 86400.0 + 3.0 * 3600.0), "2d 3h");
    }
}
