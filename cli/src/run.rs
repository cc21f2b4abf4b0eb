//! `run`: starts the installed server in the foreground, its options rewritten as lein-immutant
//! rewrote them, every other argument passed on whole, and signals passed on to it. With
//! `--nodes N` it starts a local cluster of N nodes from the same install instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::install;
use crate::locations::Locations;

/// What `run` was asked for: the server's arguments, and how many nodes to start.
#[derive(Debug, PartialEq)]
pub struct RunPlan {
    pub args: Vec<String>,
    /// `--nodes N`: a local cluster of N nodes.
    pub nodes: Option<usize>,
}

/// The names of the nodes of a local cluster, in order.
const NODE_NAMES: [&str; 9] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Turns `run`'s own options into server arguments, keeping every other argument as it is and
/// where it is: `--clustered`, `--offset N`, `--node-name X`, `--log-level L` (also as
/// `--opt=value`, and `-o`, `-n` for the short forms); `--nodes N` is `run`'s own.
pub fn plan(args: &[String]) -> Result<RunPlan> {
    let mut out = Vec::with_capacity(args.len());
    let mut nodes = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--clustered" {
            out.push("--server-config=standalone-ha.toml".to_string());
            continue;
        }
        let (option, inline) = match arg.split_once('=') {
            Some((option, value)) => (option, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let property = match option {
            "--offset" | "-o" => Some("jboss.socket.binding.port-offset"),
            "--node-name" | "-n" => Some("jboss.node.name"),
            "--log-level" => Some("jboss.logging.level"),
            "--nodes" => None,
            _ => {
                out.push(arg.clone());
                continue;
            }
        };
        let value = match inline {
            Some(value) => value,
            None => match rest.next() {
                Some(value) => value.clone(),
                None => bail!("{option} needs a value, as in `{option} VALUE`"),
            },
        };
        match property {
            Some(property) => out.push(format!("-D{property}={value}")),
            None => nodes = Some(node_count(&value)?),
        }
    }
    if nodes.is_some()
        && out.iter().any(|arg| {
            arg.starts_with("-Djboss.node.name=")
                || arg.starts_with("-Djboss.socket.binding.port-offset=")
        })
    {
        bail!(
            "--nodes names the nodes and gives them their offsets itself; leave out --node-name and --offset"
        );
    }
    Ok(RunPlan { args: out, nodes })
}

fn node_count(value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(count) if (1..=NODE_NAMES.len()).contains(&count) => Ok(count),
        _ => bail!(
            "--nodes takes a number of nodes from 1 to {}, not '{value}'",
            NODE_NAMES.len()
        ),
    }
}

/// Runs what `plan` says until every server exits, and returns the exit code to leave with.
/// Installs a server first if there is none. Its first line says what it runs, whatever else it
/// has to say.
pub fn run(locations: &Locations, plan: &RunPlan) -> Result<i32> {
    let server = locations.server();
    let prepare = || -> Result<()> {
        locations.announce_base();
        install::ensure_installed(locations)
    };
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]).context("cannot listen for signals")?;
    let handle = signals.handle();
    let mut children = Vec::new();
    // Each relay of a node's output says when that output has ended.
    let (relayed, relays_ended) = std::sync::mpsc::channel();
    let mut relays = 0;
    match plan.nodes {
        None => {
            println!(
                "Starting Immutant: {} {}",
                server.display(),
                display_args(&plan.args)
            );
            prepare()?;
            children.push(spawn(&server, &plan.args, false)?);
        }
        Some(count) => {
            for (index, name) in NODE_NAMES.iter().take(count).enumerate() {
                let mut args = plan.args.clone();
                args.push(format!("-Djboss.node.name={name}"));
                args.push(format!(
                    "-Djboss.socket.binding.port-offset={}",
                    index * 100
                ));
                let data = locations.base.join("nodes").join(name);
                args.push(format!("-Djboss.server.data.dir={}", data.display()));
                println!(
                    "[{name}] Starting Immutant: {} {}",
                    server.display(),
                    display_args(&args)
                );
                if index == 0 {
                    prepare()?;
                }
                let mut child = spawn(&server, &args, true)?;
                relay(name, child.stdout.take(), std::io::stdout, relayed.clone());
                relay(name, child.stderr.take(), std::io::stderr, relayed.clone());
                relays += 2;
                children.push(child);
            }
        }
    }
    let pids: Vec<libc::pid_t> = children
        .iter()
        .map(|child| child.id() as libc::pid_t)
        .collect();
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            // A hang-up of our terminal stops the servers gracefully; SIGHUP to a server itself
            // means "reload your certificates".
            let signal = if signal == SIGHUP { SIGTERM } else { signal };
            for pid in &pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(*pid, signal) };
            }
        }
    });
    let mut code = 0;
    for child in &mut children {
        let status = child.wait().context("lost track of a server")?;
        let exit = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        if code == 0 {
            code = exit;
        }
    }
    // What the nodes said last (that they stopped) is shown before `run` returns: their
    // output ends with them (a process one left holding it is not waited on past 2 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for _ in 0..relays {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if relays_ended.recv_timeout(left).is_err() {
            break;
        }
    }
    handle.close();
    let _ = forwarder.join();
    Ok(code)
}

