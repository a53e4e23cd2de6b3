//! The cases. Each starts its own server process with `smtpd` flags.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Ctx, TestCert, all_files, assert_stored, cases, delivered, have};

cases!(
    greeting_ehlo_quit,
    bad_flags_exit_2,
    pipelined_multi_recipient,
    lmtp_one_reply_per_recipient,
    lmtp_over_a_unix_socket,
    lmtp_refuses_helo_and_ehlo,
    max_connections_421,
    max_connections_per_ip,
    max_connections_unix_421,
    idle_and_trickle_timeout_421,
    smtp_smuggling_variants_deliver_nothing,
    starttls_injection_is_discarded,
    require_tls_refuses_mail_before_starttls,
    implicit_tls,
    implicit_tls_handshake_times_out_silently,
    disconnect_mid_data_delivers_nothing,
    traversal_recipients_refused,
    domains_and_postmaster,
    noop_flood_without_reading_is_paused,
    ten_thousand_pipelined_rcpts,
    ten_mib_command_line,
    oversized_message_552,
    proxy_protocol_v1,
    graceful_shutdown_on_sigterm,
    debug_server_prints_messages,
    maildir_survives_sigkill_after_250,
    lettre_plain_send,
    lettre_starttls_send,
    lettre_auth_plain_required,
    lettre_auth_login_smtputf8_8bit,
    lettre_twenty_mib,
    python_smtplib_starttls_login,
    curl_smtp_and_smtps,
    relay_chain_is_byte_identical,
    relay_to_an_smtp_upstream_on_a_unix_socket,
    relay_propagates_per_recipient_refusals,
    relay_upstream_down_or_silent_451,
    relay_is_not_open,
    relay_local_or_relay_in_one_transaction,
    relay_starttls_mandatory,
    relay_upstream_lost_mid_transaction_delivers_nothing,
    relay_to_postfix_smtp_sink,
    relay_tls_verify,
);

pub(crate) fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

const ENVELOPE: &str = "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n";

