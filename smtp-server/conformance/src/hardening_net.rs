//! Hardening cases: session cleanup, PROXY protocol, sockets (issue 12, items 11-15, 28).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::cases::{p, send_through, stored_body, tls_server, tmp};
use crate::support::cases;
use crate::support::{Ctx, Smtpd, TestCert};

cases!(
    hardening_reset_sessions_leak_no_fds,
    hardening_proxy_header_before_implicit_tls,
    hardening_proxy_per_ip_counts_the_source,
    hardening_proxy_from_trusted_peers_only,
    hardening_listen_unix_mode,
);

/// The server process's open file descriptors (Linux; the case cannot
/// measure anything without /proc, so it fails rather than pass vacuously).
fn open_fds(d: &Smtpd) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
        .map(|rd| rd.count())
        .expect("/proc/<pid>/fd of the server")
}

/// Polls (up to 10 s) until the server holds at most `want` descriptors;
/// returns the last count.
async fn settle_fds(d: &Smtpd, want: usize) -> usize {
    let mut n = open_fds(d);
    for _ in 0..100 {
        if n <= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = open_fds(d);
    }
    n
}

/// Resets `c`'s connection: SO_LINGER 0, then close, so the server sees
/// an RST instead of a FIN.
fn reset(c: crate::Client<tokio::net::TcpStream>) {
    let tcp = c.io.into_inner();
    // Deprecated in tokio because a nonzero linger blocks the dropping
    // thread; zero does not (it is the point: an RST).
    #[allow(deprecated)]
    tcp.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(tcp);
}

/// Issue 12 item 11: sessions reset by the client (RST) right after RCPT,
/// while the relay holds an upstream connection for them, all end through
/// the one cleanup path (the handler's `disconnect`, which lets the relay
/// close that upstream connection): the relay's descriptor count comes
/// back. Half are reset while the server has replies they never read
/// (its write fails), half while it waits to read.
async fn hardening_reset_sessions_leak_no_fds(ctx: Ctx) {
    let up = ctx.spawn(["--sink"]);
    let upstream = up.addr().to_string();
    let relay = ctx.spawn([
        "--relay",
        upstream.as_str(),
        "--relay-from-network",
        "127.0.0.0/8",
        // The flood of NOOPs below is not junk for this test.
        "--junk-command-limit",
        "0",
    ]);
    // One full session first, so lazily opened files (if any) are counted.
    let mut warm = relay.greeted().await;
    send_through(&mut warm, "a@x", &["b@y"], "Subject: w\r\n\r\nwarm\r\n").await;
    warm.expect("QUIT\r\n", "221").await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = open_fds(&relay);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = relay.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = crate::Client::connect(addr).await;
            assert!(c.reply().await.starts_with("220"));
            c.expect("EHLO reset\r\n", "250").await;
            c.expect("MAIL FROM:<a@x>\r\n", "250").await;
            c.expect(&format!("RCPT TO:<r{i}@y.example>\r\n"), "250")
                .await;
            if i % 2 == 1 {
                // Commands whose replies are never read, until the server
                // stops reading because its replies pile up: the reset
                // then fails its write.
                let flood = "NOOP\r\n".repeat(64 * 1024);
                let w = c.io.get_mut();
                let _ = tokio::time::timeout(
                    Duration::from_millis(1500),
                    tokio::io::AsyncWriteExt::write_all(w, flood.as_bytes()),
                )
                .await;
            }
            reset(c);
        }));
    }
    for t in tasks {
        t.await.expect("a client task");
    }
    let after = settle_fds(&relay, before).await;
    assert!(
        after <= before,
        "{after} descriptors after 40 reset sessions, {before} before; log:\n{}",
        relay.log()
    );
}

/// The `Received:` header of the one message for `rcpt` under `root`.
fn received(root: &std::path::Path, rcpt: &str) -> String {
    let text = stored_body(root, rcpt);
    let r = text.split("Received: ").nth(1).unwrap_or("");
    r.split("\r\nSubject").next().unwrap_or("").to_owned()
}

