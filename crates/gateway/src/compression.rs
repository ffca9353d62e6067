//! Response compression: br, zstd or gzip chosen from `Accept-Encoding` (RFC 9110 §12.5.3).
//!
//! Only compressible media types (text, JSON, XML, JavaScript, SVG) at or above `min_size`
//! are compressed; nothing already encoded, partial, or marked `Cache-Control: no-transform`.
//! Compressed bodies stream (no buffering); a strong `ETag` becomes weak, since the bytes
//! differ from the identity representation; `Vary: Accept-Encoding` is set on every response
//! whose representation depends on the header.

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use logicore_platform::config::{CompressionAlgorithm, CompressionConfig};
use logicore_platform::http::{ErrorCode, Problem};
use tokio_util::io::{ReaderStream, StreamReader};

/// A content coding the gateway may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
    /// No compression.
    Identity,
}

impl Coding {
    /// The token of `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
            Coding::Identity => "identity",
        }
    }
}

/// Compression settings from `[gateway.compression]`.
#[derive(Debug, Clone)]
pub struct CompressionSettings {
    /// Codings offered, in order of preference (ties in q-value go to the earlier one).
    pub offered: Vec<Coding>,
    /// Smallest body (by `Content-Length`) worth compressing.
    pub min_size: u64,
    /// gzip level.
    pub gzip_level: i32,
    /// Brotli quality.
    pub br_level: i32,
    /// Zstandard level.
    pub zstd_level: i32,
}

impl From<&CompressionConfig> for CompressionSettings {
    fn from(config: &CompressionConfig) -> Self {
        let offered = config
            .algorithms
            .iter()
            .map(|algorithm| match algorithm {
                CompressionAlgorithm::Br => Coding::Br,
                CompressionAlgorithm::Zstd => Coding::Zstd,
                CompressionAlgorithm::Gzip => Coding::Gzip,
            })
            .collect();
        let level = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        CompressionSettings {
            offered,
            min_size: config.min_size.0,
            gzip_level: level(config.gzip_level),
            br_level: level(config.br_level),
            zstd_level: level(config.zstd_level),
        }
    }
}

/// Chooses the coding for a request's `Accept-Encoding` header(s).
///
/// No header means identity. Each offered coding gets its own q-value, else that of `*`, else
/// 0; the highest wins, ties going to the configured order. Identity wins only when the client
/// rates it (or `*`) strictly higher; when nothing is acceptable the response goes out as
/// identity anyway (rather than a 406).
pub fn negotiate(headers: &HeaderMap, offered: &[Coding]) -> Coding {
    let mut preferences: Vec<(String, u16)> = Vec::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(parse_qvalue)
                .unwrap_or(1000);
            let coding = if coding == "x-gzip" {
                "gzip".to_owned()
            } else {
                coding
            };
            preferences.push((coding, quality));
        }
    }
    if preferences.is_empty() {
        return Coding::Identity;
    }
    let quality_of = |token: &str| {
        preferences
            .iter()
            .find(|(coding, _)| coding == token)
            .or_else(|| preferences.iter().find(|(coding, _)| coding == "*"))
            .map(|(_, quality)| *quality)
    };
    let mut best = (Coding::Identity, 0);
    for coding in offered {
        let quality = quality_of(coding.token()).unwrap_or(0);
        if quality > best.1 {
            best = (*coding, quality);
        }
    }
    let identity = quality_of("identity").unwrap_or(0);
    if identity > best.1 {
        Coding::Identity
    } else {
        best.0
    }
}

fn parse_qvalue(text: &str) -> Option<u16> {
    let value: f32 = text.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&value)
        .then(|| (value * 1000.0).round() as u16)
}

/// What the request decided about compressing its response.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    coding: Coding,
    is_head: bool,
}

impl Negotiated {
    /// The coding the response will get if it is compressible.
    pub fn coding(self) -> Coding {
        self.coding
    }
}

impl CompressionSettings {
    /// Reads the request's wishes (call before the request is handed on).
    pub fn negotiate(&self, request: &http::request::Parts) -> Negotiated {
        Negotiated {
            coding: negotiate(&request.headers, &self.offered),
            is_head: request.method == Method::HEAD,
        }
    }

