//! Hardening cases: built-in store regressions (issue 12, items 16-19).

use std::process::Stdio;

use crate::cases::{p, tmp};
use crate::support::cases;
use crate::support::{Ctx, all_files, delivered};

cases!(
    hardening_store_lmtp_maildir_per_recipient_status,
    hardening_store_smtp_maildir_all_or_nothing,
    hardening_store_maildir_lf_line_ends,
    hardening_store_debug_write_failure_451,
);

/// Item 16: in LMTP, a recipient whose mailbox cannot be written gets its
/// own 4xx after the body; the others get 250 and are delivered.
async fn hardening_store_lmtp_maildir_per_recipient_status(ctx: Ctx) {
    let dir = tmp();
    // A file where the mailbox directory of `broken@y` should be.
    std::fs::write(dir.path().join("broken@y"), b"in the way").expect("write");
    let d = ctx.spawn(["--lmtp", "--maildir", p(dir.path())]);
    let mut c = d.greeted().await;
    c.expect("LHLO client\r\n", "250").await;
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<broken@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send("Subject: l\r\n\r\nhi\r\n.\r\n").await;
    // RFC 2033: one reply per accepted recipient, in order.
    let replies = [c.reply().await, c.reply().await, c.reply().await];
    assert!(replies[0].starts_with("250 2.0.0"), "{replies:?}");
    assert!(replies[1].starts_with("451 4.3.0"), "{replies:?}");
    assert!(replies[2].starts_with("250 2.0.0"), "{replies:?}");
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    assert_eq!(delivered(dir.path(), "d@y").len(), 1);
    // The two copies and the file in the way: no temporary file left.
    assert_eq!(
        all_files(dir.path()).len(),
        3,
        "{:?}",
        all_files(dir.path())
    );
}

/// Item 16, SMTP side: one reply per message, so one recipient that cannot
/// be written refuses the message for all, and nothing is left delivered.
async fn hardening_store_smtp_maildir_all_or_nothing(ctx: Ctx) {
    let dir = tmp();
    std::fs::write(dir.path().join("broken@y"), b"in the way").expect("write");
    let d = ctx.spawn(["--maildir", p(dir.path())]);
    let mut c = d.greeted().await;
    c.expect("EHLO client\r\n", "250").await;
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<broken@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "354 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.expect("Subject: s\r\n\r\nhi\r\n.\r\n", "451 4.3.0").await;
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(
        all_files(dir.path()).len(),
        1,
        "{:?}",
        all_files(dir.path())
    );
}

/// Item 17: Maildir files use LF line ends, trace headers included, as
/// Unix Maildir readers (mutt, Dovecot) expect; the body is otherwise unchanged.
async fn hardening_store_maildir_lf_line_ends(ctx: Ctx) {
    let dir = tmp();
    let d = ctx.spawn(["--maildir", p(dir.path()), "--hostname", "lf.test"]);
    let mut c = d.greeted().await;
    c.expect("EHLO client\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    c.expect("RCPT TO:<b@y>\r\n", "250").await;
    c.expect("DATA\r\n", "354").await;
    c.expect(
        "Subject: lf\r\nX-Folded: one\r\n two\r\n\r\n..dot\r\nlast \r\n.\r\n",
        "250 2.0.0",
    )
    .await;
    c.expect("QUIT\r\n", "221").await;
    let files = delivered(dir.path(), "b@y");
    assert_eq!(files.len(), 1, "{:?}", all_files(dir.path()));
    let bytes = std::fs::read(&files[0]).expect("read");
    let text = String::from_utf8(bytes).expect("UTF-8");
    assert!(!text.contains('\r'), "{text:?}");
    assert!(
        text.starts_with("Return-Path: <a@x>\nDelivered-To: b@y\nReceived: from client "),
        "{text:?}"
    );
    // The folded Received header keeps its folds, with LF.
    assert!(text.contains("\n\tby lf.test"), "{text:?}");
    assert!(
        text.ends_with("\nSubject: lf\nX-Folded: one\n two\n\n.dot\nlast \n"),
        "{text:?}"
    );
}

/// Item 18: the debugging server answers 250 only when the message was
/// printed; a failed write (full disk, closed pipe) answers `451 4.3.0`.
async fn hardening_store_debug_write_failure_451(ctx: Ctx) {
    // stdout on a full device (ENOSPC), then on a pipe nobody reads (EPIPE).
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    let mut outs = Vec::new();
    match full {
        Ok(f) => outs.push(("/dev/full", Stdio::from(f))),
        Err(e) => eprintln!("SKIPPED the /dev/full half: {e}"),
    }
    outs.push(("closed pipe", Stdio::piped()));
    for (what, out) in outs {
        let mut d = ctx.spawn_with(["--hostname", "dbg.test"], out);
        // Close the pipe's read end: every write now fails.
        drop(d.child.stdout.take());
        let mut c = d.greeted().await;
        c.expect("EHLO x\r\n", "250").await;
        c.expect("MAIL FROM:<a@x>\r\n", "250").await;
        c.expect("RCPT TO:<b@y>\r\n", "250").await;
        c.expect("DATA\r\n", "354").await;
        let r = c.cmd("Subject: dbg\r\n\r\nhello\r\n.\r\n").await;
        assert!(r.starts_with("451 4.3.0"), "{what}: {r:?}");
        // The session goes on: the server did not die of the failed write.
        c.expect("NOOP\r\n", "250").await;
        c.expect("QUIT\r\n", "221").await;
    }
}
