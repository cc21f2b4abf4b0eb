//! `enable`, `disable`, `stop`: what balancers may send a node's web contexts, as fine-grained
//! as mod_cluster's control: `disable` takes no new sessions (sticky ones are still served),
//! `stop` takes no request at all once the requests in flight have finished (and says when
//! they have), `enable` undoes both. Each node is told through its management port, with the
//! token it keeps in its data dir, and tells its balancers at once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use immutant_contracts::status::ContextReport;

use crate::list::{NodeRecord, running_nodes_named};
use crate::locations::Locations;

/// How long `stop` waits for a context's requests in flight to finish.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);

/// What to do to the contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Enable,
    Disable,
    Stop,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Stop => "stop",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Enable => "Enabled",
            Action::Disable => "Disabled",
            Action::Stop => "Stopped",
        }
    }
}

/// Does `action` to `context` (every context if none) on `node` (every running node of the
/// install if none).
pub fn control(
    locations: &Locations,
    action: Action,
    node: Option<&str>,
    context: Option<&str>,
) -> Result<()> {
    let nodes = running_nodes_named(locations, node)?;
    crate::http::block_on(async {
        let client = crate::http::client(Some(Duration::from_secs(10)))?;
        for record in &nodes {
            tell(&client, record, action, context).await?;
            let what = context.unwrap_or("every context");
            if action == Action::Stop {
                drain(&client, record, context).await?;
                println!(
                    "{} {what} on {}: drained, no request in flight",
                    action.done(),
                    record.name
                );
            } else {
                println!("{} {what} on {}", action.done(), record.name);
            }
        }
        Ok(())
    })?
}

async fn tell(
    client: &reqwest::Client,
    record: &NodeRecord,
    action: Action,
    context: Option<&str>,
) -> Result<()> {
    let token = record.token().with_context(|| {
        format!(
            "cannot read node {}'s management token {}; run this as the user that runs the node",
            record.name,
            record.token_file().display()
        )
    })?;
    let address = format!("{}/web/{}", record.management, action.path());
    let mut url = reqwest::Url::parse(&address).with_context(|| {
        format!(
            "node {} records a management address that is not a URL: {address}",
            record.name
        )
    })?;
    if let Some(context) = context {
        url.query_pairs_mut().append_pair("context", context);
    }
    let response = record
        .client(client)
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| {
            format!(
                "node {} does not answer at {}",
                record.name, record.management
            )
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("node {} refused: {}", record.name, text.trim());
    }
    if text.trim() != "ok" {
        eprintln!("node {}: {}", record.name, text.trim());
    }
    Ok(())
}

/// Waits until no request is in flight on the stopped contexts of the node.
async fn drain(client: &reqwest::Client, record: &NodeRecord, context: Option<&str>) -> Result<()> {
    let started = Instant::now();
    loop {
        let text = record
            .get(client, "/web")
            .send()
            .await
            .with_context(|| format!("node {} stopped answering", record.name))?
            .text()
            .await
            .with_context(|| format!("node {}'s answer broke off", record.name))?;
        let contexts: Vec<ContextReport> = serde_json::from_str(&text).with_context(|| {
            format!(
                "node {} answered in a way this CLI does not know",
                record.name
            )
        })?;
        let in_flight: u64 = contexts
            .iter()
            .filter(|c| context.is_none_or(|path| same_context(&c.context_path, path)))
            .map(|c| c.in_flight)
            .sum();
        if in_flight == 0 {
            return Ok(());
        }
        if started.elapsed() > DRAIN_PATIENCE {
            bail!(
                "node {} still has {in_flight} requests in flight after {} s; they go on, but no new one reaches it",
                record.name,
                DRAIN_PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a node's context path is the one the user named (with or without slashes around).
fn same_context(mounted: &str, named: &str) -> bool {
    mounted.trim_matches('/') == named.trim().trim_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_match_with_or_without_slashes() {
        assert!(same_context("/app", "app/"));
        assert!(same_context("/", "/"));
        assert!(!same_context("/app", "/apple"));
    }
}
