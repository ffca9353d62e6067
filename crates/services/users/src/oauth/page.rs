//! The sign-in page of `/oauth/authorize`: plain HTML, no script, no external asset.

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#x27;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;\
padding:0 1rem;color:#222}h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}\
input{width:100%;padding:.5rem;box-sizing:border-box}button{margin-top:1.2rem;padding:.6rem \
1.2rem}.error{color:#a00}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        title = escape(title),
    )
}

/// The sign-in form; it posts back to `/oauth/authorize` with the same query.
pub fn sign_in(client_name: &str, query: &str, error: Option<&str>, providers: &[&str]) -> String {
    let error = error
        .map(|error| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(error)))
        .unwrap_or_default();
    // Each provider continues this authorization request after signing in there.
    let providers: String = providers
        .iter()
        .map(|name| {
            format!(
                "<p><a href=\"/api/v1/auth/providers/{name}?{query}\">Sign in with {name}</a></p>",
                name = escape(name),
                query = escape(query),
            )
        })
        .collect();
    document(
        "Sign in",
        &format!(
            "<h1>Sign in to continue to {client}</h1>{error}\
             <form method=\"post\" action=\"/oauth/authorize?{query}\">\
             <label for=\"email\">E-mail</label>\
             <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required>\
             <label for=\"password\">Password</label>\
             <input id=\"password\" name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>{providers}",
            client = escape(client_name),
            query = escape(query),
        ),
    )
}

/// An error that cannot be sent back to the client (unknown client or redirect URI).
pub fn refusal(message: &str) -> String {
    document(
        "Sign-in request refused",
        &format!(
            "<h1>This sign-in request cannot be handled</h1><p class=\"error\">{}</p>",
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_and_queries_is_escaped() {
        let page = sign_in("<script>x</script>", "a=\"><b>", Some("<i>"), &["corp"]);
        assert!(page.contains("href=\"/api/v1/auth/providers/corp?a=&quot;&gt;&lt;b&gt;\""));
        assert!(!page.contains("<script>x"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("a=&quot;&gt;&lt;b&gt;"));
        assert!(page.contains("&lt;i&gt;"));
    }
}