    /// Compresses `response` when it is eligible and the request accepted a coding.
    pub async fn apply(&self, negotiated: Negotiated, response: Response) -> Response {
        compress_response(self, negotiated, response).await
    }
}

async fn compress_response(
    settings: &CompressionSettings,
    Negotiated { coding, is_head }: Negotiated,
    response: Response,
) -> Response {
    if !is_compressible(&response, settings.min_size) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    add_vary_accept_encoding(&mut parts.headers);
    if coding == Coding::Identity || is_head {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    weaken_etag(&mut parts.headers);
    let small = content_length(&parts.headers).is_some_and(|length| length <= ONE_SHOT_LIMIT);
    parts.headers.remove(header::CONTENT_LENGTH);
    if coding == Coding::Gzip && small {
        // Small, complete bodies (the common API response) are compressed in one call with a
        // compressor reused by the thread, instead of allocating a deflate state per response.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return Problem::new(
                    ErrorCode::BadGateway,
                    format!("the upstream response body failed: {error}"),
                )
                .into_response();
            }
        };
        if let Some(compressed) = gzip_one_shot(&bytes, settings.gzip_level) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(compressed.len()));
            return Response::from_parts(parts, Body::from(compressed));
        }
        return Response::from_parts(parts, encode(Body::from(bytes), coding, settings));
    }
    Response::from_parts(parts, encode(body, coding, settings))
}

/// Bodies up to this many bytes (by `Content-Length`) are gzipped in one call.
const ONE_SHOT_LIMIT: u64 = 64 * 1024;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
}

thread_local! {
    /// The raw-deflate compressor of this thread and its level; reset before each use.
    static DEFLATE: std::cell::RefCell<Option<(i32, flate2::Compress)>> =
        const { std::cell::RefCell::new(None) };
}

/// gzip (RFC 1952) of a complete body: header, raw deflate from the thread's compressor,
/// CRC-32 and length trailer. `None` if the compressor fails (the caller then streams).
fn gzip_one_shot(input: &[u8], level: i32) -> Option<Vec<u8>> {
    if level <= 1 {
        // The fastest level: a single pass with no per-stream tables (see `fast_gzip`).
        let mut output = Vec::new();
        crate::fast_gzip::gzip(input, &mut output);
        return Some(output);
    }
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut output = Vec::with_capacity(input.len() / 2 + 64);
    output.extend_from_slice(&HEADER);
    let finished = DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compress = match &mut *slot {
            Some((current, compress)) if *current == level => {
                compress.reset();
                compress
            }
            other => {
                let clamped = u32::try_from(level.clamp(0, 9)).unwrap_or(1);
                let fresh = flate2::Compress::new(flate2::Compression::new(clamped), false);
                &mut other.insert((level, fresh)).1
            }
        };
        loop {
            let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
            let rest = input.get(consumed..).unwrap_or_default();
            if output.capacity() - output.len() < 64 {
                output.reserve(output.capacity().max(1024));
            }
            match compress.compress_vec(rest, &mut output, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => return true,
                Ok(_) => {}
                Err(_) => {
                    // A failed stream is left mid-way; start the next use afresh.
                    *slot = None;
                    return false;
                }
            }
        }
    });
    if !finished {
        return None;
    }
    let mut crc = flate2::Crc::new();
    crc.update(input);
    output.extend_from_slice(&crc.sum().to_le_bytes());
    output.extend_from_slice(&crc.amount().to_le_bytes());
    Some(output)
}

/// Returns true for a response worth compressing (before looking at the client's wishes).
fn is_compressible(response: &Response, min_size: u64) -> bool {
    let status = response.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
    {
        return false;
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING) || headers.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.to_ascii_lowercase().contains("no-transform"));
    if no_transform {
        return false;
    }
    if content_length(headers).is_some_and(|length| length < min_size) {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_compressible_type)
}

