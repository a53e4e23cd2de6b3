//! End-to-end tests over real sockets on 127.0.0.1: sessions, limits,
//! timeouts, shutdown, panics, Unix sockets, serve_stream, SyncHandler.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, delivered, localhost, start};
use smtp_blocking::{Server, SyncAdapter, SyncHandler};
use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::{Decision, PeerInfo};
use smtp_server::handler::{
    Envelope, MailOptions, Message, MessageDecision, Recipient, SessionInfo,
};
use smtp_server::store::{MaildirHandler, SinkHandler};

#[test]
fn plain_session() {
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(Config::new("plain.test")))
            .listen(localhost()),
    );
    let mut c = Client::connect(server.addr());
    assert!(c.reply().starts_with("220 plain.test"));
    let ehlo = c.cmd("EHLO x\r\n");
    assert!(ehlo.starts_with("250-plain.test"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "no TLS configured: {ehlo}");
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").starts_with("250 2.1.0"));
    assert!(c.cmd("RCPT TO:<b@y>\r\n").starts_with("250 2.1.5"));
    assert!(c.cmd("DATA\r\n").starts_with("354"));
    assert!(
        c.cmd("Subject: s\r\n\r\nhi\r\n.\r\n")
            .starts_with("250 2.0.0")
    );
    assert_eq!(c.cmd("QUIT\r\n"), "221 2.0.0 Bye\r\n");
    assert_eq!(c.read_to_end(), "");
    server.stop();
}

