//! The command line (and environment), turned into [`Options`]. The
//! settings' arguments come from their definitions (`options.rs`); only
//! the arguments that are not settings are written here.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::{options, Options};

/// What the command line and environment say.
#[derive(Debug)]
pub struct Cli {
    options: Options,
    pub config: Option<PathBuf>,
    pub check_config: Option<PathBuf>,
    /// Print a document generated from these definitions instead of running.
    pub generate: Option<Generate>,
    /// `warren ctl ...`: talk to a running warren instead of running one.
    pub ctl: Option<crate::ctl::Request>,
}

/// Documents generated from the command line's definitions, never written
/// by hand: they list exactly the flags `--help` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generate {
    /// The man page (roff), for `man 1 warren`.
    Man,
    Completions(clap_complete::Shell),
}

impl Cli {
    pub fn command() -> Command {
        Command::new("warren")
            .version(crate::version::LONG)
            .about("AMQP 0-9-1 proxy that pools upstream connections and channels")
            .after_help(
                "Every option can also come from the file given with --config: TOML \
                 (*.toml, keys as in docs/configuration.md) or amqproxy's INI format. \
                 Precedence: command line > environment > file > default. \
                 SIGHUP reloads the file.",
            )
            .args_override_self(true)
            .args(options::args())
            // `warren ctl ...` takes none of the proxy's flags; the
            // environment (AMQP_URL in a container) does not count.
            .args_conflicts_with_subcommands(true)
            .subcommand(crate::ctl::command())
            .arg(
                Arg::new("debug")
                    .short('d')
                    .long("debug")
                    .action(ArgAction::SetTrue)
                    .help("Shorthand for --log-level debug"),
            )
            .arg(
                Arg::new("config")
                    .short('c')
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Configuration file: TOML if it ends in .toml, else amqproxy's INI"),
            )
            .arg(
                Arg::new("check_config")
                    .long("check-config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .conflicts_with("config")
                    .help(
                        "Validate this configuration file (with the command line and \
                         environment), print the effective configuration and exit",
                    ),
            )
            .arg(
                Arg::new("generate_man")
                    .long("generate-man")
                    .action(ArgAction::SetTrue)
                    .help("Print the man page (roff) and exit"),
            )
            .arg(
                Arg::new("generate_completions")
                    .long("generate-completions")
                    .value_name("SHELL")
                    .value_parser(clap::value_parser!(clap_complete::Shell))
                    .conflicts_with("generate_man")
                    .help("Print shell completions (bash, zsh, fish, elvish, powershell) and exit"),
            )
    }

    /// Writes the document `what` to `out`.
    pub fn generate(what: Generate, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut command = Self::command();
        match what {
            Generate::Man => clap_mangen::Man::new(command).render(out),
            Generate::Completions(shell) => {
                clap_complete::generate(shell, &mut command, "warren", out);
                Ok(())
            }
        }
    }

    /// The process's command line; exits with clap's message when it is wrong.
    pub fn parse() -> Self {
        Self::from_matches(&Self::command().get_matches())
    }

    #[cfg(test)]
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Self::from_matches(
            &Self::command().try_get_matches_from(args)?,
        ))
    }

    fn from_matches(matches: &ArgMatches) -> Self {
        let mut options = Options::from_matches(matches);
        if matches.get_flag("debug") {
            options.log_level = Some("debug".into());
        }
        let generate = match matches.get_one::<clap_complete::Shell>("generate_completions") {
            Some(shell) => Some(Generate::Completions(*shell)),
            None => matches.get_flag("generate_man").then_some(Generate::Man),
        };
        Cli {
            options,
            config: matches.get_one::<PathBuf>("config").cloned(),
            check_config: matches.get_one::<PathBuf>("check_config").cloned(),
            generate,
            ctl: matches
                .subcommand_matches("ctl")
                .map(crate::ctl::Request::from_matches),
        }
    }

    /// The file to read, whether to run or to check it.
    pub fn file(&self) -> Option<&PathBuf> {
        self.config.as_ref().or(self.check_config.as_ref())
    }

    /// What the command line and environment give.
    pub fn options(&self) -> Options {
        self.options.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