/// Starts a server in a process group of its own, so that a terminal's Ctrl-C reaches it once,
/// through us; it is told to stop if we die, so it never outlives `run`. With `piped`, its
/// output comes to us.
fn spawn(server: &Path, args: &[String], piped: bool) -> Result<Child> {
    let mut command = Command::new(server);
    command.args(args).process_group(0);
    if piped {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    // SAFETY: prctl is async-signal-safe, and is all that runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))
}

/// Copies each line of a node's output to ours, with the node's name in front; says on
/// `ended` when the output has ended.
fn relay<W: Write + 'static>(
    name: &'static str,
    stream: Option<impl Read + Send + 'static>,
    out: fn() -> W,
    ended: std::sync::mpsc::Sender<()>,
) {
    let Some(stream) = stream else {
        let _ = ended.send(());
        return;
    };
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        // Line by line to the end, whatever bytes a line holds.
        while reader
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(out(), "[{name}] {}", text.trim_end_matches(['\r', '\n']));
            line.clear();
        }
        let _ = ended.send(());
    });
}

/// The arguments as a shell would need them: plain where that is unambiguous (as lein-immutant
/// printed them), quoted where an argument holds spaces or quotes, so it visibly stays one.
fn display_args(args: &[String]) -> String {
    let shown: Vec<std::borrow::Cow<str>> = args
        .iter()
        .map(|arg| immutant_protocol::secrets::shown_arg(arg))
        .map(|arg| {
            if arg.is_empty()
                || arg
                    .chars()
                    .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
            {
                shell_words::quote(&arg).into_owned().into()
            } else {
                arg
            }
        })
        .collect();
    shown.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Result<Vec<String>> {
        plan(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).map(|plan| plan.args)
    }

    #[test]
    fn own_options_are_rewritten_in_place() {
        assert_eq!(
            rewrite(&[
                "-Dx=1",
                "--clustered",
                "--offset",
                "100",
                "--node-name=one",
                "--log-level",
                "DEBUG",
                "-o=5",
                "-n",
                "two"
            ])
            .unwrap(),
            [
                "-Dx=1",
                "--server-config=standalone-ha.toml",
                "-Djboss.socket.binding.port-offset=100",
                "-Djboss.node.name=one",
                "-Djboss.logging.level=DEBUG",
                "-Djboss.socket.binding.port-offset=5",
                "-Djboss.node.name=two",
            ]
        );
    }

    #[test]
    fn everything_else_passes_whole() {
        assert_eq!(
            rewrite(&["--help", "-Dgreeting=hello world", "-b", "127.0.0.1"]).unwrap(),
            ["--help", "-Dgreeting=hello world", "-b", "127.0.0.1"]
        );
    }

    #[test]
    fn arguments_are_shown_plain_unless_they_need_quotes() {
        let args = ["-Dx=1", "-Dgreeting=hello world", ""].map(String::from);
        assert_eq!(display_args(&args), "-Dx=1 '-Dgreeting=hello world' ''");
    }

    #[test]
    fn nodes_is_runs_own_and_excludes_naming_the_node() {
        let args = ["--clustered", "--nodes", "3"].map(String::from);
        assert_eq!(
            plan(&args).unwrap(),
            RunPlan {
                args: vec!["--server-config=standalone-ha.toml".to_string()],
                nodes: Some(3)
            }
        );
        let error = plan(&["--nodes=3", "-n", "x"].map(String::from))
            .unwrap_err()
            .to_string();
        assert!(error.contains("leave out --node-name"), "{error}");
        let error = plan(&["--nodes=0"].map(String::from))
            .unwrap_err()
            .to_string();
        assert!(error.contains("from 1 to 9"), "{error}");
    }

    #[test]
    fn an_option_without_its_value_is_an_error() {
        let error = rewrite(&["--offset"]).unwrap_err().to_string();
        assert!(error.contains("--offset needs a value"), "{error}");
    }
}
