//! Streaming bodies (issue 14, item 3): a large message goes through the
//! server a chunk at a time, relayed or stored, and the server's memory
//! stays flat however large it is; a body cut off reaches no one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

use crate::cases::{p, tmp};
use crate::support::{Ctx, all_files, cases, delivered};
use crate::{Client, Smtpd};

cases!(
    stream_relay_large_body_to_a_slower_upstream_keeps_rss_flat,
    stream_maildir_large_body_sent_slowly_keeps_rss_flat,
    stream_relay_body_cut_off_delivers_nothing_upstream,
);

/// Lines in the large test body (100 octets each: 24 MiB in all).
const LINES: usize = 24 * 1024 * 1024 / 100;

/// The large body's header, first line.
const SUBJECT: &str = "Subject: big\r\n";

/// The large body's last line.
const LAST: &str = "last line\r\n";

/// The large body's length on the wire (CRLF line ends; no line starts
/// with a dot, so there is nothing to stuff).
const BODY_LEN: usize = SUBJECT.len() + 2 + LINES * 100 + LAST.len();

/// How much the server's RSS may grow while it takes a 24 MiB body.
const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;

/// One message body as an upstream saw it (the DATA content in wire form,
/// before the final `.`).
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Octets received.
    bytes: usize,
    /// The first 8 KiB.
    head: Vec<u8>,
    /// The last 256 octets.
    tail: Vec<u8>,
    /// The end of data came (and was answered `250`); false when the
    /// connection closed inside the body.
    ended: bool,
}

impl Seen {
    fn take(&mut self, content: &[u8]) {
        self.bytes += content.len();
        let room = 8192usize.saturating_sub(self.head.len());
        self.head
            .extend_from_slice(&content[..room.min(content.len())]);
        self.tail.extend_from_slice(content);
        let extra = self.tail.len().saturating_sub(256);
        self.tail.drain(..extra);
    }

    /// The octets after our trace header (from the message's first
    /// header, `Subject: big`, on).
    fn message_bytes(&self) -> usize {
        let at = self
            .head
            .windows(SUBJECT.len())
            .position(|w| w == SUBJECT.as_bytes())
            .expect("the message's header upstream");
        self.bytes - at
    }
}

/// A test upstream on 127.0.0.1 that reads bodies at most `rate` octets a
/// second (when given), records each body it saw, and answers its end with
/// `250`. Plain SMTP without extensions.
struct SlowUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
    /// Connections that ended (closed by the peer or after QUIT).
    closed: Arc<AtomicUsize>,
}

impl SlowUpstream {
    fn start(rate: Option<f64>) -> SlowUpstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let up = SlowUpstream {
            addr,
            seen: Arc::default(),
            conns: Arc::default(),
            closed: Arc::default(),
        };
        let (seen, conns, closed) = (up.seen.clone(), up.conns.clone(), up.closed.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let (seen, closed) = (seen.clone(), closed.clone());
                std::thread::spawn(move || {
                    serve_slowly(s, rate, &seen);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        up
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Waits (up to 10 s) until `n` connections ended.
    async fn wait_closed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.closed.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn serve_slowly(s: TcpStream, rate: Option<f64>, seen: &Mutex<Vec<Seen>>) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(64 * 1024, s);
    let _ = w.write_all(b"220 slow.test ESMTP\r\n");
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        line.clear();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 slow.test\r\n",
            "DATA" => b"354 go ahead\r\n",
            "QUIT" => {
                let _ = w.write_all(b"221 2.0.0 bye\r\n");
                return;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        let _ = w.write_all(reply);
        if verb != "DATA" {
            continue;
        }
        let index = {
            let mut seen = seen.lock().expect("seen");
            seen.push(Seen::default());
            seen.len() - 1
        };
        if !read_body(&mut r, rate, seen, index) {
            return;
        }
        let _ = w.write_all(b"250 2.0.0 queued\r\n");
    }
}

/// Reads a DATA body up to its end (`CRLF . CRLF`) or the connection's,
/// at most `rate` octets a second, recording it as it comes in
/// `seen[index]`; whether the end came.
fn read_body(
    r: &mut BufReader<TcpStream>,
    rate: Option<f64>,
    seen: &Mutex<Vec<Seen>>,
    index: usize,
) -> bool {
    const END: u64 = 0x000D_0A2E_0D0A;
    // The last five octets; the body starts after a (virtual) CRLF.
    let mut last: u64 = 0x0D0A;
    let started = Instant::now();
    let mut read = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) if !b.is_empty() => b,
            _ => return false,
        };
        let mut end = None;
        for (i, &b) in buf.iter().enumerate() {
            last = ((last << 8) | u64::from(b)) & 0xFF_FFFF_FFFF;
            if last == END {
                end = Some(i + 1);
                break;
            }
        }
        let n = end.unwrap_or(buf.len());
        // The content ends before the final ".\r\n".
        let content = &buf[..if end.is_some() { n - 3 } else { n }];
        {
            let mut seen = seen.lock().expect("seen");
            seen[index].take(content);
            seen[index].ended = end.is_some();
        }
        r.consume(n);
        if end.is_some() {
            return true;
        }
        read += n;
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(read as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
}

/// Sends the large body (not the final dot) at most `pace` octets a
/// second, sampling the server's RSS every 200 ms; returns the RSS before
/// the body and the largest sample (KiB).
async fn send_large_body(
    c: &mut Client<tokio::net::TcpStream>,
    d: &Smtpd,
    pace: f64,
) -> (u64, u64) {
    let before = d.rss_kib().expect("the server's RSS (Linux /proc)");
    let mut peak = before;
    let mut last_sample = Instant::now();
    let started = Instant::now();
    let mut sent = 0usize;
    let filler = "x".repeat(89);
    let mut batch = String::with_capacity(70 * 1024);
    batch.push_str(SUBJECT);
    batch.push_str("\r\n");
    for i in 0..LINES {
        // 8 + 1 + 89 + 2 = 100 octets.
        batch.push_str(&format!("{i:08} {filler}\r\n"));
        if batch.len() < 64 * 1024 && i + 1 < LINES {
            continue;
        }
        if i + 1 == LINES {
            batch.push_str(LAST);
        }
        c.send(&batch).await;
        sent += batch.len();
        batch.clear();
        if last_sample.elapsed() >= Duration::from_millis(200) {
            last_sample = Instant::now();
            if let Some(now) = d.rss_kib() {
                peak = peak.max(now);
            }
        }
        let due = started + Duration::from_secs_f64(sent as f64 / pace);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
    assert_eq!(sent, BODY_LEN);
    if let Some(now) = d.rss_kib() {
        peak = peak.max(now);
    }
    (before, peak)
}

/// Reads one reply line, waiting up to `secs`.
async fn reply_within(c: &mut Client<tokio::net::TcpStream>, secs: u64) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(secs), c.io.read_line(&mut line))
        .await
        .expect("a reply in time")
        .expect("read");
    line
}

/// Checks the RSS samples of a large body: the growth stays well under
/// the body's size.
fn assert_flat(what: &str, (before, peak): (u64, u64), d: &Smtpd) {
    eprintln!(
        "{what}: RSS {before} KiB before the body, at most {peak} KiB during it (+{} KiB for {} KiB of body)",
        peak.saturating_sub(before),
        BODY_LEN / 1024
    );
    assert!(
        peak < before + RSS_GROWTH_LIMIT_KIB,
        "{what}: RSS grew from {before} KiB to {peak} KiB during a {} KiB body\n{}",
        BODY_LEN / 1024,
        d.log()
    );
}

async fn stream_relay_large_body_to_a_slower_upstream_keeps_rss_flat(ctx: Ctx) {
    // The upstream takes 2 MiB/s; the client offers 3 MiB/s.
    let up = SlowUpstream::start(Some(2.0 * 1024.0 * 1024.0));
    // A loopback client is trusted: its recipients are relayed.
    let relay = ctx.spawn(["--relay", &up.addr.to_string(), "--timeout", "60"]);
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<big@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    let rss = send_large_body(&mut c, &relay, 3.0 * 1024.0 * 1024.0).await;
    c.send(".\r\n").await;
    let r = reply_within(&mut c, 60).await;
    assert!(r.starts_with("250"), "{r:?}\n{}", relay.log());
    assert_flat("relay", rss, &relay);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].ended);
    assert!(seen[0].head.starts_with(b"Received: "), "our trace first");
    assert_eq!(seen[0].message_bytes(), BODY_LEN, "the body, exactly");
    assert!(seen[0].tail.ends_with(LAST.as_bytes()));
    c.expect("QUIT\r\n", "221").await;
}

