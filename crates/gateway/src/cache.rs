//! The gateway's shared response cache for GET and HEAD (RFC 9111, the parts a reverse proxy
//! needs).
//!
//! - Freshness from the upstream's `Cache-Control` (`s-maxage`, else `max-age`), else the
//!   route's TTL; `no-store`, `private`, `no-cache`, `Vary: *` and `Set-Cookie` responses are
//!   not stored; `stale-while-revalidate` serves a stale entry while one background refresh
//!   runs; `stale-if-error` serves it when the upstream fails.
//! - The key is method, path, query and the negotiated content coding; `Vary`-named request
//!   headers must match the stored ones.
//! - Concurrent misses for one key make one upstream call: the first request fetches, the
//!   others wait for it and are served what it stored.
//! - Requests with credentials (`Authorization`) and requests asking `no-cache`/`no-store`
//!   bypass the cache, so one user's response is never served to another.
//! - Services tag responses with `Cache-Tag: a, b`; entries are purged by tag or by target
//!   (`POST /admin/cache/purge`). `x-cache: HIT|MISS|STALE|BYPASS` and `Age` say what happened.
//!
//! The memory backend is bounded by `gateway.cache.max_bytes` (moka, weighed by size). The
//! Redis backend (`cache.url = "redis://..."`) is shared by every gateway: entries expire
//! when they can no longer be served, tags are sets of entry keys; a Redis that fails is a
//! miss and the request goes to the upstream (pass-through, never an error). Concurrent
//! misses are coalesced within each gateway.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use logicore_platform::cache::{Claim, RedisStore, SingleFlight, Waiter};
use logicore_platform::http::{ErrorCode, Problem};
use tokio::time::Instant;

/// `x-cache`, saying how the cache answered.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The header services tag responses with, for purges.
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Largest body stored; larger responses pass through.
const MAX_ENTRY_BYTES: u64 = 8 << 20;

/// How the cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    /// Served from a fresh entry.
    Hit,
    /// Fetched from the upstream (and stored when storable).
    Miss,
    /// Served from an expired entry (while revalidating, or because the upstream failed).
    Stale,
    /// Not eligible (credentials, `no-cache` request): straight to the upstream.
    Bypass,
}

impl CacheResult {
    /// The `x-cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Bypass => "BYPASS",
        }
    }
}

/// What identifies a cached response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// GET or HEAD.
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// The negotiated content coding (`identity`, `gzip`, ...).
    pub coding: &'static str,
}

/// `Cache-Control` directives that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (a stored response must be revalidated; we simply do not store it).
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `max-age` in seconds.
    pub max_age: Option<u64>,
    /// `s-maxage` in seconds (for shared caches, wins over `max-age`).
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate` in seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` in seconds.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header of `headers`; unknown directives are ignored.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut parsed = CacheControl::default();
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for directive in directives {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name, Some(argument.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let seconds = || argument.and_then(|text| text.parse::<u64>().ok());
            match name.trim().to_ascii_lowercase().as_str() {
                "no-store" => parsed.no_store = true,
                "no-cache" => parsed.no_cache = true,
                "private" => parsed.private = true,
                "max-age" => parsed.max_age = seconds(),
                "s-maxage" => parsed.s_maxage = seconds(),
                "stale-while-revalidate" => parsed.stale_while_revalidate = seconds(),
                "stale-if-error" => parsed.stale_if_error = seconds(),
                _ => {}
            }
        }
        parsed
    }
}

/// One stored response.
#[derive(Debug)]
struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// When it was stored, in milliseconds of the cache's clock (wall time, so instances
    /// sharing Redis agree).
    stored_at_ms: u64,
    /// `Age` the upstream already gave it.
    initial_age: Duration,
    fresh_for: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// The `Vary`-named request headers and their values when stored.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    tags: Vec<String>,
}

