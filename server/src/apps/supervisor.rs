//! Supervising one deployment's process: start it with its end of a socket, relay its output
//! with its name in front, restart it with exponential backoff when it crashes, mark it failed
//! after five crashes in a row, and stop it gracefully when asked.

use std::os::fd::AsRawFd;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use immutant_protocol::handoff::WEB_HANDOFF_FD_VAR;
use immutant_protocol::{APP_VAR, Frame, Header, NODE_VAR, SOCKET_FD_VAR, WEB_FD_VAR};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{AppContext, DAEMON_STOP_LIMIT_MS, Deployment, connection};
use crate::deploy::{Descriptor, artifact_path};
use immutant_contracts::deployment::Status;
use immutant_foundation::sync::lock;

/// Crashes in a row that mark a deployment failed.
const MAX_CRASHES: u32 = 5;
/// A process that ran this long before crashing starts the count again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The first wait before a restart; each crash in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The descriptor the app's end of the socket has in the app.
const APP_SOCKET_FD: i32 = 3;
/// The descriptor the app's web socket (listening) has in the app.
const APP_WEB_FD: i32 = 4;
/// The descriptor the app's end of its hand-off socket pair has in the app.
const APP_WEB_HANDOFF_FD: i32 = 5;
/// What a web page says of a failed app: the reason itself, with the app's last stderr lines,
/// is for the node's log and the management API, not for whoever asks over HTTP.
pub const FAILED_PAGE: &str =
    "it failed: it crashed again and again (the node's log and `cargo immutant list` say why)";
/// Descriptors at or above this are free in a child about to exec: where its inherited
/// sockets wait before they move to 3, 4 and 5.
const SPARE_FD: i32 = 10;

/// Runs the deployment until `stop` fires.
pub async fn supervise(
    deployment: Arc<Deployment>,
    descriptor: Descriptor,
    context: Arc<AppContext>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut crashes = 0;
    loop {
        deployment.set_status(Status::Deploying);
        // A failure is explained by what its last run said.
        lock(&deployment.stderr_tail).clear();
        let started = Instant::now();
        let (mut child, stderr_read) = match spawn(&deployment, &descriptor, &context) {
            Ok(spawned) => spawned,
            Err(reason) => {
                error!("cannot start {}: {reason}", deployment.name);
                deployment.set_status(Status::Failed(reason));
                let _ = stop.await;
                return;
            }
        };
        tokio::select! {
            status = child.wait() => {
                // What it said last explains why it ended: read it all first.
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr_read).await;
                let reason = match status {
                    Ok(status) if status.success() => {
                        info!("{} exited on its own", deployment.name);
                        web_down(&deployment, &context, "it exited on its own");
                        deployment.set_status(Status::Stopped("the app exited on its own".to_string()));
                        let _ = stop.await;
                        return;
                    }
                    Ok(status) => describe(status),
                    Err(error) => format!("was lost ({error})"),
                };
                if started.elapsed() > STABLE_AFTER {
                    crashes = 0;
                }
                crashes += 1;
                if crashes >= MAX_CRASHES {
                    let tail: Vec<String> = lock(&deployment.stderr_tail).iter().cloned().collect();
                    let reason = format!(
                        "{} {reason}, {crashes} times in a row; its last output on stderr: {}",
                        deployment.name,
                        tail.join(" | ")
                    );
                    error!("{reason}");
                    web_down(&deployment, &context, FAILED_PAGE);
                    deployment.set_status(Status::Failed(reason));
                    let _ = stop.await;
                    return;
                }
                let backoff = FIRST_BACKOFF * 2u32.pow(crashes - 1);
                let why = format!("it {reason} and restarts in {} ms", backoff.as_millis());
                web_down(&deployment, &context, &why);
                warn!("{} {reason}; restarting it in {} ms", deployment.name, backoff.as_millis());
                deployment.restarts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("immutant_app_restarts_total", "app" => deployment.name.clone())
                    .increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => {
                        deployment.set_status(Status::Stopped("undeployed".to_string()));
                        return;
                    }
                }
            }
            _ = &mut stop => {
                drain(&deployment, &context).await;
                stop_gracefully(&deployment, &mut child).await;
                deployment.set_status(Status::Stopped("undeployed".to_string()));
                return;
            }
        }
    }
}

