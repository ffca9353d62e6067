use std::io::Write;
use std::time::Duration;

use super::*;

fn load_with(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut temp = tempfile::NamedTempFile::new().unwrap();
    let path = file.map(|text| {
        temp.write_all(text.as_bytes()).unwrap();
        temp.path().to_path_buf()
    });
    let source = ConfigSource {
        file: path,
        data_dir: Some("/srv/logicore".into()),
        env: env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    };
    load(&source)
}

#[test]
fn no_file_and_no_env_gives_the_spec_defaults() {
    let config = load_with(None, &[]).unwrap();
    assert_eq!(config.gateway.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9080");
    assert_eq!(config.gateway.body_limit, ByteSize(1 << 20));
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.gateway.breaker.min_calls, 20);
    assert_eq!(config.webhooks.retry_schedule.len(), 8);
    assert_eq!(
        config.database_url().expose(),
        "sqlite:///srv/logicore/logicore.db"
    );
    assert_eq!(
        config.log_dir(),
        std::path::PathBuf::from("/srv/logicore/logs")
    );
    assert_eq!(config.gateway.auth.issuers[0].name, "logicore");
}

#[test]
fn file_values_override_defaults_and_env_overrides_the_file() {
    let file = "[gateway]\nlisten = \"127.0.0.1:1000\"\nbody_limit = \"2MiB\"\n";
    let config = load_with(
        Some(file),
        &[("LOGICORE_GATEWAY__LISTEN", "127.0.0.1:2000")],
    )
    .unwrap();
    assert_eq!(config.gateway.listen.to_string(), "127.0.0.1:2000");
    assert_eq!(config.gateway.body_limit, ByteSize(2 << 20));
}

#[test]
fn env_values_are_typed_from_their_text() {
    let env = [
        ("LOGICORE_DATABASE__MAX_CONNECTIONS", "5"),
        ("LOGICORE_GATEWAY__ACCESS_LOG", "false"),
        ("LOGICORE_GATEWAY__COMPRESSION__GZIP_LEVEL", "6"),
        (
            "LOGICORE_DISCOVERY__STATIC__CATALOG",
            "[\"http://10.0.0.5:4002\"]",
        ),
    ];
    let config = load_with(None, &env).unwrap();
    assert_eq!(config.database.max_connections, 5);
    assert!(!config.gateway.access_log);
    assert_eq!(config.gateway.compression.gzip_level, 6);
    assert_eq!(
        config.discovery.static_instances["catalog"],
        ["http://10.0.0.5:4002"]
    );
}

#[test]
fn names_without_double_underscore_are_not_config_keys() {
    let env = [
        ("LOGICORE_ADMIN_EMAIL", "a@example.com"),
        ("LOGICORE_ENCRYPTION_KEYS", "k1:abc"),
        ("LOGICORE_TEST_POSTGRES__URL", "postgres://x"),
    ];
    assert!(load_with(None, &env).is_ok());
}

#[test]
fn unknown_file_keys_are_refused_by_name() {
    let err = load_with(Some("[gateway]\nlisten_on = \"x\"\n"), &[]).unwrap_err();
    assert_eq!(err.key, "gateway.listen_on");
    let err = load_with(Some("colour = \"blue\"\n"), &[]).unwrap_err();
    assert_eq!(err.key, "colour");
}

#[test]
fn unknown_env_keys_are_refused_with_the_variable_named() {
    let err = load_with(None, &[("LOGICORE_GATEWAY__LISTN", "x")]).unwrap_err();
    assert_eq!(err.key, "gateway.listn");
    assert!(
        err.message.contains("LOGICORE_GATEWAY__LISTN"),
        "{}",
        err.message
    );
}

#[test]
fn bad_values_are_refused_by_key() {
    let cases = [
        ("[gateway]\nlisten = \"nowhere\"\n", "gateway.listen"),
        ("[gateway]\nbody_limit = \"lots\"\n", "gateway.body_limit"),
        ("shutdown_grace = \"soon\"\n", "shutdown_grace"),
        (
            "[database]\nmax_connections = -1\n",
            "database.max_connections",
        ),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        (
            "[gateway.compression]\ngzip_level = 12\n",
            "gateway.compression.gzip_level",
        ),
        (
            "[[gateway.routes]]\nprefix = \"api\"\nservice = \"x\"\n",
            "gateway.routes[0].prefix",
        ),
        (
            "[[gateway.routes]]\nprefix = \"/a\"\nservice = \"x\"\nrate_limit = { per_ip = \"fast\" }\n",
            "gateway.routes[0].rate_limit.per_ip",
        ),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        (
            "[cors]\nallowed_origins = [\"https://a.example\", \"shop.example.com/app\"]\n",
            "cors.allowed_origins[1]",
        ),
        (
            "[cors]\nallowed_origins = [\"https://a.example\", \"*\"]\n",
            "cors.allowed_origins",
        ),
        (
            "[gateway.outlier]\nmax_ejected_percent = 150\n",
            "gateway.outlier.max_ejected_percent",
        ),
        (
            "[gateway.outlier]\nbase_ejection = \"10m\"\n",
            "gateway.outlier.max_ejection",
        ),
    ];
    for (file, key) in cases {
        let err = load_with(Some(file), &[]).unwrap_err();
        assert_eq!(err.key, key, "for {file:?}: {err}");
    }
}