impl Entry {
    fn age(&self, now_ms: u64) -> Duration {
        self.initial_age + Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    /// How long Redis should keep it: as long as it may be served at all.
    fn keep_for(&self) -> Duration {
        let stale = self.stale_while_revalidate.max(self.stale_if_error);
        (self.fresh_for + stale).saturating_sub(self.initial_age)
    }

    fn encode(&self) -> Vec<u8> {
        let text = |bytes: &[u8]| BASE64.encode(bytes);
        let stored = StoredEntry {
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), text(value.as_bytes())))
                .collect(),
            body: text(&self.body),
            stored_at_ms: self.stored_at_ms,
            initial_age_ms: millis(self.initial_age),
            fresh_ms: millis(self.fresh_for),
            stale_while_revalidate_ms: millis(self.stale_while_revalidate),
            stale_if_error_ms: millis(self.stale_if_error),
            vary: self
                .vary
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        value.as_ref().map(|value| text(value.as_bytes())),
                    )
                })
                .collect(),
            tags: self.tags.clone(),
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let stored: StoredEntry = serde_json::from_slice(bytes).ok()?;
        let raw = |text: &str| BASE64.decode(text).ok();
        let value = |text: &str| raw(text).and_then(|bytes| HeaderValue::from_bytes(&bytes).ok());
        let mut headers = HeaderMap::with_capacity(stored.headers.len());
        for (name, text) in &stored.headers {
            headers.append(HeaderName::from_bytes(name.as_bytes()).ok()?, value(text)?);
        }
        let mut vary = Vec::with_capacity(stored.vary.len());
        for (name, text) in &stored.vary {
            let value = match text {
                Some(text) => Some(value(text)?),
                None => None,
            };
            vary.push((HeaderName::from_bytes(name.as_bytes()).ok()?, value));
        }
        Some(Entry {
            status: StatusCode::from_u16(stored.status).ok()?,
            headers,
            body: Bytes::from(raw(&stored.body)?),
            stored_at_ms: stored.stored_at_ms,
            initial_age: Duration::from_millis(stored.initial_age_ms),
            fresh_for: Duration::from_millis(stored.fresh_ms),
            stale_while_revalidate: Duration::from_millis(stored.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(stored.stale_if_error_ms),
            vary,
            tags: stored.tags,
        })
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    fn response(&self, result: CacheResult, now_ms: u64) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(self.age(now_ms).as_secs()));
        tag(&mut response, result);
        response
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An entry as stored in Redis (JSON; header values and body in base64).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    stored_at_ms: u64,
    initial_age_ms: u64,
    fresh_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    vary: Vec<(String, Option<String>)>,
    tags: Vec<String>,
}

/// Where entries live.
enum Store {
    /// In this process, bounded by size.
    Memory(moka::sync::Cache<CacheKey, Arc<Entry>>),
    /// In Redis, shared by every gateway; a Redis that fails is a miss, never an error.
    Redis(RedisStore),
}

/// Codings a target may be stored under, for purges by target.
const CODINGS: [&str; 4] = ["identity", "gzip", "br", "zstd"];

/// Sets `x-cache` on a response and counts the result.
pub fn tag(response: &mut Response, result: CacheResult) {
    response
        .headers_mut()
        .insert(X_CACHE.clone(), HeaderValue::from_static(result.as_str()));
    crate::metrics::record_cache(result);
}

