//! The webhooks service in process on every database of the run, delivering to real HTTP
//! receivers: the endpoints API, fan-out to the right endpoints, Standard Webhooks
//! signatures checked with the reference crate, retries on the schedule with one
//! `webhook-id`, `Retry-After`, 410 disabling an endpoint, manual retry, secret rotation, and
//! the SSRF guard refusing a name that resolves to loopback at delivery time.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use logicore_platform::auth::Principal;
use logicore_platform::bus::embedded::BusSettings;
use logicore_platform::bus::{self, Bus, Consumer, NewEvent};
use logicore_platform::crypto::KeyRing;
use logicore_platform::db::{Db, apply_migrations};
use logicore_platform::jobs::worker::{Worker, WorkerSettings};
use logicore_platform::jobs::{self, Jobs};
use logicore_platform::testing::TestDb;
use logicore_webhooks::guard::TargetGuard;
use logicore_webhooks::store::WebhookStore;
use logicore_webhooks::{FanOut, MIGRATIONS, WebhookSettings, WebhooksService, router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

/// One answer of a receiver.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    location: Option<String>,
    delay: Duration,
}

const OK: Answer = Answer {
    status: 200,
    retry_after: None,
    location: None,
    delay: Duration::ZERO,
};

fn answer(status: u16) -> Answer {
    Answer { status, ..OK }
}

/// What a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// A real HTTP receiver answering from a plan (then 200).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _plan: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start(plan: &[Answer]) -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let plan = Arc::new(Mutex::new(plan.iter().cloned().collect::<VecDeque<_>>()));
        let (log, answers) = (Arc::clone(&received), Arc::clone(&plan));
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (log, answers) = (Arc::clone(&log), Arc::clone(&answers));
            async move {
                log.lock().unwrap().push(Received {
                    headers,
                    body,
                    at: Instant::now(),
                });
                let next = answers.lock().unwrap().pop_front().unwrap_or(OK);
                tokio::time::sleep(next.delay).await;
                let mut response =
                    axum::response::Response::new(Body::from(format!("answer {}", next.status)));
                *response.status_mut() = StatusCode::from_u16(next.status).unwrap();
                if let Some(value) = next.retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, value.parse().unwrap());
                }
                if let Some(value) = &next.location {
                    response
                        .headers_mut()
                        .insert(header::LOCATION, value.parse().unwrap());
                }
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            addr,
            received,
            _plan: plan,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn settings(schedule_ms: &[u64], allow_private: bool) -> WebhookSettings {
    WebhookSettings {
        guard: TargetGuard { allow_private },
        timeout: Duration::from_millis(700),
        retry_schedule: schedule_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    }
}

fn principal(subject: &str, role: &str) -> Arc<Principal> {
    Arc::new(Principal {
        subject: subject.to_owned(),
        roles: vec![role.to_owned()],
        issuer: "test".to_owned(),
    })
}

/// The service with its worker, relay and fan-out consumer running.
struct Harness {
    router: Router,
    db: Db,
    ring: Arc<KeyRing>,
    bus: Bus,
    shutdown: CancellationToken,
    label: &'static str,
    _db: TestDb,
}

impl Harness {
    async fn all(settings: WebhookSettings) -> Vec<Harness> {
        let mut all = Vec::new();
        for test_db in TestDb::all().await {
            all.push(Harness::start(test_db, settings.clone()).await);
        }
        all
    }