#[test]
fn features_not_built_yet_say_so() {
    let config = load_with(
        None,
        &[("LOGICORE_BUS__URL", "amqp://guest:guest@localhost/")],
    )
    .unwrap();
    assert_eq!(config.bus.url.scheme(), "amqp", "RabbitMQ is built");
    let err = load_with(None, &[("LOGICORE_BUS__URL", "kafka://localhost/")]).unwrap_err();
    assert_eq!(err.key, "bus.url");
    let err = load_with(
        Some("[discovery]\nurl = \"consul://localhost:8500\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("not yet supported"));
    let err = load_with(Some("[cache]\nurl = \"memcached://localhost\"\n"), &[]).unwrap_err();
    assert_eq!(err.key, "cache.url");
    let redis = load_with(Some("[cache]\nurl = \"redis://localhost\"\n"), &[]).unwrap();
    assert_eq!(redis.cache.url.expose(), "redis://localhost");
}

#[test]
fn arrays_of_tables_cannot_come_from_env() {
    let file = "[[gateway.routes]]\nprefix = \"/a\"\nservice = \"x\"\n";
    let err = load_with(Some(file), &[("LOGICORE_GATEWAY__ROUTES__PREFIX", "/b")]).unwrap_err();
    assert_eq!(err.key, "gateway.routes.prefix");
}

#[test]
fn invalid_toml_names_the_file() {
    let err = load_with(Some("[gateway\n"), &[]).unwrap_err();
    assert!(err.message.contains("not valid TOML"), "{err}");
}

#[test]
fn shown_config_redacts_secrets_and_passwords() {
    let file =
        "[database]\nurl = \"postgres://app:hunter2@db/app\"\n[internal]\ntoken_key = \"abc\"\n";
    let shown = load_with(Some(file), &[]).unwrap().to_redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("\"abc\""), "{shown}");
    assert!(shown.contains("postgres://app:***@db/app"), "{shown}");
    assert!(shown.contains("listen = \"0.0.0.0:8080\""), "{shown}");
}

#[test]
fn shown_config_loads_back_to_the_same_values() {
    let config = load_with(Some("[gateway]\nbody_limit = \"3MiB\"\n"), &[]).unwrap();
    let shown = config.to_redacted_toml();
    let mut temp = tempfile::NamedTempFile::new().unwrap();
    temp.write_all(shown.as_bytes()).unwrap();
    let source = ConfigSource {
        file: Some(temp.path().to_path_buf()),
        data_dir: Some("/srv/logicore".into()),
        env: Vec::new(),
    };
    let reloaded = load(&source).unwrap();
    assert_eq!(reloaded.gateway.body_limit, ByteSize(3 << 20));
    assert_eq!(
        reloaded.webhooks.retry_schedule,
        config.webhooks.retry_schedule
    );
}

#[test]
fn oauth_clients_are_checked_by_key() {
    let client = |fields: &str| format!("[[auth.clients]]\n{fields}\n");
    let ok = load_with(
        Some(&client(
            "client_id = \"shop\"\nredirect_uris = [\"https://a/cb\"]\nclient_secret = \"s\"",
        )),
        &[],
    )
    .unwrap();
    assert_eq!(ok.auth.clients[0].client_id, "shop");
    assert!(!ok.to_redacted_toml().contains("client_secret = \"s\""));
    for (fields, key) in [
        (
            "redirect_uris = [\"https://a/cb\"]",
            "auth.clients[0].client_id",
        ),
        (
            "client_id = \"x\"\nclient_secret = \"s\"",
            "auth.clients[0].redirect_uris",
        ),
        (
            "client_id = \"x\"\nredirect_uris = [\"https://a/cb\"]",
            "auth.clients[0].client_secret",
        ),
        (
            "client_id = \"x\"\nredirect_uris = [\"https://a/cb\"]\nclient_secret = \"s\"\n\
             token_endpoint_auth_method = \"none\"",
            "auth.clients[0].client_secret",
        ),
        (
            "client_id = \"x\"\nredirect_uris = [\"https://a/cb\"]\n\
             token_endpoint_auth_method = \"private_key_jwt\"",
            "auth.clients[0].token_endpoint_auth_method",
        ),
    ] {
        let err = load_with(Some(&client(fields)), &[]).unwrap_err();
        assert_eq!(err.key, key, "{fields}");
    }
}

#[test]
fn providers_are_checked_by_key() {
    let provider = |fields: &str| format!("[[auth.providers]]\n{fields}\n");
    let ok = load_with(
        Some(&provider(
            "name = \"corp\"\nissuer = \"https://idp.example.com\"\nclient_id = \"shop\"",
        )),
        &[],
    )
    .unwrap();
    assert_eq!(ok.auth.providers[0].name, "corp");
    for (fields, key) in [
        (
            "name = \"Corp IdP\"\nissuer = \"https://idp\"\nclient_id = \"x\"",
            "auth.providers[0].name",
        ),
        (
            "name = \"corp\"\nissuer = \"idp.example.com\"\nclient_id = \"x\"",
            "auth.providers[0].issuer",
        ),
        (
            "name = \"corp\"\nissuer = \"https://idp\"",
            "auth.providers[0].client_id",
        ),
    ] {
        let err = load_with(Some(&provider(fields)), &[]).unwrap_err();
        assert_eq!(err.key, key, "{fields}");
    }
    let twice = format!(
        "{}{}",
        provider("name = \"corp\"\nissuer = \"https://a\"\nclient_id = \"x\""),
        provider("name = \"corp\"\nissuer = \"https://b\"\nclient_id = \"y\"")
    );
    assert_eq!(
        load_with(Some(&twice), &[]).unwrap_err().key,
        "auth.providers[1].name"
    );
}