/// The response cache; cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Keys being fetched by this gateway.
    fetches: SingleFlight<CacheKey>,
    /// Wall-clock milliseconds at `origin`, so ages advance with tokio's clock.
    wall_at_origin_ms: u64,
    origin: Instant,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.inner.store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        };
        formatter
            .debug_struct("ResponseCache")
            .field("store", &store)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// An in-memory cache holding at most `max_bytes` of responses.
    pub fn memory(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight())
            .build();
        Self::with_store(Store::Memory(entries))
    }

    /// A cache in Redis, shared by every gateway using the same store (and key prefix).
    pub fn redis(store: RedisStore) -> Self {
        Self::with_store(Store::Redis(store))
    }

    fn with_store(store: Store) -> Self {
        let wall_at_origin_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, millis);
        ResponseCache {
            inner: Arc::new(Inner {
                store,
                fetches: SingleFlight::default(),
                wall_at_origin_ms,
                origin: Instant::now(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.wall_at_origin_ms + millis(self.inner.origin.elapsed())
    }

    fn redis_key(store: &RedisStore, key: &CacheKey) -> String {
        store.key(&format!(
            "respcache:{}:{}:{}",
            key.method, key.coding, key.target
        ))
    }

    fn tag_key(store: &RedisStore, tag: &str) -> String {
        store.key(&format!("respcache-tag:{tag}"))
    }

    fn claim(&self, key: &CacheKey) -> Result<Claim<CacheKey>, Waiter> {
        self.inner.fetches.claim(key)
    }

    async fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<Entry>> {
        let entry = match &self.inner.store {
            Store::Memory(entries) => entries.get(key)?,
            Store::Redis(store) => {
                let name = Self::redis_key(store, key);
                let bytes: Option<Vec<u8>> = store
                    .run(|mut connection| async move {
                        redis::AsyncCommands::get(&mut connection, name).await
                    })
                    .await
                    .ok()
                    .flatten();
                Arc::new(Entry::decode(&bytes?)?)
            }
        };
        entry.matches(request).then_some(entry)
    }

    async fn insert(&self, key: &CacheKey, entry: Arc<Entry>) {
        match &self.inner.store {
            Store::Memory(entries) => entries.insert(key.clone(), entry),
            Store::Redis(store) => {
                let name = Self::redis_key(store, key);
                let keep_ms = millis(entry.keep_for()).max(1);
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&name)
                    .arg(entry.encode())
                    .arg("PX")
                    .arg(keep_ms)
                    .ignore();
                for tag in &entry.tags {
                    let set = Self::tag_key(store, tag);
                    pipe.cmd("SADD").arg(&set).arg(&name).ignore();
                    // The tag set lives at least as long as its entries.
                    pipe.cmd("PEXPIRE")
                        .arg(&set)
                        .arg(keep_ms)
                        .arg("GT")
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(&set)
                        .arg(keep_ms)
                        .arg("NX")
                        .ignore();
                }
                let _ =
                    store
                        .run(|mut connection| async move {
                            pipe.query_async::<()>(&mut connection).await
                        })
                        .await;
            }
        }
    }

    /// Answers a GET or HEAD from the cache or through `fetch` (the upstream call, compressed
    /// as negotiated). `route_ttl` is the freshness of responses that carry none. `fetch` may
    /// run again in the background to revalidate a stale entry.
    pub async fn serve<F, Fut>(
        &self,
        key: CacheKey,
        request: &HeaderMap,
        route_ttl: Duration,
        fetch: F,
    ) -> Response
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let now = self.now_ms();
        let mut stale_if_error = None;
        if let Some(entry) = self.lookup(&key, request).await {
            let age = entry.age(now);
            if age < entry.fresh_for {
                return entry.response(CacheResult::Hit, now);
            }
            let expired_for = age - entry.fresh_for;
            if expired_for < entry.stale_while_revalidate {
                if let Ok(fetching) = self.claim(&key) {
                    let cache = self.clone();
                    let request = request.clone();
                    tokio::spawn(async move {
                        let response = fetch().await;
                        cache.store(&key, &request, route_ttl, response).await;
                        drop(fetching);
                    });
                }
                return entry.response(CacheResult::Stale, now);
            }
            if expired_for < entry.stale_if_error {
                stale_if_error = Some(entry);
            }
        }

        let fetching = match self.claim(&key) {
            Ok(fetching) => fetching,
            Err(waiter) => {
                // Another request is fetching this key: wait for it, then use what it stored.
                // If it stored nothing usable, fetch without coalescing.
                waiter.done().await;
                let now = self.now_ms();
                if let Some(entry) = self.lookup(&key, request).await
                    && entry.age(now) < entry.fresh_for
                {
                    return entry.response(CacheResult::Hit, now);
                }
                let mut response = fetch().await;
                // The upstream is failing for everyone: the stale entry serves the waiters too.
                if response.status().is_server_error()
                    && let Some(entry) = stale_if_error
                {
                    return entry.response(CacheResult::Stale, self.now_ms());
                }
                tag(&mut response, CacheResult::Miss);
                return response;
            }
        };
        let response = fetch().await;
        let failed = response.status().is_server_error();
        if failed && let Some(entry) = stale_if_error {
            drop(fetching);
            return entry.response(CacheResult::Stale, self.now_ms());
        }
        let response = self.store(&key, request, route_ttl, response).await;
        drop(fetching);
        response
    }

    /// Stores `response` when it may be stored, and returns it (tagged `MISS`).
    async fn store(
        &self,
        key: &CacheKey,
        request: &HeaderMap,
        route_ttl: Duration,
        response: Response,
    ) -> Response {
        let Some(plan) = storable(&response, request, route_ttl) else {
            let mut response = response;
            response.headers_mut().remove(&CACHE_TAG);
            tag(&mut response, CacheResult::Miss);
            return response;
        };
        let (mut parts, mut body) = response.into_parts();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0u64;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    size += data.len() as u64;
                    chunks.push(data);
                    if size > MAX_ENTRY_BYTES {
                        // Too large to keep: send what was read, then the rest, unstored.
                        let read = futures_util::stream::iter(chunks.into_iter().map(Ok));
                        let rest = body.into_data_stream();
                        parts.headers.remove(&CACHE_TAG);
                        let mut response = Response::from_parts(
                            parts,
                            Body::from_stream(futures_util::StreamExt::chain(read, rest)),
                        );
                        tag(&mut response, CacheResult::Miss);
                        return response;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "upstream body failed; nothing cached");
                    let mut response =
                        Problem::new(ErrorCode::BadGateway, "the upstream response body failed")
                            .into_response();
                    tag(&mut response, CacheResult::Miss);
                    return response;
                }
                None => break,
            }
        }
        let body = Bytes::from(chunks.concat());
        let tags = take_tags(&mut parts.headers);
        let initial_age = parts
            .headers
            .get(header::AGE)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        parts.headers.remove(header::AGE);
        let entry = Arc::new(Entry {
            status: parts.status,
            headers: parts.headers,
            body,
            stored_at_ms: self.now_ms(),
            initial_age,
            fresh_for: plan.fresh_for,
            stale_while_revalidate: plan.stale_while_revalidate,
            stale_if_error: plan.stale_if_error,
            vary: plan.vary,
            tags,
        });
        self.insert(key, Arc::clone(&entry)).await;
        entry.response(CacheResult::Miss, self.now_ms())
    }

    /// Removes every entry tagged with one of `tags`; returns how many.
    pub async fn purge_tags(&self, tags: &[String]) -> usize {
        match &self.inner.store {
            Store::Memory(entries) => Self::purge_where(entries, |_, entry| {
                entry.tags.iter().any(|tag| tags.contains(tag))
            }),
            Store::Redis(store) => {
                let mut purged = 0;
                for tag in tags {
                    let set = Self::tag_key(store, tag);
                    let deleted = store
                        .run(|mut connection| async move {
                            let members: Vec<String> =
                                redis::AsyncCommands::smembers(&mut connection, &set).await?;
                            let mut pipe = redis::pipe();
                            pipe.cmd("DEL").arg(&members);
                            pipe.cmd("DEL").arg(&set).ignore();
                            let (deleted,): (usize,) = if members.is_empty() {
                                (0,)
                            } else {
                                pipe.query_async(&mut connection).await?
                            };
                            Ok(deleted)
                        })
                        .await;
                    purged += deleted.unwrap_or(0);
                }
                purged
            }
        }
    }

    /// Removes every entry of one of `targets` (path and query, any method or coding);
    /// returns how many.
    pub async fn purge_targets(&self, targets: &[String]) -> usize {
        match &self.inner.store {
            Store::Memory(entries) => {
                Self::purge_where(entries, |key, _| targets.contains(&key.target))
            }
            Store::Redis(store) => {
                let names: Vec<String> = targets
                    .iter()
                    .flat_map(|target| {
                        [Method::GET, Method::HEAD]
                            .into_iter()
                            .flat_map(move |method| {
                                CODINGS.into_iter().map(move |coding| CacheKey {
                                    method: method.clone(),
                                    target: target.clone(),
                                    coding,
                                })
                            })
                    })
                    .map(|key| Self::redis_key(store, &key))
                    .collect();
                if names.is_empty() {
                    return 0;
                }
                store
                    .run(|mut connection| async move {
                        redis::AsyncCommands::del::<_, usize>(&mut connection, names).await
                    })
                    .await
                    .unwrap_or(0)
            }
        }
    }

    fn purge_where(
        entries: &moka::sync::Cache<CacheKey, Arc<Entry>>,
        matches: impl Fn(&CacheKey, &Entry) -> bool,
    ) -> usize {
        let doomed: Vec<Arc<CacheKey>> = entries
            .iter()
            .filter(|(key, entry)| matches(key, entry))
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            entries.invalidate(key.as_ref());
        }
        doomed.len()
    }
}

