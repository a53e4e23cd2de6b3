//! Shared test helpers: start/stop a server, a blocking line client, throwaway TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use smtp_blocking::rustls::pki_types::ServerName;
use smtp_blocking::rustls::{ClientConnection, ServerConfig, StreamOwned};
use smtp_blocking::{Handler, Server, ShutdownHandle};

/// A running server.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    handle: ShutdownHandle,
    thread: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Asks the server to stop (without waiting).
    pub fn signal(&self) {
        self.handle.shutdown();
    }

    /// Stops the server and waits for it.
    pub fn stop(self) {
        self.signal();
        self.join();
    }

    /// Waits for the server to finish (after [`Running::signal`]).
    pub fn join(self) {
        self.thread.join().unwrap().unwrap();
    }
}

/// Binds `server` (listeners already added) and runs it on a thread.
pub fn start<H: Handler>(server: Server<H>) -> Running {
    let bound = server.bind().unwrap();
    Running {
        addrs: bound.local_addrs().to_vec(),
        handle: bound.shutdown_handle(),
        thread: std::thread::spawn(move || bound.run()),
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A TCP connection with a 10 s read timeout (a hung test fails instead).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// A line-oriented client over any stream.
pub struct Client<S: Read + Write> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    pub fn connect(addr: SocketAddr) -> Self {
        Client::new(connect(addr))
    }

    /// Connects and reads the 220 greeting.
    pub fn greeted(addr: SocketAddr) -> Self {
        let mut c = Client::connect(addr);
        let g = c.reply();
        assert!(g.starts_with("220 "), "{g}");
        c
    }
}

impl<S: Read + Write> Client<S> {
    pub fn new(s: S) -> Self {
        Client {
            io: BufReader::new(s),
        }
    }

    pub fn send(&mut self, s: &str) {
        self.io.get_mut().write_all(s.as_bytes()).unwrap();
        self.io.get_mut().flush().unwrap();
    }

    /// Reads one (possibly multi-line) reply; empty string at EOF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.io.read_line(&mut line).expect("reply in time");
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, s: &str) -> String {
        self.send(s);
        self.reply()
    }

    /// Reads until EOF (or a reset, or the read timeout).
    pub fn read_to_end(&mut self) -> String {
        let mut v = Vec::new();
        let _ = self.io.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// A throwaway certificate for `localhost` (the conformance suite's).
pub struct TestCert(smtp_conformance::TestCert);

impl TestCert {
    pub fn new() -> Self {
        TestCert(smtp_conformance::TestCert::new())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.server_config()
    }

    /// A TLS client over `tcp`, handshake done.
    pub fn connect(&self, tcp: TcpStream) -> StreamOwned<ClientConnection, TcpStream> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(self.0.client_config(), name).unwrap();
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        StreamOwned::new(conn, tcp)
    }
}

/// Files in `root/name/new` for a Maildir mailbox `name`.
pub fn delivered(root: &Path, name: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join(name).join("new")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}
