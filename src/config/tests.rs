use super::*;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied())).unwrap()
}

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let cli = cli(args);
    Config::from_options(
        cli.options().or(Options::defaults()),
        file::Tables::default(),
    )
}

#[test]
fn upstream_url_defaults_port_by_scheme_and_ignores_credentials() {
    assert_eq!(
        parse_upstream_url("amqp://user:pw@broker/%2Fvh").unwrap(),
        UpstreamAddr {
            host: "broker".into(),
            port: 5672,
            tls: false,
        }
    );
    let tls = parse_upstream_url("amqps://broker").unwrap();
    assert!(tls.tls && tls.port == 5671);
    assert_eq!(parse_upstream_url("amqp://[::1]:5800").unwrap().host, "::1");
    assert!(parse_upstream_url("http://x")
        .unwrap_err()
        .0
        .contains("scheme 'http'"));
    let bad = parse_upstream_url("amqp://u:hunter2@").unwrap_err().0;
    assert!(
        bad.contains("invalid upstream URL") && !bad.contains("hunter2"),
        "{bad}"
    );
    let slashed = parse_upstream_url("amqp://u:hun/ter#2@host:x")
        .unwrap_err()
        .0;
    assert!(
        !slashed.contains("hun") && !slashed.contains("ter"),
        "{slashed}"
    );
}

#[test]
fn urls_in_any_message_are_redacted() {
    assert_eq!(
        redact_text("bad 'amqps://u:p@h/v' and amqp://x:y@z, end"),
        "bad 'amqps://u:redacted@h/v' and amqp://x:redacted@z, end"
    );
    assert_eq!(redact_text("no url here"), "no url here");
}

#[test]
fn several_upstreams_and_unix_listen_are_understood() {
    let config = load(&["-l", "unix:/run/warren.sock", "amqp://a", "amqps://b:1"]).unwrap();
    assert_eq!(config.upstreams.len(), 2);
    assert!(config.upstreams[1].tls);
    assert_eq!(config.listen, Listen::Unix("/run/warren.sock".into()));
    assert_eq!(config.socket_mode, 0o660);
    let relative = load(&["-l", "unix:warren.sock", "amqp://a"]).unwrap_err().0;
    assert!(relative.contains("absolute"), "{relative}");
}

#[test]
fn bad_values_name_the_option() {
    for (args, needle) in [
        (&["--socket-mode", "999", "amqp://a"][..], "--socket-mode"),
        (
            &["--tls-cert", "c.pem", "amqp://a"],
            "--tls-cert needs --tls-key",
        ),
        (
            &["--upstream-key", "k.pem", "amqp://a"],
            "--upstream-key needs",
        ),
        (&["--channel-max", "0", "amqp://a"], "--channel-max 0"),
        (
            &["--client-handshake-timeout", "0", "amqp://a"],
            "--client-handshake-timeout",
        ),
        (
            &[
                "-l",
                "unix:/s",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "amqp://a",
            ],
            "TLS listener",
        ),
    ] {
        let e = load(args).unwrap_err().0;
        assert!(e.contains(needle), "{args:?}: {e}");
    }
}

#[test]
fn command_line_beats_file_and_defaults_fill_the_rest() {
    let dir = std::env::temp_dir().join(format!("warren-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("warren.toml");
    std::fs::write(
        &file,
        "upstream = [\"amqp://file-host\"]\nport = 7000\nmax_clients = 5\n",
    )
    .unwrap();
    let config = Config::load(&cli(&["-c", file.to_str().unwrap(), "-p", "7001", "-d"])).unwrap();
    assert_eq!(config.upstreams[0].host, "file-host");
    assert_eq!(config.port, 7001);
    assert_eq!(config.max_clients, 5);
    assert_eq!(config.listen, Listen::Tcp("127.0.0.1".into()));
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.term_timeout, None);
    assert_eq!(
        config.upstream_max_lifetime,
        Some(Duration::from_secs(3600))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn printed_config_hides_passwords_and_reads_back_the_same() {
    let config = load(&["amqp://u:hunter2@a", "--max-clients", "7"]).unwrap();
    let printed = config.to_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    let again: Options = toml::from_str(&printed).unwrap();
    let reloaded = Config::from_options(again, file::Tables::default()).unwrap();
    assert_eq!(reloaded.max_clients, 7);
    assert_eq!(reloaded.changed_from(&config), vec!["upstream"]);
}

#[test]
fn missing_upstream_is_a_clear_error() {
    let e = Config::from_options(Options::defaults(), file::Tables::default())
        .unwrap_err()
        .0;
    assert!(e.contains("missing upstream"), "{e}");
}

#[test]
fn proxy_protocol_sources_are_networks_or_addresses() {
    let config = load(&[
        "amqp://b",
        "--proxy-protocol-from",
        "10.0.0.0/8, 192.0.2.7,::1",
    ])
    .unwrap();
    let shown: Vec<String> = config
        .proxy_protocol_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
    assert!(load(&["amqp://b"]).unwrap().proxy_protocol_from.is_empty());
    let bad = load(&["amqp://b", "--proxy-protocol-from", "lb.internal"])
        .unwrap_err()
        .0;
    assert!(
        bad.contains("--proxy-protocol-from") && bad.contains("lb.internal"),
        "{bad}"
    );
}
