//! XCLIENT and XFORWARD (issue 15, part 1): `--xclient-from`,
//! `--xforward-from`, and the relay passing XFORWARD upstream; swaks as a
//! real XCLIENT client.

use std::process::Command;

use crate::cases::{p, tmp};
use crate::support::{Ctx, cases, delivered, have};

cases!(
    xclient_restarts_as_the_named_client,
    xclient_and_xforward_refused_to_strangers,
    xforward_names_the_client_in_the_trace,
    relay_passes_xforward_upstream,
    swaks_xclient,
);

/// The stored message for `rcpt`, the only one.
fn stored(root: &std::path::Path, rcpt: &str) -> String {
    let files = delivered(root, rcpt);
    assert_eq!(files.len(), 1, "{rcpt}: {files:?}");
    std::fs::read_to_string(&files[0]).expect("read")
}

/// A front proxy on 127.0.0.1 names its clients with XCLIENT: each is
/// greeted anew, judged by its own address (the connection rate counts
/// it, not the proxy), and named in the Received header.
async fn xclient_restarts_as_the_named_client(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn([
        "--maildir",
        p(dir.path()),
        "--xclient-from",
        "127.0.0.1/32",
        "--max-connection-rate",
        "1",
        "--hostname",
        "mx.test",
    ]);
    let mut c = d.greeted().await;
    let ehlo = c.expect("EHLO proxy.test\r\n", "250").await;
    assert!(
        ehlo.contains("250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n"),
        "{ehlo}"
    );
    c.expect(
        "XCLIENT ADDR=198.51.100.7 PORT=4000 NAME=client.example HELO=orig.example\r\n",
        "220 mx.test",
    )
    .await;
    c.expect("EHLO orig.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<b@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: via xclient\r\n\r\nhi\r\n.\r\n", "250")
        .await;
    c.expect("QUIT\r\n", "221").await;
    let text = stored(dir.path(), "b@y.example");
    assert!(
        text.contains("Received: from orig.example (client.example [198.51.100.7])"),
        "{text}"
    );
    // The proxy's second connection is not over the rate (1 a minute): it
    // is counted for the client it names, and .7 had its one.
    let mut c = d.greeted().await;
    c.expect("XCLIENT ADDR=198.51.100.7\r\n", "421 4.7.0").await;
    let mut c = d.greeted().await;
    c.expect("XCLIENT ADDR=198.51.100.8\r\n", "220 mx.test")
        .await;
    c.expect("QUIT\r\n", "221").await;
}

/// A client outside the networks sees neither keyword and gets
/// `550 5.7.0`; nothing about the session changes.
async fn xclient_and_xforward_refused_to_strangers(ctx: Ctx) {
    let d = ctx.spawn([
        "--sink",
        "--xclient-from",
        "10.0.0.0/8",
        "--xforward-from",
        "192.0.2.0/24",
    ]);
    let mut c = d.greeted().await;
    let ehlo = c.expect("EHLO x.test\r\n", "250").await;
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    c.expect("XCLIENT ADDR=10.1.2.3 LOGIN=admin\r\n", "550 5.7.0")
        .await;
    c.expect("XFORWARD ADDR=10.1.2.3\r\n", "550 5.7.0").await;
    // Still itself: the session goes on as before, unauthenticated.
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
}

/// A content filter's XFORWARD facts name the original client in the
/// stored message's trace, for one transaction.
async fn xforward_names_the_client_in_the_trace(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--xforward-from", "127.0.0.1"]);
    let mut c = d.greeted().await;
    let ehlo = c.expect("EHLO filter.test\r\n", "250").await;
    assert!(
        ehlo.contains("250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n"),
        "{ehlo}"
    );
    c.expect(
        "XFORWARD NAME=far.example ADDR=IPV6:2001:db8::9 HELO=far-helo.example\r\n",
        "250 2.0.0",
    )
    .await;
    c.expect(
        "XFORWARD IDENT=Q123 SOURCE=REMOTE PROTO=ESMTP\r\n",
        "250 2.0.0",
    )
    .await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<b@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: filtered\r\n\r\nhi\r\n.\r\n", "250")
        .await;
    // The next message is the filter's own again.
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<c@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: own\r\n\r\nhi\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    let first = stored(dir.path(), "b@y.example");
    assert!(
        first.contains("Received: from far-helo.example (far.example [IPv6:2001:db8::9])"),
        "{first}"
    );
    let second = stored(dir.path(), "c@y.example");
    assert!(
        second.contains("Received: from filter.test (unknown [127.0.0.1])"),
        "{second}"
    );
}

/// The relay tells an upstream that offers XFORWARD who the client was:
/// the upstream's trace names our client's HELO, not the relay.
async fn relay_passes_xforward_upstream(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn([
        "--maildir",
        p(dir.path()),
        "--xforward-from",
        "127.0.0.1",
        "--hostname",
        "filter.test",
    ]);
    let upstream = up.addr().to_string();
    let relay = ctx.spawn(["--relay", upstream.as_str(), "--hostname", "relay.test"]);
    let mut c = relay.greeted().await;
    c.expect("EHLO original-client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<b@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: relayed\r\n\r\nhi\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    let text = stored(dir.path(), "b@y.example");
    assert!(
        text.contains("Received: from original-client.example ("),
        "the upstream names our client: {text}"
    );
    assert!(!text.contains("Received: from relay.test"), "{text}");
}

/// swaks, a real client, sends XCLIENT and greets again as the client.
async fn swaks_xclient(ctx: Ctx) {
    if !have("swaks") {
        return;
    }
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--xclient-from", "127.0.0.1"]);
    let addr = d.addr();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("swaks")
            .args(["--server", &addr.ip().to_string(), "--port"])
            .arg(addr.port().to_string())
            .args([
                "--from",
                "a@x.example",
                "--to",
                "b@y.example",
                "--helo",
                "swaks.example",
                "--xclient-addr",
                "198.51.100.42",
                "--xclient-name",
                "swaks-client.example",
                "--timeout",
                "10",
            ])
            .output()
            .expect("run swaks")
    })
    .await
    .expect("join");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{log}");
    assert!(log.contains("XCLIENT"), "{log}");
    let text = stored(dir.path(), "b@y.example");
    assert!(
        text.contains("(swaks-client.example [198.51.100.42])"),
        "{text}"
    );
}
