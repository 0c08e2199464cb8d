//! `--upstream-connection-name`: how warren names its connections to the
//! broker, so the management UI shows which warren, route and pool each
//! serves. A template of text and `{placeholder}`s, checked once at load.

use super::{err, ConfigError};

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Version,
    Listen,
    Host,
    Pid,
    Route,
    Node,
    User,
    Vhost,
}

const FIELDS: &[(&str, Field)] = &[
    ("version", Field::Version),
    ("listen", Field::Listen),
    ("host", Field::Host),
    ("pid", Field::Pid),
    ("route", Field::Route),
    ("node", Field::Node),
    ("user", Field::User),
    ("vhost", Field::Vhost),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate(Vec<Part>);

/// What the placeholders are replaced with for one connection. `user` and
/// `vhost` are the client's, already made printable by the caller.
pub struct NameValues<'a> {
    pub listen: &'a str,
    pub route: &'a str,
    pub node: &'a str,
    pub user: &'a str,
    /// `None` while the vhost is not known (a login before Connection.Open).
    pub vhost: Option<&'a str>,
}

/// Longest template, in bytes: a name the management UI can show.
const MAX_TEMPLATE: usize = 512;

impl NameTemplate {
    pub fn parse(template: &str) -> Result<Self, ConfigError> {
        let invalid = |why: String| {
            err(format!(
                "invalid --upstream-connection-name: {why}; placeholders: {}",
                FIELDS
                    .iter()
                    .map(|(name, _)| format!("{{{name}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        };
        if template.is_empty() || template.len() > MAX_TEMPLATE {
            return Err(invalid(format!("must be 1 to {MAX_TEMPLATE} bytes")));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}').map(|at| open + at) else {
                return Err(invalid("a '{' without its '}'".into()));
            };
            let name = &rest[open + 1..close];
            let Some((_, field)) = FIELDS.iter().find(|(known, _)| *known == name) else {
                return Err(invalid(format!(
                    "unknown placeholder '{{{}}}'",
                    name.chars().take(32).collect::<String>()
                )));
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            parts.push(Part::Field(*field));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(NameTemplate(parts))
    }

    /// Whether the name needs the client's vhost, so a connection cannot be
    /// opened (logged in) before the client names it.
    pub fn needs_vhost(&self) -> bool {
        self.0.contains(&Part::Field(Field::Vhost))
    }

    pub fn render(&self, values: &NameValues<'_>) -> String {
        self.0
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Field(field) => match field {
                    Field::Version => env!("CARGO_PKG_VERSION").to_string(),
                    Field::Listen => values.listen.to_string(),
                    Field::Host => host_name(),
                    Field::Pid => std::process::id().to_string(),
                    Field::Route => values.route.to_string(),
                    Field::Node => values.node.to_string(),
                    Field::User => values.user.to_string(),
                    Field::Vhost => values.vhost.unwrap_or("").to_string(),
                },
            })
            .collect()
    }
}

/// This machine's name (the kernel's), or "localhost" if it has none.
fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> NameValues<'static> {
        NameValues {
            listen: "127.0.0.1:5673",
            route: "billing",
            node: "rabbit-1:5672",
            user: "app",
            vhost: Some("/eu"),
        }
    }

    #[test]
    fn placeholders_are_replaced_and_text_kept() {
        let template = NameTemplate::parse("warren {version} on {listen}").unwrap();
        assert_eq!(
            template.render(&values()),
            format!("warren {} on 127.0.0.1:5673", env!("CARGO_PKG_VERSION"))
        );
        assert!(!template.needs_vhost());
        let all = NameTemplate::parse("{route}/{node}/{user}@{vhost} pid {pid} on {host}").unwrap();
        let name = all.render(&values());
        assert!(
            name.starts_with("billing/rabbit-1:5672/app@/eu pid ")
                && name.ends_with(&format!(" on {}", host_name())),
            "{name}"
        );
        assert!(all.needs_vhost());
    }

    #[test]
    fn mistakes_are_named_with_the_valid_placeholders() {
        let unknown = NameTemplate::parse("warren {hostname}").unwrap_err().0;
        assert!(
            unknown.contains("'{hostname}'") && unknown.contains("{host}"),
            "{unknown}"
        );
        assert!(NameTemplate::parse("warren {host").is_err());
        assert!(NameTemplate::parse("").is_err());
        assert!(NameTemplate::parse(&"x".repeat(600)).is_err());
    }
}
