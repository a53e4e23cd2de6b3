//! Accept-loop bookkeeping shared by every adapter: connection limits,
//! session ids, and the phases of a graceful shutdown.
//!
//! None of this does I/O. An adapter asks a [`ConnectionLimiter`] for a
//! [`Slot`] before serving a connection (and answers
//! [`Reply::TOO_MANY_CONNECTIONS`](smtp_proto::reply::Reply::TOO_MANY_CONNECTIONS)
//! when there is none), names each session with [`SessionIds`], and walks
//! its sessions through the [`Stop`] phases when asked to shut down.
//!
//! ```
//! use smtp_server::accept::ConnectionLimiter;
//!
//! let limiter = ConnectionLimiter::new(2, Some(1));
//! let ip = "192.0.2.1".parse().ok();
//! let a = limiter.admit(ip).expect("first connection");
//! assert!(limiter.admit(ip).is_none(), "one per address");
//! let b = limiter.admit("192.0.2.2".parse().ok()).expect("another address");
//! assert!(limiter.admit(None).is_none(), "two in all");
//! drop(a);
//! assert_eq!(limiter.active(), 1);
//! # drop(b);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smtp_proto::server::Session;

/// Connections allowed at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long sessions may finish after a shutdown is requested, unless
/// configured otherwise.
pub const DEFAULT_GRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the `421` to an over-limit connection, or the last `421` of a
/// shutdown, may take to write.
pub const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Limits {
    max_total: usize,
    max_per_ip: Option<usize>,
    counts: Mutex<Counts>,
}

/// Counts connections in all and per client address; hands out [`Slot`]s.
///
/// Cheap to clone (an `Arc` inside); share one between accept loops.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter(Arc<Limits>);

impl ConnectionLimiter {
    /// At most `max_total` connections at once, and `max_per_ip` from one
    /// address (connections without an address, e.g. Unix sockets, count
    /// only towards the total).
    pub fn new(max_total: usize, max_per_ip: Option<usize>) -> Self {
        ConnectionLimiter(Arc::new(Limits {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        }))
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.0.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached
    /// (answer [`Reply::TOO_MANY_CONNECTIONS`](smtp_proto::reply::Reply::TOO_MANY_CONNECTIONS) and close).
    pub fn admit(&self, ip: Option<IpAddr>) -> Option<Slot> {
        let slot = self.take_slot(ip);
        if slot.is_none() {
            // Counted once the counts are unlocked.
            crate::metrics::connection_refused(crate::metrics::Refusal::Limit);
        }
        slot
    }

    fn take_slot(&self, ip: Option<IpAddr>) -> Option<Slot> {
        let mut c = self.counts();
        if c.total >= self.0.max_total {
            return None;
        }
        if let (Some(ip), Some(max)) = (ip, self.0.max_per_ip) {
            let n = c.per_ip.entry(ip).or_default();
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        c.total += 1;
        Some(Slot {
            limiter: self.clone(),
            ip: ip.filter(|_| self.0.max_per_ip.is_some()),
        })
    }

    /// Connections holding a slot now.
    pub fn active(&self) -> usize {
        self.counts().total
    }
}

/// A connection's place under the limits; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: ConnectionLimiter,
    ip: Option<IpAddr>,
}

impl Slot {
    /// Counts this connection for `ip` as well, once its address is known
    /// after the accept (the PROXY header's source, issue 12 item 14);
    /// `false` when `ip` holds its `max_per_ip` connections already (answer
    /// [`Reply::TOO_MANY_CONNECTIONS`](smtp_proto::reply::Reply::TOO_MANY_CONNECTIONS) and close). A slot counts for one
    /// address at most: later calls change nothing and return `true`.
    pub fn claim_ip(&mut self, ip: IpAddr) -> bool {
        let Some(max) = self.limiter.0.max_per_ip else {
            return true;
        };
        if self.ip.is_some() {
            return true;
        }
        let mut c = self.limiter.counts();
        let n = c.per_ip.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            drop(c);
            crate::metrics::connection_refused(crate::metrics::Refusal::Limit);
            return false;
        }
        *n += 1;
        drop(c);
        self.ip = Some(ip);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limiter.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Server-unique session ids: a base (e.g. the start time in seconds) and a
/// counter, in hex, like `6752A1B300001`.
#[derive(Debug)]
pub struct SessionIds {
    base: u64,
    next: AtomicU64,
}

impl SessionIds {
    /// Ids starting from `base` (the adapter passes the clock's seconds; the
    /// core has no clock).
    pub fn new(base: u64) -> Self {
        SessionIds {
            base,
            next: AtomicU64::new(0),
        }
    }

