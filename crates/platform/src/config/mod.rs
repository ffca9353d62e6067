//! Configuration: one typed tree (SPEC §9), loaded as defaults → `logicore.toml` →
//! `LOGICORE_<SECTION>__<KEY>` environment variables, then validated.
//!
//! Loading has no side effects: it reads the file and the environment and returns either a
//! [`Config`] or a [`ConfigError`] that names the offending key, which the CLI turns into exit
//! code 2.

mod tree;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use tree::*;
pub use values::{ByteSize, ConnectionUrl, Rate, Secret};

/// Prefix of environment variables that are config keys (with `__` between levels).
pub const ENV_PREFIX: &str = "LOGICORE_";

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`gateway.listen`), or the file name when the file itself is unreadable.
    pub key: String,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl ConfigError {
    /// Creates an error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }

    fn not_yet_supported(key: &str, what: impl fmt::Display) -> Self {
        ConfigError::new(key, format!("{what} is not yet supported by this build"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The TOML file, if any. `None` uses `./logicore.toml` when it exists.
    pub file: Option<PathBuf>,
    /// The data directory (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Environment variables considered (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

impl ConfigSource {
    /// Reads the process environment, keeping the given file and data dir.
    pub fn from_process(file: Option<PathBuf>, data_dir: Option<PathBuf>) -> Self {
        ConfigSource {
            file,
            data_dir,
            env: std::env::vars().collect(),
        }
    }
}

/// Loads, merges and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let mut table = read_file(source.file.as_deref())?;
    let env_keys = apply_env(&mut table, &source.env)?;
    let mut config = deserialize(table, &env_keys)?;
    config.data_dir = source
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data"));
    add_default_issuer(&mut config);
    validate(&config)?;
    Ok(config)
}

fn read_file(explicit: Option<&Path>) -> Result<toml::Table, ConfigError> {
    let default_path = Path::new("logicore.toml");
    let path = match explicit {
        Some(path) => path,
        None if default_path.exists() => default_path,
        None => return Ok(toml::Table::new()),
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::new(&shown, format!("cannot read the config file: {err}")))?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::new(&shown, format!("not valid TOML: {err}")))
}

/// Applies `LOGICORE_A__B=value` variables; returns which dotted keys came from which variable.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut sources = BTreeMap::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") || rest.starts_with("TEST_") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = path.join(".");
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                &key,
                format!("`{name}` is not a valid key name"),
            ));
        }
        insert_at(table, &path, parse_env_value(raw))
            .map_err(|message| ConfigError::new(&key, format!("{message} (from {name})")))?;
        sources.insert(key, name.clone());
    }
    Ok(sources)
}

/// Reads an env value as TOML when it is one (`true`, `20`, `["a"]`), else as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    let document = format!("value = {raw}");
    match document.parse::<toml::Table>() {
        Ok(mut table) => table.remove("value").unwrap_or_else(|| raw.into()),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            toml::Value::Array(_) => {
                return Err("arrays of tables come from the config file only".to_owned());
            }
            _ => return Err(format!("`{segment}` is a value, not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn deserialize(
    table: toml::Table,
    env_keys: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|err| {
        let key = pointer_to_key(err.path());
        let inner = err.inner().to_string();
        let message = if inner.starts_with("unknown field") {
            "unknown key".to_owned()
        } else {
            inner
        };
        let message = match env_keys.get(&key) {
            Some(name) => format!("{message} (from {name})"),
            None => message,
        };
        ConfigError::new(key, message)
    })
}

fn pointer_to_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// The platform's own issuer is always accepted; file entries add to it (or replace it by name).
fn add_default_issuer(config: &mut Config) {
    let issuers = &mut config.gateway.auth.issuers;
    if !issuers.iter().any(|issuer| issuer.name == "logicore") {
        issuers.insert(0, IssuerConfig::default());
    }
}

/// Checks the values serde cannot: ranges, URL schemes, features not built yet.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_gateway(&config.gateway)?;
    validate_cors(&config.cors)?;
    validate_backends(config)?;
    validate_misc(config)
}

