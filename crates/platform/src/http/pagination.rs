//! Cursor pagination: `?limit=` (default 50, clamped to 200) and an opaque `?cursor=`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::problem::{FieldError, Problem};

/// Items per page when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page; larger `limit` values are clamped to it.
pub const MAX_LIMIT: u32 = 200;

/// A page request parsed from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items wanted, 1..=200.
    pub limit: u32,
    /// Position after which the page starts (decoded cursor bytes).
    pub after: Option<Vec<u8>>,
}

impl PageRequest {
    /// Parses `limit` and `cursor` from query parameters.
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, Problem> {
        let limit = match query.get("limit").map(|text| text.trim()) {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => match text.parse::<u64>() {
                Ok(0) | Err(_) => {
                    return Err(Problem::validation(vec![FieldError::new(
                        "query:limit",
                        "must be a positive integer",
                    )]));
                }
                Ok(value) => value.min(u64::from(MAX_LIMIT)) as u32,
            },
        };
        let after = match query.get("cursor").filter(|text| !text.is_empty()) {
            None => None,
            Some(text) => Some(URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid_cursor())?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// The error for a cursor this server did not hand out.
pub fn invalid_cursor() -> Problem {
    Problem::validation(vec![FieldError::new(
        "query:cursor",
        "is not a valid cursor",
    )])
}

/// Encodes a position as an opaque cursor.
pub fn encode_cursor(position: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

/// One page of a list: `{"items":[...],"next_cursor":"..."|null}`.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Cursor of the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items: the extra one only says there is more.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, position: impl Fn(&T) -> Vec<u8>) -> Self {
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = match items.last() {
            Some(last) if has_more => Some(encode_cursor(&position(last))),
            _ => None,
        };
        Page { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_default_clamp_and_refuse_nonsense() {
        assert_eq!(PageRequest::from_query(&query(&[])).unwrap().limit, 50);
        assert_eq!(
            PageRequest::from_query(&query(&[("limit", "500")]))
                .unwrap()
                .limit,
            200
        );
        assert_eq!(
            PageRequest::from_query(&query(&[("limit", "7")]))
                .unwrap()
                .limit,
            7
        );
        for bad in ["0", "-1", "ten"] {
            let problem = PageRequest::from_query(&query(&[("limit", bad)])).unwrap_err();
            assert_eq!(problem.errors[0].field, "query:limit");
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor(b"position");
        let request = PageRequest::from_query(&query(&[("cursor", &cursor)])).unwrap();
        assert_eq!(request.after.as_deref(), Some(&b"position"[..]));
        let problem = PageRequest::from_query(&query(&[("cursor", "!!")])).unwrap_err();
        assert_eq!(problem.errors[0].field, "query:cursor");
    }

    #[test]
    fn overfetched_pages_carry_a_cursor_only_when_more_exist() {
        let page = Page::from_overfetch(vec![1u8, 2, 3], 2, |n| vec![*n]);
        assert_eq!(page.items, [1, 2]);
        assert_eq!(page.next_cursor, Some(encode_cursor(&[2])));
        let last = Page::from_overfetch(vec![1u8, 2], 2, |n| vec![*n]);
        assert_eq!(last.next_cursor, None);
    }
}
