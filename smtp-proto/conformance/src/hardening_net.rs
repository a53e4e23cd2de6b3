//! Hardening cases: session cleanup, PROXY protocol, sockets (issue 12, items 11-15, 28).

use std::time::Duration;

#[allow(unused_imports)]
use crate::cases::{p, send_through, tmp};
use crate::support::cases;
#[allow(unused_imports)]
use crate::support::{Ctx, Smtpd, all_files, delivered};

cases!(hardening_reset_sessions_leak_no_fds);

/// The server process's open file descriptors (Linux).
fn open_fds(d: &Smtpd) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
        .map(|rd| rd.count())
        .unwrap_or(0)
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
