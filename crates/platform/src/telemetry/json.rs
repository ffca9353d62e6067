//! The flat JSON line format of SPEC §6.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one flat JSON object: `timestamp` (RFC 3339 UTC, milliseconds),
/// `level` (upper case), `service`, `message`, the `request_id` and `trace_id` of the request
/// being handled on this task, then the fields of the enclosing spans and of the event itself,
/// without nesting.
#[derive(Debug, Clone)]
pub struct FlatJson {
    default_service: &'static str,
}

impl FlatJson {
    /// Creates the formatter; `default_service` is used when nothing says which service logged.
    pub fn new(default_service: &'static str) -> Self {
        FlatJson { default_service }
    }

    fn service_of_target(&self, target: &str) -> &'static str {
        let crate_name = target.split("::").next().unwrap_or(target);
        match crate_name {
            "logicore_gateway" => "gateway",
            "logicore_catalog" => "catalog",
            "logicore_users" => "users",
            "logicore_orders" => "orders",
            "logicore_webhooks" => "webhooks",
            _ => self.default_service,
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp_now()));
        line.insert("level".into(), Value::String(metadata.level().to_string()));

        let mut span_fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                    span_fields.extend(map);
                }
            }
        }
        let mut event_fields = FieldCollector::default();
        event.record(&mut event_fields);

        let service = event_fields
            .fields
            .remove("service")
            .or_else(|| span_fields.remove("service"))
            .unwrap_or_else(|| Value::String(self.service_of_target(metadata.target()).into()));
        line.insert("service".into(), service);
        let message = event_fields
            .fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);
        // The request being handled on this task (see `request_context`) names itself.
        crate::http::request_context::with_current(|request| {
            line.insert("request_id".into(), request.request_id.as_str().into());
            line.insert("trace_id".into(), request.trace_id().into());
        });
        for (key, value) in span_fields.into_iter().chain(event_fields.fields) {
            line.entry(key).or_insert(value);
        }
        line.insert("target".into(), Value::String(metadata.target().into()));

        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The current UTC time as RFC 3339 with milliseconds (`2026-01-01T00:00:00.000Z`).
pub(crate) fn timestamp_now() -> String {
    use chrono::{Datelike, Timelike};
    let now = chrono::Utc::now();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        // chrono folds a leap second into the nanoseconds; keep the milliseconds in range.
        now.nanosecond() / 1_000_000 % 1000,
    )
}

/// The line the log writer adds when it had to drop lines.
pub(crate) fn dropped_lines_notice(dropped: u64) -> String {
    let line = serde_json::json!({
        "timestamp": timestamp_now(),
        "level": "WARN",
        "service": "logicore",
        "message": "log lines dropped: the log sinks could not keep up",
        "dropped": dropped,
        "target": "logicore_platform::telemetry",
    });
    format!("{line}\n")
}

#[derive(Default)]
struct FieldCollector {
    fields: Map<String, Value>,
}

impl Visit for FieldCollector {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let number = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.fields.insert(field.name().into(), number);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(emit: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson::new("logicore"))
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn lines_are_flat_with_span_fields_and_millisecond_utc_timestamps() {
        let lines = capture(|| {
            let span = tracing::info_span!("request", request_id = "r-1", trace_id = "t-1");
            let _entered = span.enter();
            tracing::info!(
                service = "gateway",
                status = 200u64,
                duration_ms = 1.5,
                "request"
            );
        });
        let line = lines[0].as_object().unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], "gateway");
        assert_eq!(line["message"], "request");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["trace_id"], "t-1");
        assert_eq!(line["status"], 200);
        assert!(
            line.values().all(|value| !value.is_object()),
            "nested: {line:?}"
        );
        let timestamp = line["timestamp"].as_str().unwrap();
        assert_eq!(
            timestamp.len(),
            "2026-01-01T00:00:00.000Z".len(),
            "{timestamp}"
        );
        assert!(timestamp.ends_with('Z'));
    }

    #[test]
    fn lines_logged_while_handling_a_request_carry_its_ids() {
        use crate::http::request_context::{AccessLog, in_request_context};
        let lines = capture(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let request = http::Request::builder()
                    .uri("/api/v1/products")
                    .header("x-request-id", "req-7")
                    .body(axum::body::Body::empty())
                    .unwrap();
                let access_log = AccessLog {
                    service: "gateway",
                    enabled: true,
                };
                in_request_context(access_log, request, |_| async {
                    tracing::warn!("inside");
                    tracing::warn!("again");
                    axum::response::Response::new(axum::body::Body::empty())
                })
                .await;
            });
            tracing::warn!("after");
        });
        let messages: Vec<&str> = lines
            .iter()
            .map(|line| line["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            messages,
            ["request started", "inside", "again", "request", "after"]
        );
        let trace_id = lines[0]["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32, "{trace_id}");
        for line in &lines[..4] {
            assert_eq!(line["request_id"], "req-7");
            assert_eq!(line["trace_id"], trace_id, "one trace id per request");
        }
        assert!(lines[4].get("request_id").is_none(), "{:?}", lines[4]);
        assert_eq!(lines[3]["path"], "/api/v1/products");
    }

    #[test]
    fn service_defaults_to_the_crate_that_logged() {
        let lines = capture(|| tracing::warn!(target: "logicore_catalog::store", "slow"));
        assert_eq!(lines[0]["service"], "catalog");
        assert_eq!(lines[0]["level"], "WARN");
        let lines = capture(|| tracing::info!(target: "sqlx::query", "x"));
        assert_eq!(lines[0]["service"], "logicore");
    }
}
