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

/// The command line without its hidden commands: clap_complete would
/// offer them (`__container-vmm`), and they are not for users.
fn without_hidden(cmd: Command) -> Command {
    let visible: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    Command::new("hull")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(visible)
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