/// A PROXY v1 header for a TCP4 client `src` (port 51000) to 203.0.113.1:`port`.
/// A connection to `addr` whose PROXY header names `src`, and the reply
/// to it.
pub(crate) async fn proxied(
    addr: std::net::SocketAddr,
    src: &str,
) -> (crate::Client<TcpStream>, String) {
    let mut c = crate::Client::connect(addr).await;
    c.send(&header(src, 25)).await;
    let r = c.reply().await;
    (c, r)
}

pub(crate) fn header(src: &str, port: u16) -> String {
    format!("PROXY TCP4 {src} 203.0.113.1 51000 {port}\r\n")
}

/// The same as a PROXY v2 (binary) header.
fn header_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&[203, 0, 113, 1]);
    h.extend_from_slice(&51000u16.to_be_bytes());
    h.extend_from_slice(&port.to_be_bytes());
    h
}

/// Issue 12 item 13: with --proxy-protocol on an implicit-TLS listener,
/// the header comes first in clear (HAProxy's `send-proxy`), then the
/// handshake, and no header is expected inside TLS. On the STARTTLS
/// listener the header stays first, in clear.
async fn hardening_proxy_header_before_implicit_tls(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let (d, cert) = tls_server(
        &ctx,
        dir.path(),
        &[
            "--maildir",
            p(&md),
            "--proxy-protocol",
            "--listen-tls",
            "127.0.0.1:0",
            "--timeout",
            "3",
        ],
    );
    // v1 then v2, each written with the ClientHello right behind it (as
    // a balancer forwards it): the header must be read and nothing more.
    for (i, wire) in [
        header("198.51.100.7", 465).into_bytes(),
        header_v2([198, 51, 100, 8], 465),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tcp = TcpStream::connect(d.addrs[1]).await.expect("connect");
        tcp.write_all(&wire).await.expect("header");
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            cert.connector().connect(TestCert::server_name(), tcp),
        )
        .await
        .expect("a handshake within 10 s")
        .expect("handshake after the PROXY header");
        let mut t = crate::Client::new(tls);
        let greeting = t.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting:?}");
        let rcpt = format!("tls{i}@y");
        let r = send_through(&mut t, "a@x", &[&rcpt], "Subject: t\r\n\r\nvia proxy\r\n").await;
        assert!(r[0].starts_with("250"), "{r:?}");
        t.expect("QUIT\r\n", "221").await;
        let received = received(&md, &rcpt);
        let want = ["198.51.100.7", "198.51.100.8"][i];
        assert!(received.contains(want), "{received}");
        assert!(!received.contains("127.0.0.1"), "{received}");
    }
    // The header is bounded in time and size: silence, or a v1 line
    // without its end, is closed without a word.
    let started = std::time::Instant::now();
    let mut c = crate::Client::connect(d.addrs[1]).await;
    assert_eq!(c.read_to_end().await, "");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed by the timeout"
    );
    let mut c = crate::Client::connect(d.addrs[1]).await;
    c.send(&format!("PROXY TCP4 {}", "1".repeat(300))).await;
    assert_eq!(c.read_to_end().await, "");
    // A TLS client without a header is not served.
    let tcp = TcpStream::connect(d.addrs[1]).await.expect("connect");
    let hs = tokio::time::timeout(
        Duration::from_secs(10),
        cert.connector().connect(TestCert::server_name(), tcp),
    )
    .await
    .expect("closed within 10 s");
    assert!(hs.is_err(), "a handshake without a PROXY header");
    // The STARTTLS listener: the header first, in clear, as before.
    let mut c = crate::Client::connect(d.addr()).await;
    c.send(&header("198.51.100.9", 25)).await;
    assert!(c.reply().await.starts_with("220 "));
    let mut t = cert.starttls(c).await;
    send_through(
        &mut t,
        "a@x",
        &["plain@y"],
        "Subject: s\r\n\r\nstarttls\r\n",
    )
    .await;
    t.expect("QUIT\r\n", "221").await;
    assert!(received(&md, "plain@y").contains("198.51.100.9"));
}

