//! Metrics (`smtpd --metrics ADDR`): a scripted session, then the
//! Prometheus text scraped with curl and checked value by value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use crate::cases::{p, tls_server, tmp};
use crate::support::{Ctx, Smtpd, cases, have};

cases!(
    metrics_scripted_session_scraped_with_curl,
    metrics_connection_limit_and_fsync,
    metrics_relay_outcomes_and_upstream_time,
);

/// The address of the `/metrics` endpoint, from the server's log line
/// `metrics listening on=ADDR`.
async fn metrics_addr(d: &Smtpd) -> SocketAddr {
    for _ in 0..100 {
        let log = d.log();
        if let Some(i) = log.find("metrics listening on=") {
            let rest = &log[i + "metrics listening on=".len()..];
            let addr = rest.split_whitespace().next().unwrap_or("");
            return addr.parse().expect("the metrics address");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metrics line in the log:\n{}", d.log());
}

/// `curl -s` of `url`: the HTTP status and the body.
async fn curl(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}", &url])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl {url}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let (body, code) = text.rsplit_once('\n').expect("the status line");
        (code.trim().parse().expect("a status"), body.to_owned())
    })
    .await
    .expect("join")
}

/// The scrape as `name{k="v",…}` (labels sorted) → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

/// Scrapes until `ready` holds for the values (sessions end a moment after
/// their last reply), at most 10 s; the values and the text.
async fn scrape_until(
    addr: SocketAddr,
    ready: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> (BTreeMap<String, f64>, String) {
    let mut last = String::new();
    for _ in 0..100 {
        let (code, text) = curl(format!("http://{addr}/metrics")).await;
        assert_eq!(code, 200, "{text}");
        let values = parse(&text);
        if ready(&values) {
            return (values, text);
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never got there:\n{last}");
}

fn value(values: &BTreeMap<String, f64>, key: &str) -> f64 {
    *values
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing in {values:#?}"))
}

/// EHLO, STARTTLS, AUTH PLAIN bad then good, a message with one of two
/// recipients refused, a message over `--max-size`: every counter shows
/// it, and another path is 404.
async fn metrics_scripted_session_scraped_with_curl(ctx: Ctx) {
    if !have("curl") {
        return;
    }
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, "bob:s3cret\n").expect("users");
    let (d, cert) = tls_server(
        &ctx,
        dir.path(),
        &[
            "--sink",
            "--metrics",
            "127.0.0.1:0",
            "--max-size",
            "2000",
            "--domain",
            "metrics.test",
            "--auth",
            p(&users),
            "--max-auth-failures",
            "0",
        ],
    );
    let addr = metrics_addr(&d).await;
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    let mut t = cert.starttls(c).await;
    t.expect("EHLO x\r\n", "250").await;
    let plain =
        |pass: &str| base64::engine::general_purpose::STANDARD.encode(format!("\0bob\0{pass}"));
    t.expect(&format!("AUTH PLAIN {}\r\n", plain("wrong")), "535")
        .await;
    t.expect(&format!("AUTH PLAIN {}\r\n", plain("s3cret")), "235")
        .await;
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
    t.expect("RCPT TO:<bob@metrics.test>\r\n", "250").await;
    t.expect("RCPT TO:<eve@elsewhere.test>\r\n", "5").await;
    t.expect("DATA\r\n", "354").await;
    let body = "Subject: counted\r\n\r\nhello\r\n";
    t.expect(&format!("{body}.\r\n"), "250").await;
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
    t.expect("RCPT TO:<bob@metrics.test>\r\n", "250").await;
    t.expect("DATA\r\n", "354").await;
    let big = "x".repeat(78) + "\r\n";
    t.expect(&format!("{}.\r\n", big.repeat(40)), "552 5.3.4")
        .await;
    t.expect("QUIT\r\n", "221").await;

    let (values, text) = scrape_until(addr, |v| {
        v.get("smtp_sessions_open") == Some(&0.0) && v.contains_key("smtp_sessions_total")
    })
    .await;
    let checks = [
        ("smtp_sessions_total", 1.0),
        ("smtp_sessions_open", 0.0),
        (
            r#"smtp_tls_handshakes_total{outcome="ok",version="TLSv1_3"}"#,
            1.0,
        ),
        (
            r#"smtp_auth_total{mechanism="PLAIN",result="failure"}"#,
            1.0,
        ),
        (
            r#"smtp_auth_total{mechanism="PLAIN",result="success"}"#,
            1.0,
        ),
        (
            r#"smtp_messages_total{class="2",reason="2.0.0",result="accepted"}"#,
            1.0,
        ),
        (
            r#"smtp_messages_total{class="5",reason="5.3.4",result="refused"}"#,
            1.0,
        ),
        (r#"smtp_recipients_total{result="accepted"}"#, 2.0),
        (r#"smtp_recipients_total{result="refused"}"#, 1.0),
    ];
    for (key, want) in checks {
        assert_eq!(value(&values, key), want, "{key}:\n{text}");
    }
    let bytes = value(&values, "smtp_received_bytes_total");
    assert!(bytes >= body.len() as f64, "{bytes}:\n{text}");
    // Nothing else was refused or failed.
    assert!(
        !values
            .keys()
            .any(|k| k.starts_with("smtp_connections_refused_total")
                || k.contains(r#"outcome="failed""#)),
        "{text}"
    );
    assert!(text.contains("# TYPE smtp_sessions_open gauge"), "{text}");
    let (code, _) = curl(format!("http://{addr}/other")).await;
    assert_eq!(code, 404);
}

/// `--max-connections 1`: the second connection's refusal counts as
/// `limit`; a message to a Maildir shows in the fsync histogram.
async fn metrics_connection_limit_and_fsync(ctx: Ctx) {
    if !have("curl") {
        return;
    }
    let dir = tmp();
    let md = dir.path().join("mail");
    let d = ctx.spawn([
        "--maildir",
        p(&md),
        "--metrics",
        "127.0.0.1:0",
        "--max-connections",
        "1",
    ]);
    let addr = metrics_addr(&d).await;
    let mut first = d.greeted().await;
    let mut second = crate::Client::connect(d.addr()).await;
    let refused = second.read_to_end().await;
    assert!(refused.starts_with("421 4.7.0"), "{refused:?}");
    first.expect("EHLO x\r\n", "250").await;
    first.expect("MAIL FROM:<a@x>\r\n", "250").await;
    first.expect("RCPT TO:<bob@y>\r\n", "250").await;
    first.expect("DATA\r\n", "354").await;
    first
        .expect("Subject: kept\r\n\r\nhi\r\n.\r\n", "250")
        .await;
    let (values, text) = scrape_until(addr, |v| v.contains_key("smtp_sessions_open")).await;
    assert_eq!(
        value(&values, r#"smtp_connections_refused_total{reason="limit"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(value(&values, "smtp_sessions_open"), 1.0, "{text}");
    assert!(
        value(&values, "smtp_store_fsync_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        values
            .keys()
            .any(|k| k.starts_with("smtp_store_fsync_seconds_bucket{")),
        "a histogram with buckets: {text}"
    );
    first.expect("QUIT\r\n", "221").await;
    let (values, _) = scrape_until(addr, |v| v.get("smtp_sessions_open") == Some(&0.0)).await;
    assert_eq!(value(&values, "smtp_sessions_total"), 1.0);
    let help = ctx.command(["--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--metrics <ADDR>"), "{help}");
}

/// Relaying to another `smtpd`: one message delivered upstream, one the
/// upstream refuses as too big; both in the upstream-time histogram.
async fn metrics_relay_outcomes_and_upstream_time(ctx: Ctx) {
    if !have("curl") {
        return;
    }
    let up = ctx.spawn(["--sink", "--max-size", "500"]);
    let relay = ctx.spawn([
        "--relay",
        &up.addr().to_string(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let addr = metrics_addr(&relay).await;
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    for (body, want) in [
        ("Subject: small\r\n\r\nhi\r\n".to_owned(), "250"),
        (
            format!(
                "Subject: big\r\n\r\n{}",
                ("y".repeat(70) + "\r\n").repeat(20)
            ),
            "552 5.3.4",
        ),
    ] {
        c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
        c.expect("RCPT TO:<far@y.example>\r\n", "250").await;
        c.expect("DATA\r\n", "354").await;
        c.expect(&format!("{body}.\r\n"), want).await;
    }
    c.expect("QUIT\r\n", "221").await;
    let (values, text) = scrape_until(addr, |v| v.get("smtp_sessions_open") == Some(&0.0)).await;
    for (key, want) in [
        (r#"smtp_relay_total{outcome="delivered"}"#, 1.0),
        (r#"smtp_relay_total{outcome="refused"}"#, 1.0),
        ("smtp_relay_upstream_seconds_count", 2.0),
    ] {
        assert_eq!(value(&values, key), want, "{key}:\n{text}");
    }
}
