//! The configuration tree of SPEC §9, typed and defaulted.
//!
//! Every struct refuses unknown keys, and every field has the default the SPEC gives, so an
//! empty `logicore.toml` (or none at all) is a complete configuration. Values whose feature is
//! not built yet are accepted here and refused by [`super::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{
    ByteSize, ConnectionUrl, Rate, Secret, duration, duration_list, optional_rate,
};

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("built-in listen addresses are valid")
}

/// The whole configuration of one `logicore` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How long shutdown waits for in-flight requests and running jobs.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// The edge: listener, routes, policies.
    pub gateway: GatewayConfig,
    /// The operator listener: health, readiness, metrics, admin API.
    pub admin: AdminConfig,
    /// Listeners of the services when they run as separate roles.
    pub services: ServicesConfig,
    /// Where the gateway and services find each other.
    pub discovery: DiscoveryConfig,
    /// The database every service stores its data in.
    pub database: DatabaseConfig,
    /// The query cache for services.
    pub cache: CacheConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// Background jobs.
    pub jobs: JobsConfig,
    /// Outgoing e-mail.
    pub email: EmailConfig,
    /// Outgoing webhooks.
    pub webhooks: WebhooksConfig,
    /// Token issuing and verification.
    pub auth: AuthConfig,
    /// Field-level encryption.
    pub crypto: CryptoConfig,
    /// Service-to-service trust.
    pub internal: InternalConfig,
    /// Geo lookup and A/B experiments at the edge.
    pub edge: EdgeConfig,
    /// Log output.
    pub log: LogConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Cross-origin requests from browser front ends.
    pub cors: CorsConfig,
    /// The data directory (`--data-dir`); not a config key.
    #[serde(skip)]
    pub data_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shutdown_grace: secs(30),
            gateway: GatewayConfig::default(),
            admin: AdminConfig::default(),
            services: ServicesConfig::default(),
            discovery: DiscoveryConfig::default(),
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            bus: BusConfig::default(),
            jobs: JobsConfig::default(),
            email: EmailConfig::default(),
            webhooks: WebhooksConfig::default(),
            auth: AuthConfig::default(),
            crypto: CryptoConfig::default(),
            internal: InternalConfig::default(),
            edge: EdgeConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            cors: CorsConfig::default(),
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[gateway]`: the public listener and what it does with each request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// The URL clients use; default `http://127.0.0.1:<bound port>`.
    pub public_url: String,
    /// Largest request body accepted (413 above).
    pub body_limit: ByteSize,
    /// Largest request header block accepted (431 above).
    pub max_header_bytes: ByteSize,
    /// Time a client has to send its request headers.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send its whole request body (408 after).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// CIDRs whose forwarding headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Response compression.
    pub compression: CompressionConfig,
    /// One log event per request.
    pub access_log: bool,
    /// Token issuers the gateway accepts.
    pub auth: GatewayAuthConfig,
    /// Routes added to (or replacing) the built-in routes of the services.
    pub routes: Vec<RouteConfig>,
    /// Circuit-breaker defaults for every upstream.
    pub breaker: BreakerConfig,
    /// Per-upstream overrides.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Share of requests that may be retries.
    pub retry_budget: RetryBudgetConfig,
    /// Passive outlier ejection of upstream instances.
    pub outlier: OutlierConfig,
    /// Rate limiting behaviour shared by every route's limits.
    pub rate_limit: RateLimitConfig,
    /// Fields masked in JSON responses of routes with `masking = true`.
    pub masking: MaskingConfig,
    /// The gateway response cache.
    pub cache: GatewayCacheConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: addr("0.0.0.0:8080"),
            public_url: String::new(),
            body_limit: ByteSize(1 << 20),
            max_header_bytes: ByteSize(16 << 10),
            header_read_timeout: secs(10),
            body_read_timeout: secs(30),
            trusted_proxies: Vec::new(),
            compression: CompressionConfig::default(),
            access_log: true,
            auth: GatewayAuthConfig::default(),
            routes: Vec::new(),
            breaker: BreakerConfig::default(),
            upstreams: BTreeMap::new(),
            retry_budget: RetryBudgetConfig::default(),
            outlier: OutlierConfig::default(),
            rate_limit: RateLimitConfig::default(),
            masking: MaskingConfig::default(),
            cache: GatewayCacheConfig::default(),
        }
    }
}

