//! The library API over real sockets, each case run on smol and (with the
//! `async-std` feature) on async-std: sessions, pipelining, TLS, limits,
//! shutdown, timeouts, backpressure, panics, one accepted stream.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_net::{TcpListener, TcpStream};
use common::{Client, Rt, TestCert, delivered, localhost, sleep, start, within};
use futures_lite::FutureExt;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use smtp_async_std::Server;
use smtp_proto::config::Config;
use smtp_proto::server::{Decision, PeerInfo};
use smtp_server::handler::{Handler, MailOptions, SessionInfo};
use smtp_server::store::{MaildirHandler, SinkHandler};

cases!(
    plain_session,
    pipelined_multi_recipient_into_maildir,
    starttls,
    implicit_tls,
    max_connections_421,
    graceful_shutdown,
    trickle_hits_the_command_timeout,
    noop_flood_without_reading,
    handler_panic_ends_only_its_session,
    serve_one_stream,
);

async fn plain_session<R: Rt>() {
    let server = start::<R, _>(
        Server::new(SinkHandler)
            .config(Arc::new(Config::new("plain.test")))
            .listen(localhost()),
    )
    .await;
    let mut c = Client::connect(server.addr()).await;
    assert!(c.reply().await.starts_with("220 plain.test"));
    assert!(c.expect("EHLO x\r\n", "250").await.contains("PIPELINING"));
    c.expect("MAIL FROM:<a@x>\r\n", "250 2.1.0").await;
    c.expect("RCPT TO:<b@y>\r\n", "250 2.1.5").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: s\r\n\r\nhi\r\n.\r\n", "250 2.0.0").await;
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(c.read_to_end().await, "");
    server.stop().await;
}

async fn pipelined_multi_recipient_into_maildir<R: Rt>() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        start::<R, _>(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let mut c = Client::greeted(server.addr()).await;
    c.expect("EHLO client\r\n", "250").await;
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

async fn starttls<R: Rt>() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start::<R, _>(
        Server::new(MaildirHandler::new(dir.path()))
            .tls(cert.server_config())
            .listen(localhost()),
    )
    .await;
    let mut c = Client::greeted(server.addr()).await;
    assert!(c.cmd("EHLO x\r\n").await.contains("STARTTLS"));
    // A command injected behind STARTTLS is discarded.
    c.send("STARTTLS\r\nMAIL FROM:<x@y>\r\n").await;
    assert!(c.reply().await.starts_with("220"));
    let tls = cert
        .connector()
        .connect(TestCert::server_name(), c.io.into_inner())
        .await
        .unwrap();
    let mut t = Client::new(tls);
    let ehlo = t.expect("EHLO x\r\n", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    t.expect("RCPT TO:<b@y>\r\n", "503").await;
    t.expect("MAIL FROM:<a@x>\r\n", "250").await;
    t.expect("RCPT TO:<b@y>\r\n", "250").await;
    t.expect("DATA\r\n", "354").await;
    t.expect("Subject: tls\r\n\r\nsecret\r\n.\r\n", "250").await;
    t.expect("QUIT\r\n", "221").await;
    let files = delivered(dir.path(), "b@y");
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("ESMTPS"), "{text}");
    server.stop().await;
}

