//! Docker's exit codes, which scripts test: 125 when hull itself failed
//! (`run`), 126 when the container's program cannot be invoked, 127 when
//! it does not exist, the program's own code otherwise; clap's usage
//! errors as Docker's flag errors.

use agent_protocol::protocol::ExecFailure;
use clap::error::ErrorKind;

use crate::guest::agent_client;

/// `run` failed in hull, not in the container (bad flag, unknown image,
/// name or port in use).
pub const HULL_FAILED: u8 = 125;

/// The exit code for `error` of a command whose own failures exit
/// `failure_code`: a program that could not be executed wins, whatever
/// the command, as with `docker run` and `docker exec`.
pub fn for_error(error: &anyhow::Error, failure_code: u8) -> u8 {
    agent_client::exec_exit_code(error).unwrap_or(failure_code)
}

/// The kind of exec failure a hull process that exited `code` reported
/// (the detached VMM process exits by [`for_error`]).
pub fn failure_of(code: Option<i32>) -> Option<ExecFailure> {
    match code? {
        127 => Some(ExecFailure::NotFound),
        126 => Some(ExecFailure::CannotInvoke),
        _ => None,
    }
}

/// How a command line clap refused ends: its exit code and the one line
/// to print (None: clap's own output, help or version, goes to stdout).
/// `hidden` are the internal commands no tip may suggest.
pub fn for_usage_error(e: &clap::Error, hidden: &[String]) -> (u8, Option<String>) {
    let line = || Some(one_line(&e.render().to_string(), hidden));
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => (0, None),
        // `docker nosuch` is an ordinary error (1); a bad flag or argument
        // is Docker's usage error, 125, for every command.
        ErrorKind::InvalidSubcommand => (1, line()),
        _ => (HULL_FAILED, line()),
    }
}

/// clap's multi-line report as one line: the error with what it lists,
/// its tips and where to read more (`see 'hull run --help'`).
fn one_line(rendered: &str, hidden: &[String]) -> String {
    let mut line = String::new();
    let mut command = "hull".to_string();
    for l in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(usage) = l.strip_prefix("Usage: ") {
            command = usage
                .split(' ')
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ");
        } else if l.starts_with("For more information")
            || hidden.iter().any(|h| l.contains(&format!("'{h}'")))
        {
            continue;
        } else if line.is_empty() {
            line = l.strip_prefix("error: ").unwrap_or(l).to_string();
        } else {
            // What a line ending in ':' announces continues it.
            line += if line.ends_with(':') { " " } else { "; " };
            line += l;
        }
    }
    format!("{line}; see '{command} --help'")
}

/// Fails in one line when hull is not root and `feature` needs it (it
/// makes network namespaces, bridges and taps, or runs runc as root);
/// everything else of hull runs rootless.
pub fn require_root(feature: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{feature} needs root; without root hull runs VM containers, images, volumes and published ports"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_reports_become_one_line() {
        let rendered = "error: unexpected argument '--nope' found\n\n  \
            tip: a similar argument exists: '--name'\n\n\
            Usage: hull run --name <NAME> <IMAGE> [COMMAND]...\n\n\
            For more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered, &[]),
            "unexpected argument '--nope' found; tip: a similar argument exists: \
             '--name'; see 'hull run --help'"
        );
        let rendered = "error: the following required arguments were not provided:\n  \
            <IMAGE>\n\nUsage: hull run <IMAGE> [COMMAND]...\n";
        assert_eq!(
            one_line(rendered, &[]),
            "the following required arguments were not provided: <IMAGE>; \
             see 'hull run --help'"
        );
        let rendered = "error: unrecognized subcommand '__c'\n\n  \
            tip: a similar subcommand exists: '__container-vmm'\n\nUsage: hull [OPTIONS] <COMMAND>\n";
        assert_eq!(
            one_line(rendered, &["__container-vmm".into()]),
            "unrecognized subcommand '__c'; see 'hull --help'"
        );
    }

    #[test]
    fn exec_failures_outrank_the_command_s_code() {
        use agent_client::AgentError;
        let e = anyhow::Error::from(AgentError::Exec(ExecFailure::NotFound, "x".into()))
            .context("run container");
        assert_eq!(for_error(&e, HULL_FAILED), 127);
        let e = anyhow::Error::from(AgentError::Exec(ExecFailure::CannotInvoke, "x".into()));
        assert_eq!(for_error(&e, 1), 126);
        for code in [126, 127] {
            let f = failure_of(Some(code)).unwrap();
            let e = anyhow::Error::from(AgentError::Exec(f, "x".into()));
            assert_eq!(for_error(&e, 1), code as u8);
        }
        assert_eq!(failure_of(Some(125)), None);
        let e = anyhow::anyhow!("No such image: x");
        assert_eq!(for_error(&e, HULL_FAILED), HULL_FAILED);
        assert_eq!(for_error(&e, 1), 1);
    }
}