/// How a storable response is kept.
struct Plan {
    fresh_for: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// Decides whether a response may be stored by a shared cache, and for how long.
fn storable(response: &Response, request: &HeaderMap, route_ttl: Duration) -> Option<Plan> {
    let status = response.status();
    // Statuses cacheable by default (RFC 9110 §15.1) that a proxy would keep.
    if !matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 410
    ) {
        return None;
    }
    let headers = response.headers();
    let control = CacheControl::parse(headers);
    if control.no_store || control.private || control.no_cache {
        return None;
    }
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    // A body announced as too large is not even buffered (one of unknown length is, up to
    // the bound: compressed responses stream without a length).
    if length.is_some_and(|length| length > MAX_ENTRY_BYTES) {
        return None;
    }
    let mut vary = Vec::new();
    for name in headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        if name == "*" {
            return None;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        // The coding is part of the key already.
        if name != header::ACCEPT_ENCODING {
            let value = request.get(&name).cloned();
            vary.push((name, value));
        }
    }
    let fresh_for = control
        .s_maxage
        .or(control.max_age)
        .map_or(route_ttl, Duration::from_secs);
    let seconds = |value: Option<u64>| value.map_or(Duration::ZERO, Duration::from_secs);
    let stale_while_revalidate = seconds(control.stale_while_revalidate);
    let stale_if_error = seconds(control.stale_if_error);
    if fresh_for.is_zero() && stale_while_revalidate.is_zero() && stale_if_error.is_zero() {
        return None;
    }
    Some(Plan {
        fresh_for,
        stale_while_revalidate,
        stale_if_error,
        vary,
    })
}

