//! LMTP over a Unix-domain socket, the usual way delivery agents are reached.
#![cfg(unix)]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{Client, delivered, start};
use smtp_proto::config::Config;
use smtp_proto::store::MaildirHandler;
use smtp_tokio::Server;
use tokio::net::UnixStream;

#[tokio::test]
async fn lmtp_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lmtp.sock");
    let root = dir.path().join("mail");
    let mut config = Config::new("lmtp.test");
    config.lmtp = true;
    let server = start(
        Server::new(MaildirHandler::new(&root))
            .config(Arc::new(config))
            .listen_unix(&sock),
    )
    .await;
    let mut c = Client::new(UnixStream::connect(&sock).await.unwrap());
    assert!(c.reply().await.starts_with("220 lmtp.test"));
    assert!(c.cmd("LHLO client\r\n").await.starts_with("250-lmtp.test"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>\r\n").await,
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<one@example.net>\r\n").await,
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<two@example.net>\r\n").await,
        "250 2.1.5 Recipient OK\r\n"
    );
    assert!(c.cmd("DATA\r\n").await.starts_with("354 "));
    c.send("Subject: over unix\r\n\r\nhi\r\n.\r\n").await;
    // One reply per recipient (RFC 2033).
    assert_eq!(
        c.reply().await,
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(
        c.reply().await,
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(c.cmd("QUIT\r\n").await, "221 2.0.0 Bye\r\n");
    assert_eq!(delivered(&root, "one@example.net").len(), 1);
    assert_eq!(delivered(&root, "two@example.net").len(), 1);
    server.stop().await;
}
