//! The real channels against real servers on loopback: Slack and webhook against wiremock,
//! e-mail against an SMTP server (aiosmtpd). Retries, timeouts, classification, fan-out.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use balance_alertd::application::AlertContext;
use balance_alertd::application::sweep::{BulkBalanceAlert, SweepSummary};
use balance_alertd::config::{self, Sources};
use balance_alertd::infrastructure::notify;
use hmac::{KeyInit, Mac};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{Backend, Captured, NewAccount, TestApp};

/// The configuration from the built-in defaults and `BALANCE_ALERT__{key}` variables.
pub fn load_env(env: &[(&str, &str)]) -> config::LoadedConfig {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (format!("BALANCE_ALERT__{k}"), (*v).to_owned()))
        .collect();
    config::load(&Sources {
        files: Vec::new(),
        env: Some(env),
    })
    .expect("valid config")
}

/// Channels built from configuration exactly as the daemon builds them.
pub fn context(app: &TestApp, env: &[(&str, &str)]) -> AlertContext {
    let loaded = load_env(env);
    let channels = notify::build_channels(&loaded, app.console.out()).expect("channels");
    let mut ctx = app.context_with(channels);
    ctx.digests = notify::build_digests(&loaded).expect("digests");
    ctx.delivery.timeout = loaded.settings.delivery.timeout;
    ctx.delivery.max_attempts = loaded.settings.delivery.max_attempts;
    ctx.delivery.max_backoff = loaded.settings.delivery.retry_max_backoff;
    ctx.delivery.initial_backoff = loaded.settings.delivery.retry_initial_backoff;
    ctx.delivery.limits = balance_alertd::app::delivery_policy(&loaded).limits;
    ctx
}

async fn sweep(ctx: &AlertContext) -> SweepSummary {
    BulkBalanceAlert::new(ctx.clone())
        .execute()
        .await
        .expect("sweep")
}

/// A receiver that answers every POST with 200.
pub async fn accepting_receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

pub fn webhook_env(server: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("NOTIFY__CHANNELS", "webhook".into()),
        ("NOTIFY__WEBHOOK__URL", format!("{}/hook", server.uri())),
        ("NOTIFY__WEBHOOK__SECRET", STANDARD_SECRET.into()),
        ("DELIVERY__RETRY_INITIAL_BACKOFF", "10ms".into()),
        ("DELIVERY__RETRY_MAX_BACKOFF", "3s".into()),
    ]
}

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verifier(secret: &str) -> standardwebhooks::Webhook {
    standardwebhooks::Webhook::new(secret).expect("a valid whsec_ secret")
}

