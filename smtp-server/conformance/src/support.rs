//! The server process under test, a raw line client, throwaway TLS, and
//! Maildir helpers.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
    BufReader as AsyncBufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::SERVE_ENV;

/// What a case needs to start the server under test.
#[derive(Debug, Clone)]
pub struct Ctx {
    variant: &'static str,
}

impl Ctx {
    pub(crate) fn new(variant: &'static str) -> Self {
        Ctx { variant }
    }

    /// The adapter variant under test (`tokio`, `smol`, …).
    pub fn variant(&self) -> &'static str {
        self.variant
    }

    /// The server command (this test binary in server mode) with `args`;
    /// for cases that need to run it themselves (e.g. to check its exit code).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut c = Command::new(exe);
        c.env(SERVE_ENV, self.variant).args(args);
        c
    }

    /// Starts the server with `args` (plus `--listen 127.0.0.1:0` when no
    /// `--listen` is given, and `--hostname conformance.test` when no
    /// hostname is) and waits until every TCP listener is bound.
    pub fn spawn<I, S>(&self, args: I) -> Smtpd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_with(args, Stdio::null())
    }

    /// Like [`Ctx::spawn`], with the server's stdout piped to
    /// [`Smtpd::child`] (the debugging server prints messages there).
    pub fn spawn_with<I, S>(&self, args: I, stdout: Stdio) -> Smtpd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_env(args, stdout, &[])
    }

    /// Like [`Ctx::spawn_with`], with environment variables set for the server.
    pub fn spawn_env<I, S>(&self, args: I, stdout: Stdio, env: &[(&str, &str)]) -> Smtpd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        fn count(args: &[OsString], flag: &str) -> usize {
            args.iter().filter(|a| *a == flag).count()
        }
        if count(&args, "--listen") == 0 {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if count(&args, "--hostname") == 0 {
            args.extend(["--hostname".into(), "conformance.test".into()]);
        }
        let listeners = count(&args, "--listen") + count(&args, "--listen-tls");
        let mut command = self.command(&args);
        Smtpd::start(command.envs(env.iter().copied()).stdout(stdout), listeners)
    }
}

