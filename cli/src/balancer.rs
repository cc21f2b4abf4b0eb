//! `balancer`: runs the install's server as a balancer in front of clustered nodes (what httpd
//! with mod_cluster was), and `balancer status` shows what a running one knows.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use immutant_contracts::status::CertificateReport;

use crate::locations::Locations;
use crate::run::{self, RunPlan};

/// How `balancer` runs one.
#[derive(Debug, Default)]
pub struct BalancerOptions {
    pub port: Option<u16>,
    pub mcmp_port: Option<u16>,
    /// Everything else, for the server's `balancer` (`--allow`, `--no-advertise`, `-b`, ...).
    pub args: Vec<String>,
}

/// The balancer's MCMP port when none is given (the one Immutant's docs used for httpd).
pub const DEFAULT_MCMP_PORT: u16 = 6666;

/// Runs a balancer in the foreground until it is stopped; returns its exit code.
pub fn run(locations: &Locations, options: &BalancerOptions) -> Result<i32> {
    let mut args = vec!["balancer".to_string()];
    if let Some(port) = options.port {
        args.extend(["--port".to_string(), port.to_string()]);
    }
    if let Some(port) = options.mcmp_port {
        args.extend(["--mcmp-port".to_string(), port.to_string()]);
    }
    args.extend(options.args.iter().cloned());
    run::run(locations, &RunPlan { args, nodes: None })
}

#[derive(Debug, Deserialize)]
struct Status {
    nodes: Vec<Node>,
    /// What its HTTPS port serves (none from a balancer without it, or an older one).
    #[serde(default)]
    certificates: Vec<CertificateReport>,
}

#[derive(Debug, Deserialize)]
struct Node {
    route: String,
    host: String,
    port: u16,
    load: i32,
    /// `up`, `standby`, `broken`, `silent` or `unreachable`, as the balancer sees it.
    state: String,
    elected: u64,
    in_flight: usize,
    contexts: Vec<NodeContext>,
}

/// A context in one of a node's virtual hosts.
#[derive(Debug, Deserialize)]
struct NodeContext {
    path: String,
    alias: String,
    state: String,
    requests: u64,
    in_flight: usize,
}

/// One line of `balancer status`: a context of a node, in the virtual hosts listed.
struct ContextLine<'a> {
    path: &'a str,
    state: &'a str,
    aliases: Vec<&'a str>,
    requests: u64,
    in_flight: usize,
}

/// Prints every node the balancer at `host:mcmp_port` knows, with its contexts.
pub fn print_status(host: &str, mcmp_port: u16) -> Result<()> {
    let view = crate::http::block_on(async {
        let client = crate::http::client(Some(Duration::from_secs(5)))?;
        fetch_view(&client, &format!("{host}:{mcmp_port}")).await
    })??;
    print!("{}", render_view(&view)?);
    Ok(())
}

/// What the balancer whose MCMP port is at `address` (`host:port`) knows, as it says it.
pub async fn fetch_view(client: &reqwest::Client, address: &str) -> Result<serde_json::Value> {
    let url = format!("http://{address}/status.json");
    let response = client.get(&url).send().await.with_context(|| {
        format!("no balancer answers at {address}; start one with `cargo immutant balancer`, or give its --mcmp-port")
    })?;
    if !response.status().is_success() {
        bail!(
            "the balancer at {address} answered {}; is this address allowed to manage it (its --allow)?",
            response.status()
        );
    }
    let text = response
        .text()
        .await
        .context("the balancer's answer broke off")?;
    serde_json::from_str(&text).with_context(|| format!("{url} did not answer as a balancer does"))
}

/// A balancer's view, as [`fetch_view`] gave it, for people: a line per node, then one per
/// context of it.
pub fn render_view(view: &serde_json::Value) -> Result<String> {
    let status: Status =
        serde_json::from_value(view.clone()).context("the balancer's answer is not its status")?;
    Ok(render(&status))
}

/// When a certificate expires, as people read it: the date and the days left, and a word to
/// renew it when those are few.
pub fn expiry(certificate: &CertificateReport) -> String {
    let date = chrono::DateTime::from_timestamp(certificate.not_after, 0)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    match (certificate.days_left < 0, certificate.expires_soon()) {
        (true, _) => format!("{date} (expired: renew it)"),
        (false, true) => format!("{date} (in {} days: renew it)", certificate.days_left),
        (false, false) => format!("{date} (in {} days)", certificate.days_left),
    }
}

fn render(status: &Status) -> String {
    let mut out = String::new();
    for certificate in &status.certificates {
        out.push_str(&format!(
            "HTTPS serves {} for {}: expires {}\n",
            certificate.file,
            certificate.names.join(", "),
            expiry(certificate)
        ));
    }
    if status.nodes.is_empty() {
        out.push_str("The balancer knows no node yet: nodes tell it about themselves when they run with --clustered (or list it in -Dimmutant.modcluster.proxies).\n");
        return out;
    }
    for node in &status.nodes {
        let state = match node.state.as_str() {
            "up" => format!("up, load factor {}", node.load),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{} at {}:{} ({state}; {} requests, {} in flight)\n",
            node.route, node.host, node.port, node.elected, node.in_flight
        ));
        // A context in the same state in several virtual hosts is one line, its hosts listed.
        let mut lines: Vec<ContextLine> = Vec::new();
        for context in &node.contexts {
            let same =
                |line: &&mut ContextLine| line.path == context.path && line.state == context.state;
            match lines.iter_mut().find(same) {
                Some(line) => {
                    line.aliases.push(&context.alias);
                    line.requests += context.requests;
                    line.in_flight += context.in_flight;
                }
                None => lines.push(ContextLine {
                    path: &context.path,
                    state: &context.state,
                    aliases: vec![&context.alias],
                    requests: context.requests,
                    in_flight: context.in_flight,
                }),
            }
        }
        for line in lines {
            out.push_str(&format!(
                "    {:<24} {:<9} on {} ({} requests, {} in flight)\n",
                line.path,
                line.state,
                line.aliases.join(", "),
                line.requests,
                line.in_flight
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_each_node_and_its_contexts() {
        let status: Status = serde_json::from_str(
            r#"{"nodes":[{"route":"one","host":"127.0.0.1","port":8080,"load":90,"state":"up","elected":3,"in_flight":1,
            "contexts":[{"path":"/app","alias":"default-host","state":"enabled","requests":2,"in_flight":1},
                {"path":"/app","alias":"localhost","state":"enabled","requests":1,"in_flight":0}]}]}"#,
        )
        .unwrap();
        let text = render(&status);
        assert!(
            text.starts_with(
                "one at 127.0.0.1:8080 (up, load factor 90; 3 requests, 1 in flight)\n"
            ),
            "{text}"
        );
        assert!(text.contains("/app"), "{text}");
        assert!(
            text.contains("enabled   on default-host, localhost (3 requests, 1 in flight)"),
            "{text}"
        );
    }
}