    async fn start(test_db: TestDb, settings: WebhookSettings) -> Harness {
        let db = test_db.db.clone();
        let migrations = [jobs::MIGRATIONS, bus::MIGRATIONS, MIGRATIONS].concat();
        apply_migrations(&db, &migrations).await.unwrap();
        let ring = Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "test").unwrap());
        let jobs = Jobs::new(db.clone());
        let service = WebhooksService::new(
            WebhookStore::new(db.clone()),
            jobs.clone(),
            Arc::clone(&ring),
            settings,
        );
        let mut worker = Worker::new(
            jobs,
            WorkerSettings {
                concurrency: 8,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_millis(50),
                shutdown_grace: Duration::from_secs(1),
            },
        );
        logicore_webhooks::register_jobs(&mut worker, &service);
        let bus = Bus::new(db.clone());
        let shutdown = CancellationToken::new();
        let bus_settings = BusSettings {
            poll_interval: Duration::from_millis(50),
            batch: 64,
            ..BusSettings::default()
        };
        tokio::spawn(worker.run(shutdown.clone()));
        tokio::spawn(bus.clone().run_relay(bus_settings, shutdown.clone()));
        tokio::spawn(bus.clone().run_consumer(
            Arc::new(FanOut::new(service.clone())) as Arc<dyn Consumer>,
            bus_settings,
            shutdown.clone(),
        ));
        let (router, _) = router(service.clone());
        Harness {
            router,
            db,
            ring,
            bus,
            shutdown,
            label: test_db.label(),
            _db: test_db,
        }
    }

    /// Another service on the same database and keys, with other settings.
    fn service_with(&self, settings: WebhookSettings) -> WebhooksService {
        self.service_with_keys(Arc::clone(&self.ring), settings)
    }

    /// Another service on the same database with other encryption keys.
    fn service_with_keys(&self, ring: Arc<KeyRing>, settings: WebhookSettings) -> WebhooksService {
        WebhooksService::new(
            WebhookStore::new(self.db.clone()),
            Jobs::new(self.db.clone()),
            ring,
            settings,
        )
    }

    async fn call(
        &self,
        who: &Arc<Principal>,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request.extensions_mut().insert(Arc::clone(who));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates an endpoint; returns its id and secret.
    async fn endpoint(&self, who: &Arc<Principal>, url: &str, types: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                who,
                Method::POST,
                "/api/v1/webhooks/endpoints",
                Some(json!({"url": url, "event_types": types})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{}: {body}", self.label);
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    async fn publish(&self, event_type: &str, data: Value) -> Uuid {
        let mut tx = self.db.begin().await.unwrap();
        let id = self
            .bus
            .publish(&mut tx, NewEvent::new("orders", event_type, None, data))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        self.bus.wake();
        id
    }

    async fn deliveries(&self, who: &Arc<Principal>, endpoint: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                who,
                Method::GET,
                &format!("/api/v1/webhooks/endpoints/{endpoint}/deliveries"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }
}

impl Harness {
    /// Waits until the newest delivery of `endpoint` is in `status`; returns it.
    async fn delivery_in_state(&self, who: &Arc<Principal>, endpoint: &str, status: &str) -> Value {
        eventually(&format!("a {status} delivery"), async || {
            let deliveries = self.deliveries(who, endpoint).await;
            deliveries
                .first()
                .filter(|delivery| delivery["status"] == status)
                .cloned()
        })
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fields named by a validation problem.
fn fields_of(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["field"].as_str().unwrap())
        .collect()
}

/// Checks a received message with the reference implementation of Standard Webhooks.
fn verify(secret: &str, received: &Received) -> Result<(), String> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&received.body, &received.headers)
        .map_err(|err| err.to_string())
}

fn header_of(received: &Received, name: &str) -> String {
    received.headers[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn endpoints_are_checked_owned_and_show_their_secret_once() {
    let ada = principal("ada", "customer");
    let bob = principal("bob", "customer");
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let (id, secret) = app
            .endpoint(&ada, "https://hooks.example.com/ada", &["order.*"])
            .await;
        assert!(secret.starts_with("whsec_"), "{label}");

        let (status, problem) = app
            .call(
                &ada,
                Method::POST,
                "/api/v1/webhooks/endpoints",
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{label}");
        let fields = fields_of(&problem);
        assert_eq!(fields, ["/url", "/event_types"], "{label}: {problem}");
        let (status, problem) = app
            .call(
                &ada,
                Method::POST,
                "/api/v1/webhooks/endpoints",
                Some(json!({"url": "ftp://hooks.example.com", "event_types": ["order.created", "Bad Type"]})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{label}");
        let fields = fields_of(&problem);
        assert_eq!(fields, ["/url", "/event_types/1"], "{label}: {problem}");
        let (status, problem) = app
            .call(
                &ada,
                Method::POST,
                "/api/v1/webhooks/endpoints",
                Some(
                    json!({"url": "https://x.example.com", "event_types": ["#"], "colour": "red"}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{label}");
        assert!(problem.to_string().contains("colour"), "{label}: {problem}");

        let (status, listed) = app
            .call(&ada, Method::GET, "/api/v1/webhooks/endpoints", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{label}");
        assert_eq!(listed["items"][0]["id"], id.as_str());
        assert!(
            listed["items"][0].get("secret").is_none(),
            "{label}: the secret is shown on create and rotate only"
        );
        let path = format!("/api/v1/webhooks/endpoints/{id}");
        let (status, _) = app.call(&bob, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label}: another's endpoint");
        let (status, seen) = app.call(&admin, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{label}");
        assert_eq!(seen["disabled"], false);

        let (status, rotated) = app
            .call(&ada, Method::POST, &format!("{path}/rotate-secret"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{label}");
        let new_secret = rotated["secret"].as_str().unwrap();
        assert!(new_secret.starts_with("whsec_") && new_secret != secret);

        let (status, _) = app.call(&bob, Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label}");
        let (status, _) = app.call(&ada, Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{label}");
        let (status, _) = app.call(&ada, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label}");
    }
}

#[tokio::test]
async fn private_targets_are_refused_when_created() {
    let test_db = TestDb::sqlite().await;
    let app = Harness::start(test_db, settings(&[0], false)).await;
    let ada = principal("ada", "customer");
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://localhost/",
    ] {
        let (status, problem) = app
            .call(
                &ada,
                Method::POST,
                "/api/v1/webhooks/endpoints",
                Some(json!({"url": url, "event_types": ["#"]})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url} was accepted");
        assert_eq!(problem["errors"][0]["field"], "/url", "{problem}");
    }
}

#[tokio::test]
async fn events_reach_the_endpoints_that_asked_signed_per_standard_webhooks() {
    let ada = principal("ada", "customer");
    let bob = principal("bob", "customer");
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let orders_desk = Receiver::start(&[]).await;
        let ada_hook = Receiver::start(&[]).await;
        let bob_hook = Receiver::start(&[]).await;
        let catalog_desk = Receiver::start(&[]).await;
        let (desk_id, desk_secret) = app.endpoint(&admin, &orders_desk.url(), &["order.*"]).await;
        let (_, ada_secret) = app
            .endpoint(&ada, &ada_hook.url(), &["order.created"])
            .await;
        app.endpoint(&bob, &bob_hook.url(), &["#"]).await;
        let (_, catalog_secret) = app
            .endpoint(&admin, &catalog_desk.url(), &["product.*"])
            .await;

        let ada_order = app
            .publish(
                "order.created",
                json!({"id": "o-1", "user_id": "ada", "total_cents": 2500}),
            )
            .await;
        app.publish("order.created", json!({"id": "o-2", "user_id": "bob"}))
            .await;
        let product = app
            .publish("product.updated", json!({"id": "p-1", "stock": 3}))
            .await;
        app.publish("user.registered", json!({"id": "carol"})).await;

        eventually("every delivery", async || {
            (orders_desk.received().len() == 2
                && ada_hook.received().len() == 1
                && bob_hook.received().len() == 1
                && catalog_desk.received().len() == 1)
                .then_some(())
        })
        .await;
        // Nothing more comes (bob's "#" is limited to his own orders).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bob_hook.received().len(), 1, "{label}");
        assert_eq!(orders_desk.received().len(), 2, "{label}");

        let got = &ada_hook.received()[0];
        verify(&ada_secret, got).unwrap();
        assert!(verify(&desk_secret, got).is_err(), "{label}: another key");
        assert_eq!(header_of(got, "webhook-id"), ada_order.to_string());
        assert_eq!(header_of(got, "content-type"), "application/json");
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["type"], "order.created", "{label}");
        assert_eq!(body["data"]["user_id"], "ada");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        for got in orders_desk.received() {
            verify(&desk_secret, &got).unwrap();
        }
        let got = &catalog_desk.received()[0];
        verify(&catalog_secret, got).unwrap();
        assert_eq!(header_of(got, "webhook-id"), product.to_string());

        eventually("deliveries recorded as delivered", async || {
            let deliveries = app.deliveries(&admin, &desk_id).await;
            (deliveries.len() == 2
                && deliveries.iter().all(|delivery| {
                    delivery["status"] == "delivered"
                        && delivery["attempt"] == 1
                        && delivery["response_status"] == 200
                }))
            .then_some(())
        })
        .await;
        let (status, _) = app
            .call(
                &ada,
                Method::GET,
                &format!("/api/v1/webhooks/endpoints/{desk_id}/deliveries"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label}: not ada's endpoint");
    }
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_the_event_with_the_same_webhook_id() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0, 150, 150, 150, 150], true)).await {
        let label = app.label;
        let slow = Answer {
            delay: Duration::from_millis(1500),
            ..OK
        };
        let receiver = Receiver::start(&[answer(503), slow, answer(500)]).await;
        let (endpoint, secret) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        let event = app.publish("order.created", json!({"id": "o-1"})).await;

        let delivery = app.delivery_in_state(&admin, &endpoint, "delivered").await;
        assert_eq!(delivery["attempt"], 4, "{label}: {delivery}");
        let received = receiver.received();
        assert_eq!(received.len(), 4, "{label}");
        for got in &received {
            assert_eq!(header_of(got, "webhook-id"), event.to_string(), "{label}");
            assert_eq!(got.body, received[0].body, "{label}: the same body");
            verify(&secret, got).unwrap();
        }
        let (status, attempts) = app
            .call(
                &admin,
                Method::GET,
                &format!(
                    "/api/v1/webhooks/endpoints/{endpoint}/deliveries/{}/attempts",
                    delivery["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let attempts = attempts["items"].as_array().unwrap();
        let statuses: Vec<Value> = attempts
            .iter()
            .map(|attempt| attempt["response_status"].clone())
            .collect();
        assert_eq!(
            statuses,
            [json!(503), Value::Null, json!(500), json!(200)],
            "{label}"
        );
        assert!(
            attempts[1]["error"].as_str().unwrap().contains("no answer"),
            "{label}: {}",
            attempts[1]
        );
        assert_eq!(attempts[0]["response_excerpt"], "answer 503");
        assert!(attempts[3]["error"].is_null());
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0, 50, 50], true)).await {
        let label = app.label;
        let busy = Answer {
            retry_after: Some("2"),
            ..answer(429)
        };
        let receiver = Receiver::start(&[busy]).await;
        let (endpoint, _) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        app.publish("order.created", json!({"id": "o-1"})).await;
        eventually("the second attempt", async || {
            (receiver.received().len() == 2).then_some(())
        })
        .await;
        let received = receiver.received();
        let waited = received[1].at - received[0].at;
        assert!(
            waited >= Duration::from_millis(1900),
            "{label}: the second attempt came after {waited:?}, Retry-After said 2 s"
        );
        eventually("the second attempt recorded", async || {
            let deliveries = app.deliveries(&admin, &endpoint).await;
            (deliveries[0]["attempt"] == 2 && deliveries[0]["status"] == "delivered").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_receiver_answering_410_disables_its_endpoint() {
    let ada = principal("ada", "customer");
    for app in Harness::all(settings(&[0, 50, 50], true)).await {
        let label = app.label;
        let receiver = Receiver::start(&[answer(410)]).await;
        let (endpoint, _) = app.endpoint(&ada, &receiver.url(), &["order.*"]).await;
        app.publish("order.created", json!({"id": "o-1", "user_id": "ada"}))
            .await;
        let path = format!("/api/v1/webhooks/endpoints/{endpoint}");
        let disabled = eventually("the endpoint disabled", async || {
            let (_, body) = app.call(&ada, Method::GET, &path, None).await;
            (body["disabled"] == true).then_some(body)
        })
        .await;
        assert!(
            disabled["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("410"),
            "{label}: {disabled}"
        );
        let deliveries = app.deliveries(&ada, &endpoint).await;
        assert_eq!(deliveries[0]["status"], "failed", "{label}");
        assert_eq!(deliveries[0]["response_status"], 410);
        let delivery = deliveries[0]["id"].as_str().unwrap();
        let (status, _) = app
            .call(
                &ada,
                Method::POST,
                &format!("{path}/deliveries/{delivery}/retry"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{label}: disabled");

        app.publish("order.created", json!({"id": "o-2", "user_id": "ada"}))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.received().len(), 1, "{label}: nothing more sent");
    }
}

#[tokio::test]
async fn a_failed_delivery_is_sent_again_by_hand() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let receiver = Receiver::start(&[answer(500)]).await;
        let (endpoint, secret) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        let event = app.publish("order.created", json!({"id": "o-1"})).await;
        let failed = app.delivery_in_state(&admin, &endpoint, "failed").await;
        let (status, queued) = app
            .call(
                &admin,
                Method::POST,
                &format!(
                    "/api/v1/webhooks/endpoints/{endpoint}/deliveries/{}/retry",
                    failed["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{label}: {queued}");
        assert_eq!(queued["status"], "pending");
        eventually("the retried delivery", async || {
            let deliveries = app.deliveries(&admin, &endpoint).await;
            deliveries
                .first()
                .filter(|delivery| delivery["status"] == "delivered" && delivery["attempt"] == 2)
                .cloned()
        })
        .await;
        let received = receiver.received();
        assert_eq!(received.len(), 2, "{label}");
        assert_eq!(header_of(&received[1], "webhook-id"), event.to_string());
        verify(&secret, &received[1]).unwrap();
    }
}

#[tokio::test]
async fn after_a_rotation_both_secrets_verify() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let receiver = Receiver::start(&[]).await;
        let (endpoint, old_secret) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        let (status, rotated) = app
            .call(
                &admin,
                Method::POST,
                &format!("/api/v1/webhooks/endpoints/{endpoint}/rotate-secret"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let new_secret = rotated["secret"].as_str().unwrap();
        app.publish("order.created", json!({"id": "o-1"})).await;
        eventually("the delivery", async || {
            (receiver.received().len() == 1).then_some(())
        })
        .await;
        let got = &receiver.received()[0];
        let signatures = header_of(got, "webhook-signature");
        assert_eq!(signatures.split(' ').count(), 2, "{label}: {signatures}");
        verify(new_secret, got).unwrap();
        verify(&old_secret, got).unwrap();
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_when_delivering() {
    let admin = principal("root", "admin");
    // The worker's guard refuses private targets; the endpoint was registered through a
    // service that allowed them (as if the name had resolved elsewhere back then).
    for app in Harness::all(settings(&[0, 50], false)).await {
        let label = app.label;
        let receiver = Receiver::start(&[]).await;
        let lenient = app.service_with(settings(&[0], true));
        let endpoint = lenient
            .create(
                &admin,
                json!({"url": format!("http://localhost:{}/hooks", receiver.addr.port()), "event_types": ["#"]}),
            )
            .await
            .unwrap();
        app.publish("order.created", json!({"id": "o-1"})).await;
        let failed = app
            .delivery_in_state(&admin, &endpoint.id.to_string(), "failed")
            .await;
        let error = failed["error"].as_str().unwrap();
        assert!(
            error.contains("refused") && error.contains("loopback"),
            "{label}: {error}"
        );
        assert_eq!(failed["attempt"], 2, "{label}: {failed}");
        assert!(
            receiver.received().is_empty(),
            "{label}: the guard let a request through"
        );
    }
}

#[tokio::test]
async fn secrets_move_to_a_new_key_with_rewrap() {
    let admin = principal("root", "admin");
    let test_db = TestDb::sqlite().await;
    let app = Harness::start(test_db, settings(&[0], true)).await;
    let old_entry = KeyRing::generate_entry();
    let new_entry = KeyRing::generate_entry();
    let service = |entries: &str| {
        app.service_with_keys(
            Arc::new(KeyRing::parse(entries, "test").unwrap()),
            settings(&[0], true),
        )
    };
    let before = service(&old_entry);
    let endpoint = before
        .create(
            &admin,
            json!({"url": "https://hooks.example.com/x", "event_types": ["#"]}),
        )
        .await
        .unwrap();
    before.rotate_secret(&admin, endpoint.id).await.unwrap();

    let only_new = service(&new_entry);
    assert!(
        only_new.rotate_secret(&admin, endpoint.id).await.is_err(),
        "the secrets are still under the old key"
    );
    let both = service(&format!("{new_entry}\n{old_entry}"));
    assert_eq!(
        both.rewrap().await.unwrap(),
        (2, 1),
        "secret and previous secret"
    );
    assert_eq!(both.rewrap().await.unwrap(), (0, 1), "nothing left to move");
    only_new.rotate_secret(&admin, endpoint.id).await.unwrap();
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let elsewhere = Receiver::start(&[]).await;
        let moved = Answer {
            location: Some(elsewhere.url()),
            ..answer(307)
        };
        let receiver = Receiver::start(&[moved]).await;
        let (endpoint, _) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        app.publish("order.created", json!({"id": "o-1"})).await;
        let failed = app.delivery_in_state(&admin, &endpoint, "failed").await;
        assert_eq!(failed["response_status"], 307, "{label}: {failed}");
        assert_eq!(receiver.received().len(), 1, "{label}");
        assert!(
            elsewhere.received().is_empty(),
            "{label}: the redirect was followed"
        );
    }
}

#[tokio::test]
async fn an_unreadable_secret_fails_the_delivery_instead_of_sending_it_unsigned() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0, 50, 50], true)).await {
        let label = app.label;
        let receiver = Receiver::start(&[]).await;
        // Registered by a process with other encryption keys than the worker's.
        let elsewhere = app.service_with_keys(
            Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "other").unwrap()),
            settings(&[0], true),
        );
        let endpoint = elsewhere
            .create(&admin, json!({"url": receiver.url(), "event_types": ["#"]}))
            .await
            .unwrap();
        app.publish("order.created", json!({"id": "o-1"})).await;
        let failed = app
            .delivery_in_state(&admin, &endpoint.id.to_string(), "failed")
            .await;
        assert!(
            failed["error"].as_str().unwrap().contains("secret"),
            "{label}: {failed}"
        );
        assert!(receiver.received().is_empty(), "{label}: sent unsigned");
    }
}

#[tokio::test]
async fn a_delivery_left_pending_without_a_job_can_be_sent_again() {
    let admin = principal("root", "admin");
    for app in Harness::all(settings(&[0], true)).await {
        let label = app.label;
        let receiver = Receiver::start(&[answer(500)]).await;
        let (endpoint, _) = app.endpoint(&admin, &receiver.url(), &["#"]).await;
        app.publish("order.created", json!({"id": "o-1"})).await;
        let failed = app.delivery_in_state(&admin, &endpoint, "failed").await;
        let delivery = failed["id"].as_str().unwrap().to_owned();
        let retry = format!("/api/v1/webhooks/endpoints/{endpoint}/deliveries/{delivery}/retry");
        // As a worker that died on the last attempt leaves it: pending, due long ago.
        let mut tx = app.db.begin().await.unwrap();
        let stale = sea_query::Query::update()
            .table("webhook_deliveries")
            .value("status", "pending")
            .value(
                "next_attempt_at",
                chrono::Utc::now() - chrono::Duration::hours(1),
            )
            .to_owned();
        tx.execute(&stale).await.unwrap();
        tx.commit().await.unwrap();
        let (status, _) = app.call(&admin, Method::POST, &retry, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{label}");
        eventually("the resent delivery", async || {
            let deliveries = app.deliveries(&admin, &endpoint).await;
            (deliveries[0]["status"] == "delivered").then_some(())
        })
        .await;
    }
}
