//! `warren ctl`: commands to a running warren through its HTTP endpoint.
//!
//! A subcommand of the one binary rather than a separate tool, so a
//! container image without a shell or curl can run its own health check,
//! and an operator always has a client that speaks the API of the warren
//! it was installed with. Each command is one request; the operator
//! actions are POSTs under `/api/` (see docs/operations.md).

mod http;
mod table;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use url::Url;
use zeroize::Zeroizing;

/// What `warren ctl ...` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    admin: Url,
    timeout: Duration,
    token_file: Option<String>,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Exit 0 when `/readyz` answers 200: a health check.
    Ready,
    List {
        what: Listing,
        json: bool,
    },
    /// POST `/api/<name>` with these query parameters.
    Operate {
        name: &'static str,
        query: Vec<(&'static str, String)>,
    },
}

/// What `ctl list` shows: one `/api/` collection each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Clients,
    Pools,
    Upstreams,
    Nodes,
    Routes,
    Quotas,
}

impl Listing {
    const NAMES: [&'static str; 6] = ["clients", "pools", "upstreams", "nodes", "routes", "quotas"];

    fn from_name(name: &str) -> Self {
        match name {
            "clients" => Listing::Clients,
            "pools" => Listing::Pools,
            "upstreams" => Listing::Upstreams,
            "nodes" => Listing::Nodes,
            "routes" => Listing::Routes,
            "quotas" => Listing::Quotas,
            other => unreachable!("clap allows only Listing::NAMES, got {other}"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Listing::Clients => "/api/clients",
            Listing::Pools => "/api/pools",
            Listing::Upstreams => "/api/upstreams",
            Listing::Nodes => "/api/nodes",
            Listing::Routes => "/api/routes",
            Listing::Quotas => "/api/quotas",
        }
    }
}

/// The `ctl` subcommand's arguments.
pub fn command() -> Command {
    Command::new("ctl")
        .about("Talk to a running warren through its HTTP endpoint")
        .after_help(
            "The admin API token, when warren has one, is read from HTTP_TOKEN or the file \
             named by --token-file (HTTP_TOKEN_FILE), as warren itself reads it.",
        )
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
        .arg(
            Arg::new("token-file")
                .long("token-file")
                .env("HTTP_TOKEN_FILE")
                .value_name("FILE")
                .help("File holding the admin API token"),
        )
        .subcommand_required(true)
        .subcommands(actions())
}

/// One subcommand per request `ctl` can make.
fn actions() -> [Command; 7] {
    let node = || {
        Arg::new("node")
            .required(true)
            .value_name("HOST:PORT")
            .help("A broker node as warren lists it (warren ctl list nodes)")
    };
    let vhost = || {
        Arg::new("vhost")
            .long("vhost")
            .value_name("VHOST")
            .help("Only this vhost (default: all)")
    };
    [
        Command::new("ready").about(
            "Exit 0 if warren is ready for clients (/readyz answers 200), else print why \
             and exit 1; for container health checks",
        ),
        Command::new("list")
            .about("Show clients, pools, upstream connections, broker nodes, routes or quotas")
            .arg(Arg::new("what").required(true).value_parser(Listing::NAMES))
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("The API's JSON instead of a table"),
            ),
        Command::new("kill")
            .about("Close a client's connection (it gets 320 CONNECTION_FORCED)")
            .arg(
                Arg::new("client")
                    .required(true)
                    .value_name("CLIENT_ID")
                    .value_parser(clap::value_parser!(u64))
                    .help("The id shown by warren ctl list clients"),
            ),
        Command::new("drain-node")
            .about(
                "Send no new clients to a broker node; its upstream connections close \
                 as their clients leave",
            )
            .arg(node()),
        Command::new("undrain-node")
            .about("Let a drained broker node take new clients again")
            .arg(node()),
        Command::new("pause")
            .about("Hold publishes and channel opens until resume; clients wait without errors")
            .arg(vhost()),
        Command::new("resume")
            .about("Let paused clients go on")
            .arg(vhost()),
    ]
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

impl Action {
    fn from_matches(matches: &ArgMatches) -> Self {
        let (name, args) = matches
            .subcommand()
            .expect("clap requires a ctl subcommand");
        let text = |id: &str| args.get_one::<String>(id).cloned();
        match name {
            "ready" => Action::Ready,
            "list" => Action::List {
                what: Listing::from_name(&text("what").expect("required")),
                json: args.get_flag("json"),
            },
            "kill" => Action::operate(
                "kill",
                "client",
                args.get_one::<u64>("client").map(u64::to_string),
            ),
            "drain-node" => Action::operate("drain-node", "node", text("node")),
            "undrain-node" => Action::operate("undrain-node", "node", text("node")),
            "pause" => Action::operate("pause", "vhost", text("vhost")),
            "resume" => Action::operate("resume", "vhost", text("vhost")),
            other => unreachable!("clap allows only the ctl subcommands above, got {other}"),
        }
    }

    /// POST `/api/{name}`, with `key=value` when there is a value.
    fn operate(name: &'static str, key: &'static str, value: Option<String>) -> Self {
        Action::Operate {
            name,
            query: value.map(|v| (key, v)).into_iter().collect(),
        }
    }

    /// The request it makes: method and path with query.
    fn target(&self) -> (hyper::Method, String) {
        match self {
            Action::Ready => (hyper::Method::GET, "/readyz".into()),
            Action::List { what, .. } => (hyper::Method::GET, what.path().into()),
            Action::Operate { name, query } => {
                let mut path = format!("/api/{name}");
                if !query.is_empty() {
                    path.push('?');
                    path.push_str(
                        &url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(query)
                            .finish(),
                    );
                }
                (hyper::Method::POST, path)
            }
        }
    }

    /// What the operator sees of a successful answer.
    fn show(&self, body: &str) -> Result<String, String> {
        match self {
            Action::List { what, json: false } => table::render(*what, body),
            _ => Ok(body.to_string()),
        }
    }
}

impl Request {
    pub fn from_matches(matches: &ArgMatches) -> Self {
        Request {
            admin: matches
                .get_one::<Url>("admin")
                .expect("has a default")
                .clone(),
            timeout: Duration::from_secs(
                *matches.get_one::<u64>("timeout").expect("has a default"),
            ),
            token_file: matches.get_one::<String>("token-file").cloned(),
            action: Action::from_matches(matches),
        }
    }

    /// The admin API token from the environment or `--token-file`, the
    /// same sources as warren's own (never a flag: flags show in `ps`).
    fn token(&self) -> Result<Option<Zeroizing<String>>, String> {
        if let Ok(token) = std::env::var("HTTP_TOKEN") {
            if !token.is_empty() {
                return Ok(Some(Zeroizing::new(token)));
            }
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {path}: {e}"))?,
        );
        Ok(Some(Zeroizing::new(text.trim().to_string())))
    }

    /// Runs the request; what it prints and its exit code are the answer.
    pub fn run(self) -> ExitCode {
        let (method, path) = self.action.target();
        // Only the admin API takes the token: a health check must not fail
        // on a token file it does not need.
        let token = match path.starts_with("/api/").then(|| self.token()) {
            None => None,
            Some(Ok(token)) => token,
            Some(Err(e)) => {
                eprintln!("warren ctl: {e}");
                return ExitCode::FAILURE;
            }
        };
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
        let answer = runtime.block_on(async {
            let request = http::request(
                &self.admin,
                method,
                &path,
                token.as_ref().map(|t| t.as_str()),
            );
            tokio::time::timeout(self.timeout, request).await
        });
        match answer {
            Ok(Ok(response)) if response.status == 200 => match self.action.show(&response.body) {
                Ok(shown) => {
                    print!("{shown}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("warren ctl: {}{path}: {e}", self.admin);
                    ExitCode::FAILURE
                }
            },
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

    fn action(args: &[&str]) -> Action {
        let matches = command()
            .try_get_matches_from(["ctl"].iter().chain(args))
            .expect("valid");
        Action::from_matches(&matches)
    }

    #[test]
    fn operator_actions_are_posts_with_their_arguments_encoded() {
        let cases = [
            (&["kill", "42"][..], "/api/kill?client=42"),
            (
                &["drain-node", "[::1]:5672"],
                "/api/drain-node?node=%5B%3A%3A1%5D%3A5672",
            ),
            (
                &["undrain-node", "rabbit-1:5672"],
                "/api/undrain-node?node=rabbit-1%3A5672",
            ),
            (&["pause"], "/api/pause"),
            (
                &["resume", "--vhost", "/a b&c"],
                "/api/resume?vhost=%2Fa+b%26c",
            ),
        ];
        for (args, path) in cases {
            assert_eq!(
                action(args).target(),
                (hyper::Method::POST, path.to_string()),
                "{args:?}"
            );
        }
        assert_eq!(
            action(&["list", "nodes"]).target(),
            (hyper::Method::GET, "/api/nodes".to_string())
        );
    }
}
