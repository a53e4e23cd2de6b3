//! Real client: lettre over plain SMTP, STARTTLS and AUTH, into a Maildir.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{TestCert, delivered, localhost, start};
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use smtp_proto::config::Config;
use smtp_proto::sasl::Mechanism as SaslMechanism;
use smtp_proto::store::{MaildirHandler, PasswordAuth};
use smtp_tokio::Server;

fn message(to: &[&str]) -> Message {
    let mut b = Message::builder()
        .from("Alice <alice@example.org>".parse().unwrap())
        .subject("hello")
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        b = b.to(t.parse().unwrap());
    }
    // lettre always appends CRLF.CRLF, so a body ending in CRLF would get a blank line.
    b.body(String::from("Hi there\r\n.leading dot")).unwrap()
}

fn transport(port: u16, tls: Tls) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(tls)
}

fn tls_params(cert: &TestCert) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_der(cert.cert.to_vec()).unwrap())
        .build_rustls()
        .unwrap()
}

#[tokio::test]
async fn plain_send_into_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let mailer = transport(server.addr().port(), Tls::None).build();
    mailer
        .send(message(&["bob@example.net", "carol@example.net"]))
        .await
        .unwrap();
    for who in ["bob@example.net", "carol@example.net"] {
        let files = delivered(dir.path(), who);
        assert_eq!(files.len(), 1, "{who}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.starts_with(&format!(
            "Return-Path: <alice@example.org>\r\nDelivered-To: {who}\r\nReceived: "
        )));
        assert!(text.contains("Subject: hello\r\n"));
        assert!(text.ends_with("Hi there\r\n.leading dot\r\n"), "{text:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn starttls_send() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .tls(cert.server_config())
            .listen(localhost()),
    )
    .await;
    let mailer = transport(server.addr().port(), Tls::Required(tls_params(&cert))).build();
    mailer.send(message(&["bob@example.net"])).await.unwrap();
    let files = delivered(dir.path(), "bob@example.net");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn auth_plain_over_tls() {
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("mx.test");
    config.auth.mechanisms = vec![SaslMechanism::Plain, SaslMechanism::Login];
    config.auth.required = true;
    let users = HashMap::from([("alice".to_owned(), "s3cret".to_owned())]);
    let handler = PasswordAuth::new(users, MaildirHandler::new(dir.path()));
    let server = start(
        Server::new(handler)
            .config(Arc::new(config))
            .tls(cert.server_config())
            .listen(localhost()),
    )
    .await;
    let port = server.addr().port();
    let good = transport(port, Tls::Required(tls_params(&cert)))
        .credentials(Credentials::new("alice".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    good.send(message(&["bob@example.net"])).await.unwrap();
    let text = std::fs::read_to_string(&delivered(dir.path(), "bob@example.net")[0]).unwrap();
    assert!(text.contains("with ESMTPSA"), "{text}");

    let bad = transport(port, Tls::Required(tls_params(&cert)))
        .credentials(Credentials::new("alice".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let e = bad.send(message(&["bob@example.net"])).await.unwrap_err();
    assert!(e.to_string().contains("535") || e.is_permanent(), "{e}");

    // Without TLS, AUTH is not offered, and MAIL needs AUTH.
    let plain = transport(port, Tls::None)
        .credentials(Credentials::new("alice".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    assert!(plain.send(message(&["bob@example.net"])).await.is_err());
    assert_eq!(delivered(dir.path(), "bob@example.net").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn twenty_mib_into_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(Server::new(MaildirHandler::new(dir.path())).listen(localhost())).await;
    let mailer = transport(server.addr().port(), Tls::None).build();
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let mut raw =
        b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n".to_vec();
    while raw.len() < 20 * 1024 * 1024 {
        raw.extend_from_slice(line.as_bytes());
    }
    raw.truncate(raw.len() - 2);
    let env = Envelope::new(
        Some("alice@example.org".parse().unwrap()),
        vec!["bob@example.net".parse().unwrap()],
    )
    .unwrap();
    mailer.send_raw(&env, &raw).await.unwrap();
    let files = delivered(dir.path(), "bob@example.net");
    assert_eq!(files.len(), 1);
    let stored = std::fs::read(&files[0]).unwrap();
    raw.extend_from_slice(b"\r\n");
    assert!(stored.ends_with(&raw), "the body is stored unchanged");
    server.stop().await;
}
