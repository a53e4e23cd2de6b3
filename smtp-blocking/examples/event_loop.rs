//! Embedding the sans-IO core in your own event loop: one thread, several
//! connections, `std::net` sockets in non-blocking mode, no dispatcher and no
//! handler trait: the loop answers the [`Session`]'s events by hand and keeps
//! every message in memory.
//!
//! ```text
//! cargo run -p smtp-blocking --example event_loop            # 127.0.0.1:2525
//! cargo run -p smtp-blocking --example event_loop -- 127.0.0.1:0
//! ```
//!
//! Each turn of the loop accepts what is waiting, then for every connection
//! keeps the [drive loop](smtp_proto::drive#the-drive-loop): polls the
//! session until it gives an [`Instruction`] (answering decisions on the
//! way), writes [`Session::transmit`] as far as the socket takes it, reads
//! into [`Session::read_buf`] only when the instruction says `read` (that
//! is the backpressure), and calls [`Session::handle_timeout`] once the
//! instruction's deadline has passed. A turn that moved nothing sleeps a
//! few milliseconds; a real loop would wait on epoll/kqueue (e.g. `mio`)
//! for readiness and the earliest deadline instead.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_proto::config::Config;
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::reply::Reply;
use smtp_proto::server::{Decision, Event, PeerInfo, Session};
use smtp_server::handler::{forward_path_text, reverse_path_text};

/// A message kept by the in-memory sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The sender (empty for `<>`).
    pub from: String,
    /// The accepted recipients.
    pub to: Vec<String>,
    /// The body, dot-unstuffed.
    pub data: Vec<u8>,
}

/// One connection: the socket, its session, and the transaction so far.
struct Conn {
    tcp: TcpStream,
    session: Session,
    from: String,
    to: Vec<String>,
    body: Vec<u8>,
}

impl Conn {
    /// Answers every pending event; returns whether there was any, and
    /// what the session wants done next.
    fn events(&mut self, now: Instant, sink: &mut Vec<Stored>) -> (bool, Instruction) {
        let mut any = false;
        loop {
            let event = match self.session.poll() {
                Output::Event(e) => e,
                Output::Instruction(i) => return (any, i),
            };
            any = true;
            let decision = match event {
                Event::Mail { ticket, from, .. } => {
                    self.from = reverse_path_text(&from);
                    self.to.clear();
                    Some((ticket, Decision::Accept))
                }
                Event::Rcpt { ticket, to, .. } => {
                    self.to.push(forward_path_text(&to));
                    Some((ticket, Decision::Accept))
                }
                Event::BodyStart { .. } => {
                    self.body.clear();
                    None
                }
                Event::Body(chunk) => {
                    self.body.extend_from_slice(chunk);
                    None
                }
                Event::MessageEnd { ticket, .. } => {
                    sink.push(Stored {
                        from: std::mem::take(&mut self.from),
                        to: std::mem::take(&mut self.to),
                        data: std::mem::take(&mut self.body),
                    });
                    Some((ticket, Decision::Accept))
                }
                Event::MessageAborted(_) | Event::Reset => {
                    self.to.clear();
                    self.body.clear();
                    None
                }
                // AUTH is not offered; refuse it anyway.
                Event::Auth { ticket, .. } => Some((ticket, Decision::Reply(Reply::AUTH_FAILED))),
                // Connect, HELO/EHLO, VRFY: accept. Violation, Closing: nothing.
                other => other.into_ticket().map(|t| (t, Decision::Accept)),
            };
            if let Some((ticket, d)) = decision {
                if let Err(e) = self.session.respond(ticket, d, now) {
                    eprintln!("answer refused: {e}");
                }
            }
        }
    }

