//! `warren ctl`: commands to a running warren through its HTTP endpoint.
//!
//! A subcommand of the one binary rather than a separate tool, so a
//! container image without a shell or curl can run its own health check,
//! and an operator always has a client that speaks the API of the warren
//! it was installed with.

mod http;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use url::Url;

/// What `warren ctl ...` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    admin: Url,
    timeout: Duration,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Exit 0 when `/readyz` answers 200: a health check.
    Ready,
}

/// The `ctl` subcommand's arguments.
pub fn command() -> Command {
    Command::new("ctl")
        .about("Talk to a running warren through its HTTP endpoint")
        .arg(
            Arg::new("admin")
                .long("admin")
                .env("WARREN_ADMIN_URL")
                .value_name("URL")
                .default_value(default_admin_url())
                .value_parser(parse_admin_url)
                .help("The running warren's HTTP endpoint"),
        )
        .arg(
            Arg::new("timeout")
                .long("timeout")
                .value_name("SECONDS")
                .default_value("5")
                .value_parser(clap::value_parser!(u64).range(1..=3600))
                .help("Give up after this many seconds"),
        )
        .subcommand_required(true)
        .subcommand(Command::new("ready").about(
            "Exit 0 if warren is ready for clients (/readyz answers 200), else print why \
             and exit 1; for container health checks",
        ))
}

/// Where a warren started with this environment listens for HTTP: its own
/// HTTP_ADDRESS and HTTP_PORT (as a container image sets them), else the
/// defaults.
fn default_admin_url() -> String {
    admin_url(
        std::env::var("HTTP_ADDRESS").ok().as_deref(),
        std::env::var("HTTP_PORT").ok().as_deref(),
    )
}

/// The URL of an endpoint bound to `address` and `port`; a wildcard
/// address is reached on loopback.
fn admin_url(address: Option<&str>, port: Option<&str>) -> String {
    let host = match address {
        None | Some("" | "0.0.0.0") => "127.0.0.1".to_string(),
        Some("::") => "[::1]".to_string(),
        Some(v6) if v6.contains(':') => format!("[{v6}]"),
        Some(other) => other.to_string(),
    };
    format!("http://{host}:{}", port.unwrap_or("15673"))
}

fn parse_admin_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{e}"))?;
    if url.scheme() != "http" {
        return Err("the HTTP endpoint is plain http://".into());
    }
    if url.host_str().is_none() {
        return Err("no host".into());
    }
    Ok(url)
}

impl Request {
    pub fn from_matches(matches: &ArgMatches) -> Self {
        let action = match matches.subcommand_name() {
            Some("ready") => Action::Ready,
            other => unreachable!("clap requires a known ctl subcommand, got {other:?}"),
        };
        Request {
            admin: matches
                .get_one::<Url>("admin")
                .expect("has a default")
                .clone(),
            timeout: Duration::from_secs(
                *matches.get_one::<u64>("timeout").expect("has a default"),
            ),
            action,
        }
    }

    /// Runs the request; what it prints and its exit code are the answer.
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("warren ctl: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let path = match self.action {
            Action::Ready => "/readyz",
        };
        let answer = runtime.block_on(async {
            tokio::time::timeout(self.timeout, http::get(&self.admin, path)).await
        });
        match answer {
            Ok(Ok(response)) if response.status == 200 => {
                print!("{}", response.body);
                ExitCode::SUCCESS
            }
            Ok(Ok(response)) => {
                eprint!("{}", response.body);
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("warren ctl: {}: {e}", self.admin);
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!(
                    "warren ctl: {} did not answer within {:?}",
                    self.admin, self.timeout
                );
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_endpoint_follows_warrens_own_variables() {
        assert_eq!(admin_url(None, None), "http://127.0.0.1:15673");
        assert_eq!(
            admin_url(Some("0.0.0.0"), Some("9000")),
            "http://127.0.0.1:9000"
        );
        assert_eq!(admin_url(Some("::"), None), "http://[::1]:15673");
        assert_eq!(admin_url(Some("fd00::1"), None), "http://[fd00::1]:15673");
        assert_eq!(admin_url(Some("10.0.0.7"), None), "http://10.0.0.7:15673");
        for url in [
            admin_url(Some("::"), Some("1")),
            admin_url(Some("fd00::1"), None),
        ] {
            assert!(parse_admin_url(&url).is_ok(), "{url}");
        }
    }

    #[test]
    fn only_plain_http_endpoints() {
        assert!(parse_admin_url("https://127.0.0.1:15673").is_err());
        assert!(parse_admin_url("127.0.0.1:15673").is_err());
    }
}