async fn greeting_ehlo_quit(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--hostname", "mx.conformance.test"]);
    let mut c = crate::Client::connect(d.addr()).await;
    let g = c.reply().await;
    assert!(g.starts_with("220 mx.conformance.test "), "{g}");
    let ehlo = c
        .expect("EHLO client.example\r\n", "250-mx.conformance.test")
        .await;
    for kw in [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "SIZE ",
    ] {
        assert!(ehlo.contains(kw), "{kw}: {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS"), "no TLS configured: {ehlo}");
    c.expect("NOOP\r\n", "250 2.0.0").await;
    c.expect("VRFY bob\r\n", "252").await;
    c.expect("BOGUS\r\n", "500 5.5.2").await;
    c.expect("RCPT TO:<b@y>\r\n", "503 5.5.1").await;
    assert_eq!(c.cmd("QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert_eq!(c.read_to_end().await, "");
}

async fn bad_flags_exit_2(ctx: Ctx) {
    for args in [
        &["--bogus"][..],
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["--auth", "/nonexistent/users"],
        &["--auth", "/nonexistent/users", "--auth-insecure"],
        &["--require-tls"],
        &["--maildir", "a", "--mbox", "b"],
        &["--timeout", "0"],
    ] {
        let out = ctx.command(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

async fn pipelined_multi_recipient(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let mut c = d.greeted().await;
    assert!(c.cmd("EHLO client\r\n").await.contains("250-PIPELINING"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<e@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("second\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("221 "));
    for who in ["b@y", "c@y", "d@y"] {
        assert_stored(dir.path(), who, "a@x", "\r\n\r\nbody\r\n");
    }
    assert_stored(dir.path(), "e@y", "a@x", "\r\nsecond\r\n");
}

async fn lmtp_one_reply_per_recipient(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn([
        "--lmtp",
        "--maildir",
        p(dir.path()),
        "--hostname",
        "lmtp.test",
    ]);
    let mut c = d.greeted().await;
    c.expect("LHLO client\r\n", "250-lmtp.test").await;
    c.send(
        "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<\"../bad\"@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n",
    )
    .await;
    for want in ["250 2.1.0", "250 2.1.5", "550 5.1.3", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("Subject: l\r\n\r\nhi\r\n.\r\n").await;
    // RFC 2033: one reply per accepted recipient, in order.
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.expect("NOOP\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    assert_eq!(delivered(dir.path(), "d@y").len(), 1);
    assert_eq!(all_files(dir.path()).len(), 2);
}

async fn lmtp_refuses_helo_and_ehlo(ctx: Ctx) {
    let d = ctx.spawn(["--lmtp", "--sink"]);
    let mut c = d.greeted().await;
    for cmd in ["HELO x\r\n", "EHLO x\r\n"] {
        let r = c.cmd(cmd).await;
        assert!(r.starts_with('5'), "{cmd}: {r}");
    }
    c.expect("MAIL FROM:<a@x>\r\n", "503").await;
    c.expect("LHLO x\r\n", "250").await;
}

#[cfg(unix)]
async fn lmtp_over_a_unix_socket(ctx: Ctx) {
    use tokio::net::UnixStream;
    let dir = tmp();
    let sock = dir.path().join("lmtp.sock");
    let root = dir.path().join("mail");
    let d = ctx.spawn([
        "--lmtp",
        "--hostname",
        "lmtp.test",
        "--maildir",
        p(&root),
        "--listen-unix",
        p(&sock),
    ]);
    let mut c = crate::Client::new(UnixStream::connect(&sock).await.expect("unix connect"));
    assert!(c.reply().await.starts_with("220 lmtp.test"));
    c.expect("LHLO client\r\n", "250-lmtp.test").await;
    c.expect("MAIL FROM:<a@example.org>\r\n", "250 2.1.0").await;
    c.expect("RCPT TO:<one@example.net>\r\n", "250 2.1.5").await;
    c.expect("RCPT TO:<two@example.net>\r\n", "250 2.1.5").await;
    c.expect("DATA\r\n", "354 ").await;
    c.send("Subject: over unix\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(
        c.reply().await,
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(
        c.reply().await,
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(c.cmd("QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert_eq!(delivered(&root, "one@example.net").len(), 1);
    assert_eq!(delivered(&root, "two@example.net").len(), 1);
    drop(d);
}

#[cfg(not(unix))]
async fn lmtp_over_a_unix_socket(_ctx: Ctx) {}

async fn max_connections_421(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--max-connections", "1"]);
    let mut first = d.greeted().await;
    let mut second = crate::Client::connect(d.addr()).await;
    assert_eq!(
        second.read_to_end().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    first.expect("NOOP\r\n", "250").await;
    first.expect("QUIT\r\n", "221").await;
    assert_eq!(first.read_to_end().await, "");
    drop(first);
    // The slot comes back.
    let mut third = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = crate::Client::connect(d.addr()).await;
        if c.reply().await.starts_with("220 ") {
            third = Some(c);
            break;
        }
    }
    third.expect("served again").expect("QUIT\r\n", "221").await;
}

async fn max_connections_per_ip(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--max-connections-per-ip", "2"]);
    let _a = d.greeted().await;
    let _b = d.greeted().await;
    let mut c = crate::Client::connect(d.addr()).await;
    assert!(c.read_to_end().await.starts_with("421 4.7.0"));
}

async fn idle_and_trickle_timeout_421(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--timeout", "1"]);
    // Idle after EHLO.
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    let started = Instant::now();
    let rest = c.read_to_end().await;
    assert!(rest.starts_with("421 4.4.2"), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A command trickled byte by byte does not keep the session alive.
    let mut t = d.greeted().await;
    let started = Instant::now();
    let mut closed = String::new();
    for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP".iter() {
        if t.io.get_mut().write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), t.io.read(&mut buf)).await
        {
            closed.push_str(&String::from_utf8_lossy(&buf[..n]));
            break;
        }
    }
    if closed.is_empty() {
        closed = t.read_to_end().await;
    }
    assert!(closed.starts_with("421 4.4.2"), "{closed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

async fn smtp_smuggling_variants_deliver_nothing(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let smuggled =
        "MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
    for end in [
        "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n", "\n.\r",
    ] {
        let mut c = d.greeted().await;
        c.expect("EHLO x\r\n", "250").await;
        c.send(ENVELOPE).await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send(&format!(
            "Subject: real\r\n\r\nhello{end}{smuggled}.\r\nQUIT\r\n"
        ))
        .await;
        let out = c.read_to_end().await;
        assert!(!out.contains("354"), "{end:?}: {out}");
        assert!(out.starts_with("550 5.5.2"), "{end:?}: {out}");
    }
    assert!(all_files(dir.path()).is_empty(), "nothing delivered");
    let mut c = d.greeted().await;
    c.expect("QUIT\r\n", "221").await;
}

/// Starts a server with a throwaway certificate; returns it with the cert.
pub(crate) fn tls_server(ctx: &Ctx, dir: &Path, extra: &[&str]) -> (crate::Smtpd, TestCert) {
    let cert = TestCert::new();
    let (c, k) = cert.write_pem(dir);
    let mut args = vec!["--tls-cert", p(&c), "--tls-key", p(&k)];
    args.extend_from_slice(extra);
    (ctx.spawn(args), cert)
}

async fn starttls_injection_is_discarded(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let (d, cert) = tls_server(&ctx, dir.path(), &["--maildir", p(&md)]);
    let mut c = d.greeted().await;
    assert!(c.cmd("EHLO x\r\n").await.contains("STARTTLS"));
    c.send("STARTTLS\r\nMAIL FROM:<x@y>\r\n").await;
    assert!(c.reply().await.starts_with("220"));
    let tcp = c.io.into_inner();
    let tls = cert
        .connector()
        .connect(TestCert::server_name(), tcp)
        .await
        .expect("handshake");
    let mut t = crate::Client::new(tls);
    let ehlo = t.cmd("EHLO x\r\n").await;
    assert!(
        ehlo.starts_with("250") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    // The injected MAIL was not executed.
    t.expect("RCPT TO:<b@y>\r\n", "503").await;
    t.expect("STARTTLS\r\n", "5").await;
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
    t.expect("QUIT\r\n", "221").await;
}

async fn require_tls_refuses_mail_before_starttls(ctx: Ctx) {
    let dir = tmp();
    let (d, cert) = tls_server(&ctx, dir.path(), &["--sink", "--require-tls"]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "530 5.7.0").await;
    let mut t = cert.starttls(c).await;
    t.expect("EHLO x\r\n", "250").await;
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
}

async fn implicit_tls(ctx: Ctx) {
    let dir = tmp();
    let (d, cert) = tls_server(
        &ctx,
        dir.path(),
        &["--sink", "--listen-tls", "127.0.0.1:0", "--require-tls"],
    );
    let tcp = TcpStream::connect(d.addrs[1]).await.expect("connect");
    let tls = cert
        .connector()
        .connect(TestCert::server_name(), tcp)
        .await
        .expect("handshake");
    let mut t = crate::Client::new(tls);
    assert!(t.reply().await.starts_with("220"));
    let ehlo = t.expect("EHLO x\r\n", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let r = t.cmd("STARTTLS\r\n").await;
    assert!(r.starts_with('5'), "{r}");
    // --require-tls is satisfied by implicit TLS.
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
    t.expect("QUIT\r\n", "221").await;
    // Garbage instead of a ClientHello: closed without a clear-text reply.
    let mut g = TcpStream::connect(d.addrs[1]).await.expect("connect");
    g.write_all(b"EHLO plaintext\r\n\r\n\r\n\r\n")
        .await
        .expect("write");
    let mut v = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut v))
        .await
        .expect("closed");
    assert!(!String::from_utf8_lossy(&v).contains("220"), "{v:?}");
}

async fn implicit_tls_handshake_times_out_silently(ctx: Ctx) {
    let dir = tmp();
    let (d, _cert) = tls_server(
        &ctx,
        dir.path(),
        &["--sink", "--listen-tls", "127.0.0.1:0", "--timeout", "1"],
    );
    let mut idle = TcpStream::connect(d.addrs[1]).await.expect("connect");
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), idle.read_to_end(&mut got))
        .await
        .expect("closed well before 6 s")
        .ok();
    assert!(got.is_empty(), "no clear-text reply: {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

async fn disconnect_mid_data_delivers_nothing(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.send(ENVELOPE).await;
    for _ in 0..3 {
        c.reply().await;
    }
    c.send("Subject: cut\r\n\r\nhalf a message\r\n").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(all_files(dir.path()).is_empty());
    let mut c = d.greeted().await;
    c.expect("QUIT\r\n", "221").await;
}

async fn traversal_recipients_refused(ctx: Ctx) {
    let parent = tmp();
    let root = parent.path().join("mail");
    let d = ctx.spawn(["--maildir", p(&root)]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    for bad in [
        "a/b@y",
        "\"../../evil\"@y",
        "\"..\\\\x\"@y",
        "../x@y",
        "\"a/../../b\"@y",
        "\"a\\\x01b\"@y",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{bad}>\r\n")).await;
        assert!(r.starts_with('5'), "{bad}: {r}");
    }
    c.expect("RCPT TO:<a/b@y>\r\n", "550 5.1.3").await;
    c.expect("DATA\r\n", "554").await;
    c.expect("QUIT\r\n", "221").await;
    assert!(all_files(parent.path()).is_empty());
}

async fn domains_and_postmaster(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn([
        "--maildir",
        p(dir.path()),
        "--domain",
        "example.net",
        "--domain",
        "example.org",
    ]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@elsewhere.example>\r\n", "550 5.7.1")
        .await;
    c.expect("RCPT TO:<b@Example.NET>\r\n", "250").await;
    c.expect("RCPT TO:<c@example.org>\r\n", "250").await;
    c.expect("RCPT TO:<PostMaster>\r\n", "250").await;
    c.expect("RCPT TO:<postmaster@Example.ORG>\r\n", "250")
        .await;
    // RFC 5321 §4.5.1: postmaster at our own domains only.
    c.expect("RCPT TO:<postmaster@elsewhere.example>\r\n", "550 5.7.1")
        .await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: d\r\n\r\nhi\r\n.\r\n", "250").await;
    assert!(
        all_files(dir.path())
            .iter()
            .all(|f| !p(f).contains("elsewhere.example"))
    );
    assert_eq!(delivered(dir.path(), "b@example.net").len(), 1);
}

async fn noop_flood_without_reading_is_paused(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--junk-command-limit", "0"]);
    let rss_before = d.rss_kib();
    let mut flood = TcpStream::connect(d.addr()).await.expect("connect");
    let chunk = "NOOP\r\n".repeat(10_000);
    let mut sent = 0usize;
    let mut stalled = false;
    // 100,000 NOOPs at least, then on until writes stall (bounded).
    while sent < 256 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(1), flood.write_all(chunk.as_bytes())).await
        {
            Ok(r) => {
                r.expect("write");
                sent += chunk.len();
            }
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(
        stalled,
        "the server kept reading {sent} bytes without its replies being read"
    );
    assert!(sent >= 100_000 * 6 || stalled);
    if let (Some(a), Some(b)) = (rss_before, d.rss_kib()) {
        assert!(b < a + 32 * 1024, "RSS grew from {a} KiB to {b} KiB");
    }
    let mut other = d.greeted().await;
    other.expect("EHLO other\r\n", "250").await;
    other.expect("QUIT\r\n", "221").await;
}

async fn ten_thousand_pipelined_rcpts(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--error-delay-ms", "1"]);
    let mut c = d.greeted().await;
    assert!(c.cmd("EHLO x\r\n").await.contains("PIPELINING"));
    let mut batch = String::from("MAIL FROM:<a@x>\r\n");
    for i in 0..10_000 {
        batch.push_str(&format!("RCPT TO:<r{i}@y>\r\n"));
    }
    batch.push_str("DATA\r\n");
    let (mut rd, mut wr) = c.io.into_inner().into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(batch.as_bytes()).await;
        wr
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out))
        .await
        .expect("closed in time");
    let _wr = writer.await;
    let text = String::from_utf8(out).expect("UTF-8");
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let mut want = vec!["250 2.1.0 Sender OK"];
    want.extend(std::iter::repeat_n("250 2.1.5 Recipient OK", 100));
    want.extend(std::iter::repeat_n("452 4.5.3 Too many recipients", 120));
    want.push("421 4.7.0 Too many errors, closing connection");
    assert_eq!(lines, want);
    assert!(all_files(dir.path()).is_empty(), "nothing delivered");
    let mut c = d.greeted().await;
    c.expect("QUIT\r\n", "221").await;
}

async fn ten_mib_command_line(ctx: Ctx) {
    let d = ctx.spawn(["--sink"]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..160 {
        c.send_bytes(&chunk).await;
    }
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.io.read(&mut b))
            .await
            .is_err(),
        "replied before the CRLF"
    );
    assert_eq!(c.cmd("\r\n").await, "500 5.5.2 Line too long\r\n");
    c.expect("NOOP\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
}

async fn oversized_message_552(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn([
        "--maildir",
        p(dir.path()),
        "--max-size",
        "1000",
        "--max-recipients",
        "2",
    ]);
    let mut c = d.greeted().await;
    assert!(c.cmd("EHLO x\r\n").await.contains("SIZE 1000"));
    c.expect("MAIL FROM:<a@x> SIZE=5000\r\n", "552 5.3.4").await;
    c.expect("MAIL FROM:<a@x> SIZE=500\r\n", "250").await;
    c.expect("RCPT TO:<b@y>\r\n", "250").await;
    c.expect("RCPT TO:<c@y>\r\n", "250").await;
    c.expect("RCPT TO:<d@y>\r\n", "452 4.5.3").await;
    c.expect("DATA\r\n", "354").await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(900).repeat(3));
    c.expect(&big, "552 5.3.4").await;
    c.expect("NOOP\r\n", "250").await;
    assert!(all_files(dir.path()).is_empty());
}

async fn proxy_protocol_v1(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn([
        "--maildir",
        p(dir.path()),
        "--proxy-protocol",
        "--hostname",
        "proxy.test",
    ]);
    let mut c = crate::Client::connect(d.addr()).await;
    c.send("PROXY TCP4 198.51.100.7 203.0.113.1 51000 25\r\n")
        .await;
    assert!(c.reply().await.starts_with("220 proxy.test"));
    c.expect("EHLO client\r\n", "250").await;
    c.expect(ENVELOPE, "250").await;
    c.reply().await;
    c.reply().await;
    c.expect("Subject: p\r\n\r\nvia proxy\r\n.\r\n", "250")
        .await;
    c.expect("QUIT\r\n", "221").await;
    let text = assert_stored(dir.path(), "b@y", "a@x", "\r\n\r\nvia proxy\r\n");
    let received = text.split("\r\nReceived: ").nth(1).unwrap_or("");
    let received = received.split("\r\nSubject").next().unwrap_or("");
    assert!(received.contains("198.51.100.7"), "{received}");
    assert!(received.contains("proxy.test"), "{received}");
    assert!(!received.contains("127.0.0.1"), "{received}");
    // Without a PROXY header: closed, not a word said.
    let mut bad = crate::Client::connect(d.addr()).await;
    bad.send("EHLO x\r\n").await;
    assert_eq!(bad.read_to_end().await, "");
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
}

async fn graceful_shutdown_on_sigterm(ctx: Ctx) {
    let dir = tmp();
    let mut d = ctx.spawn(["--maildir", p(dir.path()), "--grace-period", "2"]);
    let mut idle = d.greeted().await;
    idle.expect("EHLO idle\r\n", "250").await;
    let mut busy = d.greeted().await;
    busy.expect("EHLO busy\r\n", "250").await;
    busy.expect("MAIL FROM:<a@x>\r\n", "250").await;
    let mut stuck = d.greeted().await;
    stuck.expect("EHLO stuck\r\n", "250").await;
    stuck.expect("MAIL FROM:<a@x>\r\n", "250").await;

    d.terminate();
    assert!(idle.read_to_end().await.starts_with("421 4.3.2"));
    // A transaction in progress may finish, then the session closes.
    busy.expect("RCPT TO:<b@y>\r\n", "250").await;
    busy.expect("DATA\r\n", "354").await;
    busy.expect("Subject: s\r\n\r\nbye\r\n.\r\n", "250").await;
    assert!(busy.read_to_end().await.starts_with("421 4.3.2"));
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    // New connections are not served.
    match TcpStream::connect(d.addr()).await {
        Err(_) => {}
        Ok(mut s) => {
            let mut v = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut v)).await;
            assert!(!String::from_utf8_lossy(&v).starts_with("220"), "{v:?}");
        }
    }
    // A session that does not finish is closed after the grace period.
    let started = Instant::now();
    assert!(stuck.read_to_end().await.starts_with("421 4.3.2"));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(d.wait().await, "clean exit after SIGTERM");
}

async fn debug_server_prints_messages(ctx: Ctx) {
    let mut d = ctx.spawn_with(
        ["--hostname", "dbg.test", "--domain", "example.net"],
        Stdio::piped(),
    );
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@elsewhere>\r\n", "550 5.7.1").await;
    c.expect("RCPT TO:<b@example.net>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: dbg\r\n\r\nhello\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    d.terminate();
    assert!(d.wait().await);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut d.child.stdout.take().expect("stdout"), &mut out)
        .expect("read stdout");
    assert!(
        out.contains("---------- MESSAGE FOLLOWS ----------\nX-Peer: 127.0.0.1\nX-MailFrom: a@x\nX-RcptTo: b@example.net\n\n"),
        "{out}"
    );
    assert!(
        out.contains("Subject: dbg\n\nhello\n------------ END MESSAGE ------------\n"),
        "{out}"
    );
}

async fn maildir_survives_sigkill_after_250(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let mut d = ctx.spawn(["--maildir", p(&md), "--hostname", "kill.test"]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<alice@example.org>\r\n", "250").await;
    c.expect("RCPT TO:<bob@example.net>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    let body = "Subject: durable\r\n\r\nline one\r\nthe very last line\r\n";
    c.expect(&format!("{body}.\r\n"), "250 2.0.0").await;
    // No QUIT, no shutdown: the process dies right after the 250.
    d.child.kill().expect("SIGKILL");
    d.child.wait().expect("wait");
    let text = assert_stored(&md, "bob@example.net", "alice@example.org", body);
    assert!(text.contains("by kill.test"), "{text}");
    assert_eq!(all_files(&md).len(), 1, "{:?}", all_files(&md));
    // After a restart the store is served as before.
    let d = ctx.spawn(["--maildir", p(&md)]);
    let mut c = d.greeted().await;
    c.expect("QUIT\r\n", "221").await;
}

fn message(to: &[&str]) -> Message {
    let mut b = Message::builder()
        .from("Alice <alice@example.org>".parse().expect("from"))
        .subject("hello")
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        b = b.to(t.parse().expect("to"));
    }
    // lettre always appends CRLF.CRLF, so a body ending in CRLF would get a blank line.
    b.body(String::from("Hi there\r\n.leading dot"))
        .expect("message")
}

fn transport(port: u16, tls: Tls) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(tls)
}

fn tls_params(cert: &TestCert) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_der(cert.cert.to_vec()).expect("cert"))
        .build_rustls()
        .expect("tls parameters")
}

async fn lettre_plain_send(ctx: Ctx) {
    // The default runtime (a thread per CPU), then `--threads 1`.
    for threads in [None, Some("1")] {
        lettre_plain_send_on(&ctx, threads).await;
    }
}

async fn lettre_plain_send_on(ctx: &Ctx, threads: Option<&str>) {
    let dir = tmp();
    let mut args = vec!["--maildir", p(dir.path())];
    args.extend(threads.map(|n| ["--threads", n]).into_iter().flatten());
    let d = ctx.spawn(args);
    let mailer = transport(d.addr().port(), Tls::None).build();
    mailer
        .send(message(&["bob@example.net", "carol@example.net"]))
        .await
        .expect("sent");
    for who in ["bob@example.net", "carol@example.net"] {
        let text = assert_stored(
            dir.path(),
            who,
            "alice@example.org",
            "Hi there\r\n.leading dot\r\n",
        );
        assert!(text.contains("Subject: hello\r\n"));
        assert!(
            text.contains("(unknown [127.0.0.1])\r\n\tby conformance.test"),
            "{text}"
        );
    }
}

async fn lettre_starttls_send(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let (d, cert) = tls_server(&ctx, dir.path(), &["--maildir", p(&md)]);
    let mailer = transport(d.addr().port(), Tls::Required(tls_params(&cert))).build();
    mailer
        .send(message(&["bob@example.net"]))
        .await
        .expect("sent");
    let text = assert_stored(
        &md,
        "bob@example.net",
        "alice@example.org",
        "leading dot\r\n",
    );
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
}

async fn lettre_auth_plain_required(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").expect("users");
    let (d, cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--auth", p(&users), "--require-auth"],
    );
    let port = d.addr().port();
    let good = transport(port, Tls::Required(tls_params(&cert)))
        .credentials(Credentials::new("alice".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    good.send(message(&["bob@example.net"]))
        .await
        .expect("sent");
    let text = assert_stored(
        &md,
        "bob@example.net",
        "alice@example.org",
        "leading dot\r\n",
    );
    assert!(text.contains("with ESMTPSA"), "{text}");
    let bad = transport(port, Tls::Required(tls_params(&cert)))
        .credentials(Credentials::new("alice".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let e = bad
        .send(message(&["bob@example.net"]))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("535") || e.is_permanent(), "{e}");
    // Without TLS, AUTH is not offered, and MAIL needs AUTH.
    let plain = transport(port, Tls::None)
        .credentials(Credentials::new("alice".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    assert!(plain.send(message(&["bob@example.net"])).await.is_err());
    assert_eq!(delivered(&md, "bob@example.net").len(), 1);
    // Credentials never reach the log.
    assert!(!d.log().contains("s3cret"), "{}", d.log());
}

async fn lettre_auth_login_smtputf8_8bit(ctx: Ctx) {
    use lettre::message::SinglePart;
    use lettre::message::header::ContentTransferEncoding;
    let dir = tmp();
    let md = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "jörg:pässword\n").expect("users");
    let (d, cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--auth", p(&users)],
    );
    let rcpt = "jörg@bücher.example";
    let body = "Grüße aus Köln — ¡olé! 日本語\r\nzweite Zeile\r\n";
    let msg = Message::builder()
        .from("Ålice <ålice@exämple.org>".parse().expect("from"))
        .to(rcpt.parse().expect("to"))
        .subject("8bit")
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .header(ContentTransferEncoding::EightBit)
                .body(body.to_owned()),
        )
        .expect("message");
    let raw = msg.formatted();
    let mailer = transport(d.addr().port(), Tls::Required(tls_params(&cert)))
        .credentials(Credentials::new("jörg".into(), "pässword".into()))
        .authentication(vec![Mechanism::Login])
        .build();
    mailer.send(msg).await.expect("sent");
    let mut tail = raw.clone();
    tail.extend_from_slice(b"\r\n");
    let text = assert_stored(
        &md,
        rcpt,
        "ålice@exämple.org",
        std::str::from_utf8(&tail).expect("UTF-8"),
    );
    assert!(text.contains("with UTF8SMTPSA"), "{text}");
}

async fn lettre_twenty_mib(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let mailer = transport(d.addr().port(), Tls::None).build();
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let mut raw =
        b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n".to_vec();
    while raw.len() < 20 * 1024 * 1024 {
        raw.extend_from_slice(line.as_bytes());
    }
    raw.truncate(raw.len() - 2);
    let env = Envelope::new(
        Some("alice@example.org".parse().expect("from")),
        vec!["bob@example.net".parse().expect("to")],
    )
    .expect("envelope");
    mailer.send_raw(&env, &raw).await.expect("sent");
    let files = delivered(dir.path(), "bob@example.net");
    assert_eq!(files.len(), 1);
    let stored = std::fs::read(&files[0]).expect("read");
    raw.extend_from_slice(b"\r\n");
    let lf = String::from_utf8(raw).expect("ASCII").replace("\r\n", "\n");
    assert!(
        stored.ends_with(lf.as_bytes()),
        "the body is stored with LF line ends"
    );
}

const PY_SCRIPT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = EmailMessage()
m["From"] = "alice@example.org"
m["To"] = "bob@example.net"
m["Subject"] = "from python"
m.set_content("Hello from smtplib\n")
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="py.test", timeout=10) as s:
    s.starttls(context=ctx)
    s.login("alice", "s3cret")
    s.send_message(m)
"#;

async fn python_smtplib_starttls_login(ctx: Ctx) {
    if !have("python3") {
        return;
    }
    let dir = tmp();
    let md = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").expect("users");
    let (d, _cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--auth", p(&users), "--require-auth"],
    );
    let port = d.addr().port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", PY_SCRIPT, "127.0.0.1", &port])
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = assert_stored(
        &md,
        "bob@example.net",
        "alice@example.org",
        "\r\n\r\nHello from smtplib\r\n",
    );
    assert!(text.contains("Subject: from python\r\n"), "{text}");
    assert!(text.contains("with ESMTPSA"), "{text}");
}

async fn curl_smtp_and_smtps(ctx: Ctx) {
    if !have("curl") {
        return;
    }
    let dir = tmp();
    let md = dir.path().join("mail");
    let (d, _cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--listen-tls", "127.0.0.1:0"],
    );
    let (plain, tls) = (d.addrs[0], d.addrs[1]);
    let file = dir.path().join("msg.eml");
    for (url, rcpt, extra) in [
        (format!("smtp://{plain}"), "c@d.example", None),
        (format!("smtps://{tls}"), "e@d.example", Some("--insecure")),
    ] {
        let body =
            format!("From: a@b.example\r\nTo: {rcpt}\r\nSubject: curl\r\n\r\nhello from curl\r\n");
        std::fs::write(&file, &body).expect("write");
        let mut args = vec![
            "-sS".to_owned(),
            "--max-time".to_owned(),
            "10".to_owned(),
            "--url".to_owned(),
            url.clone(),
            "--mail-from".to_owned(),
            "a@b.example".to_owned(),
            "--mail-rcpt".to_owned(),
            rcpt.to_owned(),
            "--upload-file".to_owned(),
            p(&file).to_owned(),
        ];
        args.extend(extra.map(str::to_owned));
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl").args(args).output().expect("curl")
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = assert_stored(&md, rcpt, "a@b.example", &body);
        if extra.is_some() {
            assert!(text.contains("with ESMTPS"), "{text}");
        }
    }
}

/// Sends one message through `c` (greeted) and returns the replies to the
/// RCPTs; the message is sent only if one was accepted.
pub(crate) async fn send_through<S>(
    c: &mut crate::Client<S>,
    from: &str,
    rcpts: &[&str],
    body: &str,
) -> Vec<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect(&format!("MAIL FROM:<{from}>\r\n"), "250").await;
    let mut replies = Vec::new();
    for r in rcpts {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>\r\n")).await);
    }
    if replies.iter().any(|r| r.starts_with("250")) {
        c.expect("DATA\r\n", "354").await;
        c.expect(&format!("{body}.\r\n"), "250").await;
    }
    replies
}

/// The one message for `rcpt` under `root`, trace headers included, in wire
/// form (CRLF); checks it is stored with LF line ends and no CR.
pub(crate) fn stored_body(root: &Path, rcpt: &str) -> String {
    let files = delivered(root, rcpt);
    assert_eq!(files.len(), 1, "{rcpt}: {:?}", all_files(root));
    let text = String::from_utf8(std::fs::read(&files[0]).expect("read")).expect("UTF-8");
    assert!(
        !text.contains('\r'),
        "Maildir files have LF line ends: {text:?}"
    );
    text.replace('\n', "\r\n")
}

async fn relay_chain_is_byte_identical(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path()), "--hostname", "upstream.test"]);
    let relay = ctx.spawn([
        "--relay",
        &up.addr().to_string(),
        "--hostname",
        "relay.test",
    ]);
    // On the wire (dot-stuffed): a line ".leading dot" and a line ".".
    let body = "Subject: through\r\n\r\n..leading dot\r\n..\r\nx\r\n\r\nlast line\r\n";
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "alice@example.org",
        &["bob@example.net", "carol@example.com"],
        body,
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    c.expect("QUIT\r\n", "221").await;
    for who in ["bob@example.net", "carol@example.com"] {
        let text = stored_body(dir.path(), who);
        // Upstream's own trace, then ours, then the body byte for byte
        // (dot-unstuffed once by the relay, stuffed again on the way up).
        assert!(
            text.starts_with(&format!(
                "Return-Path: <alice@example.org>\r\nDelivered-To: {who}\r\nReceived: "
            )),
            "{text}"
        );
        let ours = text.split("\r\nReceived: ").nth(2).unwrap_or("");
        assert!(ours.contains("by relay.test"), "{text}");
        assert!(
            text.ends_with(
                "\r\nSubject: through\r\n\r\n.leading dot\r\n.\r\nx\r\n\r\nlast line\r\n"
            ),
            "{text:?}"
        );
        assert_eq!(text.matches("Return-Path:").count(), 1, "{text}");
        assert_eq!(text.matches("Delivered-To:").count(), 1, "{text}");
    }
}

/// Issue 17: `--relay unix:PATH` reaches an SMTP upstream on a Unix
/// socket (here one of ours, `--listen-unix`), several recipients in one
/// transaction as with TCP.
async fn relay_to_an_smtp_upstream_on_a_unix_socket(ctx: Ctx) {
    let dir = tmp();
    let sock = dir.path().join("smtp.sock");
    let root = dir.path().join("mail");
    let _up = ctx.spawn([
        "--maildir",
        p(&root),
        "--hostname",
        "upstream.test",
        "--listen-unix",
        p(&sock),
    ]);
    let upstream = format!("unix:{}", p(&sock));
    let relay = ctx.spawn(["--relay", &upstream, "--hostname", "relay.test"]);
    let mut c = relay.greeted().await;
    let body = "Subject: over a unix socket\r\n\r\n..dot\r\nhi\r\n";
    let r = send_through(
        &mut c,
        "a@example.org",
        &["b@example.net", "c@example.com"],
        body,
    )
    .await;
    assert!(
        r.iter().all(|r| r.starts_with("250")),
        "{r:?}\n{}",
        relay.log()
    );
    c.expect("QUIT\r\n", "221").await;
    for who in ["b@example.net", "c@example.com"] {
        let text = stored_body(&root, who);
        assert!(text.contains("by relay.test"), "{text}");
        assert!(
            text.ends_with("\r\nSubject: over a unix socket\r\n\r\n.dot\r\nhi\r\n"),
            "{text:?}"
        );
    }
    let lines = crate::hardening_ops::log_lines(&relay, "message accepted", 1).await;
    let want = format!("relay:{upstream} (250");
    assert!(
        lines.iter().any(|l| l.contains(&want)),
        "{want:?} in {lines:?}"
    );
}

async fn relay_propagates_per_recipient_refusals(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path()), "--domain", "example.net"]);
    let relay = ctx.spawn(["--relay", &up.addr().to_string()]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@example.org",
        &[
            "ok@example.net",
            "no@elsewhere.example",
            "../bad@example.net",
            "ok2@example.net",
        ],
        "Subject: mixed\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(
        r[1].starts_with("550 5.7.1"),
        "the upstream's refusal: {r:?}"
    );
    assert!(r[2].starts_with("501"), "{r:?}");
    assert!(r[3].starts_with("250"), "{r:?}");
    assert_eq!(delivered(dir.path(), "ok@example.net").len(), 1);
    assert_eq!(delivered(dir.path(), "ok2@example.net").len(), 1);
    assert_eq!(
        all_files(dir.path()).len(),
        2,
        "{:?}",
        all_files(dir.path())
    );
    // All refused upstream: no DATA accepted.
    let r = send_through(&mut c, "a@example.org", &["x@elsewhere.example"], "").await;
    assert!(r[0].starts_with("550 5.7.1"), "{r:?}");
    c.expect("DATA\r\n", "554").await;
}

async fn relay_upstream_down_or_silent_451(ctx: Ctx) {
    // Nothing listens on a port that was just closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = closed.local_addr().expect("addr");
    drop(closed);
    let dir = tmp();
    let relay = ctx.spawn([
        "--relay",
        &gone.to_string(),
        "--timeout",
        "1",
        "--maildir",
        p(dir.path()),
    ]);
    let mut c = relay.greeted().await;
    let r = send_through(&mut c, "a@x.example", &["b@y.example"], "").await;
    assert!(r[0].starts_with("451 4.4.1"), "{r:?}");
    // A server that accepts the connection and never greets: bounded by --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let relay2 = ctx.spawn([
        "--relay",
        &silent.local_addr().expect("addr").to_string(),
        "--timeout",
        "1",
    ]);
    let mut c = relay2.greeted().await;
    let started = Instant::now();
    let r = send_through(&mut c, "a@x.example", &["b@y.example"], "").await;
    assert!(r[0].starts_with("451 4.4.1"), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(all_files(dir.path()).is_empty());
    drop(silent);
}

async fn relay_is_not_open(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path())]);
    let upstream = up.addr().to_string();
    // Served domain relayed; anything else refused without an allowed network.
    // Loopback clients are trusted: these claim another address (PROXY).
    let relay = ctx.spawn([
        "--relay",
        &upstream,
        "--domain",
        "example.net",
        "--proxy-protocol",
    ]);
    let mut c = crate::hardening_relay::via_proxy(&relay, "192.0.2.1").await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["victim@elsewhere.example", "b@example.net"],
        "Subject: r\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r[0].starts_with("550 5.7.1"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");
    assert!(delivered(dir.path(), "victim@elsewhere.example").is_empty());
    assert_eq!(delivered(dir.path(), "b@example.net").len(), 1);
    // From an allowed network, any domain.
    let trusted = ctx.spawn([
        "--relay",
        &upstream,
        "--domain",
        "example.net",
        "--relay-from-network",
        "192.0.2.0/24",
        "--proxy-protocol",
    ]);
    let mut c = crate::hardening_relay::via_proxy(&trusted, "192.0.2.1").await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["c@elsewhere.example"],
        "Subject: t\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(delivered(dir.path(), "c@elsewhere.example").len(), 1);
    // A network that does not hold the client does not count.
    let other = ctx.spawn([
        "--relay",
        &upstream,
        "--domain",
        "example.net",
        "--relay-from-network",
        "10.0.0.0/8",
        "--proxy-protocol",
    ]);
    let mut c = crate::hardening_relay::via_proxy(&other, "192.0.2.1").await;
    let r = send_through(&mut c, "a@x.example", &["d@elsewhere.example"], "").await;
    assert!(r[0].starts_with("550 5.7.1"), "{r:?}");
}

