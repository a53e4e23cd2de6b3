//! Raw-socket tests: pipelining, LMTP, limits, timeouts, smuggling,
//! STARTTLS injection, disconnects, traversal, backpressure, shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestCert, all_files, delivered, localhost, start};
use smtp_proto::config::Config;
use smtp_proto::handler::{Envelope, Handler, Message, MessageDecision, SessionInfo};
use smtp_proto::reply::Reply;
use smtp_proto::server::Decision;
use smtp_proto::store::{MaildirHandler, SinkHandler};
use smtp_tokio::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn greeted(addr: std::net::SocketAddr) -> Client<TcpStream> {
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 "));
    c
}

#[tokio::test]
async fn pipelined_multi_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("EHLO client\r\n").await.contains("250-PIPELINING"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 "] {
        assert!(c.reply().await.starts_with(want), "{want}");
    }
    c.send("Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<e@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354 "] {
        assert!(c.reply().await.starts_with(want), "{want}");
    }
    c.send("second\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("221 "));
    for who in ["b@y", "c@y", "d@y", "e@y"] {
        assert_eq!(delivered(dir.path(), who).len(), 1, "{who}");
    }
    server.stop().await;
}

/// Accepts the first recipient and refuses the others after the body.
struct FirstOnly;

impl Handler for FirstOnly {
    async fn message(&self, _s: &SessionInfo, e: &Envelope, _m: &Arc<Message>) -> MessageDecision {
        let mut v = vec![Decision::Accept];
        v.resize(e.recipients.len(), Reply::TEMPORARY_FAILURE.into());
        MessageDecision::PerRecipient(v)
    }
}

