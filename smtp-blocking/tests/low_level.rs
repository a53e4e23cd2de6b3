//! The low level over a TCP pair on 127.0.0.1: `Connection::manual` +
//! `next_event()`, every answer given by hand.
#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use common::{Client, localhost};
use smtp_proto::config::Config;
use smtp_proto::reply::Reply;
use smtp_proto::server::{Decision, Event, PeerInfo};
use smtp_server::handler::forward_path_text;

#[test]
fn next_event_low_level() {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let (tcp, remote) = listener.accept().unwrap();
        let config = Arc::new(Config::new("manual.test"));
        let mut conn = smtp_blocking::Connection::manual(tcp, PeerInfo::new(remote), config);
        let (mut body, mut rcpts) = (Vec::new(), Vec::new());
        while let Some(event) = conn.next_event().unwrap() {
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
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220 manual.test"));
    assert!(c.cmd("EHLO x\r\n").starts_with("250"));
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<nobody@y>\r\nDATA\r\n");
    for want in ["250", "250", "550 5.1.1", "354"] {
        let r = c.reply();
        assert!(r.starts_with(want), "{want}: {r}");
    }
    let r = c.cmd("Subject: m\r\n\r\n..dot\r\n.\r\n");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("QUIT\r\n").starts_with("221"));
    assert_eq!(c.read_to_end(), "");
    let (body, rcpts) = served.join().unwrap();
    assert_eq!(body, b"Subject: m\r\n\r\n.dot\r\n");
    assert_eq!(rcpts, ["b@y", "nobody@y"]);
}