/// Origins are `scheme://host[:port]` (no path), or `*` alone.
fn validate_cors(cors: &CorsConfig) -> Result<(), ConfigError> {
    if cors.allowed_origins.len() > 1 && cors.allowed_origins.iter().any(|origin| origin == "*") {
        return Err(ConfigError::new(
            "cors.allowed_origins",
            "`*` allows any origin (without credentials) and cannot be mixed with named origins",
        ));
    }
    for (index, origin) in cors.allowed_origins.iter().enumerate() {
        let valid = origin == "*"
            || origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.trim_end_matches('/').contains('/')
            });
        if !valid {
            return Err(ConfigError::new(
                format!("cors.allowed_origins[{index}]"),
                format!(
                    "`{origin}` is not an origin; write e.g. \"https://shop.example.com\" or \"*\""
                ),
            ));
        }
    }
    Ok(())
}

fn validate_gateway(gateway: &GatewayConfig) -> Result<(), ConfigError> {
    if !gateway.public_url.is_empty() && !is_http_url(&gateway.public_url) {
        return Err(ConfigError::new(
            "gateway.public_url",
            "must be an http(s):// URL",
        ));
    }
    for (key, timeout) in [
        ("gateway.header_read_timeout", gateway.header_read_timeout),
        ("gateway.body_read_timeout", gateway.body_read_timeout),
    ] {
        if timeout.is_zero() {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
    }
    if gateway.body_limit.0 == 0 {
        return Err(ConfigError::new(
            "gateway.body_limit",
            "must be greater than 0",
        ));
    }
    if gateway.max_header_bytes.0 < 1024 {
        return Err(ConfigError::new(
            "gateway.max_header_bytes",
            "must be at least 1KiB",
        ));
    }
    if !(1..=9).contains(&gateway.compression.gzip_level) {
        return Err(ConfigError::new(
            "gateway.compression.gzip_level",
            "must be 1 to 9",
        ));
    }
    for (index, cidr) in gateway.trusted_proxies.iter().enumerate() {
        if !is_cidr(cidr) {
            return Err(ConfigError::new(
                format!("gateway.trusted_proxies[{index}]"),
                format!("`{cidr}` is not an IP address or CIDR block"),
            ));
        }
    }
    for (index, issuer) in gateway.auth.issuers.iter().enumerate() {
        let key = format!("gateway.auth.issuers[{index}]");
        if issuer.name.is_empty() {
            return Err(ConfigError::new(format!("{key}.name"), "must not be empty"));
        }
        if !issuer.jwks_url.is_empty() && !issuer.hs256_secret.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.hs256_secret"),
                "set either jwks_url or hs256_secret, not both",
            ));
        }
        if issuer.algorithms.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.algorithms"),
                "must not be empty",
            ));
        }
    }
    for (index, route) in gateway.routes.iter().enumerate() {
        validate_route(index, route)?;
    }
    validate_breaker("gateway.breaker", &gateway.breaker)?;
    for (name, upstream) in &gateway.upstreams {
        validate_breaker(
            &format!("gateway.upstreams.{name}.breaker"),
            &upstream.breaker,
        )?;
    }
    if !(0.0..=1.0).contains(&gateway.retry_budget.ratio) {
        return Err(ConfigError::new(
            "gateway.retry_budget.ratio",
            "must be between 0 and 1",
        ));
    }
    let outlier = &gateway.outlier;
    if outlier.max_ejected_percent > 100 {
        return Err(ConfigError::new(
            "gateway.outlier.max_ejected_percent",
            "must be between 0 and 100",
        ));
    }
    if outlier.max_ejection < outlier.base_ejection {
        return Err(ConfigError::new(
            "gateway.outlier.max_ejection",
            "must not be shorter than gateway.outlier.base_ejection",
        ));
    }
    Ok(())
}

fn validate_route(index: usize, route: &RouteConfig) -> Result<(), ConfigError> {
    let key = format!("gateway.routes[{index}]");
    if !route.prefix.starts_with('/') {
        return Err(ConfigError::new(
            format!("{key}.prefix"),
            "must start with `/`",
        ));
    }
    if route.service.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.service"),
            "must name an upstream service",
        ));
    }
    for method in &route.methods {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method != &method.to_uppercase()
        {
            return Err(ConfigError::new(
                format!("{key}.methods"),
                format!("`{method}` is not an HTTP method (write e.g. \"GET\")"),
            ));
        }
    }
    if !route.cache_control.is_empty() && http::HeaderValue::from_str(&route.cache_control).is_err()
    {
        return Err(ConfigError::new(
            format!("{key}.cache_control"),
            "not a valid header value",
        ));
    }
    if route.timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{key}.timeout"),
            "must be greater than 0",
        ));
    }
    Ok(())
}

