//! The `smtpd` binary: flag errors, and a debug-printing run stopped by SIGTERM.
#![cfg(all(feature = "cli", unix))]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::Client;

const BIN: &str = env!("CARGO_BIN_EXE_smtpd");

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--bogus"][..],
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["--auth", "/nonexistent/users"],
        &["--auth", "/nonexistent/users", "--auth-insecure"],
        &["--require-tls"],
        &["--maildir", "a", "--mbox", "b"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn debug_server_prints_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::TestCert::new().write_pem(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:secret\n").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "dbg.test",
            "--domain",
            "example.net",
        ])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--auth")
        .arg(&users)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "smtpd exited");
        if let Some(i) = line.find("addr=") {
            let a = line[i + 5..].split_whitespace().next().unwrap();
            break a.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 dbg.test"));
    let ehlo = c.cmd("EHLO x\r\n").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<b@elsewhere>\r\n")
            .await
            .starts_with("550 5.7.1")
    );
    assert!(
        c.cmd("RCPT TO:<b@example.net>\r\n")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    assert!(
        c.cmd("Subject: dbg\r\n\r\nhello\r\n.\r\n")
            .await
            .starts_with("250")
    );
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // The open session is told, and the process exits cleanly.
    assert!(c.read_to_end().await.starts_with("421 4.3.2"));
    assert!(child.wait().unwrap().success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("---------- MESSAGE FOLLOWS ----------\nX-Peer: 127.0.0.1\nX-MailFrom: a@x\nX-RcptTo: b@example.net\n\n"), "{out}");
    assert!(
        out.contains("Subject: dbg\n\nhello\n------------ END MESSAGE ------------\n"),
        "{out}"
    );
}
