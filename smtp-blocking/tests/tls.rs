//! STARTTLS and implicit TLS with rustls' blocking streams.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, TestCert, connect, delivered, localhost, start};
use smtp_blocking::Server;
use smtp_proto::config::Config;
use smtp_server::store::{MaildirHandler, SinkHandler};

#[test]
fn starttls_then_mail_and_injection_is_discarded() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .tls(cert.server_config())
            .listen(localhost()),
    );
    let mut c = Client::greeted(server.addr());
    assert!(c.cmd("EHLO x\r\n").contains("STARTTLS"));
    c.send("STARTTLS\r\nMAIL FROM:<x@y>\r\n");
    assert!(c.reply().starts_with("220"));
    let tls = cert.connect(c.io.into_inner());
    let mut t = Client::new(tls);
    let ehlo = t.cmd("EHLO x\r\n");
    assert!(
        ehlo.starts_with("250") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    // The injected MAIL was not executed: RCPT has no transaction.
    assert!(t.cmd("RCPT TO:<b@y>\r\n").starts_with("503"));
    assert!(t.cmd("MAIL FROM:<a@x>\r\n").starts_with("250"));
    assert!(t.cmd("RCPT TO:<b@y>\r\n").starts_with("250"));
    assert!(t.cmd("DATA\r\n").starts_with("354"));
    assert!(
        t.cmd("Subject: tls\r\n\r\nsecret\r\n.\r\n")
            .starts_with("250")
    );
    assert!(t.cmd("QUIT\r\n").starts_with("221"));
    server.stop();
    let files = delivered(dir.path(), "b@y");
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("with ESMTPS"), "{text}");
}

#[test]
fn starttls_handshake_failure_closes_without_a_reply() {
    let cert = TestCert::new();
    let server = start(
        Server::new(SinkHandler)
            .tls(cert.server_config())
            .listen(localhost()),
    );
    let mut c = Client::greeted(server.addr());
    assert!(c.cmd("EHLO x\r\n").contains("STARTTLS"));
    assert!(c.cmd("STARTTLS\r\n").starts_with("220"));
    c.send("this is no ClientHello\r\n\r\n\r\n\r\n");
    assert!(!c.read_to_end().contains("SMTP"));
    // The server is fine.
    let mut d = Client::greeted(server.addr());
    assert!(d.cmd("QUIT\r\n").starts_with("221"));
    server.stop();
}

#[test]
fn implicit_tls() {
    let cert = TestCert::new();
    let server = start(
        Server::new(SinkHandler)
            .tls(cert.server_config())
            .listen_tls(localhost()),
    );
    let mut t = Client::new(cert.connect(connect(server.addr())));
    assert!(t.reply().starts_with("220"));
    let ehlo = t.cmd("EHLO x\r\n");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(t.cmd("QUIT\r\n").starts_with("221"));
    // Garbage instead of a ClientHello: closed without a clear-text reply.
    let mut g = connect(server.addr());
    g.write_all(b"EHLO plaintext\r\n\r\n\r\n\r\n").unwrap();
    let mut v = Vec::new();
    let _ = g.read_to_end(&mut v);
    assert!(!String::from_utf8_lossy(&v).contains("220"), "{v:?}");
    server.stop();
}

#[test]
fn implicit_tls_handshake_times_out_silently() {
    let cert = TestCert::new();
    let mut config = Config::new("t.test");
    config.timeouts.command = Duration::from_secs(1);
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .tls(cert.server_config())
            .listen_tls(localhost()),
    );
    // Connects and sends nothing, then one byte at a time: still closed in time.
    let mut s = connect(server.addr());
    let started = Instant::now();
    let mut w = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for b in [0x16u8, 3, 1, 0, 200, 1] {
            std::thread::sleep(Duration::from_millis(300));
            if w.write_all(&[b]).is_err() {
                break;
            }
        }
    });
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    assert!(v.is_empty(), "{v:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    trickle.join().unwrap();
    server.stop();
}

#[test]
fn listen_tls_needs_a_tls_config() {
    let err = Server::new(SinkHandler)
        .listen_tls(localhost())
        .bind()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
