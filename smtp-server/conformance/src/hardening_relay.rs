//! Hardening cases: relay regressions (issue 12, items 1-10).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cases::{p, send_through, tls_server, tmp};
use crate::support::cases;
use crate::support::{Ctx, all_files, delivered};

cases!(
    relay_auth_to_an_upstream_that_requires_it,
    relay_credentials_only_inside_tls,
    relay_postmaster_is_ours_only,
    relay_not_open_by_default,
    relay_lost_upstream_fails_the_rest,
    relay_capability_mismatch_is_permanent,
    relay_dsn_parameters_encoded_once,
    relay_refuses_untrusted_sender_routing,
    relay_slow_upstream_does_not_stall_local_delivery,
);

/// What a scripted upstream does with one command.
enum Act {
    /// Answer this (CRLF added).
    Say(&'static str),
    /// Close the connection without a word.
    Drop,
    /// Never answer (the connection stays open).
    Stall,
}

/// A scripted upstream SMTP server on 127.0.0.1: greets, answers EHLO with
/// `250-scripted.test` plus `ext` lines, DATA with 354 and the body's end
/// with 250, QUIT with 221; every other command (and EHLO/DATA first) goes
/// through `answer` (given the line and the number of RCPTs it answered on
/// this connection). Records every line received and counts connections.
struct Scripted {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    conns: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(ext: &'static [&'static str], answer: fn(&str, usize) -> Option<Act>) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (rec, count) = (lines.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                std::thread::spawn(move || serve_scripted(s, ext, answer, &rec));
            }
        });
        Scripted { addr, lines, conns }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn saw(&self, prefix: &str) -> bool {
        self.lines()
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with(prefix))
    }

    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

fn serve_scripted(
    s: TcpStream,
    ext: &[&str],
    answer: fn(&str, usize) -> Option<Act>,
    rec: &Mutex<Vec<String>>,
) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let _ = w.write_all(b"220 scripted.test ESMTP\r\n");
    let mut rcpts = 0;
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        let cmd = line.trim_end().to_owned();
        line.clear();
        rec.lock().expect("lines").push(cmd.clone());
        let verb = cmd.get(..4).unwrap_or("").to_ascii_uppercase();
        let act = answer(&cmd, rcpts).unwrap_or(match verb.as_str() {
            "QUIT" => Act::Say("221 2.0.0 bye"),
            "DATA" => Act::Say("354 go ahead"),
            _ => Act::Say("250 2.0.0 ok"),
        });
        let reply = match act {
            Act::Drop => return,
            Act::Stall => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            Act::Say(reply) => reply,
        };
        let mut out = String::new();
        if verb == "EHLO" && reply.starts_with("250") {
            out.push_str("250-scripted.test\r\n");
            for (i, e) in ext.iter().enumerate() {
                let sep = if i + 1 == ext.len() { ' ' } else { '-' };
                out.push_str(&format!("250{sep}{e}\r\n"));
            }
            if ext.is_empty() {
                out = "250 scripted.test\r\n".into();
            }
        } else {
            out = format!("{reply}\r\n");
        }
        let _ = w.write_all(out.as_bytes());
        match verb.as_str() {
            "RCPT" => rcpts += 1,
            "QUIT" => return,
            "DATA" if reply.starts_with("354") => {
                let mut body = String::new();
                while r.read_line(&mut body).unwrap_or(0) > 0 {
                    if body == ".\r\n" {
                        break;
                    }
                    body.clear();
                }
                let _ = w.write_all(b"250 2.0.0 queued\r\n");
            }
            _ => {}
        }
    }
}

/// The client side of a connection through a PROXY v1 header claiming `ip`.
pub(crate) async fn via_proxy(d: &crate::Smtpd, ip: &str) -> crate::Client<tokio::net::TcpStream> {
    let mut c = crate::Client::connect(d.addr()).await;
    c.send(&format!("PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n"))
        .await;
    let g = c.reply().await;
    assert!(g.starts_with("220 "), "greeting: {g:?}");
    c
}