/// Starts the app's process with its end of a fresh socket pair as descriptor 3 and its web
/// socket as 4, its end of the hand-off pair as 5; also returns the task reading its stderr, which ends when the process does.
fn spawn(
    deployment: &Arc<Deployment>,
    descriptor: &Descriptor,
    context: &Arc<AppContext>,
) -> Result<(Child, tokio::task::JoinHandle<()>), String> {
    let artifact = artifact_path(descriptor, &context.deployments_dir)?;
    let (node_end, app_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot make its socket: {e}"))?;
    let (web_listener, handoff_end, backend) = context.web.sockets.listen()?;
    let app_fd = app_end.as_raw_fd();
    let web_fd = web_listener.as_raw_fd();
    let handoff_fd = handoff_end.as_raw_fd();
    let workdir = descriptor
        .root
        .clone()
        .filter(|root| root.is_dir())
        .unwrap_or_else(|| context.deployments_dir.clone());
    let mut command = Command::new(&artifact);
    command
        .env(SOCKET_FD_VAR, APP_SOCKET_FD.to_string())
        .env(WEB_FD_VAR, APP_WEB_FD.to_string())
        .env(WEB_HANDOFF_FD_VAR, APP_WEB_HANDOFF_FD.to_string())
        .env(APP_VAR, &deployment.name)
        .env(NODE_VAR, &context.node_name)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the node reaches the app only as the
        // node's graceful stop.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Out of the way first (closed at exec), so that neither lands on the other's place.
            let spare = [app_fd, web_fd, handoff_fd]
                .map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, SPARE_FD));
            if spare.contains(&-1) {
                return Err(std::io::Error::last_os_error());
            }
            let places = [APP_SOCKET_FD, APP_WEB_FD, APP_WEB_HANDOFF_FD];
            for (from, to) in spare.into_iter().zip(places) {
                if libc::dup2(from, to) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", artifact.display()))?;
    drop(app_end);
    drop(web_listener);
    drop(handoff_end);
    *lock(&deployment.backend) = Some(backend);
    *lock(&deployment.pid) = child.id();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(relay(deployment.clone(), stdout, false));
    }
    let stderr_read = match child.stderr.take() {
        Some(stderr) => tokio::spawn(relay(deployment.clone(), stderr, true)),
        None => tokio::spawn(async {}),
    };
    let socket = node_end
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(node_end))
        .map_err(|error| format!("cannot use its socket: {error}"))?;
    tokio::spawn(connection::serve(
        socket,
        deployment.clone(),
        context.clone(),
    ));
    Ok((child, stderr_read))
}

/// The app's process no longer serves web requests: they are told `why`.
fn web_down(deployment: &Deployment, context: &AppContext, why: &str) {
    if let Some(backend) = lock(&deployment.backend).take() {
        context.web.down(&deployment.name, &backend, why);
    }
}

/// Before the app is asked to stop: no new web requests go to it (unless they go to a newer
/// process of the app already), and those in flight finish, within the daemons' limit.
async fn drain(deployment: &Deployment, context: &AppContext) {
    let Some(backend) = lock(&deployment.backend).clone() else {
        return;
    };
    context
        .web
        .down(&deployment.name, &backend, "it is stopping");
    let limit = Duration::from_millis(DAEMON_STOP_LIMIT_MS);
    if !backend.drained(limit).await {
        warn!(
            "{} still had {} web requests in flight after {} s; stopping it anyway",
            deployment.name,
            backend.passing_on(),
            limit.as_secs()
        );
    }
    lock(&deployment.backend).take();
}

/// Prints each line the app writes, with its name in front; keeps the last ones of stderr.
async fn relay(deployment: Arc<Deployment>, stream: impl AsyncRead + Unpin, stderr: bool) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if stderr {
            deployment.remember_stderr(&line);
        }
        info!("[{}] {line}", deployment.name);
    }
}

/// Asks the app to stop (daemons' stop, in-flight handlers finish), then kills it if it has not
/// exited in time.
async fn stop_gracefully(deployment: &Deployment, child: &mut Child) {
    let outbox = lock(&deployment.outbox).clone();
    let asked = outbox.is_some_and(|outbox| {
        outbox
            .send(
                Frame::new(Header::Stop {
                    timeout_ms: DAEMON_STOP_LIMIT_MS,
                })
                .into(),
            )
            .is_ok()
    });
    let patience = if asked {
        // Daemons' stops, then handlers, each within the limit.
        Duration::from_millis(2 * DAEMON_STOP_LIMIT_MS + 5_000)
    } else {
        if let Some(pid) = child.id() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        Duration::from_secs(5)
    };
    if tokio::time::timeout(patience, child.wait()).await.is_err() {
        warn!(
            "{} did not stop within {} s; killing it",
            deployment.name,
            patience.as_secs()
        );
        let _ = child.kill().await;
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_string(),
    }
}
