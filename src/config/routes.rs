//! `[[route]]` tables of the TOML file: which broker nodes serve which
//! vhosts or users. Routes exist only in the file (a list of tables has no
//! natural flag); everything outside them is an [`super::Options`] setting
//! and applies to the default route too.

use serde::{Deserialize, Serialize};

use super::options::strings;
use super::{cert_and_key, err, given, parse_upstream_url, redact_url, ConfigError};
use super::{UpstreamAddr, UpstreamTls};

/// A route as the file gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    pub name: String,
    /// Vhost patterns the route serves (`*` matches any run of characters).
    #[serde(default, deserialize_with = "strings")]
    pub vhosts: Vec<String>,
    /// User patterns the route serves.
    #[serde(default, deserialize_with = "strings")]
    pub users: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub upstream: Vec<String>,
    /// The vhost opened on the broker, instead of the client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_vhost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_insecure: Option<bool>,
    /// `shared` (default) or `dedicated`: see [`ConsumerMode`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_mode: Option<String>,
}

/// Where a client that starts consuming (or takes an exclusive queue, or a
/// transaction) is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// On the connection it shares with other clients.
    #[default]
    Shared,
    /// On an upstream connection of its own, from a pool of such.
    Dedicated,
}

/// A name or a glob: `*` matches any run of characters, nothing else is
/// special.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(pattern: &str) -> Self {
        Pattern(pattern.to_string())
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `[[route]]` or `[[quota]]` name: what the API, the metrics and
/// refusals show.
pub fn table_name(table: &str, given: &str) -> Result<String, ConfigError> {
    let name = given.trim();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match valid {
        true => Ok(name.to_string()),
        false => Err(err(format!(
            "invalid {table} name '{}': 1 to 64 letters, digits, '-', '_' or '.'",
            name.chars().take(64).collect::<String>()
        ))),
    }
}

/// Vhost or user patterns as given, each 1 to 255 bytes (a short string).
pub fn patterns(given: &[String]) -> Result<Vec<Pattern>, String> {
    given
        .iter()
        .map(|p| match p.is_empty() || p.len() > 255 {
            true => Err("a pattern must be 1 to 255 bytes".to_string()),
            false => Ok(Pattern::new(p)),
        })
        .collect()
}

/// A route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub vhosts: Vec<Pattern>,
    pub users: Vec<Pattern>,
    pub upstreams: Vec<UpstreamAddr>,
    pub upstream_vhost: Option<String>,
    pub tls: UpstreamTls,
    pub consumer_mode: ConsumerMode,
}

/// The name of the route of everything no `[[route]]` takes.
pub const DEFAULT_ROUTE: &str = "default";

impl Route {
    /// Serves a client of `user` on `vhost`: every list given matches.
    pub fn serves(&self, user: &str, vhost: &str) -> bool {
        let any = |patterns: &[Pattern], text: &str| {
            patterns.is_empty() || patterns.iter().any(|p| p.matches(text))
        };
        any(&self.users, user) && any(&self.vhosts, vhost)
    }

    /// Whether this route could serve `user` on some vhost, and whether
    /// that depends on the vhost.
    pub fn may_serve_user(&self, user: &str) -> (bool, bool) {
        let user_matches = self.users.is_empty() || self.users.iter().any(|p| p.matches(user));
        (user_matches, !self.vhosts.is_empty())
    }

    /// What a reload must treat as another route: where its connections
    /// go and how they are opened (the patterns only choose who uses it).
    pub fn same_target(&self, other: &Route) -> bool {
        self.upstreams == other.upstreams
            && self.upstream_vhost == other.upstream_vhost
            && self.tls == other.tls
            && self.consumer_mode == other.consumer_mode
    }
}

