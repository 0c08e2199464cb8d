//! `[[quota]]` tables of the TOML file: what each user, or each vhost, may
//! hold through warren (clients, channels, upstream connections) and how
//! fast it may publish.

use serde::{Deserialize, Serialize};

use super::options::strings;
use super::routes::{self, table_name, Pattern};
use super::{err, ConfigError};

/// A quota as the file gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOptions {
    pub name: String,
    /// Each user matching one of these has the quota to itself.
    #[serde(
        default,
        deserialize_with = "strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub users: Vec<String>,
    /// Each vhost matching one of these has the quota to itself.
    #[serde(
        default,
        deserialize_with = "strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vhosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upstream_connections: Option<u32>,
    /// Messages per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_rate: Option<u32>,
    /// Message body bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_bytes_rate: Option<u64>,
    /// `enforce` (default) or `observe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Who a quota counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Vhost,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Vhost => "vhost",
        }
    }
}

/// A quota, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub name: String,
    pub scope: Scope,
    pub patterns: Vec<Pattern>,
    pub max_clients: Option<u32>,
    pub max_channels: Option<u32>,
    pub max_upstream_connections: Option<u32>,
    pub max_publish_rate: Option<u32>,
    pub max_publish_bytes_rate: Option<u64>,
    /// Log and count what would be refused or slowed, enforce nothing.
    pub observe: bool,
}

impl Quota {
    /// Whether the quota applies to this user (or vhost, by its scope).
    pub fn covers(&self, key: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(key))
    }

    pub fn limits_rate(&self) -> bool {
        self.max_publish_rate.is_some() || self.max_publish_bytes_rate.is_some()
    }
}

pub fn check(given: &[QuotaOptions]) -> Result<Vec<Quota>, ConfigError> {
    let mut quotas: Vec<Quota> = Vec::with_capacity(given.len());
    for options in given {
        let quota = check_one(options)?;
        if quotas.iter().any(|q| q.name == quota.name) {
            return Err(err(format!("quota '{}' is defined twice", quota.name)));
        }
        quotas.push(quota);
    }
    Ok(quotas)
}

fn check_one(options: &QuotaOptions) -> Result<Quota, ConfigError> {
    let name = table_name("quota", &options.name)?;
    let in_quota = |what: &str| err(format!("quota '{name}': {what}"));
    let (scope, patterns) = match (options.users.is_empty(), options.vhosts.is_empty()) {
        (false, true) => (Scope::User, &options.users),
        (true, false) => (Scope::Vhost, &options.vhosts),
        _ => {
            return Err(in_quota(
                "give users or vhosts (not both): whose clients the quota counts together",
            ))
        }
    };
    let patterns = routes::patterns(patterns).map_err(|why| in_quota(&why))?;
    let observe = match options.mode.as_deref() {
        None | Some("enforce") => false,
        Some("observe") => true,
        Some(_) => return Err(in_quota("mode must be enforce or observe")),
    };
    let positive = |value: Option<u64>, key: &str| match value {
        Some(0) => Err(in_quota(&format!(
            "{key} must be at least 1 (leave it out for no limit)"
        ))),
        _ => Ok(()),
    };
    positive(options.max_clients.map(u64::from), "max_clients")?;
    positive(options.max_channels.map(u64::from), "max_channels")?;
    positive(
        options.max_upstream_connections.map(u64::from),
        "max_upstream_connections",
    )?;
    positive(options.max_publish_rate.map(u64::from), "max_publish_rate")?;
    positive(options.max_publish_bytes_rate, "max_publish_bytes_rate")?;
    Ok(Quota {
        scope,
        patterns,
        max_clients: options.max_clients,
        max_channels: options.max_channels,
        max_upstream_connections: options.max_upstream_connections,
        max_publish_rate: options.max_publish_rate,
        max_publish_bytes_rate: options.max_publish_bytes_rate,
        observe,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(name: &str) -> QuotaOptions {
        QuotaOptions {
            name: name.into(),
            users: vec!["app-*".into()],
            max_clients: Some(10),
            ..QuotaOptions::default()
        }
    }

    #[test]
    fn quotas_count_per_user_or_per_vhost() {
        let quota = &check(&[options("apps")]).unwrap()[0];
        assert_eq!(quota.scope, Scope::User);
        assert!(quota.covers("app-1") && !quota.covers("ops"));
        assert!(!quota.observe && !quota.limits_rate());
        let vhosts = QuotaOptions {
            users: vec![],
            vhosts: vec!["*".into()],
            max_publish_rate: Some(100),
            mode: Some("observe".into()),
            ..options("v")
        };
        let quota = &check(&[vhosts]).unwrap()[0];
        assert!(quota.scope == Scope::Vhost && quota.observe && quota.limits_rate());
    }

    #[test]
    fn mistakes_name_the_quota() {
        let both = QuotaOptions {
            vhosts: vec!["x".into()],
            ..options("q")
        };
        assert!(check(&[both]).unwrap_err().0.contains("quota 'q'"));
        let zero = QuotaOptions {
            max_channels: Some(0),
            ..options("q")
        };
        assert!(check(&[zero]).unwrap_err().0.contains("max_channels"));
        let mode = QuotaOptions {
            mode: Some("warn".into()),
            ..options("q")
        };
        assert!(check(&[mode]).unwrap_err().0.contains("mode"));
        assert!(check(&[options("q"), options("q")])
            .unwrap_err()
            .0
            .contains("twice"));
    }
}