fn validate_breaker(key: &str, breaker: &BreakerConfig) -> Result<(), ConfigError> {
    for (field, percent) in [
        ("failure_rate", breaker.failure_rate),
        ("slow_call_rate", breaker.slow_call_rate),
    ] {
        if !(1..=100).contains(&percent) {
            return Err(ConfigError::new(
                format!("{key}.{field}"),
                "must be 1 to 100 (percent)",
            ));
        }
    }
    if breaker.half_open_calls == 0 {
        return Err(ConfigError::new(
            format!("{key}.half_open_calls"),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn validate_backends(config: &Config) -> Result<(), ConfigError> {
    match config.database.url.scheme() {
        "" if config.database.url.is_empty() => {}
        "sqlite" | "postgres" | "postgresql" => {}
        other => {
            return Err(ConfigError::new(
                "database.url",
                format!("unknown scheme `{other}`; use sqlite:// or postgres://"),
            ));
        }
    }
    if config.database.max_connections == 0 {
        return Err(ConfigError::new(
            "database.max_connections",
            "must be at least 1",
        ));
    }
    check_scheme(
        "cache.url",
        &config.cache.url,
        &["memory", "redis", "rediss"],
        &[],
    )?;
    check_scheme(
        "bus.url",
        &config.bus.url,
        &["embedded", "amqp", "amqps"],
        &[],
    )?;
    check_scheme(
        "discovery.url",
        &config.discovery.url,
        &["static"],
        &["consul", "etcd"],
    )?;
    if !config.email.url.is_empty() {
        check_scheme(
            "email.url",
            &config.email.url,
            &["file", "smtp", "smtps"],
            &[],
        )?;
    }
    crate::email::Mailer::check(&config.email_url(), &config.email.from)?;
    for (service, instances) in &config.discovery.static_instances {
        for (index, instance) in instances.iter().enumerate() {
            if !is_http_url(instance) {
                return Err(ConfigError::new(
                    format!("discovery.static.{service}[{index}]"),
                    format!("`{instance}` is not an http:// URL"),
                ));
            }
        }
    }
    Ok(())
}

fn check_scheme(
    key: &str,
    url: &ConnectionUrl,
    supported: &[&str],
    planned: &[&str],
) -> Result<(), ConfigError> {
    let scheme = url.scheme();
    if supported.contains(&scheme) {
        return Ok(());
    }
    if planned.contains(&scheme) {
        return Err(ConfigError::not_yet_supported(
            key,
            format!("`{scheme}://`"),
        ));
    }
    let expected: Vec<String> = supported
        .iter()
        .chain(planned)
        .map(|scheme| format!("{scheme}://"))
        .collect();
    Err(ConfigError::new(
        key,
        format!(
            "`{url}` has an unknown scheme; expected one of {}",
            expected.join(", ")
        ),
    ))
}

fn validate_misc(config: &Config) -> Result<(), ConfigError> {
    if config.jobs.concurrency == 0 {
        return Err(ConfigError::new("jobs.concurrency", "must be at least 1"));
    }
    if config.webhooks.retry_schedule.is_empty() {
        return Err(ConfigError::new(
            "webhooks.retry_schedule",
            "needs at least one attempt",
        ));
    }
    if config.log.max_files == 0 {
        return Err(ConfigError::new("log.max_files", "must be at least 1"));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(ConfigError::new(
            "log.level",
            format!("not a level or filter: {err}"),
        ));
    }
    if !(0.0..=1.0).contains(&config.telemetry.sample_ratio) {
        return Err(ConfigError::new(
            "telemetry.sample_ratio",
            "must be between 0 and 1",
        ));
    }
    if !config.telemetry.otlp_endpoint.is_empty() {
        return Err(ConfigError::not_yet_supported(
            "telemetry.otlp_endpoint",
            "OTLP export",
        ));
    }
    if !config.auth.issuer.is_empty() && !is_http_url(&config.auth.issuer) {
        return Err(ConfigError::new(
            "auth.issuer",
            "must be an absolute http(s) URL (the gateway's public address)",
        ));
    }
    for (index, client) in config.auth.clients.iter().enumerate() {
        let key = |field: &str| format!("auth.clients[{index}].{field}");
        if client.client_id.trim().is_empty() {
            return Err(ConfigError::new(key("client_id"), "must not be empty"));
        }
        if client.client_id == "logicore" {
            return Err(ConfigError::new(
                key("client_id"),
                "`logicore` is the audience of access tokens; choose another id",
            ));
        }
        if client.redirect_uris.is_empty() {
            return Err(ConfigError::new(
                key("redirect_uris"),
                "needs at least one URI",
            ));
        }
        for (position, uri) in client.redirect_uris.iter().enumerate() {
            if let Some(problem) = crate::auth::redirect_uri_problem(uri) {
                return Err(ConfigError::new(
                    key(&format!("redirect_uris[{position}]")),
                    problem,
                ));
            }
        }
        let public = match client.token_endpoint_auth_method.as_str() {
            "" | "client_secret_basic" | "client_secret_post" => false,
            "none" => true,
            _ => {
                return Err(ConfigError::new(
                    key("token_endpoint_auth_method"),
                    "must be client_secret_basic, client_secret_post or none",
                ));
            }
        };
        if public != client.client_secret.is_empty() {
            return Err(ConfigError::new(
                key("client_secret"),
                if public {
                    "a public client (token_endpoint_auth_method = \"none\") has no secret"
                } else {
                    "a confidential client needs a secret"
                },
            ));
        }
    }
    let mut provider_names = std::collections::BTreeSet::new();
    for (index, provider) in config.auth.providers.iter().enumerate() {
        let key = |field: &str| format!("auth.providers[{index}].{field}");
        let name_ok = !provider.name.is_empty()
            && provider.name.len() <= 40
            && provider
                .name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        if !name_ok {
            return Err(ConfigError::new(
                key("name"),
                "must be 1-40 characters of a-z, 0-9 and -",
            ));
        }
        if !provider_names.insert(provider.name.as_str()) {
            return Err(ConfigError::new(key("name"), "is used by another provider"));
        }
        if !is_http_url(&provider.issuer) {
            return Err(ConfigError::new(
                key("issuer"),
                "must be the provider's http(s) issuer URL",
            ));
        }
        if provider.client_id.is_empty() {
            return Err(ConfigError::new(key("client_id"), "must not be empty"));
        }
    }
    if !config.edge.geoip_db.is_empty() {
        return Err(ConfigError::not_yet_supported(
            "edge.geoip_db",
            "GeoIP lookup",
        ));
    }
    if !config.edge.experiments.is_empty() {
        return Err(ConfigError::not_yet_supported(
            "edge.experiments",
            "A/B experiments",
        ));
    }
    Ok(())
}

fn is_http_url(text: &str) -> bool {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    rest.is_some_and(|rest| !rest.is_empty())
}

fn is_cidr(text: &str) -> bool {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max_prefix = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|prefix| prefix.parse::<u8>().is_ok_and(|bits| bits <= max_prefix))
}

impl Config {
    /// Returns the effective database URL (`sqlite://<data-dir>/logicore.db` by default).
    pub fn database_url(&self) -> ConnectionUrl {
        if self.database.url.is_empty() {
            let path = self.data_dir.join("logicore.db");
            ConnectionUrl::new(format!("sqlite://{}", path.display()))
        } else {
            self.database.url.clone()
        }
    }

    /// Returns the effective log directory (`<data-dir>/logs` by default).
    pub fn log_dir(&self) -> PathBuf {
        if self.log.dir.is_empty() {
            self.data_dir.join("logs")
        } else {
            PathBuf::from(&self.log.dir)
        }
    }

    /// Returns the effective e-mail URL (`file://<data-dir>/outbox` by default).
    pub fn email_url(&self) -> ConnectionUrl {
        if self.email.url.is_empty() {
            let path = self.data_dir.join("outbox");
            ConnectionUrl::new(format!("file://{}", path.display()))
        } else {
            self.email.url.clone()
        }
    }

    /// Returns the effective field-encryption key file (`<data-dir>/encryption.keys` by default).
    pub fn key_file(&self) -> PathBuf {
        if self.crypto.key_file.is_empty() {
            self.data_dir.join("encryption.keys")
        } else {
            PathBuf::from(&self.crypto.key_file)
        }
    }

    /// Returns the config with derived defaults filled in, as `config show` prints it.
    pub fn effective(&self) -> Config {
        let mut effective = self.clone();
        effective.database.url = self.database_url();
        effective.log.dir = self.log_dir().display().to_string();
        effective.email.url = self.email_url();
        effective.crypto.key_file = self.key_file().display().to_string();
        effective
    }

    /// Renders the effective config as TOML with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let body = toml::to_string_pretty(&self.effective())
            .unwrap_or_else(|err| format!("# cannot render the config: {err}\n"));
        format!("# data dir: {}\n{body}", self.data_dir.display())
    }
}

#[cfg(test)]
mod tests;