/// `shared` or `dedicated`, from a route or `--consumer-mode`.
pub fn consumer_mode(given: &str) -> Result<ConsumerMode, String> {
    match given {
        "shared" => Ok(ConsumerMode::Shared),
        "dedicated" => Ok(ConsumerMode::Dedicated),
        other => Err(format!(
            "invalid consumer_mode '{}': expected shared or dedicated",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// Checks the file's routes; what a route does not say it takes from the
/// top-level settings (`global`: TLS and consumer mode).
pub fn check(
    given_routes: &[RouteOptions],
    global: (&UpstreamTls, ConsumerMode),
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(given_routes.len());
    for options in given_routes {
        let route = check_one(options, global)?;
        if routes.iter().any(|r| r.name == route.name) {
            return Err(err(format!("route '{}' is defined twice", route.name)));
        }
        routes.push(route);
    }
    Ok(routes)
}

fn check_one(
    options: &RouteOptions,
    (global_tls, global_mode): (&UpstreamTls, ConsumerMode),
) -> Result<Route, ConfigError> {
    let name = table_name("route", &options.name)?;
    if name == DEFAULT_ROUTE {
        return Err(err(format!(
            "invalid route name '{DEFAULT_ROUTE}': it names the top-level upstream"
        )));
    }
    let in_route = |what: String| err(format!("route '{name}': {what}"));
    if options.vhosts.is_empty() && options.users.is_empty() {
        return Err(in_route(
            "give vhosts, users or both (the default route takes the rest)".into(),
        ));
    }
    if options.upstream.is_empty() {
        return Err(in_route("no upstream: give the route's broker URLs".into()));
    }
    let upstreams = options
        .upstream
        .iter()
        .map(|url| parse_upstream_url(url).map_err(|e| in_route(e.0)))
        .collect::<Result<Vec<_>, _>>()?;
    let has_own_tls = options.upstream_ca.is_some()
        || options.upstream_cert.is_some()
        || options.upstream_key.is_some()
        || options.upstream_insecure.is_some();
    let tls = match has_own_tls {
        true => UpstreamTls {
            ca: given(options.upstream_ca.clone()).map(Into::into),
            client_cert: cert_and_key(
                options.upstream_cert.clone(),
                options.upstream_key.clone(),
                "upstream",
            )
            .map_err(|e| in_route(e.0))?,
            insecure: options.upstream_insecure.unwrap_or_default(),
        },
        false => global_tls.clone(),
    };
    let upstream_vhost = match &options.upstream_vhost {
        Some(v) if v.is_empty() || v.len() > 255 => {
            return Err(in_route("upstream_vhost must be 1 to 255 bytes".into()))
        }
        other => other.clone(),
    };
    let consumer_mode = match options.consumer_mode.as_deref() {
        None => global_mode,
        Some(given) => consumer_mode(given).map_err(in_route)?,
    };
    Ok(Route {
        vhosts: patterns(&options.vhosts).map_err(in_route)?,
        users: patterns(&options.users).map_err(in_route)?,
        name,
        upstreams,
        upstream_vhost,
        tls,
        consumer_mode,
    })
}

/// The routes as `--check-config` prints them: passwords in URLs hidden.
pub fn redacted(routes: &[RouteOptions]) -> Vec<RouteOptions> {
    routes
        .iter()
        .map(|route| RouteOptions {
            upstream: route.upstream.iter().map(|u| redact_url(u)).collect(),
            ..route.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Pattern {
        Pattern::new(p)
    }

    #[test]
    fn patterns_are_names_or_globs() {
        assert!(pattern("billing").matches("billing"));
        assert!(!pattern("billing").matches("billing2"));
        assert!(pattern("billing-*").matches("billing-eu"));
        assert!(pattern("billing-*").matches("billing-"));
        assert!(!pattern("billing-*").matches("billing"));
        assert!(pattern("*").matches(""));
        assert!(pattern("*-prod").matches("eu-prod"));
        assert!(pattern("a*b*c").matches("a-b-b-c"));
        assert!(!pattern("a*b*c").matches("a-c-b"));
        assert!(!pattern("ab*ba").matches("aba"));
        assert!(pattern("svc.?").matches("svc.?"));
    }

    fn options(name: &str) -> RouteOptions {
        RouteOptions {
            name: name.into(),
            vhosts: vec!["billing*".into()],
            upstream: vec!["amqp://user:secret@b1:5700".into()],
            ..RouteOptions::default()
        }
    }

    #[test]
    fn routes_are_checked_and_inherit_tls() {
        let global = UpstreamTls {
            insecure: true,
            ..UpstreamTls::default()
        };
        let [route]: [Route; 1] = check(&[options("billing")], (&global, ConsumerMode::Shared))
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(route.upstreams[0].port, 5700);
        assert!(route.tls.insecure, "inherited");
        assert!(route.serves("anyone", "billing-eu"));
        assert!(!route.serves("anyone", "orders"));
        let own = RouteOptions {
            upstream_ca: Some("/ca.pem".into()),
            ..options("b")
        };
        assert!(
            !check(&[own], (&global, ConsumerMode::Shared)).unwrap()[0]
                .tls
                .insecure
        );
        let both = RouteOptions {
            users: vec!["svc-*".into()],
            ..options("c")
        };
        let route = &check(&[both], (&global, ConsumerMode::Dedicated)).unwrap()[0];
        assert!(route.serves("svc-a", "billing"));
        assert!(!route.serves("other", "billing"));
        assert_eq!(route.may_serve_user("svc-a"), (true, true));
        assert_eq!(route.consumer_mode, ConsumerMode::Dedicated, "inherited");
    }

    #[test]
    fn mistakes_name_the_route_and_never_a_password() {
        let global = (&UpstreamTls::default(), ConsumerMode::Shared);
        let twice = check(&[options("a"), options("a")], global).unwrap_err().0;
        assert!(twice.contains("defined twice"), "{twice}");
        let nothing = RouteOptions {
            vhosts: vec![],
            ..options("a")
        };
        assert!(check(&[nothing], global)
            .unwrap_err()
            .0
            .contains("route 'a'"));
        let default = check(&[options("default")], global).unwrap_err().0;
        assert!(default.contains("invalid route name"), "{default}");
        let bad_url = RouteOptions {
            upstream: vec!["amqp://u:hunter2@".into()],
            ..options("a")
        };
        let bad = check(&[bad_url], global).unwrap_err().0;
        assert!(
            bad.contains("route 'a'") && !bad.contains("hunter2"),
            "{bad}"
        );
        let mode = RouteOptions {
            consumer_mode: Some("solo".into()),
            ..options("a")
        };
        assert!(check(&[mode], global)
            .unwrap_err()
            .0
            .contains("consumer_mode"));
        assert!(!redacted(&[options("a")])[0].upstream[0].contains("secret"));
    }
}
