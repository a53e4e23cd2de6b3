//! Test helpers: a runtime shim (smol, async-std), start/stop a server, a
//! line client over any futures-io stream, throwaway TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_net::TcpStream;
use event_listener::Event;
use futures_lite::FutureExt;
use futures_lite::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use futures_rustls::TlsConnector;
use smtp_async_std::Server;
use smtp_async_std::rustls::ServerConfig;
use smtp_async_std::rustls::pki_types::ServerName;
use smtp_server::handler::Handler;

/// A spawned task's result.
pub type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The little a test needs from a runtime.
pub trait Rt: 'static {
    fn block_on<F: Future>(f: F) -> F::Output;
    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T>;
}

#[cfg(feature = "smol")]
pub struct Smol;

#[cfg(feature = "smol")]
impl Rt for Smol {
    fn block_on<F: Future>(f: F) -> F::Output {
        smol::block_on(f)
    }
    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T> {
        Box::pin(smol::spawn(f))
    }
}

#[cfg(feature = "async-std")]
pub struct AsyncStd;

#[cfg(feature = "async-std")]
impl Rt for AsyncStd {
    fn block_on<F: Future>(f: F) -> F::Output {
        async_std::task::block_on(f)
    }
    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Task<T> {
        Box::pin(async_std::task::spawn(f))
    }
}

/// One test function per case and runtime: `on_smol::case`, `on_async_std::case`.
#[macro_export]
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "smol")]
        mod on_smol {
            use $crate::common::{Rt, Smol};
            $( #[test] fn $name() { Smol::block_on(super::$name::<Smol>()) } )*
        }
        #[cfg(feature = "async-std")]
        mod on_async_std {
            use $crate::common::{AsyncStd, Rt};
            $( #[test] fn $name() { AsyncStd::block_on(super::$name::<AsyncStd>()) } )*
        }
    };
}

/// `f`, or a panic after `secs` seconds.
pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    async { Some(f.await) }
        .or(async {
            async_io::Timer::after(Duration::from_secs(secs)).await;
            None
        })
        .await
        .expect("in time")
}

pub async fn sleep(ms: u64) {
    async_io::Timer::after(Duration::from_millis(ms)).await;
}

/// A one-shot flag a task can wait for.
#[derive(Default)]
pub struct Flag {
    set: AtomicBool,
    event: Event,
}

impl Flag {
    pub fn set(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }
    pub async fn wait(&self) {
        loop {
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            let l = self.event.listen();
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            l.await;
        }
    }
}

/// A running server.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    stop: Arc<Flag>,
    task: Task<std::io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Fires the shutdown signal (without waiting).
    pub fn signal(&self) {
        self.stop.set();
    }

    /// Fires the shutdown signal and waits for the server to finish.
    pub async fn stop(self) {
        self.signal();
        self.join().await;
    }

    /// Waits for the server to finish (after [`Running::signal`]).
    pub async fn join(self) {
        within(20, self.task).await.unwrap();
    }
}

/// Binds `server` (listeners already added) and runs it in a task on `R`.
pub async fn start<R: Rt, H: Handler>(server: Server<H>) -> Running {
    let stop = Arc::new(Flag::default());
    let s = stop.clone();
    let bound = server
        .shutdown_signal(async move { s.wait().await })
        .bind()
        .await
        .unwrap();
    Running {
        addrs: bound.local_addrs().to_vec(),
        stop,
        task: R::spawn(bound.run()),
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
        Client::new(TcpStream::connect(addr).await.unwrap())
    }

    /// Connects and reads the 220 greeting.
    pub async fn greeted(addr: SocketAddr) -> Self {
        let mut c = Client::connect(addr).await;
        let g = c.reply().await;
        assert!(g.starts_with("220 "), "{g}");
        c
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

    /// Reads one (possibly multi-line) reply; empty string at EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = within(10, self.io.read_line(&mut line)).await.unwrap_or(0);
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

    /// Sends a command; its reply must start with `want`.
    pub async fn expect(&mut self, s: &str, want: &str) -> String {
        let r = self.cmd(s).await;
        assert!(r.starts_with(want), "{s:?}: want {want}, got {r:?}");
        r
    }

    /// Reads until EOF or a read error (bounded by a timeout).
    pub async fn read_to_end(&mut self) -> String {
        let mut v = Vec::new();
        let _ = within(10, self.io.read_to_end(&mut v)).await;
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// A throwaway certificate for `localhost`, with both ends' TLS configurations.
pub struct TestCert(smtp_conformance::TestCert);

impl TestCert {
    pub fn new() -> Self {
        TestCert(smtp_conformance::TestCert::new())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.0.server_config()
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.0.client_config())
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }
}

pub use smtp_conformance::delivered;

/// This process's resident set size in KiB (Linux only).
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
