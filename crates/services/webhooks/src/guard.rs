//! The SSRF guard: webhook targets must be public addresses.
//!
//! A target's host is resolved once, every address is checked, and the connection goes to a
//! checked address: the guard is the HTTP client's DNS resolver ([`GuardedResolver`]), so
//! there is no second lookup a rebinding DNS server could answer differently. IP literals
//! (which clients do not resolve) are checked by [`TargetGuard::check_url`] before a request
//! is made. Refused: loopback, private (RFC 1918), CGNAT (100.64/10), link-local (including
//! the cloud metadata address 169.254.169.254), unique-local (fc00::/7), multicast,
//! documentation, benchmarking and reserved ranges, and IPv4 hidden in IPv6 (mapped,
//! compatible, NAT64) is judged as the IPv4 it carries — unless
//! `webhooks.allow_private_targets = true`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Names the non-public range `ip` is in, or `None` for a public address.
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => v4_range(ip),
        IpAddr::V6(ip) => v6_range(ip),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let range = match (a, b, c) {
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (127, _, _) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    };
    Some(range)
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return v4_range(v4);
    }
    let segments = ip.segments();
    let range = if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback (::1)"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        "unique-local (fc00::/7)"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if segments[0] & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10)"
    } else if segments[0] & 0xff00 == 0xff00 {
        "multicast (ff00::/8)"
    } else if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1 {
        "local-use NAT64 (64:ff9b:1::/48)"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else if segments[0] == 0x0100 && segments[1..4] == [0, 0, 0] {
        "discard-only (100::/64)"
    } else if segments[0] == 0x2001 && segments[1] < 0x0200 {
        "IETF protocol assignments (2001::/23)"
    } else {
        return None;
    };
    Some(range)
}

/// The IPv4 address carried by an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let tail = || {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    };
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail()),
        // SIIT (`::ffff:0:a.b.c.d`).
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail()),
        // `::a.b.c.d` but not `::` and `::1`, which are their own kind.
        [0, 0, 0, 0, 0, 0, high, _] if high != 0 => Some(tail()),
        // NAT64, well-known prefix (`64:ff9b::/96`).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        // 6to4 (`2002:aabb:ccdd::/48` carries a.b.c.d in its second and third groups).
        [0x2002, high, low, ..] => {
            let [a, b] = high.to_be_bytes();
            let [c, d] = low.to_be_bytes();
            Some(Ipv4Addr::new(a, b, c, d))
        }
        _ => None,
    }
}

/// Checks webhook targets.
#[derive(Debug, Clone, Copy)]
pub struct TargetGuard {
    /// `webhooks.allow_private_targets`.
    pub allow_private: bool,
}

impl TargetGuard {
    /// Checks one address.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match non_public_range(ip) {
            Some(range) if !self.allow_private => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let target = if host == ip.to_string() {
                    format!("the target {ip} is")
                } else {
                    format!("the target {host} resolves to {ip},")
                };
                Err(Refused(format!(
                    "{target} a {range} address: webhooks go to public addresses only \
                     (webhooks.allow_private_targets)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Checks a URL's form (http or https, a host, no credentials) and, when its host is an
    /// IP literal, the address.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused("the URL must be http or https".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused("the URL must not carry credentials".into()));
        }
        let Some(host) = url.host_str().filter(|host| !host.is_empty()) else {
            return Err(Refused("the URL has no host".into()));
        };
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check_ip(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// Resolves `host` once and returns its addresses when every one is allowed (a name
    /// with one private address among public ones is refused: a rebinding DNS server
    /// could hand out either).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        // An IP literal needs no lookup (and is checked like any other address).
        let trimmed = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            self.check_ip(host, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| Refused(format!("the target {host} does not resolve: {err}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused(format!("the target {host} has no address")));
        }
        for addr in &addrs {
            self.check_ip(host, addr.ip())?;
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: every name is resolved and checked by the guard, and the
/// connection uses the checked addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: TargetGuard,
}

impl GuardedResolver {
    /// A resolver applying `guard`.
    pub fn new(guard: TargetGuard) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { guard })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard;
        Box::pin(async move {
            // The port is filled in by the connector.
            let addrs = guard.resolve(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds the guard's refusal in an HTTP client error, if that is what it was.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetGuard = TargetGuard {
        allow_private: false,
    };

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn private_literals_are_refused() {
        for target in [
            "http://127.0.0.1/hook",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://100.64.0.1/",
            "http://172.16.5.4/",
            "http://192.168.1.1/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::a00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[::ffff:0:a00:1]/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
        ] {
            assert!(
                STRICT.check_url(&url(target)).is_err(),
                "{target} was allowed"
            );
        }
    }

    #[test]
    fn public_literals_and_names_pass_the_form_check() {
        for target in [
            "https://93.184.216.34/hook",
            "http://[2606:4700::1111]/",
            "https://hooks.example.com/x",
            "http://8.8.8.8:8080/",
        ] {
            assert!(STRICT.check_url(&url(target)).is_ok(), "{target} refused");
        }
        assert!(STRICT.check_url(&url("ftp://hooks.example.com/")).is_err());
        assert!(
            STRICT
                .check_url(&url("https://user:pw@hooks.example.com/"))
                .is_err()
        );
    }

    #[test]
    fn allowing_private_targets_allows_them() {
        let open = TargetGuard {
            allow_private: true,
        };
        assert!(open.check_url(&url("http://127.0.0.1:9/")).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_resolution() {
        let refused = STRICT.resolve("localhost", 80).await.unwrap_err();
        assert!(refused.0.contains("loopback"), "{refused}");
        for literal in [
            "127.0.0.1",
            "[::1]",
            "10.0.0.1",
            "169.254.169.254",
            "fd00::1",
        ] {
            assert!(STRICT.resolve(literal, 80).await.is_err(), "{literal}");
        }
        let open = TargetGuard {
            allow_private: true,
        };
        assert!(!open.resolve("localhost", 80).await.unwrap().is_empty());
    }
}