// Item 1: an upstream that requires AUTH (after STARTTLS) gets it, and delivers.
async fn relay_auth_to_an_upstream_that_requires_it(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "relay:s3cret\n").expect("users");
    let (up, _cert) = tls_server(
        &ctx,
        dir.path(),
        &[
            "--maildir",
            p(&md),
            "--auth",
            p(&users),
            "--require-auth",
            "--hostname",
            "auth-up.test",
        ],
    );
    let auth_file = dir.path().join("relay-auth");
    std::fs::write(&auth_file, "relay:s3cret\n").expect("auth file");
    // Opportunistic TLS by default: STARTTLS, then AUTH inside it.
    let upstream = up.addr().to_string();
    for flags in [
        &["--relay-auth", "relay:s3cret"][..],
        &["--relay-auth-file", p(&auth_file), "--relay-starttls"],
    ] {
        let mut args = vec!["--relay", upstream.as_str()];
        args.extend_from_slice(flags);
        let relay = ctx.spawn(&args);
        let mut c = relay.greeted().await;
        let r = send_through(
            &mut c,
            "a@x.example",
            &["b@y.example"],
            "Subject: authed\r\n\r\nthrough AUTH\r\n",
        )
        .await;
        assert!(r[0].starts_with("250"), "{flags:?}: {r:?}\n{}", relay.log());
        c.expect("QUIT\r\n", "221").await;
    }
    let files = delivered(&md, "b@y.example");
    assert_eq!(files.len(), 2, "{:?}", all_files(&md));
    for f in files {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(
            text.contains("by auth-up.test (smtp-proto) with ESMTPSA"),
            "{text}"
        );
    }
}

// Item 2: credentials never cross in clear.
async fn relay_credentials_only_inside_tls(ctx: Ctx) {
    let plain = Scripted::start(&["AUTH PLAIN LOGIN"], |cmd, _| {
        cmd.to_ascii_uppercase()
            .starts_with("AUTH")
            .then_some(Act::Say("235 2.7.0 ok"))
    });
    let upstream = plain.addr.to_string();
    // No STARTTLS offered: no AUTH in clear, a temporary failure instead.
    let relay = ctx.spawn(["--relay", &upstream, "--relay-auth", "u:secret"]);
    let mut c = relay.greeted().await;
    let r = send_through(&mut c, "a@x.example", &["b@y.example"], "").await;
    assert!(r[0].starts_with("451 4.4.1"), "{r:?}");
    assert!(!plain.saw("AUTH"), "{:?}", plain.lines());
    drop(relay);
    // Without a way to get TLS the flags are refused at start...
    let out = ctx
        .command([
            "--relay",
            &upstream,
            "--relay-auth",
            "u:secret",
            "--relay-no-starttls",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--relay-auth-insecure"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...unless the operator says so explicitly.
    let relay = ctx.spawn([
        "--relay",
        &upstream,
        "--relay-auth",
        "u:secret",
        "--relay-no-starttls",
        "--relay-auth-insecure",
    ]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: x\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(plain.saw("AUTH PLAIN"), "{:?}", plain.lines());
}

// Item 3: postmaster@ another domain is not ours, so it is not relayed for
// an untrusted client.
async fn relay_postmaster_is_ours_only(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path())]);
    let relay = ctx.spawn([
        "--relay",
        &up.addr().to_string(),
        "--domain",
        "example.org",
        "--proxy-protocol",
    ]);
    let mut c = via_proxy(&relay, "192.0.2.1").await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<postmaster@victim.example>\r\n", "550 5.7.1")
        .await;
    c.expect("RCPT TO:<PostMaster@Example.ORG>\r\n", "250")
        .await;
    c.expect("RCPT TO:<postmaster>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: pm\r\n\r\nhi\r\n.\r\n", "250").await;
    assert!(delivered(dir.path(), "postmaster@victim.example").is_empty());
    assert_eq!(
        all_files(dir.path()).len(),
        2,
        "{:?}",
        all_files(dir.path())
    );
    // A local store follows the same rule.
    let local = tmp();
    let d = ctx.spawn(["--maildir", p(local.path()), "--domain", "example.org"]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<postmaster@victim.example>\r\n", "550 5.7.1")
        .await;
}

// Item 4: `--relay` without `--domain` (or with `*`) relays only for
// trusted clients: loopback, --relay-from-network, authenticated.
async fn relay_not_open_by_default(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path())]);
    let upstream = up.addr().to_string();
    for domains in [&[][..], &["--domain", "*"]] {
        let mut args = vec!["--relay", upstream.as_str(), "--proxy-protocol"];
        args.extend_from_slice(domains);
        let relay = ctx.spawn(&args);
        let mut c = via_proxy(&relay, "192.0.2.7").await;
        let r = send_through(&mut c, "a@x.example", &["victim@elsewhere.example"], "").await;
        assert!(r[0].starts_with("550 5.7.1"), "{domains:?}: {r:?}");
        // A loopback client (the PROXY source counts) may.
        let mut c = via_proxy(&relay, "127.0.0.1").await;
        let r = send_through(
            &mut c,
            "a@x.example",
            &["friend@elsewhere.example"],
            "Subject: lo\r\n\r\nhi\r\n",
        )
        .await;
        assert!(r[0].starts_with("250"), "{domains:?}: {r:?}");
    }
    // So may a configured network.
    let relay = ctx.spawn([
        "--relay",
        &upstream,
        "--proxy-protocol",
        "--relay-from-network",
        "192.0.2.0/24",
    ]);
    let mut c = via_proxy(&relay, "192.0.2.7").await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["net@elsewhere.example"],
        "Subject: net\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(delivered(dir.path(), "victim@elsewhere.example").is_empty());
    assert_eq!(delivered(dir.path(), "friend@elsewhere.example").len(), 2);
    assert_eq!(delivered(dir.path(), "net@elsewhere.example").len(), 1);
    let help = ctx.command(["--help"]).output().expect("run");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("No open relay"),
        "--help documents the relay rule"
    );
}

