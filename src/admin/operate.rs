//! Operator actions: the POST endpoints under `/api/` that `warren ctl`
//! calls (kill, drain-node, undrain-node, pause, resume). Each is logged
//! once with who asked (the HTTP peer) and what it changed.

use std::net::SocketAddr;

use hyper::StatusCode;

use super::Admin;
use crate::link::ClientEvent;
use crate::untrusted::{cut, shown};

/// The actions' paths: POST only.
pub const ACTIONS: [&str; 5] = [
    "/api/kill",
    "/api/drain-node",
    "/api/undrain-node",
    "/api/pause",
    "/api/resume",
];

/// What an action answers: its status and a line for the operator.
pub type Outcome = (StatusCode, String);

/// Runs the action named by `path` with the arguments in `query`.
pub fn run(admin: &Admin, path: &str, query: Option<&str>, peer: SocketAddr) -> Outcome {
    let args: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let arg = |key: &str| args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    match path {
        "/api/kill" => match arg("client").map(str::parse::<u64>) {
            Some(Ok(id)) => kill(admin, id, peer),
            _ => bad_request("give the client's id: /api/kill?client=ID"),
        },
        "/api/drain-node" | "/api/undrain-node" => match arg("node") {
            Some(node) => drain(admin, node, path == "/api/drain-node", peer),
            None => bad_request("give the node: ?node=HOST:PORT"),
        },
        "/api/pause" => pause(admin, arg("vhost"), peer),
        "/api/resume" => resume(admin, arg("vhost"), peer),
        other => unreachable!("route sends only ACTIONS here, got {other}"),
    }
}

fn bad_request(why: &str) -> Outcome {
    (StatusCode::BAD_REQUEST, format!("{why}\n"))
}

fn kill(admin: &Admin, id: u64, peer: SocketAddr) -> Outcome {
    let client = admin.ctx.stats.clients().into_iter().find(|c| c.id == id);
    match client {
        Some(client) if client.session.send(ClientEvent::Killed).is_ok() => {
            tracing::warn!(client = id, peer = %client.peer, operator = %peer, "client closed by an operator");
            (StatusCode::OK, format!("client {id} closed\n"))
        }
        _ => (StatusCode::NOT_FOUND, format!("no client {id}\n")),
    }
}

fn drain(admin: &Admin, name: &str, drain: bool, operator: SocketAddr) -> Outcome {
    // A node may serve several routes: it is drained in each.
    let routes = admin.ctx.pools.routes();
    let drained: Vec<_> = routes
        .all_nodes()
        .iter()
        .filter_map(|nodes| nodes.set_drained(name, drain))
        .collect();
    let Some(node) = drained.into_iter().next() else {
        return (
            StatusCode::NOT_FOUND,
            format!("no node {} (see warren ctl list nodes)\n", shown(name)),
        );
    };
    // Its connections follow: drained ones close as their clients leave,
    // undrained ones take clients again if they are still open.
    let upstreams: Vec<_> = admin
        .ctx
        .pools
        .upstreams()
        .into_iter()
        .filter(|u| *u.node() == node)
        .collect();
    for upstream in &upstreams {
        upstream.set_drained(drain);
    }
    if !drain {
        tracing::warn!(%node, %operator, "node undrained by an operator");
        return (StatusCode::OK, format!("node {node} takes new clients\n"));
    }
    tracing::warn!(%node, %operator, upstreams = upstreams.len(), "node drained by an operator");
    (
        StatusCode::OK,
        format!(
            "node {node} drained: new clients go to other nodes; its {} upstream connections \
             close as their clients leave\n",
            upstreams.len()
        ),
    )
}

fn pause(admin: &Admin, vhost: Option<&str>, operator: SocketAddr) -> Outcome {
    let changed = admin.ctx.pauses.pause(vhost);
    let what = scope(vhost);
    if changed {
        tracing::warn!(vhost = vhost.map(cut), %operator, "paused by an operator");
    }
    (
        StatusCode::OK,
        format!("{what}: publishes and channel opens wait until resume\n"),
    )
}

fn resume(admin: &Admin, vhost: Option<&str>, operator: SocketAddr) -> Outcome {
    let was_paused = admin.ctx.pauses.current();
    if vhost.is_some() && was_paused.all {
        return (
            StatusCode::CONFLICT,
            "every vhost is paused: resume without --vhost\n".into(),
        );
    }
    let changed = admin.ctx.pauses.resume(vhost);
    if changed {
        tracing::warn!(vhost = vhost.map(cut), %operator, "resumed by an operator");
    }
    let what = scope(vhost);
    let state = if changed { "resumed" } else { "was not paused" };
    (StatusCode::OK, format!("{what}: {state}\n"))
}

fn scope(vhost: Option<&str>) -> String {
    match vhost {
        Some(vhost) => format!("vhost '{}'", shown(vhost)),
        None => "every vhost".into(),
    }
}