/// Text, JSON, XML, JavaScript and SVG compress well; images, archives, video and event
/// streams do not (or must not be buffered).
fn is_compressible_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/x-ndjson"
                | "application/wasm"
                | "image/svg+xml"
        )
}

fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|name| {
            let name = name.trim();
            name == "*" || name.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

fn weaken_etag(headers: &mut HeaderMap) {
    let Some(strong) = headers
        .get(header::ETAG)
        .and_then(|value| value.to_str().ok())
        .filter(|text| !text.starts_with("W/"))
    else {
        return;
    };
    if let Ok(weak) = HeaderValue::from_str(&format!("W/{strong}")) {
        headers.insert(header::ETAG, weak);
    }
}

fn encode(body: Body, coding: Coding, settings: &CompressionSettings) -> Body {
    let reader = StreamReader::new(TryStreamExt::map_err(
        body.into_data_stream(),
        std::io::Error::other,
    ));
    match coding {
        Coding::Gzip => {
            let encoder = GzipEncoder::with_quality(reader, Level::Precise(settings.gzip_level));
            Body::from_stream(ReaderStream::new(encoder))
        }
        Coding::Br => {
            let encoder = BrotliEncoder::with_quality(reader, Level::Precise(settings.br_level));
            Body::from_stream(ReaderStream::new(encoder))
        }
        Coding::Zstd => {
            let encoder = ZstdEncoder::with_quality(reader, Level::Precise(settings.zstd_level));
            Body::from_stream(ReaderStream::new(encoder))
        }
        Coding::Identity => Body::from_stream(ReaderStream::new(reader)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    fn pick(accept: &str) -> Coding {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        negotiate(&headers, &ALL)
    }

    #[test]
    fn the_negotiation_table() {
        let table = [
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("gzip, deflate, br", Coding::Br),
            ("gzip, deflate, br, zstd", Coding::Br),
            ("zstd, gzip", Coding::Zstd),
            ("br;q=0.5, gzip;q=0.8", Coding::Gzip),
            ("br;q=1.0, gzip;q=1", Coding::Br),
            ("*", Coding::Br),
            ("*;q=0.5, identity;q=0.1", Coding::Br),
            ("identity", Coding::Identity),
            ("identity;q=0, gzip;q=0.1", Coding::Gzip),
            ("gzip;q=0", Coding::Identity),
            ("gzip;q=0.3, identity;q=0.5", Coding::Identity),
            ("gzip;q=0.3", Coding::Gzip),
            ("deflate", Coding::Identity),
            ("*;q=0", Coding::Identity),
            ("GZIP", Coding::Gzip),
            ("br;q=oops, gzip", Coding::Br),
        ];
        for (accept, expected) in table {
            assert_eq!(pick(accept), expected, "Accept-Encoding: {accept}");
        }
        assert_eq!(negotiate(&HeaderMap::new(), &ALL), Coding::Identity);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip"),
        );
        assert_eq!(
            negotiate(&headers, &[Coding::Gzip]),
            Coding::Gzip,
            "only offered codings"
        );
    }

    #[test]
    fn one_shot_gzip_round_trips_and_reuses_its_compressor() {
        use std::io::Read;
        for input in [&b""[..], b"{}", &br#"{"items":[1,2,3]}"#.repeat(500)] {
            for _ in 0..2 {
                let compressed = gzip_one_shot(input, 6).unwrap();
                let mut decoded = Vec::new();
                flate2::read::GzDecoder::new(&compressed[..])
                    .read_to_end(&mut decoded)
                    .unwrap();
                assert_eq!(decoded, input);
            }
        }
        let other_level = gzip_one_shot(b"level nine", 9).unwrap();
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&other_level[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, "level nine");
    }

    #[test]
    fn only_textual_types_are_compressed() {
        for compressible in [
            "application/json",
            "application/problem+json",
            "text/html; charset=utf-8",
            "image/svg+xml",
        ] {
            assert!(is_compressible_type(compressible), "{compressible}");
        }
        for not in [
            "image/png",
            "application/zip",
            "application/octet-stream",
            "text/event-stream",
            "video/mp4",
        ] {
            assert!(!is_compressible_type(not), "{not}");
        }
    }
}