/// `gateway.compression`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Whether responses are compressed at all.
    pub enabled: bool,
    /// Bodies smaller than this are sent as they are.
    pub min_size: ByteSize,
    /// gzip level, 1 (fast, like nginx's default) to 9.
    pub gzip_level: u32,
    /// Brotli quality, 0 to 11 (4: the usual choice for dynamic responses).
    pub br_level: u32,
    /// Zstandard level, 1 to 19 (3: zstd's own default).
    pub zstd_level: u32,
    /// Algorithms offered, in order of preference.
    pub algorithms: Vec<CompressionAlgorithm>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_size: ByteSize(1 << 10),
            gzip_level: 1,
            br_level: 4,
            zstd_level: 3,
            algorithms: vec![
                CompressionAlgorithm::Br,
                CompressionAlgorithm::Zstd,
                CompressionAlgorithm::Gzip,
            ],
        }
    }
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
}

/// `gateway.auth`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayAuthConfig {
    /// Accepted issuers; the platform's own (`logicore`) is always present.
    pub issuers: Vec<IssuerConfig>,
}

impl Default for GatewayAuthConfig {
    fn default() -> Self {
        GatewayAuthConfig {
            issuers: vec![IssuerConfig::default()],
        }
    }
}

/// One `[[gateway.auth.issuers]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// JWKS URL; empty = the users service's JWKS.
    pub jwks_url: String,
    /// Shared secret for HS256 issuers (instead of `jwks_url`).
    pub hs256_secret: Secret,
    /// Expected `iss`; empty = not checked.
    pub issuer: String,
    /// Expected `aud`; empty = not checked.
    pub audience: String,
    /// Algorithms accepted from this issuer.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Claim holding the roles array.
    pub roles_claim: String,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            name: "logicore".to_owned(),
            jwks_url: String::new(),
            hs256_secret: Secret::default(),
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec![JwtAlgorithm::EdDSA, JwtAlgorithm::RS256],
            roles_claim: "roles".to_owned(),
        }
    }
}

/// A JWT signature algorithm an issuer may use (`none` is deliberately absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// Ed25519.
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// HMAC with SHA-256 (shared secret).
    HS256,
}

/// How a route treats the `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    /// Tokens are ignored.
    None,
    /// A valid token identifies the caller; no token is fine.
    #[default]
    Optional,
    /// A valid token is needed (401 otherwise).
    Required,
}

/// One `[[gateway.routes]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Path prefix, matched on segment boundaries.
    pub prefix: String,
    /// Upstream service name (in-process or from discovery).
    pub service: String,
    /// Methods routed; empty = all.
    pub methods: Vec<String>,
    /// Token policy.
    pub auth: RouteAuth,
    /// Roles of which the caller needs one; empty = any authenticated caller.
    pub roles: Vec<String>,
    /// Response cache for this route.
    pub cache: RouteCacheConfig,
    /// Rate limits for this route.
    pub rate_limit: RouteRateLimitConfig,
    /// Per-try upstream timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Retries for idempotent methods.
    pub retries: u32,
    /// Mask sensitive fields in JSON responses.
    pub masking: bool,
    /// `Cache-Control` set on responses that have none.
    pub cache_control: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            prefix: String::new(),
            service: String::new(),
            methods: Vec::new(),
            auth: RouteAuth::Optional,
            roles: Vec::new(),
            cache: RouteCacheConfig::default(),
            rate_limit: RouteRateLimitConfig::default(),
            timeout: secs(3),
            retries: 2,
            masking: false,
            cache_control: String::new(),
        }
    }
}

/// `cache = { enabled, ttl }` of a route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheConfig {
    /// Whether responses of this route are cached by the gateway.
    pub enabled: bool,
    /// Freshness used when the upstream gives none.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

/// `rate_limit = { per_ip, per_user }` of a route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteRateLimitConfig {
    /// Limit per client IP.
    #[serde(with = "optional_rate")]
    pub per_ip: Option<Rate>,
    /// Limit per authenticated user.
    #[serde(with = "optional_rate")]
    pub per_user: Option<Rate>,
}

/// `[gateway.breaker]`: resilience4j-style circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Per-try timeout; a timeout counts as a failure.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Rolling window the rates are computed over.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Calls the window must hold before the breaker may open.
    pub min_calls: u32,
    /// Failure percentage that opens the breaker.
    pub failure_rate: u32,
    /// Calls slower than this count as slow.
    #[serde(with = "duration")]
    pub slow_call_duration: Duration,
    /// Slow-call percentage that opens the breaker.
    pub slow_call_rate: u32,
    /// How long the breaker stays open.
    #[serde(with = "duration")]
    pub open_duration: Duration,
    /// Probes let through when half open.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            timeout: secs(3),
            window: secs(10),
            min_calls: 20,
            failure_rate: 50,
            slow_call_duration: secs(2),
            slow_call_rate: 100,
            open_duration: secs(10),
            half_open_calls: 5,
        }
    }
}

