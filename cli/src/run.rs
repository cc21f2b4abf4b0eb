//! `run`: starts the installed server in the foreground, its options rewritten as lein-immutant
//! rewrote them, every other argument passed on whole, and signals passed on to it.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use anyhow::{Context, Result, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::install;
use crate::locations::Locations;

/// Turns `run`'s own options into server arguments, keeping every other argument as it is and
/// where it is: `--clustered`, `--offset N`, `--node-name X`, `--log-level L` (also as
/// `--opt=value`, and `-o`, `-n` for the short forms).
pub fn server_args(args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
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
            "--offset" | "-o" => "jboss.socket.binding.port-offset",
            "--node-name" | "-n" => "jboss.node.name",
            "--log-level" => "jboss.logging.level",
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
        out.push(format!("-D{property}={value}"));
    }
    Ok(out)
}

/// Runs the server with `args` (already rewritten) until it exits, and returns the exit code to
/// leave with. Installs a server first if there is none.
pub fn run(locations: &Locations, args: &[String]) -> Result<i32> {
    install::ensure_installed(locations)?;
    let server = locations.server();
    println!(
        "Starting Immutant: {} {}",
        server.display(),
        display_args(args)
    );

    // The server gets its own process group so that a terminal's Ctrl-C reaches it once, through
    // us; and it is told to stop if we die, so it never outlives `run`.
    let mut command = Command::new(&server);
    command.args(args).process_group(0);
    // SAFETY: prctl is async-signal-safe, and is all that runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]).context("cannot listen for signals")?;
    let handle = signals.handle();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))?;
    let pid = child.id() as libc::pid_t;
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
    });
    let status = child.wait().context("lost track of the server")?;
    handle.close();
    let _ = forwarder.join();
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The arguments as a shell would need them: plain where that is unambiguous (as lein-immutant
/// printed them), quoted where an argument holds spaces or quotes, so it visibly stays one.
fn display_args(args: &[String]) -> String {
    let shown: Vec<std::borrow::Cow<str>> = args
        .iter()
        .map(|arg| {
            if arg.is_empty()
                || arg
                    .chars()
                    .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
            {
                shell_words::quote(arg)
            } else {
                arg.into()
            }
        })
        .collect();
    shown.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Result<Vec<String>> {
        server_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
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
    fn an_option_without_its_value_is_an_error() {
        let error = rewrite(&["--offset"]).unwrap_err().to_string();
        assert!(error.contains("--offset needs a value"), "{error}");
    }
}
