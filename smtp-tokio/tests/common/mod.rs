//! Shared test helpers: start/stop a server, a raw line client, throwaway TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::handler::Handler;
use smtp_tokio::Server;
use smtp_tokio::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smtp_tokio::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// A running server.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Fires the shutdown signal (without waiting).
    pub fn signal(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Fires the shutdown signal and waits for the server to finish.
    pub async fn stop(mut self) {
        self.signal();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }

    /// Waits for the server to finish (after [`Running::signal`]).
    pub async fn join(self) {
        self.task.await.unwrap().unwrap();
    }
}

/// Binds `server` (listeners already added) and runs it in a task.
pub async fn start<H: Handler>(server: Server<H>) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let bound = server
        .shutdown_signal(async {
            let _ = rx.await;
        })
        .bind()
        .await
        .unwrap();
    let addrs = bound.local_addrs().to_vec();
    Running {
        addrs,
        stop: Some(tx),
        task: tokio::spawn(bound.run()),
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A line-oriented client over any stream.
pub struct Client<S> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        Client {
            io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Client {
            io: BufReader::new(s),
        }
    }

    pub async fn send(&mut self, s: &str) {
        self.io.get_mut().write_all(s.as_bytes()).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.io.get_mut().write_all(b).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; empty string at EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
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
    pub async fn cmd(&mut self, s: &str) -> String {
        self.send(s).await;
        self.reply().await
    }

    /// Reads until EOF (bounded by a timeout).
    pub async fn read_to_end(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.io.read_to_end(&mut v))
            .await
            .expect("EOF in time")
            .unwrap_or(0);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// A throwaway certificate for `localhost`.
pub struct TestCert {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        TestCert {
            cert: ck.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        }
    }

    fn provider() -> Arc<smtp_tokio::rustls::crypto::CryptoProvider> {
        Arc::new(smtp_tokio::rustls::crypto::ring::default_provider())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::new(
            ServerConfig::builder_with_provider(Self::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
                .unwrap(),
        )
    }

    pub fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    /// Writes the certificate and key as PEM files into `dir`.
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use base64::Engine as _;
        let pem = |label: &str, der: &[u8]| {
            let b = base64::engine::general_purpose::STANDARD.encode(der);
            let mut s = format!("-----BEGIN {label}-----\n");
            for chunk in b.as_bytes().chunks(64) {
                s.push_str(std::str::from_utf8(chunk).unwrap());
                s.push('\n');
            }
            s.push_str(&format!("-----END {label}-----\n"));
            s
        };
        let c = dir.join("cert.pem");
        let k = dir.join("key.pem");
        std::fs::write(&c, pem("CERTIFICATE", &self.cert)).unwrap();
        std::fs::write(&k, pem("PRIVATE KEY", self.key.secret_der())).unwrap();
        (c, k)
    }
}

/// Files in `dir/new` for a Maildir mailbox `name` under `root`.
pub fn delivered(root: &Path, name: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join(name).join("new")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Every regular file under `root`, recursively.
pub fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
