//! `warren ctl list` as a table: the columns an operator scans, from the
//! API's JSON (`--json` gives all of it). Names in the JSON were made
//! printable by warren (see `crate::untrusted`); they are escaped again
//! here, so no answer can write escape sequences to the operator's
//! terminal, whichever warren (or impostor) gave it.

use serde_json::Value;

use super::Listing;
use crate::untrusted::terminal_safe;

/// A column: its heading and where its value is in each record (a JSON
/// pointer).
type Column = (&'static str, &'static str);

fn columns(what: Listing) -> &'static [Column] {
    match what {
        Listing::Clients => &[
            ("ID", "/id"),
            ("PEER", "/peer"),
            ("USER", "/user"),
            ("VHOST", "/vhost"),
            ("UPSTREAM", "/upstream"),
            ("CHANNELS", "/channels"),
            ("PUBLISHED", "/published"),
            ("AGE_S", "/age_seconds"),
            ("NAME", "/connection_name"),
        ],
        Listing::Pools => &[
            ("ROUTE", "/route"),
            ("VHOST", "/vhost"),
            ("USER", "/user"),
            ("UPSTREAMS", "/upstreams"),
            ("CLIENTS", "/clients"),
        ],
        Listing::Upstreams => &[
            ("ID", "/id"),
            ("ROUTE", "/route"),
            ("NODE", "/node"),
            ("USER", "/user"),
            ("VHOST", "/vhost"),
            ("STATE", "/state"),
            ("CLIENTS", "/clients"),
            ("CHANNELS", "/channels/open"),
            ("AGE_S", "/age_seconds"),
        ],
        Listing::Nodes => &[
            ("ROUTE", "/route"),
            ("NODE", "/node"),
            ("TLS", "/tls"),
            ("STATE", "/state"),
            ("FAILURES", "/failures"),
            ("RETRY_IN_S", "/retry_in_seconds"),
            ("UPSTREAMS", "/upstreams"),
        ],
        Listing::Routes => &[
            ("NAME", "/name"),
            ("VHOSTS", "/vhosts"),
            ("USERS", "/users"),
            ("UPSTREAM", "/upstream"),
            ("UPSTREAM_VHOST", "/upstream_vhost"),
            ("CONSUMERS", "/consumer_mode"),
            ("POOLS", "/pools"),
            ("UPSTREAMS", "/upstreams"),
            ("CLIENTS", "/clients"),
        ],
        Listing::Quotas => &[
            ("QUOTA", "/quota"),
            ("SCOPE", "/scope"),
            ("KEY", "/key"),
            ("MODE", "/mode"),
            ("CLIENTS", "/clients"),
            ("MAX", "/max_clients"),
            ("CHANNELS", "/channels"),
            ("MAX", "/max_channels"),
            ("UPSTREAMS", "/upstreams"),
            ("MAX", "/max_upstream_connections"),
            ("THROTTLED_S", "/throttled_seconds"),
        ],
    }
}

/// The API's answer (a JSON array of records) as aligned columns.
pub fn render(what: Listing, body: &str) -> Result<String, String> {
    let records: Vec<Value> =
        serde_json::from_str(body).map_err(|e| format!("not the expected JSON: {e}"))?;
    let columns = columns(what);
    let mut rows = vec![columns
        .iter()
        .map(|(heading, _)| heading.to_string())
        .collect()];
    rows.extend(records.iter().map(|record| {
        columns
            .iter()
            .map(|(_, pointer)| cell(record.pointer(pointer)))
            .collect::<Vec<String>>()
    }));
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(text)) => terminal_safe(text),
        // Ages and waits: whole seconds are what a table needs.
        Some(Value::Number(n)) if n.is_f64() => format!("{:.0}", n.as_f64().unwrap_or(0.0)),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| cell(Some(item)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_aligned_rows_with_their_columns_only() {
        let body = r#"[
            {"route": "default", "vhost": "/", "user": "guest", "upstreams": 1, "clients": 12, "extra": true},
            {"route": "b", "vhost": "orders", "user": "a-much-longer-user", "upstreams": 2, "clients": 0}
        ]"#;
        let table = render(Listing::Pools, body).unwrap();
        assert_eq!(
            table,
            "ROUTE    VHOST   USER                UPSTREAMS  CLIENTS\n\
             default  /       guest               1          12\n\
             b        orders  a-much-longer-user  2          0\n"
        );
    }

    #[test]
    fn nested_missing_and_fractional_values() {
        let body = r#"[{"id": 7, "node": "127.0.0.1:5672", "channels": {"open": 3},
                        "age_seconds": 12.6, "state": "open"}]"#;
        let table = render(Listing::Upstreams, body).unwrap();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["7", "-", "127.0.0.1:5672", "-", "-", "open", "-", "3", "13"]
        );
    }

    #[test]
    fn control_and_bidi_characters_never_reach_the_terminal() {
        let body = r#"[{"vhost": "\u001b]0;owned\u0007\u009b2J\u202e", "user": "u", "upstreams": 0, "clients": 0}]"#;
        let table = render(Listing::Pools, body).unwrap();
        assert!(
            !table
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{table:?}"
        );
        assert!(
            table.contains(r"\u{1b}]0;owned\u{7}\u{9b}2J\u{202e}"),
            "{table:?}"
        );
    }

    #[test]
    fn lists_are_joined_and_empty_ones_shown_as_missing() {
        let body = r#"[{"name": "b", "vhosts": ["b", "b-*"], "users": [], "upstream": ["r:1"]}]"#;
        let table = render(Listing::Routes, body).unwrap();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[..4], ["b", "b,b-*", "-", "r:1"]);
    }

    #[test]
    fn an_answer_that_is_not_a_list_is_an_error() {
        assert!(render(Listing::Nodes, "not found\n").is_err());
        assert!(render(Listing::Nodes, r#"{"a": 1}"#).is_err());
    }
}
