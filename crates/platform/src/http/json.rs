//! The JSON body extractor: every rejection is a problem+json that names the field.

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::problem::{ErrorCode, FieldError, Problem};

/// A JSON request body or response.
///
/// As an extractor it answers 415 for a non-JSON content type, 413 over the body limit,
/// 400 `malformed-body` for broken JSON, and 400 `validation` with the field's JSON Pointer
/// for a wrong type, a missing field or an unknown field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(request, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Reads a body that must be JSON (`application/json`, `application/*+json`).
pub async fn json_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Problem> {
    if !has_json_content_type(request.headers()) {
        return Err(Problem::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                Problem::new(ErrorCode::MalformedBody, rejection.body_text())
            }
        })
}

fn has_json_content_type(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON into `T`, turning serde's errors into problem+json with JSON Pointers.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let inner = err.inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return malformed(inner);
        }
        let pointer = json_pointer(err.path());
        Problem::validation(vec![field_error_from_serde(pointer, &inner.to_string())])
    })?;
    deserializer.end().map_err(|err| malformed(&err))?;
    Ok(value)
}

fn malformed(err: &serde_json::Error) -> Problem {
    Problem::new(
        ErrorCode::MalformedBody,
        format!("the body is not valid JSON: {err}"),
    )
}

/// Fields a client may send back but never sets: they are ignored in request bodies.
pub const READ_ONLY_FIELDS: [&str; 3] = ["id", "created_at", "updated_at"];

/// Parses a JSON object body into `T` after dropping the read-only fields.
pub fn parse_object<T: DeserializeOwned>(mut value: serde_json::Value) -> Result<T, Problem> {
    let Some(object) = value.as_object_mut() else {
        return Err(Problem::validation(vec![FieldError::new(
            "",
            "must be a JSON object",
        )]));
    };
    for field in READ_ONLY_FIELDS {
        object.remove(field);
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let pointer = json_pointer(err.path());
        Problem::validation(vec![field_error_from_serde(
            pointer,
            &err.inner().to_string(),
        )])
    })
}

/// Returns `current` with an RFC 7396 merge patch applied, parsed back into its type
/// (so a patch that removes a required field or adds an unknown one is a validation error).
pub fn merge_into<T>(current: &T, patch: &serde_json::Value) -> Result<T, Problem>
where
    T: Serialize + DeserializeOwned,
{
    let mut merged = serde_json::to_value(current).map_err(|err| Problem::internal(&err))?;
    merge_patch(&mut merged, patch);
    parse_object(merged)
}

/// Applies an RFC 7396 JSON merge patch to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(target_fields) = target {
        for (key, value) in patch_fields {
            if value.is_null() {
                target_fields.remove(key);
            } else {
                merge_patch(
                    target_fields
                        .entry(key.clone())
                        .or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
    }
}

/// Converts a serde path (`items[0].quantity`) to a JSON Pointer (`/items/0/quantity`).
pub fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// Turns a serde message into a field error a client can read.
fn field_error_from_serde(pointer: String, message: &str) -> FieldError {
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some(field) = backticked(message, "missing field ") {
        return FieldError::new(format!("{pointer}/{field}"), "is required");
    }
    if message.starts_with("unknown field") {
        return FieldError::new(pointer, "is not a known field");
    }
    let friendly = if message.contains("invalid type: null") {
        "must not be null".to_owned()
    } else if message.contains("expected i64") || message.contains("expected u") {
        "must be an integer".to_owned()
    } else if message.contains("UUID") {
        "must be a UUID".to_owned()
    } else {
        message.to_owned()
    };
    FieldError::new(pointer, friendly)
}

fn backticked<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let rest = text.split_once(marker)?.1.strip_prefix('`')?;
    Some(rest.split_once('`')?.0)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => {
                let mut response = body.into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(err) => Problem::internal(&err).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only parsed")]
    struct Order {
        items: Vec<Item>,
        note: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only parsed")]
    struct Item {
        quantity: i64,
    }

    fn field_of(body: &str) -> (ErrorCode, Vec<FieldError>) {
        let problem = parse_json::<Order>(body.as_bytes()).unwrap_err();
        (problem.code, problem.errors)
    }

    #[test]
    fn wrong_types_name_the_json_pointer() {
        let (code, errors) = field_of(r#"{"items":[{"quantity":1},{"quantity":"x"}]}"#);
        assert_eq!(code, ErrorCode::Validation);
        assert_eq!(errors[0].field, "/items/1/quantity");
        assert_eq!(errors[0].message, "must be an integer");
    }

    #[test]
    fn missing_fields_are_named() {
        let (_, errors) = field_of(r#"{"items":[{}]}"#);
        assert_eq!(errors[0].field, "/items/0/quantity");
        assert_eq!(errors[0].message, "is required");
    }

    #[test]
    fn unknown_fields_are_named() {
        let (_, errors) = field_of(r#"{"items":[],"colour":"red"}"#);
        assert_eq!(errors[0].field, "/colour");
    }

    #[test]
    fn merge_patches_follow_rfc_7396() {
        let mut target = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(
            &mut target,
            &serde_json::json!({"a": "z", "c": {"f": null}}),
        );
        assert_eq!(target, serde_json::json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut target, &serde_json::json!(["x"]));
        assert_eq!(target, serde_json::json!(["x"]));
    }

    #[test]
    fn read_only_fields_are_ignored_and_others_checked() {
        let value = serde_json::json!({"id": "x", "created_at": 1, "items": [], "note": null});
        assert!(parse_object::<Order>(value).is_ok());
        let problem =
            parse_object::<Order>(serde_json::json!({"items": [], "bogus": 1})).unwrap_err();
        assert_eq!(problem.errors[0].field, "/bogus");
        let problem = parse_object::<Order>(serde_json::json!([1])).unwrap_err();
        assert_eq!(problem.errors[0].message, "must be a JSON object");
    }

    #[test]
    fn broken_json_is_malformed() {
        let (code, _) = field_of(r#"{"items": ["#);
        assert_eq!(code, ErrorCode::MalformedBody);
        let (code, _) = field_of(r#"{"items": []} trailing"#);
        assert_eq!(code, ErrorCode::MalformedBody);
    }
}