async fn relay_local_or_relay_in_one_transaction(ctx: Ctx) {
    let up_dir = tmp();
    let local_dir = tmp();
    let up = ctx.spawn(["--maildir", p(up_dir.path())]);
    let relay = ctx.spawn([
        "--relay",
        &up.addr().to_string(),
        "--maildir",
        p(local_dir.path()),
        "--domain",
        "local.example",
        "--relay-from-network",
        "127.0.0.1/32",
    ]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["me@local.example", "you@remote.example"],
        "Subject: split\r\n\r\nboth\r\n",
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    assert!(stored_body(local_dir.path(), "me@local.example").ends_with("\r\n\r\nboth\r\n"));
    assert!(stored_body(up_dir.path(), "you@remote.example").ends_with("\r\n\r\nboth\r\n"));
    assert_eq!(all_files(local_dir.path()).len(), 1);
    assert_eq!(all_files(up_dir.path()).len(), 1);
    // Upstream gone: 451 for the relayed recipient, and the message is all
    // or nothing: no local copy either.
    drop(up);
    let r = send_through(
        &mut c,
        "a@x.example",
        &["me@local.example", "you@remote.example"],
        "Subject: again\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(r[1].starts_with("451 4.4.1"), "{r:?}");
    assert_eq!(
        all_files(local_dir.path()).len(),
        2,
        "the local recipient alone is delivered: {r:?}"
    );
}

async fn relay_starttls_mandatory(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let (up_tls, _cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--hostname", "tls-up.test"],
    );
    let relay = ctx.spawn(["--relay", &up_tls.addr().to_string(), "--relay-starttls"]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: s\r\n\r\nsecret\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    let text = stored_body(&md, "b@y.example");
    assert!(
        text.contains("by tls-up.test (smtp-proto) with ESMTPS"),
        "{text}"
    );
    // An upstream without STARTTLS: 4xx, never clear text.
    let plain_dir = tmp();
    let up_plain = ctx.spawn(["--maildir", p(plain_dir.path())]);
    let relay = ctx.spawn(["--relay", &up_plain.addr().to_string(), "--relay-starttls"]);
    let mut c = relay.greeted().await;
    let r = send_through(&mut c, "a@x.example", &["b@y.example"], "").await;
    assert!(r[0].starts_with("451 4.4.1"), "{r:?}");
    assert!(all_files(plain_dir.path()).is_empty());
}

/// A scripted upstream on 127.0.0.1 without enhanced status codes: greets,
/// accepts EHLO, MAIL and RCPT (refuses `refused@…` with a bare `550`),
/// then drops the connection at DATA.
fn upstream_dying_at_data() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut w = s.try_clone().expect("clone");
        let mut r = std::io::BufReader::new(s);
        let _ = w.write_all(b"220 dying.test ESMTP\r\n");
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250 dying.test\r\n",
                "DATA" => return,
                "RCPT" if line.contains("refused@") => b"550 no such user\r\n",
                _ => b"250 2.0.0 ok\r\n",
            };
            let _ = w.write_all(reply);
            line.clear();
        }
    });
    (addr, t)
}

