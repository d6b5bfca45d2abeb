//! `hull completion SHELL`: a completion script for the shell, on stdout
//! (`source <(hull completion bash)`), generated from the command line's
//! own definition so it never lags behind it.

use clap::{Command, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Writes the script; exit code 0.
pub fn run(shell: Shell) -> anyhow::Result<u8> {
    let mut cmd = without_hidden(Cli::command());
    clap_complete::generate(shell, &mut cmd, "hull", &mut std::io::stdout());
    Ok(0)
}

/// The command line without its hidden commands, at every level
/// (`hull container` has them too): clap_complete would offer them
/// (`__container-vmm`), and they are not for users.
fn without_hidden(cmd: Command) -> Command {
    let hidden: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd;
    for name in hidden {
        cmd = cmd.mut_subcommand(&name, |s| s.hide(true));
    }
    // Hidden subcommands stay defined (clap has no removal) but are
    // rebuilt without: only visible ones are kept, each cleaned in turn.
    let visible: Vec<Command> = names
        .iter()
        .filter_map(|n| cmd.find_subcommand(n).cloned())
        .map(without_hidden)
        .collect();
    let mut out = Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().cloned())
        .subcommands(visible);
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_string());
    }
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_no_hidden_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut without_hidden(Cli::command()), "hull", &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("inspect"), "{shell}");
            assert!(!script.contains("__container-vmm"), "{shell}");
        }
    }
}