/// `[gateway.upstreams.<service>]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Breaker settings for this upstream (unset keys take the built-in defaults).
    pub breaker: BreakerConfig,
}

/// `[gateway.retry_budget]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of requests.
    pub ratio: f64,
    /// Retries always allowed per second, whatever the ratio.
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// `[gateway.outlier]`: passive ejection of instances that keep failing (Envoy-style).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Gateway errors in a row (connection failure, timeout, 502/503/504) that eject an
    /// instance; 0 turns ejection off.
    pub consecutive_errors: u32,
    /// First ejection time; the n-th ejection lasts n times as long.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// Largest share of a pool ejected at once, in percent.
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_errors: 5,
            base_ejection: secs(30),
            max_ejection: secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `[gateway.masking]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    /// Field names masked at any depth (compared without case, `_` or `-`).
    pub fields: Vec<String>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            fields: vec!["creditCard".into(), "card_number".into(), "ssn".into()],
        }
    }
}

/// `[gateway.rate_limit]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// When the shared backend (Redis) fails: let requests through (`true`) or answer 503.
    pub fail_open: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { fail_open: true }
    }
}

/// `[gateway.cache]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayCacheConfig {
    /// Bound of the memory backend.
    pub max_bytes: ByteSize,
}

impl Default for GatewayCacheConfig {
    fn default() -> Self {
        GatewayCacheConfig {
            max_bytes: ByteSize(64 << 20),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the operator listener; keep it private.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: addr("127.0.0.1:9080"),
        }
    }
}

/// `[services]`: one listener per service for split deployments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// The users service.
    pub users: ServiceConfig,
    /// The catalog service.
    pub catalog: ServiceConfig,
    /// The orders service.
    pub orders: ServiceConfig,
    /// The webhooks service.
    pub webhooks: ServiceConfig,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        let at = |text: &str| ServiceConfig { listen: addr(text) };
        ServicesConfig {
            users: at("127.0.0.1:4001"),
            catalog: at("127.0.0.1:4002"),
            orders: at("127.0.0.1:4003"),
            webhooks: at("127.0.0.1:4004"),
        }
    }
}

/// `[services.<name>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address the service listens on when it runs as its own role.
    pub listen: SocketAddr,
}

/// `[discovery]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// `static://`, `consul://host:8500` or `etcd://host:2379`.
    pub url: ConnectionUrl,
    /// Instances per service for `static://`.
    #[serde(rename = "static")]
    pub static_instances: BTreeMap<String, Vec<String>>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            url: ConnectionUrl::new("static://"),
            static_instances: BTreeMap::new(),
        }
    }
}

/// SQLite's durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Survives process crashes (WAL + NORMAL).
    #[default]
    Normal,
    /// Also survives power loss.
    Full,
}

/// `[database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`; empty = `sqlite://<data-dir>/logicore.db`.
    pub url: ConnectionUrl,
    /// Pool size (PostgreSQL; SQLite readers).
    pub max_connections: u32,
    /// Apply pending migrations at start.
    pub migrate_on_start: bool,
    /// SQLite durability.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Queries slower than this are logged.
    #[serde(with = "duration")]
    pub slow_query: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: ConnectionUrl::default(),
            max_connections: 20,
            migrate_on_start: true,
            sqlite_synchronous: SqliteSynchronous::Normal,
            slow_query: Duration::from_millis(200),
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `memory://` or `redis://...`.
    pub url: ConnectionUrl,
    /// Bound of the memory backend.
    pub max_bytes: ByteSize,
    /// How long services keep cached query results (a write invalidates them at once).
    #[serde(with = "duration")]
    pub query_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: ConnectionUrl::new("memory://"),
            max_bytes: ByteSize(64 << 20),
            query_ttl: secs(30),
        }
    }
}

/// `[bus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `embedded://` or `amqp://...`.
    pub url: ConnectionUrl,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: ConnectionUrl::new("embedded://"),
        }
    }
}

