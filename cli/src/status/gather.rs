//! Asking for the status: every running node of the install (with its management token),
//! then the members of the views they see not asked yet, through one of the install's nodes
//! (which asks them over the cluster's own channels: `/members/<name>/status`), or, with no
//! node of the install answering, at their own management address (without a token: it is not
//! this user's to have), then the balancers the nodes speak to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;

use super::{BalancerView, ClusterStatus, Unreachable, typed};
use crate::list::{NodeRecord, running_nodes};
use crate::locations::Locations;

/// Who `status` asks.
enum Asked {
    /// A node of the install: its token goes along.
    Local(NodeRecord),
    /// Another member of a view, asked through a node of the install.
    Relayed { name: String, through: NodeRecord },
    /// Another member of a view, asked at its own address: without a token, which is not this
    /// user's to have.
    Member { name: String, management: String },
}

impl Asked {
    fn name(&self) -> &str {
        match self {
            Asked::Local(record) => &record.name,
            Asked::Relayed { name, .. } | Asked::Member { name, .. } => name,
        }
    }

    fn management(&self) -> &str {
        match self {
            Asked::Local(record)
            | Asked::Relayed {
                through: record, ..
            } => &record.management,
            Asked::Member { management, .. } => management,
        }
    }

    fn get(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        match self {
            Asked::Local(record) => record.get(client, path),
            Asked::Relayed { name, through } => {
                through.get(client, &format!("/members/{name}{path}"))
            }
            Asked::Member { management, .. } => client.get(format!("{management}{path}")),
        }
    }
}

/// A node's `/status`, or why it could not be had.
type Answer = Result<serde_json::Value, String>;

/// Asks every running node of the install, then the members of their views not asked yet,
/// then the balancers the nodes speak to.
pub fn gather(locations: &Locations) -> Result<ClusterStatus> {
    let records = running_nodes(locations);
    crate::http::block_on(async {
        let client = crate::http::client(Some(Duration::from_secs(3)))?;
        let mut answers = ask_all(&client, records.into_iter().map(Asked::Local)).await;
        let members = members_not_asked(&answers);
        answers.extend(ask_all(&client, members).await);
        let (nodes, unreachable) = sort_out(answers);
        let balancers = balancer_views(&client, &nodes).await;
        anyhow::Ok(ClusterStatus {
            nodes,
            unreachable,
            balancers,
        })
    })?
}

/// Asks each of `nodes` at once.
async fn ask_all(
    client: &reqwest::Client,
    nodes: impl IntoIterator<Item = Asked>,
) -> Vec<(Asked, Answer)> {
    futures_util::future::join_all(nodes.into_iter().map(|node| ask(client, node))).await
}

/// The members of the views the answers tell of that were not asked: through a node of the
/// install that answered, or else at their management address, if the views know it.
fn members_not_asked(answers: &[(Asked, Answer)]) -> Vec<Asked> {
    let asked: BTreeSet<&str> = answers.iter().map(|(node, _)| node.name()).collect();
    let through = answers
        .iter()
        .find_map(|(node, answer)| match (node, answer) {
            (Asked::Local(record), Ok(_)) => Some(record),
            _ => None,
        });
    let members: BTreeMap<String, Option<String>> = answers
        .iter()
        .flat_map(|(_, answer)| answer.as_ref().ok())
        .flat_map(|status| typed(status).cluster.map(|cluster| cluster.view))
        .flatten()
        .filter(|member| !asked.contains(member.name.as_str()))
        .map(|member| (member.name, member.management))
        .collect();
    members
        .into_iter()
        .filter_map(|(name, management)| match (through, management) {
            (Some(through), _) => Some(Asked::Relayed {
                name,
                through: through.clone(),
            }),
            (None, Some(management)) => Some(Asked::Member { name, management }),
            (None, None) => None,
        })
        .collect()
}

/// The statuses of the nodes that answered, and those that did not with why.
fn sort_out(answers: Vec<(Asked, Answer)>) -> (Vec<serde_json::Value>, Vec<Unreachable>) {
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for (asked, answer) in answers {
        match answer {
            Ok(status) => nodes.push(status),
            Err(error) => unreachable.push(Unreachable {
                name: asked.name().to_string(),
                management: asked.management().to_string(),
                error,
            }),
        }
    }
    (nodes, unreachable)
}

/// What each balancer the nodes speak to sees, asked at once.
async fn balancer_views(
    client: &reqwest::Client,
    nodes: &[serde_json::Value],
) -> Vec<BalancerView> {
    let addresses: BTreeSet<String> = nodes
        .iter()
        .flat_map(|status| typed(status).balancers)
        .map(|balancer| balancer.address)
        .collect();
    let views = addresses
        .into_iter()
        .map(|address| balancer_view(client, address));
    futures_util::future::join_all(views).await
}

/// What the balancer at `address` sees, or why it could not be had.
async fn balancer_view(client: &reqwest::Client, address: String) -> BalancerView {
    match crate::balancer::fetch_view(client, &address).await {
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

/// A node's `/status`, if it answers as the node it is meant to be (a member's management
/// address may be loopback on its own host, and reach another node from here).
async fn ask(client: &reqwest::Client, node: Asked) -> (Asked, Answer) {
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
