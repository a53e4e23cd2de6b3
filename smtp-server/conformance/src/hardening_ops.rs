//! Hardening cases: operations (issue 12, item 27: one log line per message).

use std::time::{Duration, Instant};

use crate::cases::{p, send_through, tmp};
use crate::support::cases;
use crate::support::{Ctx, Smtpd};

cases!(
    hardening_ops_one_log_line_per_message,
    hardening_ops_log_line_names_the_relay_reply,
);

/// The server's log lines containing `needle`, waited for (the log is
/// drained by a thread).
pub(crate) async fn log_lines(d: &Smtpd, needle: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = d
            .log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hardening_ops_one_log_line_per_message(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--max-size", "200"]);
    let mut c = d.greeted().await;
    let r = send_through(
        &mut c,
        "alice@x.example",
        &["bob@y.example", "carol@y.example"],
        "Subject: logged\r\n\r\nhello\r\n",
    )
    .await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    let lines = log_lines(&d, "message accepted", 1).await;
    assert_eq!(lines.len(), 1, "{}", d.log());
    let line = &lines[0];
    for want in [
        "smtp::message",
        "client=127.0.0.1:",
        "from=<alice@x.example>",
        "size=26",
        "<bob@y.example> 250 2.0.0, <carol@y.example> 250 2.0.0",
        &format!("maildir:{}/bob@y.example/new/", p(dir.path())),
        &format!("maildir:{}/carol@y.example/new/", p(dir.path())),
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(line.contains("session=") && line.contains(" id="), "{line}");
    // A refused message gets its line too.
    c.expect("MAIL FROM:<alice@x.example>\r\n", "250").await;
    c.expect("RCPT TO:<bob@y.example>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(400));
    c.expect(&big, "552 5.3.4").await;
    let lines = log_lines(&d, "message refused", 1).await;
    assert_eq!(lines.len(), 1, "{}", d.log());
    assert!(lines[0].contains("reason=TooBig"), "{}", lines[0]);
    assert!(lines[0].contains("<bob@y.example>"), "{}", lines[0]);
    assert_eq!(log_lines(&d, "message accepted", 1).await.len(), 1);
}

async fn hardening_ops_log_line_names_the_relay_reply(ctx: Ctx) {
    let dir = tmp();
    let up = ctx.spawn(["--maildir", p(dir.path())]);
    let relay = ctx.spawn(["--relay", &up.addr().to_string()]);
    let mut c = relay.greeted().await;
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: r\r\n\r\nx\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    let lines = log_lines(&relay, "message accepted", 1).await;
    assert_eq!(lines.len(), 1, "{}", relay.log());
    let want = format!("stored=relay:{} (250 2.0.0", up.addr());
    assert!(lines[0].contains(&want), "{want:?} in {}", lines[0]);
}