// Item 5: once a relayed recipient was accepted, losing the upstream
// transaction fails the rest of it; a later RCPT never opens a new
// upstream transaction holding only itself.
async fn relay_lost_upstream_fails_the_rest(ctx: Ctx) {
    let up = Scripted::start(&["PIPELINING"], |cmd, rcpts| {
        (cmd.to_ascii_uppercase().starts_with("RCPT") && rcpts == 1).then_some(Act::Drop)
    });
    let relay = ctx.spawn(["--relay", &up.addr.to_string()]);
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<one@y.example>\r\n", "250").await;
    c.expect("RCPT TO:<two@y.example>\r\n", "451 4.4.1").await;
    c.expect("RCPT TO:<three@y.example>\r\n", "451 4.4.1").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: lost\r\n\r\nx\r\n.\r\n", "451 4.4.1")
        .await;
    assert_eq!(up.connections(), 1, "{:?}", up.lines());
    assert!(!up.saw("DATA"), "{:?}", up.lines());
    // The next transaction starts afresh.
    let r = send_through(
        &mut c,
        "a@x.example",
        &["four@y.example"],
        "Subject: again\r\n\r\ny\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
}

// Items 6 and 9: what the upstream can never take is refused for good,
// and the upstream connection stays in use (no abrupt close, QUIT at the end).
async fn relay_capability_mismatch_is_permanent(ctx: Ctx) {
    let up = Scripted::start(&["SIZE 1000"], |_, _| None);
    let relay = ctx.spawn(["--relay", &up.addr.to_string()]);
    let mut c = relay.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    for (mail, want) in [
        ("MAIL FROM:<a@x.example> SIZE=5000", "552 5.3.4"),
        ("MAIL FROM:<a@x.example> BODY=8BITMIME", "554 5.6.3"),
        ("MAIL FROM:<a@x.example> SMTPUTF8", "553 5.6.7"),
    ] {
        c.expect(&format!("{mail}\r\n"), "250").await;
        c.expect("RCPT TO:<b@y.example>\r\n", want).await;
        c.expect("RCPT TO:<c@y.example>\r\n", want).await;
        c.expect("RSET\r\n", "250").await;
    }
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: fits\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    c.expect("QUIT\r\n", "221").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.saw("QUIT") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up.saw("QUIT"), "{:?}", up.lines());
    assert_eq!(up.connections(), 1, "{:?}", up.lines());
    assert_eq!(
        up.lines().iter().filter(|l| l.starts_with("MAIL")).count(),
        1,
        "nothing the upstream cannot take was sent: {:?}",
        up.lines()
    );
}