/// Issue 12 item 14: behind --proxy-protocol, --max-connections-per-ip
/// counts the header's source address, not the balancer's.
async fn hardening_proxy_per_ip_counts_the_source(ctx: Ctx) {
    let d = ctx.spawn([
        "--sink",
        "--proxy-protocol",
        "--max-connections-per-ip",
        "1",
    ]);
    let addr = d.addr();
    let proxied = |src: &'static str| proxied(addr, src);
    let (mut a, r) = proxied("198.51.100.7").await;
    assert!(r.starts_with("220 "), "first from .7: {r:?}");
    // The balancer (127.0.0.1) is not limited per address.
    let (mut b, r) = proxied("198.51.100.8").await;
    assert!(r.starts_with("220 "), "first from .8: {r:?}");
    // A second connection from the same claimed source is over the limit.
    let (mut c, r) = proxied("198.51.100.7").await;
    assert!(r.starts_with("421 4.7.0"), "second from .7: {r:?}");
    assert_eq!(c.read_to_end().await, "", "closed after the 421");
    // Its slot comes back when the first one ends.
    a.expect("QUIT\r\n", "221").await;
    drop(a);
    let mut again = String::new();
    for _ in 0..50 {
        let (mut c, r) = proxied("198.51.100.7").await;
        again = r;
        if again.starts_with("220 ") {
            c.expect("QUIT\r\n", "221").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.starts_with("220 "), "after the first left: {again:?}");
    b.expect("QUIT\r\n", "221").await;
}

/// Issue 12 item 15: with --proxy-from, only those peers may send a PROXY
/// header; any other connection is closed without a word, as for a
/// missing header.
async fn hardening_proxy_from_trusted_peers_only(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    // The test client (127.0.0.1) is not a trusted proxy here.
    let d = ctx.spawn([
        "--maildir",
        p(&md),
        "--proxy-protocol",
        "--proxy-from",
        "192.0.2.0/24",
        "--proxy-from",
        "2001:db8::/32",
    ]);
    let mut c = crate::Client::connect(d.addr()).await;
    c.send(&header("198.51.100.7", 25)).await;
    assert_eq!(c.read_to_end().await, "", "a header from an untrusted peer");
    // Nor without a header.
    let mut c = crate::Client::connect(d.addr()).await;
    c.send("EHLO x\r\n").await;
    assert_eq!(c.read_to_end().await, "");
    // Trusted: served, with the header's address.
    let d = ctx.spawn([
        "--maildir",
        p(&md),
        "--proxy-protocol",
        "--proxy-from",
        "192.0.2.0/24",
        "--proxy-from",
        "127.0.0.1/32",
    ]);
    let mut c = crate::Client::connect(d.addr()).await;
    c.send(&header("198.51.100.7", 25)).await;
    assert!(c.reply().await.starts_with("220 "));
    send_through(&mut c, "a@x", &["b@y"], "Subject: t\r\n\r\ntrusted\r\n").await;
    c.expect("QUIT\r\n", "221").await;
    assert!(received(&md, "b@y").contains("198.51.100.7"));
}

/// Issue 12 item 28: --listen-unix-mode gives the Unix socket that mode
/// (Postfix's LMTP client, running as `postfix`, must be able to connect).
async fn hardening_listen_unix_mode(ctx: Ctx) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    for (i, mode) in ["0666", "0660", "0600"].into_iter().enumerate() {
        let sock = dir.path().join(format!("lmtp{i}.sock"));
        let d = ctx.spawn([
            "--sink",
            "--lmtp",
            "--listen-unix",
            p(&sock),
            "--listen-unix-mode",
            mode,
        ]);
        let meta = std::fs::metadata(&sock).expect("the socket exists");
        let want = u32::from_str_radix(mode, 8).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            want,
            "{mode}: {:o}",
            meta.permissions().mode()
        );
        // It serves, and nothing but the socket was left in the directory.
        let unix = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("connect");
        let mut c = crate::Client::new(unix);
        assert!(c.reply().await.starts_with("220 "));
        c.expect("LHLO x\r\n", "250").await;
        c.expect("QUIT\r\n", "221").await;
        drop(d);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["lmtp0.sock", "lmtp1.sock", "lmtp2.sock"]);
    // A bad mode is refused at start.
    let status = ctx
        .command([
            "--sink",
            "--listen-unix",
            "x.sock",
            "--listen-unix-mode",
            "rw",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(2));
}
