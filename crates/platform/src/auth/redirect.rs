//! Which redirect URIs an OAuth client may register (OAuth 2.1 §2.3, RFC 8252).

/// Returns the reason a redirect URI cannot be registered: absolute, no fragment, `https`
/// (`http` only on a loopback host) or a private-use scheme of a native app (RFC 8252).
pub fn redirect_uri_problem(uri: &str) -> Option<&'static str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Some("must be an absolute URI");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    if !scheme_ok {
        return Some("must be an absolute URI");
    }
    if uri.contains('#') {
        return Some("must not contain a fragment");
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) || uri.len() > 2000 {
        return Some("must be an absolute URI");
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest
        .strip_prefix("//")
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""));
    match (scheme.as_str(), authority) {
        ("https", Some(authority)) if !authority.is_empty() => None,
        ("http", Some(authority)) => {
            let host = authority
                .rsplit_once(':')
                .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
                .map_or(authority, |(host, _)| host);
            matches!(host, "localhost" | "127.0.0.1" | "[::1]")
                .then_some(())
                .map_or(
                    Some("http is allowed only for loopback hosts; use https"),
                    |()| None,
                )
        }
        ("https" | "http", _) => Some("must be an absolute URI"),
        (scheme, _) if scheme.contains('.') => None,
        _ => Some("must use https, http on a loopback host, or a reverse-domain private scheme"),
    }
}

/// Whether `given` is the registered redirect URI: the same string, or — for a loopback IP
/// literal over `http`, where native apps listen on a port of the moment (RFC 8252 §7.3) —
/// the same URI on any port.
pub fn redirect_uri_matches(registered: &str, given: &str) -> bool {
    fn loopback_without_port(uri: &str) -> Option<(&str, &str)> {
        let rest = uri.strip_prefix("http://")?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => authority,
        };
        matches!(host, "127.0.0.1" | "[::1]").then_some((host, path))
    }
    registered == given
        || matches!(
            (loopback_without_port(registered), loopback_without_port(given)),
            (Some(registered), Some(given)) if registered == given
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_must_be_exact_and_safe() {
        assert_eq!(redirect_uri_problem("https://app.example.com/cb"), None);
        assert_eq!(redirect_uri_problem("http://127.0.0.1:5000/cb"), None);
        assert_eq!(redirect_uri_problem("http://localhost/cb"), None);
        assert_eq!(redirect_uri_problem("http://[::1]:8080/cb"), None);
        assert_eq!(redirect_uri_problem("com.example.app:/callback"), None);
        assert!(redirect_uri_problem("http://app.example.com/cb").is_some());
        assert!(redirect_uri_problem("https://app.example.com/cb#frag").is_some());
        assert!(redirect_uri_problem("/relative").is_some());
        assert!(redirect_uri_problem("javascript:alert(1)").is_some());
        assert!(redirect_uri_problem("https:///nohost").is_some());
        assert!(redirect_uri_problem("//evil.example/x.y:cb").is_some());
    }

    #[test]
    fn loopback_redirects_match_on_any_port() {
        assert!(redirect_uri_matches("https://a/cb", "https://a/cb"));
        assert!(!redirect_uri_matches("https://a/cb", "https://a/cb/"));
        assert!(!redirect_uri_matches("https://a:1/cb", "https://a:2/cb"));
        assert!(redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53124/cb"
        ));
        assert!(redirect_uri_matches(
            "http://[::1]:80/cb",
            "http://[::1]:9/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/cb",
            "http://localhost:5/cb"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.2/cb"
        ));
    }
}