// Item 7: ENVID and ORCPT go upstream exactly as encoded once.
async fn relay_dsn_parameters_encoded_once(ctx: Ctx) {
    let up = Scripted::start(&["DSN"], |_, _| None);
    let relay = ctx.spawn(["--relay", &up.addr.to_string()]);
    let mut c = relay.greeted().await;
    // A valid 99-octet ENVID that encoding twice would push over 100.
    let envid = "+2B".repeat(33);
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect(
        &format!("MAIL FROM:<a@x.example> RET=HDRS ENVID={envid}\r\n"),
        "250",
    )
    .await;
    c.expect(
        "RCPT TO:<b@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bext@y.example\r\n",
        "250",
    )
    .await;
    c.expect("DATA\r\n", "354").await;
    c.expect("Subject: dsn\r\n\r\nx\r\n.\r\n", "250").await;
    let lines = up.lines();
    let mail = lines
        .iter()
        .find(|l| l.starts_with("MAIL"))
        .expect("MAIL upstream");
    assert!(mail.contains(&format!("ENVID={envid}")), "{mail}");
    let rcpt = lines
        .iter()
        .find(|l| l.starts_with("RCPT"))
        .expect("RCPT upstream");
    assert!(rcpt.contains(" ORCPT=rfc822;b+2Bext@y.example"), "{rcpt}");
    assert!(!rcpt.contains("rfc822;rfc822"), "{rcpt}");
}

// Item 8: sender-specified routing to a served domain is not relayed for
// an untrusted client (Postfix's allow_untrusted_routing = no).
async fn relay_refuses_untrusted_sender_routing(ctx: Ctx) {
    let up = Scripted::start(&[], |_, _| None);
    let relay = ctx.spawn([
        "--relay",
        &up.addr.to_string(),
        "--domain",
        "example.org",
        "--proxy-protocol",
    ]);
    let mut c = via_proxy(&relay, "192.0.2.9").await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    for rcpt in [
        "<victim%elsewhere.example@example.org>",
        "<elsewhere.example!victim@example.org>",
        "<\"victim@elsewhere.example\"@example.org>",
    ] {
        c.expect(&format!("RCPT TO:{rcpt}\r\n"), "550 5.7.1").await;
    }
    c.expect("RCPT TO:<plain@example.org>\r\n", "250").await;
    assert!(
        up.lines().iter().all(|l| !l.contains("elsewhere")),
        "{:?}",
        up.lines()
    );
    // A trusted client may.
    let mut c = via_proxy(&relay, "127.0.0.1").await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<user%host@example.org>\r\n", "250").await;
}

// Item 10: relay I/O does not share the thread pool the local stores
// write on. The pool is squeezed to two threads (BLOCKING_MAX_THREADS, read
// by the `blocking` crate) and three sessions wait on a silent upstream;
// local deliveries still go through at once.
async fn relay_slow_upstream_does_not_stall_local_delivery(ctx: Ctx) {
    let silent = Scripted::start(&[], |cmd, _| {
        cmd.to_ascii_uppercase()
            .starts_with("EHLO")
            .then_some(Act::Stall)
    });
    let dir = tmp();
    let relay = ctx.spawn_env(
        [
            "--relay",
            &silent.addr.to_string(),
            "--maildir",
            p(dir.path()),
            "--domain",
            "local.example",
            "--relay-from-network",
            "127.0.0.0/8",
            "--timeout",
            "30",
        ],
        Stdio::null(),
        &[("BLOCKING_MAX_THREADS", "2")],
    );
    let mut stuck = Vec::new();
    for _ in 0..3 {
        let mut c = relay.greeted().await;
        c.expect("EHLO client.example\r\n", "250").await;
        c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
        c.send("RCPT TO:<far@remote.example>\r\n").await;
        stuck.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while silent.connections() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    for i in 0..3 {
        let mut c = relay.greeted().await;
        let body = format!("Subject: local {i}\r\n\r\nx\r\n");
        let r = send_through(&mut c, "a@x.example", &["me@local.example"], &body);
        let r = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("a local delivery waited on the stalled relay sessions");
        assert!(r[0].starts_with("250"), "{r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(delivered(dir.path(), "me@local.example").len(), 3);
    drop(stuck);
}
