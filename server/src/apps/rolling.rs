//! Rolling redeploys (`cargo immutant deploy --rolling`): every member gets the new build at
//! about the same moment, but replaces the app it runs only in its turn. The members go in the
//! order of their names; a member's turn comes once every earlier member that has the app runs
//! the new build, ready (and, for a web app, serving with its balancers told). An earlier member
//! whose new build failed stops the roll: the members after it keep the build they run. A member
//! that runs no earlier build of the app (it has none, runs another, or cannot run it) is not
//! waited for; one that does not answer, or does not move on, is waited for two minutes at most.

use std::time::Duration;

use immutant_contracts::deployment::Status;
use immutant_contracts::status::NodeStatus;

use super::AppContext;
use crate::deploy::Descriptor;

/// How often the earlier members are asked again.
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How long one earlier member is waited for at most.
const PATIENCE: Duration = Duration::from_secs(120);

/// How a member's wait for its turn ended.
pub enum Turn {
    /// Every earlier member runs the new build: replace the app here.
    Go,
    /// An earlier member's new build failed: keep the build that runs here.
    Stop(String),
    /// A newer change of the app came meanwhile: this one is not made.
    Superseded,
}

/// Waits until this node's turn to replace `descriptor`'s app with its new build, or until
/// the roll stops or `superseded` says a newer change came.
pub async fn wait_for_turn(
    context: &AppContext,
    descriptor: &Descriptor,
    superseded: impl Fn() -> bool,
) -> Turn {
    let (Some(questions), Some(view)) = (
        context.engine.questions.as_ref(),
        context.engine.membership.view(),
    ) else {
        return Turn::Go;
    };
    // The member waited for, and since when.
    let mut waiting_for: Option<(String, std::time::Instant)> = None;
    // Members waited for as long as one is: gone past.
    let mut passed: Vec<String> = Vec::new();
    loop {
        let earlier: Vec<String> = view
            .borrow()
            .members
            .iter()
            .filter(|member| !member.is_self && member.name < context.node_name)
            .filter(|member| !passed.contains(&member.name))
            .map(|member| member.name.clone())
            .collect();
        let mut behind = None;
        for member in earlier {
            if superseded() {
                return Turn::Superseded;
            }
            let answer = questions.ask(&member, "/status").await;
            let status = answer
                .ok()
                .filter(|(code, _)| *code == 200)
                .and_then(|(_, body)| serde_json::from_slice::<NodeStatus>(&body).ok());
            match status.map(|status| progress(&status, descriptor)) {
                Some(Progress::Done) => {}
                Some(Progress::Failed(reason)) => {
                    return Turn::Stop(format!("{member} could not start the new build: {reason}"));
                }
                Some(Progress::Behind) | None => {
                    behind = Some(member);
                    break;
                }
            }
        }
        if superseded() {
            return Turn::Superseded;
        }
        let Some(member) = behind else {
            return Turn::Go;
        };
        match &waiting_for {
            Some((waited, since)) if *waited == member => {
                if since.elapsed() > PATIENCE {
                    tracing::warn!(
                        "Redeploying {} one member at a time: {member} did not run the new build within {} s; going on without it",
                        descriptor.name,
                        PATIENCE.as_secs()
                    );
                    passed.push(member);
                }
            }
            _ => {
                tracing::info!(
                    "Redeploying {} one member at a time: waiting until {member} runs the new build",
                    descriptor.name
                );
                waiting_for = Some((member, std::time::Instant::now()));
            }
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// Where a member is in the roll.
enum Progress {
    /// It runs the new build, ready (or does not have the app).
    Done,
    /// Its new build failed.
    Failed(String),
    /// Not there yet.
    Behind,
}

/// Where the member whose status is `status` is in the roll of `descriptor`.
fn progress(status: &NodeStatus, descriptor: &Descriptor) -> Progress {
    let Some(app) = status
        .deployments
        .iter()
        .find(|app| app.name == descriptor.name)
    else {
        return Progress::Done;
    };
    if app.deployed_at != descriptor.deployed_at {
        // Behind only while it runs, or starts, an earlier build: one that runs none, or
        // another, is not waited for.
        let earlier = matches!((app.deployed_at, descriptor.deployed_at), (Some(its), Some(new)) if its < new);
        let live = matches!(app.status, Status::Running | Status::Deploying);
        return match earlier && live {
            true => Progress::Behind,
            false => Progress::Done,
        };
    }
    match &app.status {
        Status::Failed(reason) => return Progress::Failed(reason.clone()),
        Status::Running => {}
        Status::Elsewhere(_) | Status::Stopped(_) => return Progress::Done,
        Status::Deploying => return Progress::Behind,
    }
    // A web app: serving there, and every balancer the member speaks to told so.
    let mut contexts = status
        .web
        .iter()
        .filter(|context| context.app == descriptor.name)
        .peekable();
    if contexts.peek().is_none() {
        return Progress::Done;
    }
    let serving = contexts.all(|context| context.serving);
    let told = status.balancers.iter().all(|balancer| balancer.up_to_date);
    match serving && told {
        true => Progress::Done,
        false => Progress::Behind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use immutant_contracts::deployment::DeploymentReport;

    fn member_with(status: Status, deployed_at: u64) -> NodeStatus {
        NodeStatus {
            deployments: vec![DeploymentReport {
                name: "app".into(),
                status,
                deployed_at: Some(deployed_at),
                ..DeploymentReport::default()
            }],
            ..NodeStatus::default()
        }
    }

    #[test]
    fn a_member_is_done_once_it_runs_the_new_build_and_stops_the_roll_if_it_failed() {
        let descriptor: Descriptor =
            toml::from_str("name = \"app\"\nartifact = \".artifacts/app-1f\"\ndeployed-at = 9\n")
                .unwrap();
        let at = |status, deployed_at| progress(&member_with(status, deployed_at), &descriptor);
        assert!(matches!(at(Status::Running, 8), Progress::Behind));
        // Not waited for: a later build, a failed earlier one, none known.
        assert!(matches!(at(Status::Running, 10), Progress::Done));
        assert!(matches!(at(Status::Failed("x".into()), 8), Progress::Done));
        assert!(matches!(at(Status::Deploying, 9), Progress::Behind));
        assert!(matches!(at(Status::Running, 9), Progress::Done));
        assert!(matches!(
            at(Status::Failed("x".into()), 9),
            Progress::Failed(_)
        ));
        assert!(matches!(
            progress(&NodeStatus::default(), &descriptor),
            Progress::Done
        ));
    }
}
