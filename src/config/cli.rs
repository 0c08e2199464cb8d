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
}

impl Cli {
    fn command() -> Command {
        Command::new("warren")
            .version(env!("CARGO_PKG_VERSION"))
            .about("AMQP 0-9-1 proxy that pools upstream connections and channels")
            .after_help(
                "Every option can also come from the file given with --config: TOML \
                 (*.toml, keys as in docs/configuration.md) or amqproxy's INI format. \
                 Precedence: command line > environment > file > default. \
                 SIGHUP reloads the file.",
            )
            .args_override_self(true)
            .args(options::args())
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
        Cli {
            options,
            config: matches.get_one::<PathBuf>("config").cloned(),
            check_config: matches.get_one::<PathBuf>("check_config").cloned(),
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
