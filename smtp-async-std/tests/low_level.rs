//! The low level on smol and (with the `async-std` feature) on async-std:
//! `Connection::manual` + `next_event()`, every answer given by hand.
#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
mod common;

use std::sync::Arc;
use std::time::Instant;

use async_net::TcpListener;
use common::{Client, Rt, localhost, within};
use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::{Decision, Event, PeerInfo};
use smtp_server::handler::forward_path_text;

cases!(next_event_low_level);

async fn next_event_low_level<R: Rt>() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = R::spawn(async move {
        let (tcp, remote) = listener.accept().await.unwrap();
        let config = Arc::new(Config::new("manual.test"));
        let mut conn = smtp_async_std::Connection::manual(tcp, PeerInfo::new(remote), config);
        let (mut body, mut rcpts) = (Vec::new(), Vec::new());
        while let Some(event) = conn.next_event().await.unwrap() {
            match event {
                Event::Body(chunk) => body.extend_from_slice(chunk),
                Event::Rcpt { ticket, to, .. } => {
                    let to = forward_path_text(&to);
                    let d: Decision = if to.starts_with("nobody@") {
                        Reply::NO_SUCH_USER.into()
                    } else {
                        Decision::Accept
                    };
                    rcpts.push(to);
                    conn.session_mut()
                        .respond(ticket, d, Instant::now())
                        .unwrap();
                }
                other => {
                    if let Some(ticket) = other.into_ticket() {
                        conn.session_mut()
                            .respond(ticket, Decision::Accept, Instant::now())
                            .unwrap();
                    }
                }
            }
        }
        (body, rcpts)
    });
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 manual.test"));
    c.expect("EHLO x\r\n", "250").await;
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<nobody@y>\r\nDATA\r\n")
        .await;
    for want in ["250", "250", "550 5.1.1", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.expect("Subject: m\r\n\r\n..dot\r\n.\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(c.read_to_end().await, "");
    let (body, rcpts) = within(5, served).await;
    assert_eq!(body, b"Subject: m\r\n\r\n.dot\r\n");
    assert_eq!(rcpts, ["b@y", "nobody@y"]);
}