#[test]
fn pipelined_multi_recipient_into_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost()));
    let mut c = Client::greeted(server.addr());
    assert!(c.cmd("EHLO x\r\n").contains("PIPELINING"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n");
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354"] {
        let r = c.reply();
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("Subject: multi\r\n\r\n..dotted\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.reply().starts_with("221"));
    for rcpt in ["b@y", "c@y", "d@y"] {
        let files = delivered(dir.path(), rcpt);
        assert_eq!(files.len(), 1, "{rcpt}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.starts_with("Return-Path: <a@x>\n"), "{text}");
        assert!(
            text.contains(&format!("Delivered-To: {rcpt}\nReceived: ")),
            "{text}"
        );
        assert!(text.ends_with("Subject: multi\n\n.dotted\n"), "{text}");
    }
    server.stop();
}

#[test]
fn max_connections_421() {
    let server = start(
        Server::new(SinkHandler)
            .max_connections(1)
            .listen(localhost()),
    );
    let mut first = Client::greeted(server.addr());
    let mut second = Client::connect(server.addr());
    assert_eq!(
        second.read_to_end(),
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert!(first.cmd("NOOP\r\n").starts_with("250"));
    assert!(first.cmd("QUIT\r\n").starts_with("221"));
    drop(first);
    // The slot is free again.
    std::thread::sleep(Duration::from_millis(100));
    let mut third = Client::greeted(server.addr());
    assert!(third.cmd("QUIT\r\n").starts_with("221"));
    server.stop();
}

#[test]
fn max_connections_per_ip() {
    let server = start(
        Server::new(SinkHandler)
            .max_connections_per_ip(2)
            .listen(localhost()),
    );
    let _a = Client::greeted(server.addr());
    let _b = Client::greeted(server.addr());
    let mut c = Client::connect(server.addr());
    assert!(c.read_to_end().starts_with("421 4.7.0"));
    server.stop();
}

fn short_timeout(secs: u64) -> Arc<Config> {
    let mut config = Config::new("t.test");
    config.timeouts.command = Duration::from_secs(secs);
    Arc::new(config)
}

#[test]
fn trickled_command_hits_the_command_deadline() {
    let server = start(
        Server::new(SinkHandler)
            .config(short_timeout(1))
            .listen(localhost()),
    );
    let mut c = Client::greeted(server.addr());
    assert!(c.cmd("EHLO x\r\n").starts_with("250"));
    let started = Instant::now();
    let mut tcp = c.io.get_ref().try_clone().unwrap();
    // One byte every 200 ms, never a whole command.
    let trickle = std::thread::spawn(move || {
        for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP".iter() {
            if tcp.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let rest = c.read_to_end();
    assert!(rest.starts_with("421 4.4.2"), "{rest}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    trickle.join().unwrap();
    server.stop();
}

#[test]
fn idle_client_times_out() {
    let server = start(
        Server::new(SinkHandler)
            .config(short_timeout(1))
            .listen(localhost()),
    );
    let mut c = Client::greeted(server.addr());
    let started = Instant::now();
    assert!(c.read_to_end().starts_with("421 4.4.2"));
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop();
}

#[test]
fn noop_flood_without_reading_is_paused() {
    let mut config = Config::new("flood.test");
    config.limits.junk_command_limit = u32::MAX;
    config.limits.hard_error_limit = u32::MAX;
    config.limits.soft_error_limit = u32::MAX;
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .listen(localhost()),
    );
    let mut flood = TcpStream::connect(server.addr()).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let chunk = "NOOP\r\n".repeat(10_000);
    let mut sent = 0usize;
    let mut stalled = false;
    while sent < 256 * 1024 * 1024 {
        match flood.write_all(chunk.as_bytes()) {
            Ok(()) => sent += chunk.len(),
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
    let mut other = Client::greeted(server.addr());
    assert!(other.cmd("EHLO other\r\n").starts_with("250"));
    assert!(other.cmd("QUIT\r\n").starts_with("221"));
    drop(flood);
    server.stop();
}

/// Panics in MAIL; counts sessions that ended.
struct Panicky(Arc<AtomicUsize>);

impl SyncHandler for Panicky {
    fn mail(&self, _s: &SessionInfo, from: &str, _o: &MailOptions) -> Decision {
        if from == "boom@x" {
            panic!("handler bug");
        }
        Decision::Accept
    }
    fn disconnect(&self, _s: &SessionInfo, _r: smtp_proto::server::CloseReason) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_panicking_sync_handler_ends_only_its_session() {
    let ended = Arc::new(AtomicUsize::new(0));
    let server = start(Server::new(SyncAdapter(Panicky(ended.clone()))).listen(localhost()));
    let mut calm = Client::greeted(server.addr());
    assert!(calm.cmd("EHLO calm\r\n").starts_with("250"));
    for _ in 0..2 {
        let mut c = Client::greeted(server.addr());
        assert!(c.cmd("EHLO x\r\n").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<boom@x>\r\n").starts_with("421 4.3.0"));
        assert_eq!(c.read_to_end(), "");
    }
    // The other session goes on.
    assert!(calm.cmd("MAIL FROM:<a@x>\r\n").starts_with("250"));
    assert!(calm.cmd("QUIT\r\n").starts_with("221"));
    server.stop();
    assert_eq!(ended.load(Ordering::SeqCst), 3);
}

/// A message as the handler saw it: sender, recipients, body.
type Seen = (String, Vec<String>, Vec<u8>);

/// Only bob; records what it stored.
struct OnlyBob(std::sync::Mutex<Vec<Seen>>);

impl SyncHandler for OnlyBob {
    fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
        if to.address == "bob@example.org" {
            Decision::Accept
        } else {
            Reply::NO_SUCH_USER.into()
        }
    }
    fn message(&self, _s: &SessionInfo, e: &Envelope, m: &Arc<Message>) -> MessageDecision {
        let rcpts = e.recipient_addresses().map(str::to_owned).collect();
        self.0
            .lock()
            .unwrap()
            .push((e.from.clone(), rcpts, m.data.clone()));
        Decision::Accept.into()
    }
}

#[test]
fn sync_handler_flavour() {
    let handler = SyncAdapter(OnlyBob(Default::default()));
    let bound = Server::new(handler).listen(localhost()).bind().unwrap();
    let addr = bound.local_addrs()[0];
    let stop = bound.shutdown_handle();
    // Keep a view of the handler: run the server on a scoped thread.
    let mut c = {
        let t = std::thread::spawn(move || bound.run());
        let mut c = Client::greeted(addr);
        assert!(c.cmd("EHLO x\r\n").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@x>\r\n").starts_with("250"));
        assert!(
            c.cmd("RCPT TO:<eve@example.org>\r\n")
                .starts_with("550 5.1.1")
        );
        assert!(c.cmd("RCPT TO:<bob@example.org>\r\n").starts_with("250"));
        assert!(c.cmd("DATA\r\n").starts_with("354"));
        assert!(c.cmd("Subject: x\r\n\r\nbody\r\n.\r\n").starts_with("250"));
        stop.shutdown();
        t.join().unwrap().unwrap();
        c
    };
    // The session got 421 4.3.2 at shutdown, after its transaction.
    assert!(c.read_to_end().starts_with("421 4.3.2"));
}

#[test]
fn sync_handler_messages_reach_the_handler() {
    let seen = Arc::new(SyncAdapter(OnlyBob(Default::default())));
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let h = seen.clone();
    let server = std::thread::spawn(move || {
        smtp_blocking::serve_stream(a, PeerInfo::default(), Arc::new(Config::new("u.test")), h)
    });
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client::new(b);
    assert!(c.reply().starts_with("220 u.test"));
    c.send("EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    assert!(c.cmd("Hi\r\n.\r\n").starts_with("250"));
    assert!(c.cmd("QUIT\r\n").starts_with("221"));
    server.join().unwrap().unwrap();
    let got = seen.0.0.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![(
            "a@x".to_owned(),
            vec!["bob@example.org".to_owned()],
            b"Hi\r\n".to_vec()
        )]
    );
}

#[test]
fn serve_stream_over_tcp_and_untimed() {
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, peer) = listener.accept().unwrap();
        smtp_blocking::serve_stream(
            smtp_blocking::Untimed(tcp),
            PeerInfo::new(peer),
            Arc::new(Config::new("s.test")),
            Arc::new(SinkHandler),
        )
    });
    let mut c = Client::greeted(addr);
    assert!(c.cmd("HELO x\r\n").starts_with("250 s.test"));
    assert!(c.cmd("QUIT\r\n").starts_with("221"));
    server.join().unwrap().unwrap();
}

#[test]
fn unix_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp.sock");
    let mut config = Config::new("lmtp.test");
    config.lmtp = true;
    let server = start(
        Server::new(MaildirHandler::new(dir.path().join("mail")))
            .config(Arc::new(config))
            .max_connections(1)
            .listen_unix(&path),
    );
    let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Client::new(s);
    assert!(c.reply().starts_with("220 lmtp.test"));
    // Over the limit: a 421, not a silent close.
    let extra = std::os::unix::net::UnixStream::connect(&path).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(Client::new(extra).read_to_end().starts_with("421 4.7.0"));
    assert!(c.cmd("LHLO x\r\n").starts_with("250"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    c.send("Subject: l\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.cmd("QUIT\r\n").starts_with("221"));
    server.stop();
    assert_eq!(delivered(&dir.path().join("mail"), "c@y").len(), 1);
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[test]
fn graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .grace_period(Duration::from_secs(2))
            .listen(localhost()),
    );
    let addr = server.addr();
    let mut idle = Client::greeted(addr);
    assert!(idle.cmd("EHLO idle\r\n").starts_with("250"));
    let mut busy = Client::greeted(addr);
    assert!(busy.cmd("EHLO busy\r\n").starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<a@x>\r\n").starts_with("250"));
    let mut stuck = Client::greeted(addr);
    assert!(stuck.cmd("EHLO stuck\r\n").starts_with("250"));
    assert!(stuck.cmd("MAIL FROM:<a@x>\r\n").starts_with("250"));

    server.signal();
    // Idle sessions are told at once.
    let started = Instant::now();
    assert!(idle.read_to_end().starts_with("421 4.3.2"));
    assert!(started.elapsed() < Duration::from_secs(1));
    // New connections are not served.
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(s) = TcpStream::connect(addr) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert!(!Client::new(s).read_to_end().starts_with("220"));
    }
    // A transaction in progress may finish, then the session closes.
    assert!(busy.cmd("RCPT TO:<b@y>\r\n").starts_with("250"));
    assert!(busy.cmd("DATA\r\n").starts_with("354"));
    assert!(
        busy.cmd("Subject: s\r\n\r\nbye\r\n.\r\n")
            .starts_with("250")
    );
    assert!(busy.read_to_end().starts_with("421 4.3.2"));
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    // A session that does not finish is closed after the grace period.
    let started = Instant::now();
    assert!(stuck.read_to_end().starts_with("421 4.3.2"));
    assert!(started.elapsed() < Duration::from_secs(4));
    server.join();
}

/// Never answers MAIL (until the server aborts the hook).
struct Hangs;

impl smtp_server::handler::Handler for Hangs {
    async fn mail(&self, _s: &SessionInfo, _f: &str, _o: &MailOptions) -> Decision {
        std::future::pending().await
    }
}

#[test]
fn shutdown_interrupts_a_hung_hook() {
    let server = start(
        Server::new(Hangs)
            .grace_period(Duration::from_millis(500))
            .listen(localhost()),
    );
    let mut c = Client::greeted(server.addr());
    assert!(c.cmd("EHLO x\r\n").starts_with("250"));
    c.send("MAIL FROM:<a@x>\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(c.read_to_end().starts_with("421 4.3.2"));
}