/// A running server process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Smtpd {
    /// The process.
    pub child: Child,
    /// Its TCP listeners, `--listen` ones first, then `--listen-tls` ones.
    pub addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Smtpd {
    /// Starts `command` (a server command, e.g. [`Ctx::command`]) with its
    /// stderr piped, and waits until it logged `listeners` TCP listeners
    /// (`listening addr=…` lines); for cases that set up the process
    /// themselves (its stdin, its fds).
    pub fn start(command: &mut Command, listeners: usize) -> Smtpd {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server exited before listening: {}",
                    log.lock().unwrap()
                );
            }
            log.lock().unwrap().push_str(&line);
            if let Some(i) = line.find("addr=") {
                let a = line[i + 5..].split_whitespace().next().unwrap_or("");
                addrs.push(a.parse().expect("a socket address"));
            }
        }
        // Keep draining the log so the server never blocks on a full pipe.
        let sink = log.clone();
        std::thread::spawn(move || {
            // Line by line, so a running server's log can be read.
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Smtpd { child, addrs, log }
    }

    /// The first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
    }

    /// Waits for the process to exit (bounded) and returns whether it exited with success.
    pub async fn wait(&mut self) -> bool {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not exit; log:\n{}", self.log());
    }

    /// The resident set size of the server process, in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Connects and reads the greeting, which must be a 220.
    pub async fn greeted(&self) -> Client<TcpStream> {
        let mut c = Client::connect(self.addr()).await;
        let g = c.reply().await;
        assert!(g.starts_with("220 "), "greeting: {g:?}");
        c
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line-oriented client over any stream.
#[derive(Debug)]
pub struct Client<S> {
    /// The buffered stream.
    pub io: AsyncBufReader<S>,
}

impl Client<TcpStream> {
    /// Connects over TCP.
    pub async fn connect(addr: SocketAddr) -> Self {
        Client::new(TcpStream::connect(addr).await.expect("connect"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// A client over `s`.
    pub fn new(s: S) -> Self {
        Client {
            io: AsyncBufReader::new(s),
        }
    }

    /// Writes `s`.
    pub async fn send(&mut self, s: &str) {
        self.send_bytes(s.as_bytes()).await;
    }

    /// Writes `b`.
    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.io.get_mut().write_all(b).await.expect("write");
    }

    /// Reads one (possibly multi-line) reply; empty at EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("a reply within 10 s")
                .unwrap_or(0);
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

    /// Sends a command and asserts its reply starts with `want`.
    pub async fn expect(&mut self, s: &str, want: &str) -> String {
        let r = self.cmd(s).await;
        assert!(r.starts_with(want), "{s:?}: want {want}, got {r:?}");
        r
    }

    /// Reads until EOF (within 10 s).
    pub async fn read_to_end(&mut self) -> String {
        let mut v = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.io.read_to_end(&mut v))
            .await
            .expect("EOF within 10 s")
            .unwrap_or(0);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// A throwaway certificate for `localhost`, made at test time.
#[derive(Debug)]
pub struct TestCert {
    /// The certificate.
    pub cert: CertificateDer<'static>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
}

impl TestCert {
    /// A new self-signed certificate.
    pub fn new() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        TestCert {
            cert: ck.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
    }

    /// A server configuration with this certificate (for any adapter's `tls`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .expect("certificate");
        Arc::new(config)
    }

    /// A client configuration trusting only this certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root");
        let config = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A tokio client connector trusting only this certificate.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client_config())
    }

    /// STARTTLS on `c` (after its EHLO): the `220`, then the handshake
    /// trusting this certificate; the client over TLS.
    pub async fn starttls(
        &self,
        mut c: Client<TcpStream>,
    ) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        c.expect("STARTTLS\r\n", "220").await;
        let tls = self
            .connector()
            .connect(TestCert::server_name(), c.io.into_inner())
            .await
            .expect("STARTTLS handshake");
        Client::new(tls)
    }

    /// The name the certificate is for.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("name")
    }

    /// Writes the certificate and key as PEM files into `dir`; returns their paths.
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use base64::Engine as _;
        let pem = |label: &str, der: &[u8]| {
            let b = base64::engine::general_purpose::STANDARD.encode(der);
            let mut s = format!("-----BEGIN {label}-----\n");
            for chunk in b.as_bytes().chunks(64) {
                s.push_str(std::str::from_utf8(chunk).unwrap_or(""));
                s.push('\n');
            }
            s.push_str(&format!("-----END {label}-----\n"));
            s
        };
        let c = dir.join("cert.pem");
        let k = dir.join("key.pem");
        std::fs::write(&c, pem("CERTIFICATE", &self.cert)).expect("write cert");
        std::fs::write(&k, pem("PRIVATE KEY", self.key.secret_der())).expect("write key");
        (c, k)
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}

/// Files in `new/` of the Maildir for recipient `name` under `root`.
pub fn delivered(root: &Path, name: &str) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join(name).join("new")) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
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
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Checks one stored Maildir message: LF line ends (no CR at all), trace
/// headers first, `tail` last; `tail` and the text returned are in wire
/// form (CRLF line ends).
pub(crate) fn assert_stored(root: &Path, rcpt: &str, from: &str, tail: &str) -> String {
    let files = delivered(root, rcpt);
    assert_eq!(files.len(), 1, "{rcpt}: {:?}", all_files(root));
    let text = String::from_utf8(std::fs::read(&files[0]).expect("read")).expect("UTF-8");
    assert!(
        !text.contains('\r'),
        "Maildir files have LF line ends: {text:?}"
    );
    let text = text.replace('\n', "\r\n");
    assert!(
        text.starts_with(&format!(
            "Return-Path: <{from}>\r\nDelivered-To: {rcpt}\r\nReceived: "
        )),
        "{text}"
    );
    assert!(text.ends_with(tail), "{text:?}");
    text
}

/// Whether `tool` runs; prints a loud skip line if not, and fails under CI.
pub(crate) fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing and CI is set"
        );
        eprintln!("SKIPPED: {tool} missing");
    }
    ok
}

/// One conformance case: starts its servers, drives them, asserts.
pub(crate) type Case = fn(Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Declares a module's `ALL`: its cases by name (`lib.rs` runs every module's).
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of this module, by name.
        pub(crate) const ALL: &[(&str, $crate::support::Case)] = &[
            $((stringify!($name), |ctx| Box::pin($name(ctx)))),*
        ];
    };
}
pub(crate) use cases;
