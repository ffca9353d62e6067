//! What a proxy must do to headers on the way through (RFC 9110 §7.6.1, RFC 7239).
//!
//! Hop-by-hop headers (and those named in `Connection`) are removed in both directions.
//! `X-Forwarded-For/Proto/Host` and `Forwarded` describe the client; values a client sent are
//! kept only when the connection comes from a trusted proxy (`gateway.trusted_proxies`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one connection, never to be forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
    .contains(&name)
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names; most messages have none to remove.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop_by_hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop_by_hop {
        headers.remove(name);
    }
}

/// CIDR blocks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    blocks: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses `gateway.trusted_proxies` (already validated: addresses or CIDR blocks).
    pub fn parse(entries: &[String]) -> Self {
        let blocks = entries
            .iter()
            .filter_map(|entry| {
                let (address, bits) = entry.split_once('/').unwrap_or((entry, ""));
                let ip: IpAddr = address.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = if bits.is_empty() {
                    max
                } else {
                    bits.parse().ok()?
                };
                Some((ip, bits))
            })
            .collect();
        TrustedProxies { blocks }
    }

    /// Returns true when `ip` is inside one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.blocks
            .iter()
            .any(|(network, bits)| in_block(ip, canonical(*network), *bits))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest address
/// in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return canonical(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(*ip))
        .map_or(canonical(peer), canonical)
}

/// Rewrites the forwarding headers of a request arriving from `peer`.
pub fn set_forwarding_headers(headers: &mut HeaderMap, peer: IpAddr, trusted: &TrustedProxies) {
    let believe_client = trusted.contains(peer);
    let peer = canonical(peer);
    let believed = |headers: &HeaderMap, name: &HeaderName| {
        believe_client
            .then(|| headers.get(name).and_then(|value| value.to_str().ok()))
            .flatten()
            .map(str::to_owned)
    };
    let host = headers.get(header::HOST).cloned();
    let forwarded_for = match believed(headers, &X_FORWARDED_FOR) {
        Some(existing) => format!("{existing}, {peer}"),
        None => peer.to_string(),
    };
    let proto = believed(headers, &X_FORWARDED_PROTO);
    let forwarded_host = match believed(headers, &X_FORWARDED_HOST) {
        Some(existing) => HeaderValue::try_from(existing).ok(),
        None => host,
    };
    let node = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let element = format!(
        "for={node};host=\"{}\";proto={}",
        forwarded_host
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .unwrap_or(""),
        proto.as_deref().unwrap_or("http"),
    );
    let forwarded = match believed(headers, &FORWARDED) {
        Some(existing) => format!("{existing}, {element}"),
        None => element,
    };

    let proto = match proto {
        Some(proto) => HeaderValue::try_from(proto).ok(),
        None => Some(HeaderValue::from_static("http")),
    };
    for (name, value) in [
        (&X_FORWARDED_FOR, HeaderValue::try_from(forwarded_for).ok()),
        (&X_FORWARDED_PROTO, proto),
        (&X_FORWARDED_HOST, forwarded_host),
        (&FORWARDED, HeaderValue::try_from(forwarded).ok()),
    ] {
        match value {
            Some(value) => {
                headers.insert(name.clone(), value);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-private-hop"),
            ("x-private-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<&str> = map.keys().map(|name| name.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn client_forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
        let untrusted = TrustedProxies::parse(&[]);
        let mut map = headers(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarding_headers(&mut map, "10.1.2.3".parse().unwrap(), &untrusted);
        assert_eq!(map["x-forwarded-for"], "10.1.2.3");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "shop.example");
        assert_eq!(
            map["forwarded"],
            "for=10.1.2.3;host=\"shop.example\";proto=http"
        );

        let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_owned()]);
        let mut map = headers(&[
            ("host", "gw"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarding_headers(&mut map, "10.1.2.3".parse().unwrap(), &trusted);
        assert_eq!(map["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(map["x-forwarded-proto"], "https");
    }

    #[test]
    fn cidr_blocks_match_v4_v6_and_mapped_addresses() {
        let trusted =
            TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into(), "fd00::/8".into()]);
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
        assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["0.0.0.0/0".into()]).contains("8.8.8.8".parse().unwrap()));
    }
}
