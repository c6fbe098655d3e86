//! Hostile rows from the bank's table, on every channel at once: isolated, escaped for each
//! channel, never a crash (invalid e-mail, huge name, header injection, markup, extreme
//! and odd balances and thresholds).

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::channels::{SmtpServer, context, email_env, env_refs, free_port};
use crate::helpers::{Backend, NewAccount, TestApp};
use crate::on_both_backends;

on_both_backends!(hostile_rows_are_isolated_and_escaped_on_every_channel);

async fn hostile_rows_are_isolated_and_escaped_on_every_channel(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else {
        return;
    };
    let smtp = SmtpServer::start(free_port(), 0, 451);
    let slack = MockServer::start().await;
    let webhook = MockServer::start().await;
    for server in [&slack, &webhook] {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(server)
            .await;
    }
    // PostgreSQL enforces owner_name's varchar(255); SQLite stores whatever it is given.
    let huge = "Z".repeat(if backend == Backend::Sqlite {
        10_240
    } else {
        255
    });
    let injection = "Mallory\r\nBcc: eve@evil.example";
    let markup = "<!channel> <script>alert(1)</script> & *bold*";
    let rows = [
        NewAccount::new("not-an-address", 100),
        NewAccount {
            name: Some(&huge),
            ..NewAccount::new("huge@example.com", 100)
        },
        NewAccount {
            name: Some(injection),
            ..NewAccount::new("mallory@example.com", 100)
        },
        NewAccount {
            name: Some(markup),
            ..NewAccount::new("markup@example.com", 100)
        },
        NewAccount::new("poorest@example.com", i64::MIN),
        NewAccount {
            threshold_minor: Some(i64::MAX),
            ..NewAccount::new("richest@example.com", i64::MAX - 1)
        },
        NewAccount {
            threshold_minor: Some(-100),
            ..NewAccount::new("negative@example.com", -200)
        },
    ];
    for row in rows {
        app.insert_account(row).await;
    }
    let mut env = email_env(smtp.port);
    env[0].1 = "console,email,slack,webhook".into();
    env.push((
        "NOTIFY__SLACK__WEBHOOK_URL",
        format!("{}/services/x", slack.uri()),
    ));
    env.push(("NOTIFY__WEBHOOK__URL", format!("{}/hook", webhook.uri())));
    let ctx = context(&app, &env_refs(&env));

    let summary = balance_alertd::application::sweep::BulkBalanceAlert::new(ctx)
        .execute()
        .await
        .expect("sweep");

    assert_eq!((summary.below_threshold, summary.eligible), (7, 7));

    assert_eq!(
        (summary.sent, summary.failed),
        (6 * 4, 4),
        "only the invalid address fails, on each channel"
    );
    // console: one line per alert, nothing injected.
    let lines = app.console.lines();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Hi Mallory  Bcc: eve@evil.example, your balance"))
    );
    assert!(
        lines.iter().all(|l| l.chars().count() < 300),
        "names are bounded in messages"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("(-$92233720368547758.08) is below $50.00"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("($92233720368547758.06) is below $92233720368547758.07"))
    );
    assert!(lines.iter().any(|l| l.contains("(-$2.00) is below -$1.00")));
    // e-mail: no header was injected, every message went to its own recipient only.
    let mails = smtp.messages();
    assert_eq!(mails.len(), 6);
    for mail in &mails {
        assert_eq!(mail["rcpt_tos"].as_array().unwrap().len(), 1, "{mail}");
        let data = mail["data"].as_str().unwrap();
        let headers = data.split("\r\n\r\n").next().unwrap_or(data);
        assert!(
            !headers
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{data}"
        );
    }
    // Slack: valid JSON, control characters escaped.
    for request in slack.received_requests().await.unwrap() {
        let body: serde_json::Value = serde_json::from_slice(&request.body).expect("valid JSON");
        let text = body["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && !text.contains("<script>"),
            "{text}"
        );
    }
    // Webhook: valid JSON that carries the names exactly.
    let names: Vec<String> = webhook
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).expect("valid JSON"))
        .filter_map(|b| b["owner_name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.contains(&injection.to_owned())
            && names.contains(&markup.to_owned())
            && names.contains(&huge)
    );
    // The audit log stays one JSON object per line.
    assert_eq!(app.finish_audit().len(), 28);
}