#[tokio::test]
async fn lmtp_one_reply_per_recipient() {
    let mut config = Config::new("lmtp.test");
    config.lmtp = true;
    let server = start(
        Server::new(FirstOnly)
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("LHLO client\r\n").await.starts_with("250"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        assert!(c.reply().await.starts_with("250"));
    }
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: l\r\n\r\nhi\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("451 4.3.0"));
    assert!(c.reply().await.starts_with("451 4.3.0"));
    assert!(c.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn max_connections_421() {
    let server = start(
        Server::new(SinkHandler)
            .max_connections(1)
            .listen(localhost()),
    )
    .await;
    let mut first = greeted(server.addr()).await;
    let mut second = Client::connect(server.addr()).await;
    assert_eq!(
        second.read_to_end().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert!(first.cmd("NOOP\r\n").await.starts_with("250"));
    assert!(first.cmd("QUIT\r\n").await.starts_with("221"));
    drop(first);
    // The slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = greeted(server.addr()).await;
    assert!(third.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn max_connections_per_ip() {
    let server = start(
        Server::new(SinkHandler)
            .max_connections_per_ip(2)
            .listen(localhost()),
    )
    .await;
    let _a = greeted(server.addr()).await;
    let _b = greeted(server.addr()).await;
    let mut c = Client::connect(server.addr()).await;
    assert!(c.read_to_end().await.starts_with("421 4.7.0"));
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout_421() {
    let mut config = Config::new("t.test");
    config.timeouts.command = Duration::from_secs(1);
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
    // A partial command does not keep the session alive.
    c.send("NO").await;
    let started = std::time::Instant::now();
    let rest = c.read_to_end().await;
    assert!(rest.starts_with("421 4.4.2"), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test]
async fn smtp_smuggling_variants_deliver_nothing_extra() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let smuggled =
        "MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
    for end in [
        "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n", "\n.\r",
    ] {
        let mut c = greeted(server.addr()).await;
        assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
        c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n").await;
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
    server.stop().await;
}

#[tokio::test]
async fn starttls_injection_is_discarded() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .tls(cert.server_config())
            .listen(localhost()),
    )
    .await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("EHLO x\r\n").await.contains("STARTTLS"));
    c.send("STARTTLS\r\nMAIL FROM:<x@y>\r\n").await;
    assert!(c.reply().await.starts_with("220"));
    let tcp = c.io.into_inner();
    let tls = cert
        .connector()
        .connect(TestCert::server_name(), tcp)
        .await
        .unwrap();
    let mut t = Client::new(tls);
    let ehlo = t.cmd("EHLO x\r\n").await;
    assert!(
        ehlo.starts_with("250") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    // The injected MAIL was not executed: RCPT has no transaction.
    assert!(t.cmd("RCPT TO:<b@y>\r\n").await.starts_with("503"));
    assert!(t.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    assert!(t.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn implicit_tls() {
    let cert = TestCert::new();
    let server = start(
        Server::new(SinkHandler)
            .tls(cert.server_config())
            .listen_tls(localhost()),
    )
    .await;
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let tls = cert
        .connector()
        .connect(TestCert::server_name(), tcp)
        .await
        .unwrap();
    let mut t = Client::new(tls);
    assert!(t.reply().await.starts_with("220"));
    let ehlo = t.cmd("EHLO x\r\n").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(t.cmd("QUIT\r\n").await.starts_with("221"));
    // Garbage instead of a ClientHello: closed without a clear-text reply.
    let mut g = TcpStream::connect(server.addr()).await.unwrap();
    g.write_all(b"EHLO plaintext\r\n\r\n\r\n\r\n")
        .await
        .unwrap();
    let mut v = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut v))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&v).contains("220"), "{v:?}");
    server.stop().await;
}

#[tokio::test]
async fn disconnect_mid_data_delivers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n").await;
    for _ in 0..3 {
        c.reply().await;
    }
    c.send("Subject: cut\r\n\r\nhalf a message\r\n").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(all_files(dir.path()).is_empty());
    // The server is fine.
    let mut d = greeted(server.addr()).await;
    assert!(d.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn traversal_recipients_refused() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("mail");
    let server = start(Server::new(MaildirHandler::new(&root)).listen(localhost())).await;
    let mut c = greeted(server.addr()).await;
    assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    for bad in [
        "a/b@y",
        "\"../../evil\"@y",
        "\"..\\\\x\"@y",
        "../x@y",
        "\"a/../../b\"@y",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{bad}>\r\n")).await;
        assert!(r.starts_with('5'), "{bad}: {r}");
    }
    assert!(c.cmd("RCPT TO:<a/b@y>\r\n").await.starts_with("550 5.1.3"));
    assert!(c.cmd("DATA\r\n").await.starts_with("554"));
    assert!(c.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
    assert!(all_files(parent.path()).is_empty());
}

#[tokio::test]
async fn noop_flood_without_reading_is_paused() {
    let mut config = Config::new("flood.test");
    config.limits.junk_command_limit = u32::MAX;
    config.limits.hard_error_limit = u32::MAX;
    config.limits.soft_error_limit = u32::MAX;
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut flood = TcpStream::connect(server.addr()).await.unwrap();
    let chunk = "NOOP\r\n".repeat(10_000);
    // Write until the server stops reading (writes stall), bounded in volume.
    let mut sent = 0usize;
    let mut stalled = false;
    while sent < 256 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(1), flood.write_all(chunk.as_bytes())).await
        {
            Ok(r) => {
                r.unwrap();
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
        "the server kept reading {sent} bytes of unread replies"
    );
    // Another client is served meanwhile.
    let mut other = greeted(server.addr()).await;
    assert!(other.cmd("EHLO other\r\n").await.starts_with("250"));
    assert!(other.cmd("QUIT\r\n").await.starts_with("221"));
    drop(flood);
    server.stop().await;
}

/// Panics in MAIL.
struct Panicky;

impl Handler for Panicky {
    async fn mail(
        &self,
        _s: &SessionInfo,
        _f: &str,
        _o: &smtp_proto::handler::MailOptions,
    ) -> Decision {
        panic!("handler bug");
    }
}

#[tokio::test]
async fn handler_panic_is_isolated() {
    let server = start(Server::new(Panicky).listen(localhost())).await;
    for _ in 0..2 {
        let mut c = greeted(server.addr()).await;
        assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("421 4.3.0"));
    }
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .grace_period(Duration::from_secs(2))
            .listen(localhost()),
    )
    .await;
    let addr = server.addr();
    let mut idle = greeted(addr).await;
    assert!(idle.cmd("EHLO idle\r\n").await.starts_with("250"));
    let mut busy = greeted(addr).await;
    assert!(busy.cmd("EHLO busy\r\n").await.starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    let mut stuck = greeted(addr).await;
    assert!(stuck.cmd("EHLO stuck\r\n").await.starts_with("250"));
    assert!(stuck.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));

    server.signal();
    // Idle sessions are told at once.
    assert!(idle.read_to_end().await.starts_with("421 4.3.2"));
    // New connections are not served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match TcpStream::connect(addr).await {
        Err(_) => {}
        Ok(mut s) => {
            let mut v = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut v)).await;
            assert!(!String::from_utf8_lossy(&v).starts_with("220"));
        }
    }
    // A transaction in progress may finish, then the session closes.
    assert!(busy.cmd("RCPT TO:<b@y>\r\n").await.starts_with("250"));
    assert!(busy.cmd("DATA\r\n").await.starts_with("354"));
    assert!(
        busy.cmd("Subject: s\r\n\r\nbye\r\n.\r\n")
            .await
            .starts_with("250")
    );
    assert!(busy.read_to_end().await.starts_with("421 4.3.2"));
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    // A session that does not finish is closed after the grace period.
    let started = std::time::Instant::now();
    assert!(stuck.read_to_end().await.starts_with("421 4.3.2"));
    assert!(started.elapsed() < Duration::from_secs(4));
    server.join().await;
}