    /// The process-wide generator adapters use: based on the wall clock
    /// at first use (read once; the session state machine itself never
    /// reads a clock).
    pub fn global() -> &'static SessionIds {
        static IDS: std::sync::OnceLock<SessionIds> = std::sync::OnceLock::new();
        IDS.get_or_init(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            SessionIds::new(secs)
        })
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        format!(
            "{:X}{:05X}",
            self.base,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The phases of a server shutdown, broadcast to every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stop {
    /// Serving.
    #[default]
    Run,
    /// Stop accepting; sessions finish their transaction
    /// ([`Session::shutdown`]).
    Drain,
    /// The grace period is over: `421 4.3.2` and close ([`Session::abort`]).
    Abort,
}

/// A server's [`Stop`] phase, watched by all its sessions without a
/// registration per wait: each session's [`StopWatch`] stores its task's
/// waker once (again only if the task's waker changes) and otherwise reads
/// an atomic. A channel that registers a waiter at every wait (a tokio
/// `watch`, an `event-listener`) costs a lock, and for event-listener an
/// allocation, on every I/O wait of every session.
///
/// ```
/// use std::task::{Context, Poll, Waker};
/// use smtp_server::accept::{Stop, StopSignal};
///
/// let signal = StopSignal::new();
/// let mut watch = signal.watch();
/// let mut cx = Context::from_waker(Waker::noop());
/// assert!(watch.poll_until(&mut cx, |s| s != Stop::Run).is_pending());
/// signal.set(Stop::Drain);
/// assert_eq!(watch.poll_until(&mut cx, |s| s != Stop::Run), Poll::Ready(Stop::Drain));
/// ```
#[derive(Debug, Default)]
pub struct StopSignal {
    phase: std::sync::atomic::AtomicU8,
    wakers: Mutex<WakerSlots>,
}

#[derive(Debug, Default)]
struct WakerSlots {
    slots: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
}

impl StopSignal {
    /// A signal at [`Stop::Run`].
    pub fn new() -> Arc<StopSignal> {
        Arc::default()
    }

    /// The current phase.
    pub fn get(&self) -> Stop {
        match self.phase.load(Ordering::Acquire) {
            0 => Stop::Run,
            1 => Stop::Drain,
            _ => Stop::Abort,
        }
    }

    /// Moves to `stop` and wakes every watching session.
    pub fn set(&self, stop: Stop) {
        self.phase.store(stop as u8, Ordering::Release);
        let slots = self.lock();
        slots
            .slots
            .iter()
            .flatten()
            .for_each(std::task::Waker::wake_by_ref);
    }

    /// A watch for one session.
    pub fn watch(self: &Arc<Self>) -> StopWatch {
        StopWatch {
            signal: self.clone(),
            slot: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WakerSlots> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One session's view of a [`StopSignal`].
#[derive(Debug)]
pub struct StopWatch {
    signal: Arc<StopSignal>,
    /// The slot holding our waker, and a copy to compare against.
    slot: Option<(usize, std::task::Waker)>,
}

impl StopWatch {
    /// The current phase.
    pub fn get(&self) -> Stop {
        self.signal.get()
    }

    /// Ready with the phase once `want` holds for it; otherwise the task is
    /// woken when the phase changes (and should poll again).
    pub fn poll_until(
        &mut self,
        cx: &mut std::task::Context<'_>,
        want: impl Fn(Stop) -> bool,
    ) -> std::task::Poll<Stop> {
        let now = self.get();
        if want(now) {
            return std::task::Poll::Ready(now);
        }
        if !matches!(&self.slot, Some((_, w)) if w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            let mut slots = self.signal.lock();
            let i = match &self.slot {
                Some((i, _)) => *i,
                None => slots.free.pop().unwrap_or_else(|| {
                    slots.slots.push(None);
                    slots.slots.len() - 1
                }),
            };
            if let Some(s) = slots.slots.get_mut(i) {
                *s = Some(waker.clone());
            }
            self.slot = Some((i, waker));
        }
        // A change between the first look and the registration.
        let now = self.get();
        if want(now) {
            std::task::Poll::Ready(now)
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Some((i, _)) = self.slot.take() {
            let mut slots = self.signal.lock();
            if let Some(s) = slots.slots.get_mut(i) {
                *s = None;
                slots.free.push(i);
            }
        }
    }
}

/// Runs `dispatcher` on `session` until it needs I/O ([`Dispatcher::drive`]),
/// except that [`Stop::Abort`] on `stop` interrupts a slow hook: the
/// session is then aborted (`421 4.3.2`) and driven to its end. Every
/// adapter's connection calls this.
///
/// [`Dispatcher::drive`]: crate::handler::Dispatcher::drive
pub async fn drive_until_abort<H: crate::handler::Handler>(
    dispatcher: &mut crate::handler::Dispatcher<H>,
    session: &mut Session,
    stop: Option<&mut StopWatch>,
    seen: &mut StopSeen,
) -> smtp_proto::drive::Instruction {
    use std::task::Poll;
    let Some(w) = stop.filter(|_| seen.get() < Stop::Abort) else {
        return dispatcher.drive(session).await;
    };
    let done = {
        let mut d = std::pin::pin!(dispatcher.drive(session));
        std::future::poll_fn(|cx| match d.as_mut().poll(cx) {
            Poll::Ready(d) => Poll::Ready(Some(d)),
            Poll::Pending => w.poll_until(cx, |s| s == Stop::Abort).map(|_| None),
        })
        .await
    };
    if let Some(d) = done {
        return d;
    }
    seen.apply(Stop::Abort, session);
    dispatcher.drive(session).await
}

/// Tracks which [`Stop`] phase one session has acted on.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopSeen(Stop);

impl StopSeen {
    /// Applies `now` to `machine` if it is a later phase than the one seen;
    /// returns whether anything changed.
    pub fn apply(&mut self, now: Stop, machine: &mut impl crate::link::Stoppable) -> bool {
        if now <= self.0 {
            return false;
        }
        self.0 = now;
        machine.stop(now, std::time::Instant::now());
        true
    }

    /// The phase seen last.
    pub fn get(&self) -> Stop {
        self.0
    }
}

/// The deadline for replies the client does not read, kept the same way
/// by every adapter's I/O step.
///
/// Armed (at the command timeout) when output waits to be written,
/// cleared by every write that makes progress. If the timer fires past it
/// with output still pending, the client stopped reading: close the
/// connection. If the output drained meanwhile, it was the session's own
/// timer ([`Session::handle_timeout`]), not a write timeout.
///
/// ```
/// use std::time::{Duration, Instant};
/// use smtp_server::accept::WriteDeadline;
///
/// let minute = Duration::from_secs(60);
/// let t0 = Instant::now();
/// let mut w = WriteDeadline::default();
/// // The greeting is pending: wake at the write deadline at the latest.
/// let wake = w.arm(true, minute, Some(t0 + 5 * minute), t0).unwrap();
/// assert_eq!(wake, t0 + minute);
/// assert!(w.expired(true, t0 + Duration::from_secs(61)), "still unwritten: close");
/// assert!(!w.expired(false, t0 + Duration::from_secs(61)), "written meanwhile");
/// // A timer that fires early changes nothing.
/// let mut w = WriteDeadline::default();
/// w.arm(true, minute, None, t0);
/// assert!(!w.expired(true, t0 + Duration::from_secs(1)));
/// assert!(w.expired(true, t0 + Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteDeadline(Option<std::time::Instant>);

impl WriteDeadline {
    /// Before waiting for I/O: arms the deadline (`write_timeout` from
    /// `now`) if output is `pending` (unwritten or unflushed) and it is not
    /// armed yet, disarms it otherwise. Returns when to wake: the earlier of
    /// the write deadline and the machine's own `deadline`.
    pub fn arm(
        &mut self,
        pending: bool,
        write_timeout: std::time::Duration,
        deadline: Option<std::time::Instant>,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        if !pending {
            self.0 = None;
        } else if self.0.is_none() {
            self.0 = Some(now + write_timeout);
        }
        match (deadline, self.0) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Some output was written: the client is reading.
    pub fn progressed(&mut self) {
        self.0 = None;
    }

    /// The timer fired at `now`: `true` if output is still `pending` past
    /// the deadline (close the connection). Without pending output it
    /// disarms; with pending output not yet due (a timer that fired early,
    /// or for the session's own deadline) it keeps the deadline. Either
    /// way the adapter goes on with [`Session::handle_timeout`].
    pub fn expired(&mut self, pending: bool, now: std::time::Instant) -> bool {
        if !pending {
            self.0 = None;
            return false;
        }
        self.0.is_some_and(|d| now >= d)
    }
}

/// The outcome of an implicit-TLS handshake bounded by a timeout (`None`:
/// it timed out): the stream, or `None` once the failure is logged. The
/// connection then closes without a word (no clear text on a TLS port).
pub fn implicit_tls_outcome<S, E: std::fmt::Display>(
    outcome: Option<Result<S, E>>,
    remote: std::net::SocketAddr,
) -> Option<S> {
    match outcome {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::info!(peer = %remote, error = %e, "TLS handshake failed");
            crate::metrics::tls_handshake(None);
            None
        }
        None => {
            tracing::info!(peer = %remote, "TLS handshake timed out");
            crate::metrics::tls_handshake(None);
            None
        }
    }
}

/// A stream an async adapter's [`IoStep`] reads and writes (the adapter
/// maps its runtime's I/O traits onto these three calls).
pub trait PollIo {
    /// Reads into `buf`; `Ok(0)` is the end of the stream.
    fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>>;
    /// Writes from `buf`.
    fn poll_write(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>>;
    /// Flushes what was written.
    fn poll_flush(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>>;
}

/// A connection's one timer, from the adapter's runtime.
pub trait Alarm {
    /// Fires at `at` (replacing the time set before).
    fn set(&mut self, at: std::time::Instant);
    /// Ready once the time set has come.
    fn poll_alarm(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()>;
}

/// What an [`IoStep`] waits for: the machine's `Idle` instruction, and
/// how long unread output may wait.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Whether to read.
    pub read: bool,
    /// When to call the machine's `handle_timeout`.
    pub deadline: Option<std::time::Instant>,
    /// Output the peer does not read for this long ends the connection.
    pub write_timeout: std::time::Duration,
}

/// What one wait of an [`IoStep`] produced.
enum IoDone {
    Wrote(usize),
    Read(usize),
    Timer,
    Stop,
}

/// The I/O step of an async adapter's connection, written once: waits for
/// whichever comes first of a write, a flush, a read, the session's timer,
/// the write deadline and a stop signal, then feeds the result to the
/// session. Reading and writing go on together, so a client that pipelines
/// a lot never deadlocks the server; reading stops while replies pile up
/// unread (backpressure); output the client does not read for the command
/// timeout ends the connection ([`WriteDeadline`]). One timer serves the
/// connection, re-armed only when a deadline comes earlier than the one
/// armed (an early wake-up is harmless).
#[derive(Debug, Default)]
pub struct IoStep {
    need_flush: bool,
    write_deadline: WriteDeadline,
    armed: Option<std::time::Instant>,
}

impl IoStep {
    /// Everything written so far was flushed (by the adapter's own flush).
    pub fn flushed(&mut self) {
        self.need_flush = false;
    }

    /// One step for a machine that said `Idle` (`wait`). Errors are I/O
    /// errors and a write timeout; a failed read counts as the end of the
    /// stream.
    pub async fn run<E: smtp_proto::drive::Drive>(
        &mut self,
        stream: &mut impl PollIo,
        alarm: &mut impl Alarm,
        session: &mut E,
        wait: Wait,
        mut stop: Option<&mut StopWatch>,
        seen: Stop,
    ) -> std::io::Result<()> {
        use std::task::Poll;
        let pending = !session.transmit().is_empty() || self.need_flush;
        let wake = self.write_deadline.arm(
            pending,
            wait.write_timeout,
            wait.deadline,
            std::time::Instant::now(),
        );
        if let Some(w) = wake {
            if self.armed.is_none_or(|a| w < a) {
                alarm.set(w);
                self.armed = Some(w);
            }
        }
        let done = std::future::poll_fn(|cx| {
            if !session.transmit().is_empty() {
                match stream.poll_write(cx, session.transmit()) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => return Poll::Ready(Ok(IoDone::Wrote(n))),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else if self.need_flush {
                match stream.poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.need_flush = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if wait.read {
                let buf = session.read_buf();
                if !buf.is_empty() {
                    match stream.poll_read(cx, buf) {
                        Poll::Ready(Ok(n)) => return Poll::Ready(Ok(IoDone::Read(n))),
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(error = %e, "read failed");
                            return Poll::Ready(Ok(IoDone::Read(0)));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if let Some(w) = stop.as_mut() {
                if w.poll_until(cx, |s| s != seen).is_ready() {
                    return Poll::Ready(Ok(IoDone::Stop));
                }
            }
            if self.armed.is_some() && alarm.poll_alarm(cx).is_ready() {
                return Poll::Ready(Ok(IoDone::Timer));
            }
            Poll::Pending
        })
        .await?;
        match done {
            IoDone::Wrote(n) => {
                session.transmitted(n);
                self.need_flush = true;
                self.write_deadline.progressed();
            }
            IoDone::Read(0) => session.receive_eof(std::time::Instant::now()),
            IoDone::Read(n) => session.filled(n, std::time::Instant::now()),
            IoDone::Stop => {}
            IoDone::Timer => {
                self.armed = None;
                let now = std::time::Instant::now();
                // Output still unwritten past its deadline: the client does
                // not read. (A flush that completed meanwhile is no timeout.)
                let pending = self.need_flush || !session.transmit().is_empty();
                if self.write_deadline.expired(pending, now) {
                    tracing::info!("write timed out; closing");
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                session.handle_timeout(now);
            }
        }
        Ok(())
    }
}

/// The names of a rustls connection's TLS version and cipher suite
/// (`TLSv1.3`, `TLS_AES_256_GCM_SHA384`), for the `Received:` header.
pub fn tls_info(conn: &rustls::CommonState) -> smtp_proto::server::TlsInfo {
    use rustls::ProtocolVersion;
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let name = s
                .suite()
                .as_str()
                .map_or_else(|| format!("{:?}", s.suite()), str::to_owned);
            match name.strip_prefix("TLS13_") {
                Some(rest) => format!("TLS_{rest}"),
                None => name,
            }
        })
        .unwrap_or_default();
    smtp_proto::server::TlsInfo {
        version,
        cipher,
        channel_binding: None,
    }
}

/// The `tls-exporter` channel binding of a TLS 1.3 connection (RFC 9266),
/// for SCRAM-SHA-256-PLUS: pass the connection's
/// `export_keying_material`. `None` under TLS 1.2, where the exporter
/// binds too little without the extended master secret.
pub fn channel_binding(
    info: &smtp_proto::server::TlsInfo,
    export: impl FnOnce([u8; 32], &[u8]) -> Result<[u8; 32], rustls::Error>,
) -> Option<Vec<u8>> {
    if info.version != "TLSv1.3" {
        return None;
    }
    export([0; 32], b"EXPORTER-Channel-Binding")
        .ok()
        .map(|b| b.to_vec())
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Plain SMTP, with STARTTLS when TLS is configured.
    Tcp(std::net::SocketAddr),
    /// Implicit TLS (RFC 8314): the handshake first.
    Tls(std::net::SocketAddr),
    /// A Unix-domain socket (plain, e.g. LMTP from a local MTA).
    Unix(std::path::PathBuf),
    /// A socket already open (systemd socket activation, inetd): served
    /// instead of bound, as its [`Protocol`]
    /// says; a connected one is one session.
    Inherited(crate::activation::InheritedSocket),
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), e.g. whose
/// PROXY headers are believed ([`ServerOptions::proxy_from`]); defined in
/// the core, where XCLIENT and XFORWARD permission is decided.
pub use smtp_proto::config::Cidr;

/// A Unix-domain socket's path, removed when the listener is dropped (the
/// end of a server, or a failed bind of another listener).
#[cfg(unix)]
#[derive(Debug)]
pub struct SocketFile(pub std::path::PathBuf);

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix-domain listener at `path`; with `mode` (e.g. `0o660`),
/// its socket file has exactly that mode before anyone can connect
/// (issue 12 item 28: Postfix's LMTP client, not root, must be able to).
///
/// How: the socket is bound inside a fresh private directory (mode 0700,
/// next to `path`, so on the same file system), given its mode there,
/// then hard-linked to `path` and its private name removed. No one else
/// can reach it until the link exists, and then it has its mode already.
/// A `umask` around `bind` would change the mask of every thread of the
/// process (a library cannot do that safely), and a `chmod` after `bind`
/// leaves a moment at the umask's mode. The link, like `bind`, fails if
/// `path` exists. Without `mode`, this is a plain `bind` (the mode then
/// comes from the umask).
#[cfg(unix)]
pub fn bind_unix(
    path: &std::path::Path,
    mode: Option<u32>,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::os::unix::net::UnixListener;
    let Some(mode) = mode else {
        return UnixListener::bind(path);
    };
    static PRIVATE: AtomicU64 = AtomicU64::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dir = parent.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        PRIVATE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let private = dir.join("socket");
    let bound = UnixListener::bind(&private).and_then(|l| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(mode))?;
        std::fs::hard_link(&private, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_dir(&dir);
    bound
}

/// A TCP stream the PROXY header can be read from without reading past
/// it: `peek` (`MSG_PEEK`) shows what arrived, `read` consumes exactly
/// the header's bytes, so what follows (SMTP, or an implicit-TLS
/// handshake) stays in the socket. Each adapter implements it for its TCP
/// stream (a blocking one returns ready futures).
pub trait PeekRead {
    /// Copies the bytes waiting into `buf` without consuming them, waiting
    /// for at least one; `Ok(0)` at the end of the stream.
    fn peek(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Reads (consumes) up to `buf.len()` bytes; `Ok(0)` at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
}

/// Reads a PROXY protocol header (v1 or v2) off `stream`, and nothing
/// after it ([`PeekRead`]); at most [`MAX_HEADER_LEN`] bytes.
///
/// [`MAX_HEADER_LEN`]: smtp_proto::proxy::MAX_HEADER_LEN
pub async fn read_proxy_header(
    stream: &mut impl PeekRead,
) -> std::io::Result<smtp_proto::proxy::ProxyHeader> {
    use smtp_proto::proxy::{MAX_HEADER_LEN, ProxyParse, parse_proxy_header};
    use std::io::{Error, ErrorKind};
    let mut buf = vec![0; MAX_HEADER_LEN];
    let mut have = 0;
    loop {
        let free = buf.get_mut(have..).unwrap_or_default();
        let n = stream.peek(free).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let seen = buf.get(..have + n).unwrap_or_default();
        // Incomplete: every byte seen is header; read them and peek again.
        let (header, take) = match parse_proxy_header(seen) {
            ProxyParse::Done { header, consumed } => (Some(header), consumed - have),
            ProxyParse::Incomplete => (None, n),
            ProxyParse::Invalid(e) => return Err(Error::new(ErrorKind::InvalidData, e)),
        };
        let end = have + take;
        while have < end {
            let got = stream
                .read(buf.get_mut(have..end).unwrap_or_default())
                .await?;
            if got == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            have += got;
        }
        if let Some(header) = header {
            return Ok(header);
        }
    }
}

/// What [`ProxyFront::read`] found before a TCP session.
#[derive(Debug)]
pub enum Proxied {
    /// Serve the session for this peer (the header's addresses).
    Peer(Box<smtp_proto::server::PeerInfo>),
    /// Close without a word, as for a missing or invalid header: the peer
    /// is not a trusted proxy, or no valid header came in time.
    Close,
    /// The header's source holds its connections per address already:
    /// answer [`Reply::TOO_MANY_CONNECTIONS`](smtp_proto::reply::Reply::TOO_MANY_CONNECTIONS) (not on implicit TLS, where
    /// no clear text is sent) and close.
    TooMany,
}

/// The PROXY protocol on a server's TCP listeners, handled by the server
/// before the session, written once for every adapter (issue 12 items
/// 13-15): the header comes first on the raw connection, on an implicit-TLS
/// listener before the handshake too (HAProxy's `send-proxy`); it is read
/// within the command timeout, only from the trusted peers if any are
/// configured, and the per-address connection limit then counts its source
/// address (the balancer's own address is not limited per address). The
/// session that follows is configured not to expect a header again
/// ([`ServerOptions::tcp_config`]). Unix-domain listeners keep the
/// header inside the session ([`Config::proxy_protocol`]).
///
/// [`Config::proxy_protocol`]: smtp_proto::config::Config::proxy_protocol
#[derive(Debug, Clone)]
pub struct ProxyFront {
    from: Vec<Cidr>,
    timeout: std::time::Duration,
}

impl ProxyFront {
    /// Headers from peers in `from` (any peer when empty), read within `timeout`.
    pub fn new(from: Vec<Cidr>, timeout: std::time::Duration) -> ProxyFront {
        ProxyFront { from, timeout }
    }

    /// How long the header may take: the adapter's `timer` for
    /// [`ProxyFront::read`] fires after this.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// Whether `ip` may send a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.from.is_empty() || self.from.iter().any(|n| n.contains(ip))
    }

    /// Reads the header of a connection from `peer` (its TCP addresses),
    /// unless `timer` (the runtime's, after [`ProxyFront::timeout`]) fires
    /// first, and claims the per-address `slot` for the header's source.
    /// Refusals are logged here.
    pub async fn read(
        &self,
        stream: &mut impl PeekRead,
        peer: smtp_proto::server::PeerInfo,
        slot: &mut Slot,
        timer: impl Future<Output = ()>,
    ) -> Proxied {
        use smtp_proto::proxy::ProxyCommand;
        let from = peer.remote;
        if !from.is_some_and(|a| self.trusts(a.ip())) {
            tracing::info!(peer = ?from, "PROXY header from an untrusted peer; closing");
            crate::metrics::connection_refused(crate::metrics::Refusal::Proxy);
            return Proxied::Close;
        }
        let header = {
            let mut read = std::pin::pin!(read_proxy_header(stream));
            let mut timer = std::pin::pin!(timer);
            std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                std::task::Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
            })
            .await
        };
        let header = match header {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                tracing::info!(peer = ?from, error = %e, "no valid PROXY header; closing");
                crate::metrics::connection_refused(crate::metrics::Refusal::Proxy);
                return Proxied::Close;
            }
            None => {
                tracing::info!(peer = ?from, "no PROXY header in time; closing");
                crate::metrics::connection_refused(crate::metrics::Refusal::Proxy);
                return Proxied::Close;
            }
        };
        // LOCAL (the balancer's own health check): its real addresses.
        if header.command != ProxyCommand::Proxy {
            return Proxied::Peer(Box::new(peer));
        }
        if let Some(src) = header.source {
            if !slot.claim_ip(src.ip()) {
                tracing::info!(peer = %src, via = ?from, "too many connections");
                return Proxied::TooMany;
            }
        }
        Proxied::Peer(Box::new(smtp_proto::server::PeerInfo {
            remote: header.source.or(peer.remote),
            local: header.destination.or(peer.local),
            ..peer
        }))
    }
}

/// Everything an adapter's `Server` builder collects besides the handler
/// and the runtime's own knobs: one struct, so every adapter (and the
/// `smtpd` command line, which builds one) means the same thing by each
/// setting. The builders' methods are generated by
/// [`server_builder_methods!`](crate::server_builder_methods).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The session configuration.
    pub config: Arc<smtp_proto::config::Config>,
    /// The listeners, in order.
    pub listen: Vec<Listen>,
    /// TLS: STARTTLS on plain listeners, and implicit TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections at once; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Connections at once from one IP address.
    pub max_connections_per_ip: Option<usize>,
    /// How long sessions may finish after a shutdown request.
    pub grace_period: std::time::Duration,
    /// The mode of Unix-domain listeners' socket files (e.g. `0o660`),
    /// set before anyone can connect ([`bind_unix`]); `None`: as the
    /// umask gives.
    pub unix_mode: Option<u32>,
    /// With [`Config::proxy_protocol`](smtp_proto::config::Config::proxy_protocol):
    /// the peers whose PROXY header is believed on TCP listeners; from
    /// any other, the connection is closed as for a missing header. Empty:
    /// any peer.
    pub proxy_from: Vec<Cidr>,
    /// What the server handle's `reload()` re-reads (certificates, user
    /// lists, credentials; `smtpd` on SIGHUP).
    pub reload: crate::reload::Reloader,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: Arc::new(smtp_proto::config::Config::default()),
            listen: Vec::new(),
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            unix_mode: None,
            proxy_from: Vec::new(),
            reload: crate::reload::Reloader::default(),
        }
    }
}

/// The session configuration for each kind of listener
/// ([`ServerOptions::session_configs`]), shared by a server's sessions.
#[derive(Debug, Clone)]
pub struct SessionConfigs {
    /// Plain TCP listeners (STARTTLS on when TLS is configured).
    pub plain: Arc<smtp_proto::config::Config>,
    /// Implicit-TLS listeners.
    pub tls: Arc<smtp_proto::config::Config>,
    /// Unix-domain listeners.
    pub unix: Arc<smtp_proto::config::Config>,
    /// TCP sockets serving LMTP ([`Protocol::Lmtp`]): the plain one
    /// with [`lmtp`](smtp_proto::config::Config::lmtp) on.
    pub lmtp: Arc<smtp_proto::config::Config>,
    /// Unix-domain sockets serving LMTP.
    pub lmtp_unix: Arc<smtp_proto::config::Config>,
}

impl SessionConfigs {
    /// The configuration of a listener serving `protocol`, over a
    /// Unix-domain socket (`unix`) or TCP.
    pub fn get(&self, protocol: Protocol, unix: bool) -> &Arc<smtp_proto::config::Config> {
        match (protocol, unix) {
            (Protocol::Smtp, false) => &self.plain,
            (Protocol::Smtp | Protocol::Submissions, true) => &self.unix,
            (Protocol::Submissions, false) => &self.tls,
            (Protocol::Lmtp, false) => &self.lmtp,
            (Protocol::Lmtp, true) => &self.lmtp_unix,
        }
    }
}

/// What a listener serves: plain SMTP, implicit TLS or LMTP.
pub use crate::activation::Protocol;

impl Listen {
    /// What the listener serves (`Tcp` and `Unix`: SMTP; `Tls`:
    /// submissions, implicit TLS).
    pub fn protocol(&self) -> Protocol {
        match self {
            Listen::Tcp(_) | Listen::Unix(_) => Protocol::Smtp,
            Listen::Tls(_) => Protocol::Submissions,
            Listen::Inherited(s) => s.protocol(),
        }
    }
}

impl ServerOptions {
    /// Checks the options before binding: implicit TLS (`listen_tls`, an
    /// inherited `submissions` socket) needs a TLS configuration, and is
    /// served over TCP only.
    pub fn check(&self) -> std::io::Result<()> {
        let invalid = |msg| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        let tls_listener = self.listen.iter().any(|l| matches!(l, Listen::Tls(_)));
        if tls_listener && self.tls.is_none() {
            return invalid("listen_tls needs a TLS configuration");
        }
        for l in &self.listen {
            if let Listen::Inherited(s) = l {
                if s.protocol() != Protocol::Submissions {
                    continue;
                }
                if self.tls.is_none() {
                    return invalid("an inherited submissions socket needs a TLS configuration");
                }
                if s.is_unix() {
                    return invalid("implicit TLS (submissions) is served on TCP sockets only");
                }
            }
        }
        Ok(())
    }

    /// The configuration for plain listeners: STARTTLS offered exactly when
    /// TLS is configured. (Unix-domain listeners use it as it is; TCP ones
    /// through [`ServerOptions::tcp_config`].)
    pub fn plain_config(&self) -> Arc<smtp_proto::config::Config> {
        let mut plain = (*self.config).clone();
        plain.extensions.starttls = self.tls.is_some();
        Arc::new(plain)
    }

    /// The configuration for a TCP listener's sessions, from
    /// [`ServerOptions::plain_config`] (`tls`: false) or the configuration
    /// as given (implicit TLS): without the PROXY header, which the
    /// [`ProxyFront`] reads before the session.
    pub fn tcp_config(&self, tls: bool) -> Arc<smtp_proto::config::Config> {
        let config = if tls {
            self.config.clone()
        } else {
            self.plain_config()
        };
        if !config.proxy_protocol {
            return config;
        }
        let mut config = (*config).clone();
        config.proxy_protocol = false;
        Arc::new(config)
    }

    /// The configuration of each kind of listener's sessions.
    pub fn session_configs(&self) -> SessionConfigs {
        let lmtp = |c: Arc<smtp_proto::config::Config>| {
            let mut c = (*c).clone();
            c.lmtp = true;
            Arc::new(c)
        };
        SessionConfigs {
            plain: self.tcp_config(false),
            tls: self.tcp_config(true),
            unix: self.plain_config(),
            lmtp: lmtp(self.tcp_config(false)),
            lmtp_unix: lmtp(self.plain_config()),
        }
    }

    /// The PROXY protocol handling of TCP listeners, when the configuration
    /// asks for the protocol.
    pub fn proxy_front(&self) -> Option<ProxyFront> {
        self.config
            .proxy_protocol
            .then(|| ProxyFront::new(self.proxy_from.clone(), self.config.timeouts.command))
    }

    /// A limiter for these limits.
    pub fn limiter(&self) -> ConnectionLimiter {
        ConnectionLimiter::new(self.max_connections, self.max_connections_per_ip)
    }
}

/// Generates the builder methods every adapter's `Server` shares (`listen`,
/// `listen_tls`, `listen_unix`, `listen_inherited`, `config`, `tls`, `max_connections`,
/// `max_connections_per_ip`, `grace_period`, `listen_unix_mode`,
/// `proxy_from`, `certificates`, `on_reload`, `options`), inside an `impl`
/// block of a type with a field `options: ServerOptions`.
#[macro_export]
macro_rules! server_builder_methods {
    () => {
        /// Listens for plain SMTP (with STARTTLS when TLS is set). Repeatable.
        pub fn listen(mut self, addr: ::std::net::SocketAddr) -> Self {
            self.options.listen.push($crate::accept::Listen::Tcp(addr));
            self
        }

        /// Listens for implicit TLS (RFC 8314, "submissions"): the
        /// handshake comes first, within the command timeout. Needs TLS.
        pub fn listen_tls(mut self, addr: ::std::net::SocketAddr) -> Self {
            self.options.listen.push($crate::accept::Listen::Tls(addr));
            self
        }

        /// Listens on a Unix domain socket (e.g. for LMTP from a local MTA).
        #[cfg(unix)]
        pub fn listen_unix(mut self, path: impl Into<::std::path::PathBuf>) -> Self {
            self.options
                .listen
                .push($crate::accept::Listen::Unix(path.into()));
            self
        }

        /// Serves a socket opened elsewhere (systemd socket activation,
        /// inetd; [`activation`]($crate::activation)) instead of binding
        /// one: a listener, or one connection. Repeatable.
        pub fn listen_inherited(mut self, socket: $crate::activation::InheritedSocket) -> Self {
            self.options
                .listen
                .push($crate::accept::Listen::Inherited(socket));
            self
        }

        /// The session configuration.
        pub fn config(
            mut self,
            config: ::std::sync::Arc<$crate::smtp_proto::config::Config>,
        ) -> Self {
            self.options.config = config;
            self
        }

        /// The TLS configuration: enables STARTTLS on plain listeners and
        /// allows implicit-TLS listeners.
        pub fn tls(mut self, tls: ::std::sync::Arc<$crate::rustls::ServerConfig>) -> Self {
            self.options.tls = Some(tls);
            self
        }

        /// Connections served at once; more get `421 4.7.0` and are closed.
        /// Default: [`DEFAULT_MAX_CONNECTIONS`]($crate::accept::DEFAULT_MAX_CONNECTIONS).
        pub fn max_connections(mut self, n: usize) -> Self {
            self.options.max_connections = n;
            self
        }

        /// Connections served at once from one IP address; more get `421 4.7.0`.
        pub fn max_connections_per_ip(mut self, n: usize) -> Self {
            self.options.max_connections_per_ip = Some(n);
            self
        }

        /// How long sessions may take to finish their transaction after a
        /// shutdown request, before `421 4.3.2`.
        /// Default: [`DEFAULT_GRACE_PERIOD`]($crate::accept::DEFAULT_GRACE_PERIOD).
        pub fn grace_period(mut self, grace: ::std::time::Duration) -> Self {
            self.options.grace_period = grace;
            self
        }

        /// The mode of Unix-domain sockets' files (e.g. `0o660`), set
        /// before anyone can connect; default: as the umask gives.
        #[cfg(unix)]
        pub fn listen_unix_mode(mut self, mode: u32) -> Self {
            self.options.unix_mode = Some(mode);
            self
        }

        /// With the PROXY protocol: believe headers only from peers in
        /// `net` (repeatable); others are closed as for a missing header.
        pub fn proxy_from(mut self, net: $crate::accept::Cidr) -> Self {
            self.options.proxy_from.push(net);
            self
        }

        /// TLS from certificates chosen by the client's SNI name
        /// ([`Certificates`]($crate::certs::Certificates)), re-read by the
        /// server handle's `reload()`: like [`tls`](Self::tls) with
        /// `certs.server_config()`.
        pub fn certificates(
            mut self,
            certs: ::std::sync::Arc<$crate::certs::Certificates>,
        ) -> Self {
            self.options.tls = Some(certs.server_config());
            self.options.reload = self.options.reload.with(certs);
            self
        }

        /// Re-reads `source` whenever the server handle's `reload()` is
        /// called (e.g. a [`FileReload`]($crate::reload::FileReload) of a
        /// user list shared with the handler). Repeatable.
        pub fn on_reload(mut self, source: ::std::sync::Arc<dyn $crate::reload::Reload>) -> Self {
            self.options.reload = self.options.reload.with(source);
            self
        }

        /// Replaces every setting above at once (e.g. with the options the
        /// `smtpd` command line built).
        pub fn options(mut self, options: $crate::accept::ServerOptions) -> Self {
            self.options = options;
            self
        }
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_ip_slots_come_back() {
        let l = ConnectionLimiter::new(10, Some(2));
        let ip: Option<IpAddr> = "10.0.0.1".parse().ok();
        let a = l.admit(ip).unwrap();
        let b = l.admit(ip).unwrap();
        assert!(l.admit(ip).is_none());
        drop(a);
        let c = l.admit(ip).unwrap();
        drop((b, c));
        assert_eq!(l.active(), 0);
        assert!(l.counts().per_ip.is_empty());
    }

    /// Issue 12 item 11: however a session ends, its handler sees
    /// `disconnect` exactly once: at `Closing`, or when the dispatcher is
    /// dropped without one (an adapter that gave up on a failed write).
    #[test]
    fn disconnect_runs_once_however_the_session_ends() {
        use crate::handler::{Dispatcher, Handler, SessionInfo};
        use smtp_proto::server::CloseReason;
        use std::time::Instant;

        #[derive(Default)]
        struct Ends(Mutex<Vec<CloseReason>>);
        impl Handler for Ends {
            fn disconnect(&self, _: &SessionInfo, reason: CloseReason) {
                self.0.lock().unwrap().push(reason);
            }
        }
        let config = Arc::new(smtp_proto::config::Config::new("mx.example"));
        // Dropped mid-session (a reset, a failed write): ConnectionLost.
        let h = Arc::new(Ends::default());
        let mut s = Session::new(config.clone(), Default::default(), Instant::now());
        let mut d = Dispatcher::new(h.clone(), "a");
        futures_executor::block_on(d.drive(&mut s));
        s.receive(b"EHLO x\r\n", Instant::now());
        futures_executor::block_on(d.drive(&mut s));
        drop(d);
        assert_eq!(*h.0.lock().unwrap(), [CloseReason::ConnectionLost]);
        // Closed by QUIT, then dropped: once, with QUIT.
        let h = Arc::new(Ends::default());
        let mut s = Session::new(config, Default::default(), Instant::now());
        let mut d = Dispatcher::new(h.clone(), "b");
        futures_executor::block_on(d.drive(&mut s));
        s.receive(b"QUIT\r\n", Instant::now());
        assert_eq!(
            futures_executor::block_on(d.drive(&mut s)),
            smtp_proto::drive::Instruction::Closed
        );
        drop(d);
        assert_eq!(*h.0.lock().unwrap(), [CloseReason::Quit]);
    }

    #[test]
    fn per_ip_slot_claimed_after_the_accept() {
        let l = ConnectionLimiter::new(10, Some(1));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let mut a = l.admit(None).unwrap();
        let mut b = l.admit(None).unwrap();
        assert!(a.claim_ip(ip));
        assert!(a.claim_ip(ip), "a second claim changes nothing");
        assert!(!b.claim_ip(ip), "over the limit for the claimed address");
        assert!(b.claim_ip("198.51.100.8".parse().unwrap()));
        drop(a);
        let mut c = l.admit(None).unwrap();
        assert!(c.claim_ip(ip), "the first one's claim came back");
        drop((b, c));
        assert_eq!(l.active(), 0);
        assert!(l.counts().per_ip.is_empty());
    }

    /// A stream that delivers `data` in chunks of `chunk` bytes, peeking
    /// without consuming.
    struct Chunks {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl PeekRead for Chunks {
        async fn peek(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // What has "arrived": whole chunks from the start.
            let arrived = (self.pos / self.chunk + 1) * self.chunk;
            let end = arrived.min(self.data.len());
            let n = (end - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            Ok(n)
        }

        async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.peek(buf).await?;
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn proxy_header_read_without_reading_past_it() {
        let v1 = b"PROXY TCP4 198.51.100.7 203.0.113.1 51000 25\r\n".to_vec();
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[198, 51, 100, 7, 203, 0, 113, 1, 0xc7, 0x38, 0, 25]);
        for header in [v1, v2] {
            for chunk in 1..=header.len() + 3 {
                let mut data = header.clone();
                data.extend_from_slice(b"\x16\x03\x01 a ClientHello");
                let mut s = Chunks {
                    data,
                    pos: 0,
                    chunk,
                };
                let h = futures_executor::block_on(read_proxy_header(&mut s)).unwrap();
                assert_eq!(h.source, Some("198.51.100.7:51000".parse().unwrap()));
                assert_eq!(s.pos, header.len(), "chunk {chunk}");
            }
        }
        // Not a header, too long, or cut short: errors.
        for bad in [&b"EHLO x\r\n"[..], &[b'P'; 200], b"PROXY TCP4 1.2"] {
            let mut s = Chunks {
                data: bad.to_vec(),
                pos: 0,
                chunk: 7,
            };
            assert!(futures_executor::block_on(read_proxy_header(&mut s)).is_err());
        }
    }

    #[test]
    fn cidr() {
        let n: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains("192.0.2.255".parse().unwrap()));
        assert!(!n.contains("192.0.3.0".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(one.to_string(), "2001:db8::1/128");
        assert!(one.contains("2001:db8::1".parse().unwrap()));
        assert!(!one.contains("2001:db8::2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unix_socket_gets_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("accept-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _l = bind_unix(&path, Some(0o666)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o666);
        // Like bind: an existing path is not replaced.
        assert!(bind_unix(&path, Some(0o600)).is_err());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no private directory left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_are_unique() {
        let ids = SessionIds::new(0xABC);
        assert_eq!(ids.next_id(), "ABC00000");
        assert_eq!(ids.next_id(), "ABC00001");
    }

    #[test]
    fn stop_signal_wakes_each_watch_once_registered() {
        use std::sync::atomic::AtomicUsize;
        use std::task::{Context, Poll, Wake, Waker};

        #[derive(Default)]
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let signal = StopSignal::new();
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::default()).collect();
        let mut watches: Vec<StopWatch> = (0..3).map(|_| signal.watch()).collect();
        for _ in 0..5 {
            // Polling again with the same waker registers nothing new.
            for (w, c) in watches.iter_mut().zip(&counts) {
                let waker = Waker::from(c.clone());
                let mut cx = Context::from_waker(&waker);
                assert!(w.poll_until(&mut cx, |s| s != Stop::Run).is_pending());
            }
        }
        assert_eq!(signal.lock().slots.len(), 3);
        // A dropped watch gives its slot back; a new one takes it.
        drop(watches.pop());
        watches.push(signal.watch());
        let waker = Waker::from(counts[2].clone());
        let mut cx = Context::from_waker(&waker);
        assert!(
            watches[2]
                .poll_until(&mut cx, |s| s == Stop::Abort)
                .is_pending()
        );
        assert_eq!(signal.lock().slots.len(), 3);
        signal.set(Stop::Drain);
        for c in &counts {
            assert_eq!(c.0.load(Ordering::SeqCst), 1);
        }
        assert_eq!(
            watches[0].poll_until(&mut cx, |s| s != Stop::Run),
            Poll::Ready(Stop::Drain)
        );
        assert!(
            watches[2]
                .poll_until(&mut cx, |s| s == Stop::Abort)
                .is_pending()
        );
        signal.set(Stop::Abort);
        assert_eq!(
            watches[2].poll_until(&mut cx, |s| s == Stop::Abort),
            Poll::Ready(Stop::Abort)
        );
    }
}