/// The request's headers as the `standardwebhooks` crate takes them.
fn http_headers(request: &Request) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in request.headers.iter() {
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap();
        headers.append(
            name,
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    headers
}

pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_the_documented_payload_idempotency_key_and_a_verifiable_signature() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let id = app
        .insert_account(NewAccount {
            name: Some("Alice"),
            ..NewAccount::new("alice@example.com", 4_900)
        })
        .await;
    let ctx = context(&app, &env_refs(&webhook_env(&server)));

    assert_eq!(sweep(&ctx).await.sent, 1);

    let requests = server.received_requests().await.unwrap();
    let [request] = requests.as_slice() else {
        panic!("expected one request, got {}", requests.len())
    };
    let alert_id = app.alert_rows(&id).await[0].id.clone();
    assert_eq!(header(request, "content-type"), "application/json");
    assert_eq!(header(request, "idempotency-key"), alert_id);
    // Standard Webhooks, verified by an independent implementation (the `standardwebhooks`
    // crate), over the exact bytes and headers received.
    assert_eq!(header(request, "webhook-id"), alert_id);
    verifier(STANDARD_SECRET)
        .verify(&request.body, &http_headers(request))
        .expect("the standardwebhooks crate accepts the request");
    // The legacy signature, computed here independently over the exact bytes received.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(STANDARD_SECRET.as_bytes()).unwrap();
    mac.update(&request.body);
    assert_eq!(
        header(request, "x-signature-256"),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "account_id",
            "alert_id",
            "balance",
            "created_at",
            "currency",
            "owner_email",
            "owner_name",
            "threshold",
            "type"
        ]
        .into()
    );
    assert_eq!(body["type"], "balance.low");
    assert_eq!(body["alert_id"], alert_id.as_str());
    assert_eq!(body["account_id"], id.as_str());
    assert_eq!(body["owner_email"], "alice@example.com");
    assert_eq!(body["owner_name"], "Alice");
    assert_eq!(
        (body["balance"].as_str(), body["threshold"].as_str()),
        (Some("49.00"), Some("50.00"))
    );
    assert_eq!(body["currency"], "USD");
    assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_posts_the_reference_wording_with_bank_data_escaped() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/T0/B0/XYZ"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    app.insert_account(NewAccount {
        name: Some("<!channel> & Co"),
        ..NewAccount::new("co@example.com", 4_900)
    })
    .await;
    let url = format!("{}/services/T0/B0/XYZ", server.uri());
    let ctx = context(
        &app,
        &[
            ("NOTIFY__CHANNELS", "slack"),
            ("NOTIFY__SLACK__WEBHOOK_URL", &url),
        ],
    );

    assert_eq!(sweep(&ctx).await.sent, 1);

    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"text": "⚠️ Low balance alert for &lt;!channel&gt; &amp; Co (co@example.com): $49.00 < $50.00"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_200_is_retried_to_exactly_one_success_under_one_alert_id() {
    let mut app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let id = app
        .insert_account(NewAccount::new("retry@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&webhook_env(&server)));

    let summary = sweep(&ctx).await;
    assert_eq!((summary.sent, summary.failed), (1, 0));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        header(&requests[0], "idempotency-key"),
        header(&requests[1], "idempotency-key")
    );
    let row = &app.alert_rows(&id).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 2));
    let audit = app.finish_audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0]["event"].as_str(), audit[0]["attempts"].as_u64()),
        (Some("alert_sent"), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_not_retried_and_is_recorded_failed() {
    let mut app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad payload"))
        .mount(&server)
        .await;
    let id = app
        .insert_account(NewAccount::new("reject@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&webhook_env(&server)));

    let summary = sweep(&ctx).await;
    assert_eq!((summary.sent, summary.failed), (0, 1));
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "permanent: one attempt"
    );
    let row = &app.alert_rows(&id).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("failed", 1));
    assert!(
        row.last_error.as_deref().unwrap().contains("HTTP 400"),
        "{:?}",
        row.last_error
    );
    let audit = app.finish_audit();
    assert_eq!(audit[0]["event"], "alert_failed");
    assert!(
        audit[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("permanent: HTTP 400 Bad Request: bad payload")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_honoured() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    let busy = ResponseTemplate::new(429).insert_header("Retry-After", "1");
    Mock::given(method("POST"))
        .respond_with(busy)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    app.insert_account(NewAccount::new("busy@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&webhook_env(&server)));

    let started = Instant::now();
    assert_eq!(sweep(&ctx).await.sent, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    assert!(waited < Duration::from_secs(3), "took {waited:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_as_a_transient_failure() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let id = app
        .insert_account(NewAccount::new("hang@example.com", 100))
        .await;
    let mut env = webhook_env(&server);
    env.push(("DELIVERY__TIMEOUT", "300ms".into()));
    env.push(("DELIVERY__MAX_ATTEMPTS", "2".into()));
    let ctx = context(&app, &env_refs(&env));

    let started = Instant::now();
    assert_eq!(sweep(&ctx).await.failed, 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let row = &app.alert_rows(&id).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("retry", 2),
        "transient: retried"
    );
    assert!(
        row.last_error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        row.last_error
    );
}

/// An aiosmtpd server on a loopback port; messages land in a JSON Lines file.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start(port: u16, refuse_first: usize, code: u16) -> Self {
        Self::start_with(port, refuse_first, code, &[])
    }

    /// `auth`: `[user, password]` to require SMTP AUTH.
    fn start_with(port: u16, refuse_first: usize, code: u16, auth: &[&str]) -> Self {
        Self::start_tls(port, refuse_first, code, auth, &[])
    }

    /// `tls`: the `SMTP_TLS`, `SMTP_CERT`, `SMTP_KEY` environment of tests/smtp_server.py.
    fn start_tls(
        port: u16,
        refuse_first: usize,
        code: u16,
        auth: &[&str],
        tls: &[(&str, String)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
        let mut child = Command::new("python3")
            .args([
                script,
                &port.to_string(),
                out.to_str().unwrap(),
                &refuse_first.to_string(),
                &code.to_string(),
            ])
            .args(auth)
            .envs(tls.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/test.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP test server did not start (is aiosmtpd installed?)"
        );
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        crate::helpers::read_json_lines(self.out.clone())
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn email_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("NOTIFY__CHANNELS", "email".into()),
        (
            "NOTIFY__EMAIL__SMTP_URL",
            format!("smtp://127.0.0.1:{port}"),
        ),
        (
            "NOTIFY__EMAIL__FROM",
            "Bank Alerts <alerts@bank.example>".into(),
        ),
        ("DELIVERY__TIMEOUT", "2s".into()),
        ("DELIVERY__RETRY_INITIAL_BACKOFF", "10ms".into()),
        ("DELIVERY__RETRY_MAX_BACKOFF", "50ms".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_a_real_smtp_server_with_recipient_sender_subject_message_id_and_body() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let smtp = SmtpServer::start(free_port(), 0, 451);
    let id = app
        .insert_account(NewAccount {
            name: Some("Alice"),
            ..NewAccount::new("alice@example.com", 4_900)
        })
        .await;
    let ctx = context(&app, &env_refs(&email_env(smtp.port)));

    assert_eq!(sweep(&ctx).await.sent, 1);

    let messages = smtp.messages();
    let [mail] = messages.as_slice() else {
        panic!("expected one e-mail, got {messages:?}")
    };
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["alice@example.com"]));
    assert_eq!(mail["mail_from"], "alerts@bank.example");
    let data = mail["data"].as_str().unwrap();
    let alert_id = app.alert_rows(&id).await[0].id.clone();
    assert!(
        data.contains("From: \"Bank Alerts\" <alerts@bank.example>"),
        "{data}"
    );
    assert!(data.contains("To: Alice <alice@example.com>"), "{data}");
    assert!(data.contains("Subject: Low balance alert"), "{data}");
    assert!(
        data.contains(&format!("Message-ID: <{alert_id}@bank.example>")),
        "{data}"
    );
    assert!(
        data.contains("Hi Alice, your balance ($49.00) is below $50.00"),
        "{data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_is_a_transient_failure_and_the_next_sweep_delivers_once() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let port = free_port();
    let id = app
        .insert_account(NewAccount::new("later@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&email_env(port)));

    assert_eq!(sweep(&ctx).await.failed, 1);
    let row = &app.alert_rows(&id).await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("retry", 3),
        "transient: all attempts used"
    );
    let alert_id = row.id.clone();

    let smtp = SmtpServer::start(port, 0, 451);
    assert_eq!(sweep(&ctx).await.sent, 1);
    assert_eq!(sweep(&ctx).await.sent, 0, "then in cooldown");
    assert_eq!(smtp.messages().len(), 1);
    assert!(
        smtp.messages()[0]["data"]
            .as_str()
            .unwrap()
            .contains(&format!("Message-ID: <{alert_id}@"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_4xx_is_retried_and_5xx_is_not() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let transient = SmtpServer::start(free_port(), 1, 451);
    let id = app
        .insert_account(NewAccount::new("soft@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&email_env(transient.port)));
    assert_eq!(sweep(&ctx).await.sent, 1);
    assert_eq!(app.alert_rows(&id).await[0].attempts, 2);
    assert_eq!(transient.messages().len(), 1);

    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let permanent = SmtpServer::start(free_port(), 1, 550);
    let id = app
        .insert_account(NewAccount::new("hard@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&email_env(permanent.port)));
    assert_eq!(sweep(&ctx).await.failed, 1);
    let row = &app.alert_rows(&id).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("failed", 1));
    assert!(
        row.last_error.as_deref().unwrap().contains("550"),
        "{:?}",
        row.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_outage_does_not_resend_emails() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let smtp = SmtpServer::start(free_port(), 0, 451);
    let slack = MockServer::start().await;
    let outage = Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount_as_scoped(&slack)
        .await;
    for i in 0..3 {
        app.insert_account(NewAccount::new(&format!("f{i}@example.com"), 100))
            .await;
    }
    let mut env = email_env(smtp.port);
    env[0].1 = "email,slack".into();
    env.push((
        "NOTIFY__SLACK__WEBHOOK_URL",
        format!("{}/services/x", slack.uri()),
    ));
    let ctx = context(&app, &env_refs(&env));

    let first = sweep(&ctx).await;
    assert_eq!(
        (first.eligible, first.sent, first.failed),
        (3, 3, 3),
        "e-mails sent, Slack failed"
    );
    drop(outage);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&slack)
        .await;
    let second = sweep(&ctx).await;
    assert_eq!(
        (second.eligible, second.sent, second.failed),
        (3, 3, 0),
        "only Slack retried"
    );
    assert_eq!(smtp.messages().len(), 3, "no e-mail sent twice");
    assert_eq!(sweep(&ctx).await.sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_credentials_come_from_the_url_or_from_separate_keys() {
    let smtp = SmtpServer::start_with(free_port(), 0, 451, &["alerts", "s3cret"]);
    // One sweep of one account with `url` and optional separate credentials.
    let attempt = |url: String, credentials: Option<(&'static str, &'static str)>| {
        let port = smtp.port;
        async move {
            let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
            app.insert_account(NewAccount::new("auth@example.com", 100))
                .await;
            let mut env = email_env(port);
            env[1].1 = url;
            if let Some((user, password)) = credentials {
                env.push(("NOTIFY__EMAIL__USERNAME", user.into()));
                env.push(("NOTIFY__EMAIL__PASSWORD", password.into()));
            }
            sweep(&context(&app, &env_refs(&env))).await
        }
    };
    let plain = format!("smtp://127.0.0.1:{}", smtp.port);

    let from_url = attempt(
        format!("smtp://alerts:s3cret@127.0.0.1:{}", smtp.port),
        None,
    )
    .await;
    assert_eq!(from_url.sent, 1);
    assert_eq!(smtp.messages().len(), 1);

    let from_keys = attempt(plain.clone(), Some(("alerts", "s3cret"))).await;
    assert_eq!(from_keys.sent, 1);
    assert_eq!(smtp.messages().len(), 2);

    // Wrong credentials: the server refuses with 535, a permanent failure.
    let wrong = attempt(plain, Some(("alerts", "wrong"))).await;
    assert_eq!(wrong.failed, 1);
    assert_eq!(smtp.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_rotate_and_a_replayed_request_is_rejected_by_the_verifier() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    app.insert_account(NewAccount::new("rotate@example.com", 100))
        .await;
    // Rotation: the old secret and the new one both sign, so receivers on either verify.
    let (old, new) = (STANDARD_SECRET, "whsec_c2Vjb25kLWtleS1mb3Itcm90YXRpb24=");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[notify]\nchannels = [\"webhook\"]\n[notify.webhook]\nurl = \"{}/hook\"\nsecret = [\"{old}\", \"{new}\"]\n",
            server.uri()
        ),
    )
    .unwrap();
    let loaded = config::load(&Sources {
        files: vec![file.path().to_owned()],
        env: Some(HashMap::new()),
    })
    .expect("config");
    // Signed by a channel whose clock says 2026-11-27 12:00: days before the verifier's now,
    // as a request captured then and replayed today would be.
    let replayed = notify::WebhookChannel::build_with_clock(&loaded, app.clock.clone()).unwrap();
    let ctx = app.context_with(vec![std::sync::Arc::new(replayed)]);
    assert_eq!(sweep(&ctx).await.sent, 1);

    let requests = server.received_requests().await.unwrap();
    let request = &requests[0];
    let signatures = header(request, "webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    let headers = http_headers(request);
    let (id, timestamp) = (
        header(request, "webhook-id"),
        header(request, "webhook-timestamp").parse::<i64>().unwrap(),
    );
    assert_eq!(
        timestamp,
        app.clock_now().timestamp(),
        "signed at the channel's clock"
    );
    for secret in [old, new] {
        // The crate's own signature of what was sent is among those the daemon sent.
        let expected = verifier(secret).sign(id, timestamp, &request.body).unwrap();
        assert!(
            signatures.split(' ').any(|s| s == expected),
            "{secret}: {signatures}"
        );
        let replay = verifier(secret).verify(&request.body, &headers);
        assert!(
            matches!(
                replay,
                Err(standardwebhooks::WebhookError::TimestampTooOldError)
            ),
            "a request signed days ago is outside the tolerance: rejected ({replay:?})"
        );
    }
    let stranger = verifier("whsec_bm90LWEtY29uZmlndXJlZC1zZWNyZXQ=")
        .sign(id, timestamp, &request.body)
        .unwrap();
    assert!(
        !signatures.split(' ').any(|s| s == stranger),
        "a secret that did not sign it does not match"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_redirect_is_a_failure_and_is_not_followed() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/stolen", elsewhere.uri()).as_str()),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&elsewhere)
        .await;
    let id = app
        .insert_account(NewAccount::new("redirect@example.com", 100))
        .await;
    let ctx = context(&app, &env_refs(&webhook_env(&server)));
    let summary = sweep(&ctx).await;
    assert_eq!((summary.sent, summary.failed), (0, 1), "{summary}");
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "the redirect target got nothing"
    );
    let row = &app.alert_rows(&id).await[0];
    assert_eq!(
        row.status, "failed",
        "a 3xx is permanent: {:?}",
        row.last_error
    );
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("307")
    );
}

/// A Slack receiver answering `status`, and a context with console per alert and Slack as a
/// digest.
async fn slack_digest(app: &TestApp, status: u16) -> (MockServer, AlertContext) {
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&slack)
        .await;
    let url = format!("{}/services/T0/B0/XYZ", slack.uri());
    let ctx = context(
        app,
        &[
            ("NOTIFY__CHANNELS", "console,slack"),
            ("NOTIFY__SLACK__WEBHOOK_URL", &url),
            ("NOTIFY__SLACK__MODE", "digest"),
        ],
    );
    (slack, ctx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_digest_posts_one_message_for_a_sweep_of_500_alerts() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (slack, ctx) = slack_digest(&app, 200).await;
    for i in 0..500 {
        app.insert_account(NewAccount::new(&format!("c{i}@example.com"), 100 + i))
            .await;
    }
    let summary = sweep(&ctx).await;
    assert_eq!((summary.sent, summary.failed), (500, 0), "{summary}");
    let requests = slack.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "one Slack message for the whole sweep");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "Balance alert sweep: 500 deliveries attempted for 500 of 500 accounts below their \
             threshold: 500 sent, 0 failed, 0 deferred (quiet hours)."
        ),
        "{text}"
    );
    assert_eq!(
        text.matches("\n• ").count(),
        5,
        "the first few alerts: {text}"
    );
    assert!(text.ends_with("… and 495 more."), "{text}");
    let rows = app
        .count("SELECT COUNT(*) AS n FROM alert_logs WHERE channel = 'slack'")
        .await;
    assert_eq!(rows, 0, "no per-account Slack deliveries");

    // A sweep with nothing to deliver posts nothing.
    assert_eq!(sweep(&ctx).await.sent, 0);
    assert_eq!(slack.received_requests().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_slack_digest_never_affects_the_customer_channels() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (slack, ctx) = slack_digest(&app, 500).await;
    app.insert_account(NewAccount::new("customer@example.com", 100))
        .await;
    let summary = sweep(&ctx).await;
    assert_eq!((summary.sent, summary.failed), (1, 0), "{summary}");
    assert_eq!(app.console.count_for("customer@example.com"), 1);
    assert_eq!(
        slack.received_requests().await.unwrap().len(),
        1,
        "tried once, not retried"
    );
}

/// A CA the test makes up, and a server certificate for `localhost` and 127.0.0.1 it signs.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Bank Test Root CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    fn server_env(&self, mode: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SMTP_TLS", mode.to_owned()),
            ("SMTP_CERT", self.path("server.pem")),
            ("SMTP_KEY", self.path("server.key")),
        ]
    }
}

/// E-mail over STARTTLS and implicit TLS to a server whose certificate a private CA signed:
/// delivered with `tls_ca_file`, refused without it (the certificate is not trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_and_implicit_tls_trusts_a_private_ca_and_refuses_an_unknown_one() {
    let pki = TestPki::new();
    for (mode, url) in [
        ("starttls", "smtp://localhost:{port}?tls=required"),
        ("implicit", "smtps://localhost:{port}"),
    ] {
        let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
        let port = free_port();
        let server = SmtpServer::start_tls(port, 0, 451, &[], &pki.server_env(mode));
        app.insert_account(NewAccount::new("tls@example.com", 100))
            .await;
        let mut env = email_env(port);
        env.retain(|(k, _)| *k != "NOTIFY__EMAIL__SMTP_URL");
        env.push((
            "NOTIFY__EMAIL__SMTP_URL",
            url.replace("{port}", &port.to_string()),
        ));
        env.push(("DELIVERY__MAX_ATTEMPTS", "1".into()));

        // Without the CA: the server's certificate is not trusted, nothing is sent.
        let untrusted = sweep(&context(&app, &env_refs(&env))).await;
        assert_eq!(
            (untrusted.sent, untrusted.failed),
            (0, 1),
            "{mode}: {untrusted}"
        );
        assert!(server.messages().is_empty(), "{mode}: nothing crossed");

        env.push(("NOTIFY__EMAIL__TLS_CA_FILE", pki.path("ca.pem")));
        app.clock.advance(Duration::from_secs(60));
        let trusted = sweep(&context(&app, &env_refs(&env))).await;
        assert_eq!((trusted.sent, trusted.failed), (1, 0), "{mode}: {trusted}");
        let messages = server.messages();
        assert_eq!(messages.len(), 1, "{mode}");
        assert_eq!(messages[0]["rcpt_tos"][0], "tls@example.com");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_smtp_to_a_remote_host_is_a_configuration_error_unless_allowed() {
    let load = |env: &[(&str, &str)]| {
        notify::build_channels(&load_env(env), Captured::default().out()).map(|_| ())
    };
    let remote = [
        ("NOTIFY__CHANNELS", "email"),
        ("NOTIFY__EMAIL__SMTP_URL", "smtp://mail.bank.example:25"),
    ];
    let error = load(&remote).unwrap_err().to_string();
    assert!(error.contains("notify.email.allow_insecure"), "{error}");
    let downgradable = [
        ("NOTIFY__CHANNELS", "email"),
        (
            "NOTIFY__EMAIL__SMTP_URL",
            "smtp://mail.bank.example:587?tls=opportunistic",
        ),
    ];
    assert!(
        load(&downgradable).is_err(),
        "STARTTLS that may be stripped is not TLS"
    );
    let mut allowed = remote.to_vec();
    allowed.push(("NOTIFY__EMAIL__ALLOW_INSECURE", "true"));
    assert!(load(&allowed).is_ok());
    for secure in [
        "smtps://mail.bank.example",
        "smtp://mail.bank.example:587?tls=required",
        "smtp://127.0.0.1:2525",
    ] {
        let env = [
            ("NOTIFY__CHANNELS", "email"),
            ("NOTIFY__EMAIL__SMTP_URL", secure),
        ];
        assert!(load(&env).is_ok(), "{secure}");
    }
    let missing_ca = [
        ("NOTIFY__CHANNELS", "email"),
        ("NOTIFY__EMAIL__SMTP_URL", "smtps://mail.bank.example"),
        ("NOTIFY__EMAIL__TLS_CA_FILE", "/nonexistent/ca.pem"),
    ];
    let error = load(&missing_ca).unwrap_err().to_string();
    assert!(
        error.contains("notify.email.tls_ca_file") && error.contains("/nonexistent/ca.pem"),
        "{error}"
    );
}

/// `notify.channel_concurrency` caps one channel below `notify.concurrency`: a receiver that
/// takes 3 connections sees at most 3 requests at once, and every alert still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_cap_keeps_its_receiver_within_its_limit_and_delivers_everything() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let receiver = crate::receiver::Receiver::start().await;
    receiver.set_delay(Duration::from_millis(100));
    for i in 0..24 {
        app.insert_account(NewAccount::new(&format!("cap{i}@example.com"), 4_900))
            .await;
    }
    let url = receiver.url();
    let mut ctx = context(
        &app,
        &[
            ("NOTIFY__CHANNELS", "webhook"),
            ("NOTIFY__WEBHOOK__URL", &url),
            ("NOTIFY__CONCURRENCY", "16"),
            ("NOTIFY__CHANNEL_CONCURRENCY__WEBHOOK", "3"),
        ],
    );
    ctx.delivery.concurrency = 16;
    assert_eq!(sweep(&ctx).await.sent, 24);
    assert_eq!(receiver.total_delivered(), 24);
    assert_eq!(
        receiver.max_in_flight(),
        3,
        "the cap, reached and never passed"
    );
}