/// `[jobs]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs run at once by one worker.
    pub concurrency: u32,
    /// How long a claimed job stays claimed without a heartbeat.
    #[serde(with = "duration")]
    pub lease: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            concurrency: 16,
            lease: secs(30),
        }
    }
}

/// `[email]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// `file://dir` or `smtp://host:port`; empty = `file://<data-dir>/outbox`.
    pub url: ConnectionUrl,
    /// The `From` header.
    pub from: String,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            url: ConnectionUrl::default(),
            from: "LogiCore <no-reply@localhost>".to_owned(),
        }
    }
}

/// `[webhooks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow targets on loopback and private networks (tests, intranets).
    pub allow_private_targets: bool,
    /// Time a receiver has to answer.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Delays before each attempt.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let hours = |h: u64| secs(h * 3600);
        WebhooksConfig {
            allow_private_targets: false,
            timeout: secs(15),
            retry_schedule: vec![
                secs(0),
                secs(5),
                secs(300),
                secs(1800),
                hours(2),
                hours(5),
                hours(10),
                hours(10),
            ],
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of issued tokens; empty = `gateway.public_url`.
    pub issuer: String,
    /// Lifetime of access tokens.
    #[serde(with = "duration")]
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens.
    #[serde(with = "duration")]
    pub refresh_token_ttl: Duration,
    /// Clock skew allowed when verifying tokens.
    #[serde(with = "duration")]
    pub leeway: Duration,
    /// PKCS#8 PEM signing key instead of the generated one.
    pub signing_key_file: String,
    /// External OpenID Connect providers.
    pub providers: Vec<ProviderConfig>,
    /// OAuth clients known from configuration (more are registered over the admin API).
    pub clients: Vec<OAuthClientConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: String::new(),
            access_token_ttl: secs(15 * 60),
            refresh_token_ttl: secs(30 * 86_400),
            leeway: secs(30),
            signing_key_file: String::new(),
            providers: Vec::new(),
            clients: Vec::new(),
        }
    }
}

/// One `[[auth.clients]]` entry: an OAuth client with RFC 7591 field names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthClientConfig {
    /// The client's id.
    pub client_id: String,
    /// Its secret (confidential clients).
    pub client_secret: Secret,
    /// Shown on the login page.
    pub client_name: String,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic` (default), `client_secret_post` or `none` (public client).
    pub token_endpoint_auth_method: String,
    /// A client of the platform's own (its tokens carry the account's roles, admin included);
    /// other clients' tokens carry at most `customer`.
    pub first_party: bool,
}

/// One `[[auth.providers]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Name shown on the login page.
    pub name: String,
    /// OpenID Connect issuer URL (discovery is read from it).
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// Our client secret at the provider (empty: we are a public client, PKCE only).
    pub client_secret: Secret,
    /// Scopes asked for (default `openid email profile`).
    pub scopes: Vec<String>,
}

/// `[crypto]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Key ring file; empty = `<data-dir>/encryption.keys`.
    pub key_file: String,
}

/// `[internal]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InternalConfig {
    /// Key signing service-to-service tokens; shared by all roles.
    pub token_key: Secret,
}

/// `[edge]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// MaxMind-format country or city database.
    pub geoip_db: String,
    /// Secret verifying Netlify's `x-nf-sign`.
    pub netlify_signature_secret: Secret,
    /// A/B experiments.
    pub experiments: Vec<ExperimentConfig>,
}

/// One `[[edge.experiments]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    /// Experiment name (also the hash seed).
    pub name: String,
    /// Weighted variants.
    pub variants: Vec<VariantConfig>,
    /// Sticky cookie name.
    pub cookie: String,
}

/// One variant of an experiment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VariantConfig {
    /// Variant name.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Upstream service serving this variant; empty = the route's.
    pub service: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON unless stdout is a terminal.
    #[default]
    Auto,
    /// Always JSON lines.
    Json,
    /// Always human-readable.
    Pretty,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Directory of the log files; empty = `<data-dir>/logs`.
    pub dir: String,
    /// Level or `tracing` filter directives (`info`, `logicore=debug,info`).
    pub level: String,
    /// Stdout format.
    pub format: LogFormat,
    /// Log files kept (the current one included).
    pub max_files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: String::new(),
            level: "info".to_owned(),
            format: LogFormat::Auto,
            max_files: 14,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector; empty = no export.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans.
    pub service_name: String,
    /// Share of traces sampled.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "logicore".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// `[cors]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser.
    pub allowed_origins: Vec<String>,
}
