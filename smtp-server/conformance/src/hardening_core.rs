//! Hardening cases: protocol-core regressions (issue 12, items 20-26).

use std::time::{Duration, Instant};

use crate::cases::{p, stored_body, tls_server, tmp};
use crate::support::cases;
use crate::support::{Ctx, all_files};

cases!(
    hardening_timeout_bounds_data,
    hardening_data_timeout_flag,
    hardening_bare_lf_command_answered_at_once,
    hardening_long_dsn_rcpt_accepted,
    hardening_require_tls_refuses_auth_vrfy_expn,
    hardening_nul_smuggling_delivers_nothing,
    hardening_lmtp_greeting,
);

/// Enters DATA on a fresh connection and waits for the server to give up;
/// returns what it said and how long that took.
async fn idle_in_data(d: &crate::Smtpd) -> (String, Duration) {
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@y>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send("Subject: half a message\r\n").await;
    let started = Instant::now();
    let rest = c.read_to_end().await;
    (rest, started.elapsed())
}

/// Item 21: `--timeout` bounds the wait inside DATA too (not the RFC's
/// 3 minutes).
async fn hardening_timeout_bounds_data(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--timeout", "2"]);
    let (rest, took) = idle_in_data(&d).await;
    assert!(rest.starts_with("421 4.4.2"), "{rest:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(
        all_files(dir.path()).is_empty(),
        "a cut-off body was delivered"
    );
}

/// Item 21: `--data-timeout` sets the DATA wait alone.
async fn hardening_data_timeout_flag(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--data-timeout", "1", "--timeout", "30"]);
    let (rest, took) = idle_in_data(&d).await;
    assert!(rest.starts_with("421 4.4.2"), "{rest:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The command wait stays the longer one.
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.expect("NOOP\r\n", "250").await;
    // Zero is refused like --timeout 0.
    let out = ctx
        .command(["--sink", "--data-timeout", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

/// Item 22: `EHLO x\n` typed with netcat gets its answer at once.
async fn hardening_bare_lf_command_answered_at_once(ctx: Ctx) {
    let d = ctx.spawn(["--sink"]);
    let mut c = d.greeted().await;
    let started = Instant::now();
    let r = c.cmd("EHLO x\n").await;
    assert!(r.starts_with("500 5.5.2"), "{r:?}");
    assert!(r.contains("LF"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = c.cmd("QUIT\n").await;
    assert!(r.starts_with("500 5.5.2"), "{r:?}");
    // After the CRLF that ends that line, commands work again.
    c.send("\r\n").await;
    c.expect("QUIT\r\n", "221").await;
}

/// Item 23: a valid 683-octet DSN RCPT line is accepted (and delivered).
async fn hardening_long_dsn_rcpt_accepted(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    // A long (valid) address and a long (valid, at most 500 octets) ORCPT.
    let to = format!("{}@{}.example.net", "b".repeat(64), "d".repeat(60));
    let head = format!("RCPT TO:<{to}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;");
    let tail = "@example.net\r\n";
    let rcpt = format!("{head}{}{tail}", "o".repeat(683 - head.len() - tail.len()));
    assert_eq!(rcpt.len(), 683);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    let envid = "e".repeat(100);
    c.expect(
        &format!("MAIL FROM:<a@x> RET=HDRS ENVID={envid}\r\n"),
        "250",
    )
    .await;
    c.expect(&rcpt, "250 2.1.5").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: dsn\r\n\r\nbody\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    let text = stored_body(dir.path(), &to);
    assert!(
        text.ends_with("body\r\n") || text.ends_with("body\n"),
        "{text:?}"
    );
}

/// Item 24: `--require-tls` refuses AUTH, VRFY and EXPN before STARTTLS.
async fn hardening_require_tls_refuses_auth_vrfy_expn(ctx: Ctx) {
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").expect("users");
    let (d, _cert) = tls_server(
        &ctx,
        dir.path(),
        &[
            "--sink",
            "--require-tls",
            "--auth",
            p(&users),
            "--auth-insecure",
        ],
    );
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    // AUTH PLAIN alice/s3cret: refused before TLS even though plaintext AUTH is allowed.
    c.expect("AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", "530 5.7.0")
        .await;
    c.expect("VRFY alice\r\n", "530 5.7.0").await;
    c.expect("EXPN staff\r\n", "530 5.7.0").await;
    c.expect("MAIL FROM:<a@x>\r\n", "530 5.7.0").await;
    c.expect("QUIT\r\n", "221").await;
}

/// Item 25: `\r\n\0.\r\n` (a smuggling variant for receivers that drop
/// NUL) is refused with `550 5.6.0`, and nothing at all is delivered.
async fn hardening_nul_smuggling_delivers_nothing(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<victim@y>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send_bytes(
        b"Subject: real\r\n\r\nhello\r\n\x00.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
    )
    .await;
    let r = c.reply().await;
    assert!(r.starts_with("550 5.6.0"), "{r:?}");
    c.expect("QUIT\r\n", "221").await;
    assert!(
        all_files(dir.path()).is_empty(),
        "{:?}",
        all_files(dir.path())
    );
}

/// Item 20: an LMTP server does not greet as ESMTP.
async fn hardening_lmtp_greeting(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--lmtp"]);
    let mut c = crate::Client::connect(d.addr()).await;
    let g = c.reply().await;
    assert!(g.starts_with("220 ") && g.contains(" LMTP "), "{g:?}");
    assert!(!g.contains("ESMTP"), "{g:?}");
    c.expect("LHLO x\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
}