    /// One turn for this connection; returns whether anything moved.
    fn turn(&mut self, now: Instant, sink: &mut Vec<Stored>) -> io::Result<bool> {
        let (mut moved, instruction) = self.events(now, sink);
        let (read, deadline) = match instruction {
            Instruction::Idle { read, deadline } => (read, deadline),
            // No TLS in this example (STARTTLS is not offered anyway).
            Instruction::StartTls => {
                self.session.tls_failed(now);
                return Ok(true);
            }
            // Past the soft error limit: reply later, read nothing meanwhile.
            Instruction::Throttle(until) => (false, Some(until)),
            // Closed: write the last replies. (Every decision is answered
            // in `events`, so none is pending.)
            _ => (false, None),
        };
        while self.session.wants_write() {
            match self.tcp.write(self.session.transmit()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.session.transmitted(n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if read {
            match self.tcp.read(self.session.read_buf()) {
                Ok(0) => {
                    self.session.receive_eof(now);
                    moved = true;
                }
                Ok(n) => {
                    self.session.filled(n, now);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if deadline.is_some_and(|t| now >= t) {
            self.session.handle_timeout(now);
            moved = true;
        }
        Ok(moved)
    }

    /// Whether the session is over and every reply is written.
    fn done(&self) -> bool {
        self.session.is_closed() && !self.session.wants_write()
    }
}

/// Serves `listener` on this thread; returns the messages once `sessions`
/// sessions have ended (never, for `None`).
pub fn serve(listener: TcpListener, config: Arc<Config>, sessions: Option<usize>) -> Vec<Stored> {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut conns: Vec<Conn> = Vec::new();
    let mut sink = Vec::new();
    let mut ended = 0;
    while sessions.is_none_or(|n| ended < n) {
        let now = Instant::now();
        let mut moved = false;
        loop {
            match listener.accept() {
                Ok((tcp, peer)) => {
                    if tcp.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let session = Session::new(config.clone(), PeerInfo::new(peer), now);
                    conns.push(Conn {
                        tcp,
                        session,
                        from: String::new(),
                        to: Vec::new(),
                        body: Vec::new(),
                    });
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("accept: {e}");
                    break;
                }
            }
        }
        let before = sink.len();
        conns.retain_mut(|c| {
            let alive = match c.turn(now, &mut sink) {
                Ok(m) => {
                    moved |= m;
                    !c.done()
                }
                Err(e) => {
                    eprintln!("connection error: {e}");
                    false
                }
            };
            if !alive {
                let _ = c.tcp.shutdown(Shutdown::Both);
                ended += 1;
            }
            alive
        });
        for m in &sink[before..] {
            println!("from <{}> to {:?}: {} bytes", m.from, m.to, m.data.len());
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sink
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => SocketAddr::from(([127, 0, 0, 1], 2525)),
    };
    let listener = TcpListener::bind(addr)?;
    eprintln!("listening on {}", listener.local_addr()?);
    serve(listener, Arc::new(Config::new("event-loop.example")), None);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader};

    fn client(addr: SocketAddr, n: usize) {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = tcp.try_clone().unwrap();
        let mut r = BufReader::new(tcp);
        let mut line = String::new();
        let mut expect = |r: &mut BufReader<TcpStream>, code: &str| loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "{code}: {line}");
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        };
        expect(&mut r, "220");
        let script = format!(
            "EHLO c{n}\r\nMAIL FROM:<c{n}@example.org>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
        );
        w.write_all(script.as_bytes()).unwrap();
        for code in ["250", "250", "250", "250", "354"] {
            expect(&mut r, code);
        }
        w.write_all(format!("Subject: {n}\r\n\r\n..hi\r\n.\r\nQUIT\r\n").as_bytes())
            .unwrap();
        expect(&mut r, "250");
        expect(&mut r, "221");
    }

    #[test]
    fn serves_several_connections_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            serve(listener, Arc::new(Config::new("loop.test")), Some(3))
        });
        let clients: Vec<_> = (0..3)
            .map(|n| std::thread::spawn(move || client(addr, n)))
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let mut got = server.join().unwrap();
        got.sort_by(|a, b| a.from.cmp(&b.from));
        assert_eq!(got.len(), 3);
        for (n, m) in got.iter().enumerate() {
            assert_eq!(m.from, format!("c{n}@example.org"));
            assert_eq!(m.to, ["a@x", "b@x"]);
            assert_eq!(m.data, format!("Subject: {n}\r\n\r\n.hi\r\n").as_bytes());
        }
    }
}