/// Takes the `Cache-Tag` header off a response (it is for the gateway, not for clients).
fn take_tags(headers: &mut HeaderMap) -> Vec<String> {
    let tags = headers
        .get_all(&CACHE_TAG)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect();
    headers.remove(&CACHE_TAG);
    tags
}

/// Returns true when a request must not be answered from (or stored in) the shared cache:
/// it carries credentials, or asks for a fresh answer.
pub fn bypasses(request: &HeaderMap) -> bool {
    if request.contains_key(header::AUTHORIZATION) {
        return true;
    }
    let control = CacheControl::parse(request);
    control.no_cache || control.no_store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn cache_control_directives_are_parsed() {
        let parsed = CacheControl::parse(&headers(&[
            ("cache-control", "public, max-age=60, s-maxage=\"120\""),
            (
                "cache-control",
                "Stale-While-Revalidate=30, stale-if-error=600",
            ),
        ]));
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(120));
        assert_eq!(parsed.stale_while_revalidate, Some(30));
        assert_eq!(parsed.stale_if_error, Some(600));
        assert!(!parsed.no_store && !parsed.private);
        let parsed = CacheControl::parse(&headers(&[("cache-control", "private, no-store")]));
        assert!(parsed.no_store && parsed.private);
    }

    fn response(pairs: &[(&'static str, &str)]) -> Response {
        let mut response = Response::new(Body::from("{}"));
        *response.headers_mut() = headers(pairs);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(2));
        response
    }

    #[test]
    fn what_a_shared_cache_may_store() {
        let none = HeaderMap::new();
        let ttl = Duration::from_secs(5);
        let fresh = |pairs: &[(&'static str, &str)], ttl| {
            storable(&response(pairs), &none, ttl).map(|plan| plan.fresh_for)
        };
        assert_eq!(
            fresh(&[("cache-control", "max-age=60")], ttl),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=10")], ttl),
            Some(Duration::from_secs(10)),
            "s-maxage wins for a shared cache"
        );
        assert_eq!(
            fresh(&[], ttl),
            Some(ttl),
            "the route TTL when none is given"
        );
        assert_eq!(fresh(&[], Duration::ZERO), None, "no freshness at all");
        for refused in [
            "no-store",
            "private, max-age=60",
            "no-cache",
            "max-age=60, no-store",
        ] {
            assert_eq!(fresh(&[("cache-control", refused)], ttl), None, "{refused}");
        }
        assert_eq!(fresh(&[("set-cookie", "a=b")], ttl), None);
        assert_eq!(fresh(&[("vary", "*")], ttl), None);
        let mut large = response(&[]);
        large.headers_mut().insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(MAX_ENTRY_BYTES + 1),
        );
        assert!(
            storable(&large, &none, ttl).is_none(),
            "announced too large"
        );
    }

    #[test]
    fn credentials_and_no_cache_requests_bypass() {
        assert!(bypasses(&headers(&[("authorization", "Bearer x")])));
        assert!(bypasses(&headers(&[("cache-control", "no-cache")])));
        assert!(!bypasses(&headers(&[("accept", "*/*")])));
    }
}

