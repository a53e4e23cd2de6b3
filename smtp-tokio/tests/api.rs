//! The library API in process: custom handlers (per-recipient LMTP
//! decisions, a panicking hook), one accepted stream, the shutdown signal.
//! Everything reachable through the `smtpd` flags is in the shared
//! conformance suite (`tests/conformance.rs`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_conformance::Client;
use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::{Decision, PeerInfo};
use smtp_server::handler::{Envelope, Handler, MailOptions, Message, MessageDecision, SessionInfo};
use smtp_server::store::SinkHandler;
use smtp_tokio::{BoundServer, Server};
use tokio::sync::oneshot;

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Binds `server`, runs it in a task; returns its address, a stop switch and the task.
async fn start<H: Handler>(
    server: Server<H>,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = oneshot::channel::<()>();
    let bound: BoundServer<H> = server
        .shutdown_signal(async {
            let _ = rx.await;
        })
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    (addr, tx, tokio::spawn(bound.run()))
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
async fn lmtp_per_recipient_decisions() {
    let mut config = Config::new("lmtp.test");
    config.lmtp = true;
    let (addr, stop, task) = start(
        Server::new(FirstOnly)
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 lmtp.test"));
    c.expect("LHLO client\r\n", "250").await;
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
    c.expect("QUIT\r\n", "221").await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Panics in MAIL.
struct Panicky;

impl Handler for Panicky {
    async fn mail(&self, _s: &SessionInfo, _f: &str, _o: &MailOptions) -> Decision {
        panic!("handler bug");
    }
}

#[tokio::test]
async fn handler_panic_is_isolated() {
    let (addr, stop, task) = start(Server::new(Panicky).listen(localhost())).await;
    for _ in 0..2 {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.starts_with("220 "));
        c.expect("EHLO x\r\n", "250").await;
        c.expect("MAIL FROM:<a@x>\r\n", "421 4.3.0").await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_one_accepted_stream() {
    let (a, b) = tokio::io::duplex(4096);
    let config = Arc::new(Config::new("duplex.test"));
    let server = tokio::spawn(smtp_tokio::serve_stream(
        b,
        PeerInfo::default(),
        config,
        Arc::new(SinkHandler),
    ));
    let mut c = Client::new(a);
    assert!(c.reply().await.starts_with("220 duplex.test"));
    c.expect("HELO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@y>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("hi\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn next_event_low_level() {
    let (a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        let config = Arc::new(Config::new("manual.test"));
        let mut conn = smtp_tokio::Connection::manual(b, PeerInfo::default(), config);
        let mut body = Vec::new();
        let mut rcpts = Vec::new();
        while let Some(event) = conn.next_event().await.unwrap() {
            use smtp_proto::server::Event;
            match event {
                Event::Body(chunk) => body.extend_from_slice(chunk),
                Event::Rcpt { ticket, to, .. } => {
                    let to = format!("{to:?}");
                    let ok = !to.contains("nobody");
                    rcpts.push(to);
                    let d: Decision = if ok {
                        Decision::Accept
                    } else {
                        Reply::NO_SUCH_USER.into()
                    };
                    conn.session_mut()
                        .respond(ticket, d, Instant::now())
                        .unwrap();
                }
                other => {
                    if let Some(ticket) = other.into_ticket() {
                        conn.session_mut()
                            .respond(ticket, Decision::Accept, Instant::now())
                            .unwrap();
                    }
                }
            }
        }
        (body, rcpts)
    });
    let mut c = Client::new(a);
    assert!(c.reply().await.starts_with("220 manual.test"));
    c.expect("EHLO x\r\n", "250").await;
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<nobody@y>\r\nDATA\r\n")
        .await;
    for want in ["250", "250", "550 5.1.1", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.expect("Subject: m\r\n\r\n..dot\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    let (body, rcpts) = server.await.unwrap();
    assert_eq!(body, b"Subject: m\r\n\r\n.dot\r\n");
    assert_eq!(rcpts.len(), 2);
}

/// A stream that records whether it was shut down (a stand-in for a TLS
/// stream the caller terminated itself, whose shutdown sends close_notify).
struct Recorded {
    io: tokio::io::DuplexStream,
    shut: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Recorded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Recorded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_tls_stream_handed_in_is_shut_down_at_the_end() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let shut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = Recorded {
        io: ours,
        shut: shut.clone(),
    };
    // `peer.tls` says the stream is TLS already (terminated by the caller).
    let peer = PeerInfo {
        tls: Some(Default::default()),
        ..PeerInfo::default()
    };
    let config = Arc::new(Config::new("mx.example"));
    let conn = smtp_tokio::Connection::new(stream, peer, config, Arc::new(SinkHandler));
    let task = tokio::spawn(conn.run());
    theirs.write_all(b"QUIT\r\n").await.unwrap();
    let mut out = Vec::new();
    theirs.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&out).ends_with("221 2.0.0 Bye\r\n"));
    assert!(
        shut.load(std::sync::atomic::Ordering::SeqCst),
        "no close_notify"
    );
}

/// The server handle: `reload()` re-reads what was registered (here a
/// counter), and `shutdown()` stops the server as a signal would.
#[tokio::test]
async fn server_handle_reloads_and_stops() {
    use smtp_server::reload::{FileReload, Swap};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greeting");
    std::fs::write(&file, "one").unwrap();
    let cell = Swap::shared(String::new());
    let source = FileReload::new("greeting", &file, cell.clone(), |p| {
        std::fs::read_to_string(p).map_err(|e| e.to_string())
    });
    let bound = Server::new(SinkHandler)
        .listen(localhost())
        .on_reload(Arc::new(source))
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    let handle = bound.handle();
    let run = tokio::spawn(bound.run());
    let reload = handle.clone();
    tokio::task::spawn_blocking(move || reload.reload())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*cell.get(), "one");
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220"));
    handle.shutdown();
    let done = tokio::time::timeout(Duration::from_secs(10), run).await;
    assert!(done.unwrap().unwrap().is_ok());
}