async fn stream_maildir_large_body_sent_slowly_keeps_rss_flat(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--timeout", "60"]);
    let mut c = d.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<big@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    let rss = send_large_body(&mut c, &d, 4.0 * 1024.0 * 1024.0).await;
    c.send(".\r\n").await;
    let r = reply_within(&mut c, 60).await;
    assert!(r.starts_with("250"), "{r:?}\n{}", d.log());
    let files = delivered(dir.path(), "big@y.example");
    assert_eq!(files.len(), 1, "{:?}", all_files(dir.path()));
    // Stored with LF line ends: one octet less per line.
    let text = std::fs::read(&files[0]).expect("read");
    let lf = |s: &str| s.replace("\r\n", "\n");
    let subject = lf(SUBJECT);
    let at = text
        .windows(subject.len())
        .position(|w| w == subject.as_bytes())
        .expect("the message's header");
    assert_eq!(text.len() - at, BODY_LEN - (LINES + 3), "the whole body");
    assert!(text.ends_with(lf(LAST).as_bytes()));
    assert_flat("maildir", rss, &d);
    c.expect("QUIT\r\n", "221").await;
}

async fn stream_relay_body_cut_off_delivers_nothing_upstream(ctx: Ctx) {
    let up = SlowUpstream::start(None);
    let relay = ctx.spawn(["--relay", &up.addr.to_string()]);
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<cut@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    let line = format!("{}\r\n", "y".repeat(98));
    // 2 MB, without the end of data.
    let chunk = format!("{SUBJECT}\r\n{}", line.repeat(20_000));
    c.send(&chunk).await;
    // Cut off once the upstream got most of it (the body streams).
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.seen().first().is_none_or(|s| s.bytes < 1_000_000) {
        assert!(
            Instant::now() < deadline,
            "the body did not stream upstream: {:?}",
            up.seen()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    // The upstream sees its connection close inside the body: no end of
    // data, no 250.
    up.wait_closed(1).await;
    assert_eq!(
        up.closed.load(Ordering::SeqCst),
        1,
        "the upstream connection closed\n{}",
        relay.log()
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}\n{}", relay.log());
    assert!(!seen[0].ended, "the cut-off body was ended upstream");
    assert!(seen[0].bytes > 0, "part of the body went upstream");
    assert!(seen[0].bytes <= chunk.len() + 1024);
    // The server goes on serving: the next message goes through on a new
    // upstream connection.
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<next@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect(&format!("{SUBJECT}\r\nsmall\r\n.\r\n"), "250")
        .await;
    c.expect("QUIT\r\n", "221").await;
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].ended);
    assert!(seen[1].tail.ends_with(b"small\r\n"));
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
}
