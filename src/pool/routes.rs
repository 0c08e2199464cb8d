//! Which broker nodes serve a client: the first `[[route]]` that serves its
//! user and vhost, else the default route (the top-level `upstream`). Each
//! route has its own [`UpstreamSettings`] (its nodes, their health, its
//! TLS, the vhost it opens), and pools never mix routes.

use std::sync::Arc;

use crate::config::{Route, DEFAULT_ROUTE};
use crate::upstream::{Nodes, UpstreamSettings};

/// A route and how its connections are opened.
pub struct RouteEntry {
    pub route: Route,
    pub settings: Arc<UpstreamSettings>,
}

/// Every route, the default first.
pub struct Routes {
    entries: Vec<RouteEntry>,
}

impl Routes {
    /// `entries[0]` must be the default route.
    pub fn new(entries: Vec<RouteEntry>) -> Self {
        debug_assert!(entries
            .first()
            .is_some_and(|e| e.route.name == DEFAULT_ROUTE));
        Routes { entries }
    }

    pub fn default_route(&self) -> &Arc<UpstreamSettings> {
        &self.entries[0].settings
    }

    /// Every route, the default first.
    pub fn entries(&self) -> &[RouteEntry] {
        &self.entries
    }

    fn configured(&self) -> &[RouteEntry] {
        &self.entries[1..]
    }

    /// The route of a client of `user` on `vhost`.
    pub fn for_client(&self, user: &str, vhost: &str) -> &Arc<UpstreamSettings> {
        self.configured()
            .iter()
            .find(|e| e.route.serves(user, vhost))
            .map_or(self.default_route(), |e| &e.settings)
    }

    /// The route of `user` whatever its vhost, if the user alone decides
    /// it: its login can then be checked before the client names a vhost,
    /// as RabbitMQ does. `None` when a route that matches on vhosts comes
    /// first for this user, or the connection's name needs the vhost.
    pub fn for_login(&self, user: &str) -> Option<&Arc<UpstreamSettings>> {
        if self.default_route().connection_name.needs_vhost() {
            return None;
        }
        for entry in self.configured() {
            match entry.route.may_serve_user(user) {
                (false, _) => continue,
                (true, false) => return Some(&entry.settings),
                (true, true) => return None,
            }
        }
        Some(self.default_route())
    }

    /// Every route's nodes, the default's first.
    pub fn all_nodes(&self) -> Vec<Arc<Nodes>> {
        self.entries
            .iter()
            .map(|e| e.settings.nodes.clone())
            .collect()
    }

    /// The route named `name`, if it still exists.
    pub fn named(&self, name: &str) -> Option<&Arc<UpstreamSettings>> {
        self.entries
            .iter()
            .find(|e| e.route.name == name)
            .map(|e| &e.settings)
    }

    /// Routes of `old` that are gone, or go elsewhere now (other nodes,
    /// vhost, TLS or consumer mode): their pools take no new clients.
    pub fn retargeted_since(&self, old: &Routes) -> Vec<String> {
        old.entries
            .iter()
            .filter(|was| {
                !self.entries.iter().any(|now| {
                    now.route.name == was.route.name && now.route.same_target(&was.route)
                })
            })
            .map(|was| was.route.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{ConsumerMode, Pattern, UpstreamAddr, UpstreamTls};
    use crate::stats::Stats;

    fn route(name: &str, users: &[&str], vhosts: &[&str], port: u16) -> Route {
        Route {
            name: name.into(),
            vhosts: vhosts.iter().map(|v| Pattern::new(v)).collect(),
            users: users.iter().map(|u| Pattern::new(u)).collect(),
            upstreams: vec![UpstreamAddr {
                host: "broker".into(),
                port,
                tls: false,
            }],
            upstream_vhost: None,
            tls: UpstreamTls::default(),
            consumer_mode: ConsumerMode::Shared,
        }
    }

    fn entry(route: Route) -> RouteEntry {
        RouteEntry {
            settings: Arc::new(UpstreamSettings {
                route: route.name.clone(),
                nodes: Nodes::new(route.upstreams.clone(), None, Duration::from_secs(1)),
                upstream_vhost: None,
                consumer_mode: ConsumerMode::Shared,
                connect_timeout: Duration::from_secs(1),
                max_lifetime: None,
                hold: None,
                max_connections: 0,
                channel_limit: 1,
                idle_timeout: Duration::from_secs(1),
                kept_channels: 0,
                prewarm_channels: 0,
                guaranteed_channels: 1,
                connection_name: crate::config::NameTemplate::parse("warren").unwrap(),
                listening: String::new(),
                stats: Arc::new(Stats::default()),
            }),
            route,
        }
    }

    fn routes(configured: Vec<Route>) -> Routes {
        let default = route(DEFAULT_ROUTE, &[], &[], 5672);
        Routes::new(
            std::iter::once(default)
                .chain(configured)
                .map(entry)
                .collect(),
        )
    }

    #[test]
    fn the_first_route_that_serves_a_client_wins_else_the_default() {
        let routes = routes(vec![
            route("svc", &["svc-*"], &[], 1),
            route("billing", &[], &["billing"], 2),
            route("later", &["svc-a"], &[], 3),
        ]);
        assert_eq!(routes.for_client("svc-a", "billing").route, "svc");
        assert_eq!(routes.for_client("bob", "billing").route, "billing");
        assert_eq!(routes.for_client("bob", "orders").route, DEFAULT_ROUTE);
    }

    #[test]
    fn a_login_is_routed_early_only_when_the_user_alone_decides() {
        let routes = routes(vec![
            route("svc", &["svc-*"], &[], 1),
            route("billing", &[], &["billing"], 2),
            route("ops", &["ops"], &[], 3),
        ]);
        assert_eq!(
            routes.for_login("svc-a").map(|s| s.route.as_str()),
            Some("svc")
        );
        // "billing" may take bob or ops, depending on the vhost.
        assert!(routes.for_login("bob").is_none());
        assert!(routes.for_login("ops").is_none());
        let by_user = self::routes(vec![route("svc", &["svc-*"], &[], 1)]);
        assert_eq!(
            by_user.for_login("bob").map(|s| s.route.as_str()),
            Some(DEFAULT_ROUTE)
        );
    }

    #[test]
    fn only_routes_that_go_elsewhere_now_are_retargeted() {
        let old = routes(vec![
            route("same", &["a"], &[], 1),
            route("moved", &["b"], &[], 2),
            route("gone", &["c"], &[], 3),
        ]);
        let new = routes(vec![
            route("same", &["a", "a2"], &[], 1),
            route("moved", &["b"], &[], 9),
        ]);
        assert_eq!(new.retargeted_since(&old), ["moved", "gone"]);
    }
}