async fn relay_upstream_lost_mid_transaction_delivers_nothing(ctx: Ctx) {
    let local_dir = tmp();
    let (up, script) = upstream_dying_at_data();
    let relay = ctx.spawn([
        "--relay",
        &up.to_string(),
        "--maildir",
        p(local_dir.path()),
        "--domain",
        "local.example",
        "--relay-from-network",
        "127.0.0.0/8",
        "--timeout",
        "2",
    ]);
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<me@local.example>\r\n", "250").await;
    // The upstream's bare refusal, with the enhanced code we advertise.
    c.expect(
        "RCPT TO:<refused@remote.example>\r\n",
        "550 5.0.0 no such user",
    )
    .await;
    c.expect("RCPT TO:<you@remote.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    // The upstream is lost: temporary failure, and no local copy either.
    c.expect("Subject: lost\r\n\r\nx\r\n.\r\n", "451 4.4.1")
        .await;
    assert!(
        all_files(local_dir.path()).is_empty(),
        "{:?}",
        all_files(local_dir.path())
    );
    c.expect("QUIT\r\n", "221").await;
    let _ = script.join();
}

async fn relay_to_postfix_smtp_sink(ctx: Ctx) {
    if !have_sink() {
        return;
    }
    let dump = tmp();
    // smtp-sink drops privileges to a user when run as root; the dump
    // directory must be writable by it.
    let _ = Command::new("chmod").arg("777").arg(dump.path()).status();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let template = format!("{}/%H%M%S.", p(dump.path()));
    let mut sink = Command::new("smtp-sink");
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        sink.args(["-u", "nobody"]);
    }
    let mut sink = sink
        .args(["-d", &template, &format!("127.0.0.1:{port}"), "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let mut up = None;
    for _ in 0..50 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            up = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(up.expect("smtp-sink listens"));
    let relay = ctx.spawn([
        "--relay",
        &format!("127.0.0.1:{port}"),
        "--hostname",
        "relay.test",
    ]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "alice@example.org",
        &["bob@example.net", "carol@example.com"],
        "Subject: to postfix\r\n\r\n..dot line\r\nend\r\n",
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    c.expect("QUIT\r\n", "221").await;
    let mut text = String::new();
    for _ in 0..50 {
        text = all_files(dump.path())
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        if text.contains("end") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = sink.kill();
    let _ = sink.wait();
    for want in [
        "X-Mail-Args: <alice@example.org>",
        "X-Rcpt-Args: <bob@example.net>",
        "X-Rcpt-Args: <carol@example.com>",
        "by relay.test",
        "Subject: to postfix\n\n.dot line\nend\n",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
}

/// Whether Postfix's smtp-sink is installed (loud skip outside CI).
pub(crate) fn have_sink() -> bool {
    let ok = Command::new("sh")
        .args(["-c", "command -v smtp-sink"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "smtp-sink is missing and CI is set"
        );
        eprintln!("SKIPPED: smtp-sink (Debian package postfix) missing");
    }
    ok
}

async fn relay_tls_verify(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let (up, _cert) = tls_server(
        &ctx,
        dir.path(),
        &["--maildir", p(&md), "--hostname", "verified.test"],
    );
    // The certificate names `localhost`; the CA file is the certificate itself.
    let upstream = format!("localhost:{}", up.addr().port());
    let ca = dir.path().join("cert.pem");
    let relay = ctx.spawn(["--relay", &upstream, "--relay-tls-verify", p(&ca)]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: v\r\n\r\nverified\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(stored_body(&md, "b@y.example").contains("with ESMTPS"));
    // Against the Mozilla roots the throwaway certificate fails: 4xx, no clear text.
    let strict = ctx.spawn(["--relay", &upstream, "--relay-tls-verify"]);
    let mut c = strict.greeted().await;
    let r = send_through(&mut c, "a@x.example", &["c@y.example"], "").await;
    assert!(r[0].starts_with("451 4.4.1"), "{r:?}");
    assert!(delivered(&md, "c@y.example").is_empty());
}

#[cfg(unix)]
async fn max_connections_unix_421(ctx: Ctx) {
    use tokio::net::UnixStream;
    let dir = tmp();
    let sock = dir.path().join("smtp.sock");
    let d = ctx.spawn([
        "--sink",
        "--max-connections",
        "1",
        "--listen-unix",
        p(&sock),
    ]);
    let mut first = crate::Client::new(UnixStream::connect(&sock).await.expect("connect"));
    assert!(first.reply().await.starts_with("220 "));
    let mut second = crate::Client::new(UnixStream::connect(&sock).await.expect("connect"));
    assert_eq!(
        second.read_to_end().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    first.expect("QUIT\r\n", "221").await;
    drop(d);
}

#[cfg(not(unix))]
async fn max_connections_unix_421(_ctx: Ctx) {}