/// Purges cached catalog answers when products change: a `product.*` event removes the
/// entries tagged `product:<id>` and every product list (`products`). Each gateway process
/// runs its own subscription ([`logicore_platform::bus::Listener`]), so gateways on memory
/// caches all forget the stale entry.
#[derive(Debug, Clone)]
pub struct PurgeOnEvents {
    cache: ResponseCache,
}

impl PurgeOnEvents {
    /// Purges `cache`.
    pub fn new(cache: ResponseCache) -> PurgeOnEvents {
        PurgeOnEvents { cache }
    }
}

impl logicore_platform::bus::Listener for PurgeOnEvents {
    fn name(&self) -> &str {
        "gateway.cache-purge"
    }

    fn topics(&self) -> &[&str] {
        &["product.*"]
    }

    fn on_events<'a>(
        &'a self,
        events: &'a [logicore_platform::bus::Event],
    ) -> logicore_platform::bus::ListenFuture<'a> {
        Box::pin(async move {
            let mut tags = vec!["products".to_owned()];
            for event in events {
                let id = event.subject.clone().or_else(|| {
                    event
                        .data
                        .get("id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                });
                if let Some(id) = id {
                    tags.push(format!("product:{id}"));
                }
            }
            let purged = self.cache.purge_tags(&tags).await;
            metrics::counter!("gateway_cache_event_purges_total").increment(purged as u64);
            tracing::debug!(
                purged,
                events = events.len(),
                "cache entries purged by product events"
            );
        })
    }

    fn resubscribed(&self) -> logicore_platform::bus::ListenFuture<'_> {
        Box::pin(async move {
            // Product events may have been missed: forget every catalog answer.
            let purged = self.cache.purge_tags(&["catalog".to_owned()]).await;
            metrics::counter!("gateway_cache_event_purges_total").increment(purged as u64);
            tracing::info!(
                purged,
                "catalog answers purged after the event subscription was re-established"
            );
        })
    }
}