async fn implicit_tls<R: Rt>() {
    let cert = TestCert::new();
    let mut config = Config::new("tls.test");
    config.timeouts.command = Duration::from_millis(500);
    let server = start::<R, _>(
        Server::new(SinkHandler)
            .config(Arc::new(config))
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
    assert!(t.reply().await.starts_with("220 tls.test"));
    let ehlo = t.expect("EHLO x\r\n", "250").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    t.expect("QUIT\r\n", "221").await;
    // Garbage instead of a ClientHello: closed without a clear-text reply.
    let mut g = Client::connect(server.addr()).await;
    g.send("EHLO plaintext\r\n\r\n\r\n\r\n").await;
    assert!(!g.read_to_end().await.contains("220"));
    // Silence: closed at the command timeout, without a byte.
    let mut idle = Client::connect(server.addr()).await;
    let started = Instant::now();
    assert_eq!(idle.read_to_end().await, "");
    assert!(started.elapsed() >= Duration::from_millis(400));
    server.stop().await;
}

async fn max_connections_421<R: Rt>() {
    let server = start::<R, _>(
        Server::new(SinkHandler)
            .max_connections(1)
            .listen(localhost()),
    )
    .await;
    let mut first = Client::greeted(server.addr()).await;
    let mut second = Client::connect(server.addr()).await;
    assert_eq!(
        second.read_to_end().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    first.expect("NOOP\r\n", "250").await;
    first.expect("QUIT\r\n", "221").await;
    drop(first);
    // The slot comes back.
    sleep(200).await;
    let mut third = Client::greeted(server.addr()).await;
    third.expect("QUIT\r\n", "221").await;
    server.stop().await;
}

async fn graceful_shutdown<R: Rt>() {
    let dir = tempfile::tempdir().unwrap();
    let server = start::<R, _>(
        Server::new(MaildirHandler::new(dir.path()))
            .grace_period(Duration::from_secs(2))
            .listen(localhost()),
    )
    .await;
    let addr = server.addr();
    let mut idle = Client::greeted(addr).await;
    idle.expect("EHLO idle\r\n", "250").await;
    let mut busy = Client::greeted(addr).await;
    busy.expect("EHLO busy\r\n", "250").await;
    busy.expect("MAIL FROM:<a@x>\r\n", "250").await;
    let mut stuck = Client::greeted(addr).await;
    stuck.expect("EHLO stuck\r\n", "250").await;
    stuck.expect("MAIL FROM:<a@x>\r\n", "250").await;

    server.signal();
    // Idle sessions are told at once.
    assert!(idle.read_to_end().await.starts_with("421 4.3.2"));
    // New connections are not served.
    sleep(100).await;
    if let Ok(s) = TcpStream::connect(addr).await {
        let mut late = Client::new(s);
        assert!(!late.read_to_end().await.starts_with("220"));
    }
    // A transaction in progress may finish, then the session closes.
    busy.expect("RCPT TO:<b@y>\r\n", "250").await;
    busy.expect("DATA\r\n", "354").await;
    busy.expect("Subject: s\r\n\r\nbye\r\n.\r\n", "250").await;
    assert!(busy.read_to_end().await.starts_with("421 4.3.2"));
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    // A session that does not finish is closed after the grace period.
    let started = Instant::now();
    assert!(stuck.read_to_end().await.starts_with("421 4.3.2"));
    assert!(started.elapsed() < Duration::from_secs(4));
    server.join().await;
}

async fn trickle_hits_the_command_timeout<R: Rt>() {
    let mut config = Config::new("t.test");
    config.timeouts.command = Duration::from_secs(1);
    let server = start::<R, _>(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = Client::greeted(server.addr()).await;
    c.expect("EHLO x\r\n", "250").await;
    let started = Instant::now();
    let (mut rd, mut wr) = futures_lite::io::split(c.io.into_inner());
    // One byte every 100 ms, never a complete line.
    let trickle = async {
        for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP"
            .iter()
            .cycle()
        {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sleep(100).await;
        }
        String::new()
    };
    let read = async {
        let mut v = Vec::new();
        let _ = rd.read_to_end(&mut v).await;
        String::from_utf8_lossy(&v).into_owned()
    };
    let out = within(10, read.or(trickle)).await;
    assert!(out.starts_with("421 4.4.2"), "{out:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.stop().await;
}

/// Over a Unix socket, whose small fixed kernel buffers (no TCP
/// autotuning) cannot hide 100,000 unread replies.
async fn noop_flood_without_reading<R: Rt>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtp.sock");
    let mut config = Config::new("flood.test");
    config.limits.junk_command_limit = u32::MAX;
    config.limits.hard_error_limit = u32::MAX;
    config.limits.soft_error_limit = u32::MAX;
    config.timeouts.command = Duration::from_secs(2);
    let server = start::<R, _>(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .listen(localhost())
            .listen_unix(&path),
    )
    .await;
    let rss_before = common::rss_kib();
    let mut flood = async_net::unix::UnixStream::connect(&path).await.unwrap();
    let chunk = "NOOP\r\n".repeat(1_000);
    // 100,000 NOOPs, never reading a reply: the writes stall because the
    // server stops reading while its replies are not read.
    let mut sent = 0;
    let mut stalled = false;
    while sent < 100_000 {
        let write = async { Some(flood.write_all(chunk.as_bytes()).await) };
        let stall = async {
            sleep(1000).await;
            None
        };
        match write.or(stall).await {
            Some(r) => {
                r.unwrap();
                sent += 1_000;
            }
            None => {
                stalled = true;
                break;
            }
        }
    }
    assert!(
        stalled,
        "the server read all {sent} NOOPs without its replies being read"
    );
    if let (Some(a), Some(b)) = (rss_before, common::rss_kib()) {
        assert!(b < a + 32 * 1024, "RSS grew from {a} KiB to {b} KiB");
    }
    // Another client is served meanwhile.
    let mut other = Client::greeted(server.addr()).await;
    other.expect("EHLO other\r\n", "250").await;
    other.expect("QUIT\r\n", "221").await;
    // The stuck write times out: the server closes the connection.
    sleep(3000).await;
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = within(10, flood.read_to_end(&mut out)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    let replies = text.matches("250 ").count();
    assert!(
        replies < sent,
        "{replies} replies for {sent} NOOPs sent: not closed"
    );
    assert!(
        !text.contains("421"),
        "closed by the write timeout, not a reply"
    );
    server.stop().await;
}

/// Panics in MAIL for `boom@x`.
struct Panicky;

impl Handler for Panicky {
    async fn mail(&self, _s: &SessionInfo, from: &str, _o: &MailOptions) -> Decision {
        if from == "boom@x" {
            panic!("handler bug");
        }
        Decision::Accept
    }
}

async fn handler_panic_ends_only_its_session<R: Rt>() {
    let server = start::<R, _>(Server::new(Panicky).listen(localhost())).await;
    let mut calm = Client::greeted(server.addr()).await;
    calm.expect("EHLO calm\r\n", "250").await;
    for _ in 0..2 {
        let mut c = Client::greeted(server.addr()).await;
        c.expect("EHLO x\r\n", "250").await;
        c.expect("MAIL FROM:<boom@x>\r\n", "421 4.3.0").await;
        assert_eq!(c.read_to_end().await, "");
    }
    calm.expect("MAIL FROM:<a@x>\r\n", "250").await;
    calm.expect("QUIT\r\n", "221").await;
    server.stop().await;
}

async fn serve_one_stream<R: Rt>() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = R::spawn(async move {
        let (tcp, remote) = listener.accept().await?;
        let config = Arc::new(Config::new("stream.test"));
        smtp_async_std::serve_stream(tcp, PeerInfo::new(remote), config, Arc::new(SinkHandler))
            .await
    });
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 stream.test"));
    c.expect("HELO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@y>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("hi\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    within(5, served).await.unwrap();
}
