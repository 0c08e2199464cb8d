//! The configuration file: native TOML (keys as [`Options`] fields), or
//! amqproxy's INI so an amqproxy deployment can switch without rewriting it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::options::TomlFile;
use super::quotas::QuotaOptions;
use super::routes::RouteOptions;
use super::{err, redact_text, ConfigError, Options};

/// What a configuration file gives: settings, and (TOML only) tables.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub tables: Tables,
    pub options: Options,
}

/// The `[[route]]` and `[[quota]]` tables of a TOML file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tables {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quota: Vec<QuotaOptions>,
}

/// Reads `path` as TOML when it ends in `.toml`, else as INI.
pub fn read(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    let parsed = if path.extension().is_some_and(|ext| ext == "toml") {
        parse_toml(&text)
    } else {
        parse_ini(&text).map(|options| FileSettings {
            tables: Tables::default(),
            options,
        })
    };
    parsed.map_err(|e| {
        err(format!(
            "config file {}: {}",
            path.display(),
            redact_text(&e.0)
        ))
    })
}

fn parse_toml(text: &str) -> Result<FileSettings, ConfigError> {
    let parsed: Result<TomlFile, _> = toml::from_str(text);
    parsed
        .map(|mut file| FileSettings {
            tables: Tables {
                route: std::mem::take(&mut file.route),
                quota: std::mem::take(&mut file.quota),
            },
            options: file.settings(),
        })
        .map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            let message = e.message().replace('\n', " ");
            err(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })
}

/// Keys of amqproxy's `[listen]` section that have another name here.
fn ini_key<'a>(section: &str, key: &'a str) -> &'a str {
    match (section, key) {
        ("listen", "address" | "bind") => "listen",
        _ => key,
    }
}

/// Parses the INI file one `key = value` line at a time into the same
/// [`Options`] as TOML: a value is typed as TOML would type it (number,
/// boolean), else taken as a string, and `upstream` is a comma-separated
/// list. Sections are `[main]` and `[listen]`, as in amqproxy.
fn parse_ini(text: &str) -> Result<Options, ConfigError> {
    let mut options = Options::default();
    let mut section = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            if !matches!(section.as_str(), "main" | "listen") {
                return Err(err(format!("line {line_no}: unknown section [{section}]")));
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("line {line_no}: expected key = value")))?;
        let (key, value) = (ini_key(&section, key.trim()), value.trim());
        if section.is_empty() {
            return Err(err(format!("line {line_no}: '{key}' outside any section")));
        }
        let typed = match key {
            "upstream" | "exchange_types" | "http_hosts" | "proxy_protocol_from" => {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(|item| toml::Value::String(ini_string(item.trim())))
                        .collect(),
                )
            }
            // Octal digits, not a number: 0660 and 660 mean the same. A
            // token may be all digits.
            "socket_mode" | "http_token" | "http_token_file" => {
                toml::Value::String(ini_string(value))
            }
            _ => ini_value(value),
        };
        let single = toml::Table::from_iter([(key.to_string(), typed)]);
        let parsed = Options::deserialize(single).map_err(|e| {
            err(format!(
                "line {line_no}: [{section}] {key} = '{value}': {}",
                e.message().replace('\n', " ")
            ))
        })?;
        options = parsed.or(options);
    }
    Ok(options)
}

/// A value as a string, without the quotes around it if it has them.
fn ini_string(value: &str) -> String {
    match ini_value(value) {
        toml::Value::String(unquoted) => unquoted,
        _ => value.to_string(),
    }
}

fn ini_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_reads_amqproxy_keys_and_names_bad_lines() {
        let options = parse_ini(
            "[main]\nupstream = amqp://b:5800, amqp://c\nidle_connection_timeout = 9\n\
             term_timeout = -1\n[listen]\nbind = \"0.0.0.0\"\nport = 6000\nsocket_mode = 600\n",
        )
        .unwrap();
        assert_eq!(
            options.upstream,
            Some(vec!["amqp://b:5800".to_string(), "amqp://c".to_string()])
        );
        assert_eq!(options.idle_connection_timeout, Some(9));
        assert_eq!(options.term_timeout, Some(-1));
        assert_eq!(options.listen.as_deref(), Some("0.0.0.0"));
        assert_eq!(options.port, Some(6000));
        assert_eq!(options.socket_mode.as_deref(), Some("600"));
        let quoted = parse_ini("[main]\nupstream = \"amqp://a\", 'amqp://b'\n").unwrap();
        assert_eq!(
            quoted.upstream,
            Some(vec!["amqp://a".to_string(), "amqp://b".to_string()])
        );

        let bad = parse_ini("[listen]\nport = 70000\n").unwrap_err().0;
        assert!(bad.contains("line 2") && bad.contains("port"), "{bad}");
        let unknown = parse_ini("[main]\nupstreams = x\n").unwrap_err().0;
        assert!(unknown.contains("unknown field `upstreams`"), "{unknown}");
        let word = parse_ini("[main]\nheartbeat = often\n").unwrap_err().0;
        assert!(
            word.contains("line 2") && word.contains("heartbeat"),
            "{word}"
        );
    }

    #[test]
    fn toml_reads_lists_and_names_the_line_of_a_mistake() {
        let options = parse_toml("upstream = [\"amqp://a\", \"amqps://b\"]\nmax_clients = 10\n")
            .unwrap()
            .options;
        assert_eq!(options.upstream.unwrap().len(), 2);
        let one = parse_toml("upstream = \"amqp://a\"\n").unwrap().options;
        assert_eq!(one.upstream, Some(vec!["amqp://a".to_string()]));
        let wrong = parse_toml("upstream = 5\n").unwrap_err().0;
        assert!(wrong.contains("a URL or a list of URLs"), "{wrong}");
        let routed = parse_toml(
            "port = 1\n[[route]]\nname = \"b\"\nvhosts = \"billing\"\nupstream = [\"amqp://x\"]\n",
        )
        .unwrap();
        assert_eq!(routed.options.port, Some(1));
        assert_eq!(routed.tables.route[0].vhosts, ["billing"]);
        let typo = parse_toml("[[route]]\nname = \"b\"\nvhost = \"x\"\n")
            .unwrap_err()
            .0;
        assert!(typo.contains("unknown field `vhost`"), "{typo}");
        assert_eq!(options.max_clients, Some(10));
        let bad = parse_toml("port = 5673\nchannel_max = \"many\"\n")
            .unwrap_err()
            .0;
        assert!(bad.starts_with("line 2:"), "{bad}");
        let unknown = parse_toml("\n\nlisten_port = 1\n").unwrap_err().0;
        assert!(
            bad.lines().count() == 1 && unknown.contains("line 3"),
            "{unknown}"
        );
    }
}
