//! The web's sections: each node's web contexts and what balancers may send them, the
//! balancers each node speaks to, and what each balancer sees.

use immutant_contracts::status::NodeStatus;

use super::BalancerView;
use super::table::{Rows, row};

/// A row for each web context on each node.
pub(super) fn contexts(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row([
        "WEB CONTEXT",
        "NODE",
        "BALANCERS SEND",
        "SERVING",
        "IN FLIGHT",
    ])];
    for node in nodes {
        rows.extend(node.web.iter().map(|context| {
            vec![
                context.context_path.clone(),
                node.name.clone(),
                context.control.to_string(),
                if context.serving { "yes" } else { "no" }.to_string(),
                context.in_flight.to_string(),
            ]
        }));
    }
    rows
}

/// A row for each balancer each node speaks to: whether it has heard the node's contexts.
pub(super) fn balancers(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row(["BALANCER", "TOLD BY", "UP TO DATE"])];
    for node in nodes {
        rows.extend(node.balancers.iter().map(|balancer| {
            let up_to_date = if balancer.up_to_date {
                "yes"
            } else {
                "not yet"
            };
            vec![
                balancer.address.clone(),
                node.name.clone(),
                up_to_date.to_string(),
            ]
        }));
    }
    rows
}

/// A row for each certificate each node's HTTPS port serves, and when it expires.
pub(super) fn certificates(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row(["HTTPS CERTIFICATE", "NODE", "NAMES", "EXPIRES"])];
    for node in nodes {
        rows.extend(node.certificates.iter().map(|certificate| {
            vec![
                certificate.file.clone(),
                node.name.clone(),
                certificate.names.join(", "),
                crate::balancer::expiry(certificate),
            ]
        }));
    }
    rows
}

/// What each balancer sees, indented under its address.
pub(super) fn balancer_views(balancers: &[BalancerView]) -> String {
    let mut out = String::new();
    for balancer in balancers {
        out.push_str(&format!("\nThe balancer at {} sees:\n", balancer.address));
        for line in seen(balancer).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// The balancer's view as `cargo immutant balancer status` shows it, or why there is none.
fn seen(balancer: &BalancerView) -> String {
    match (&balancer.view, &balancer.error) {
        (Some(view), _) => {
            crate::balancer::render_view(view).unwrap_or_else(|e| format!("{e:#}\n"))
        }
        (None, Some(error)) => format!("{error}\n"),
        (None, None) => String::new(),
    }
}
