//! The server's metrics, emitted through the [`metrics`] facade: every
//! name and label lives here, and the rest of the kit calls the small
//! functions of this module (`metrics::session_opened()`,
//! `metrics::connection_refused(Refusal::Rate)`, …).
//!
//! Nothing is recorded anywhere until a recorder is installed: an embedder
//! installs any [`metrics::Recorder`] it likes (Prometheus, StatsD, its
//! own) and gets every counter below; `smtpd --metrics ADDR` installs
//! `metrics-exporter-prometheus`'s and serves its text at `/metrics`
//! ([`serve`], feature `cli`). Without a recorder an event costs a
//! thread-local read and an atomic load; the events of an accepted message
//! (recipient, message, bytes) use static keys, so nothing allocates on
//! that path either way (rarer events, refusals, TLS, AUTH and relay
//! outcomes, build their label list first).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `smtp_sessions_open` | gauge | | sessions running now (however a session ends, panics and kills included, it leaves the gauge) |
//! | `smtp_sessions_total` | counter | | sessions started |
//! | `smtp_connections_refused_total` | counter | `reason`: `limit`, `rate`, `proxy`, `access` | connections refused before or at the greeting: `--max-connections`/`--max-connections-per-ip`, the connection rate, a bad, missing or untrusted PROXY header, the access list |
//! | `smtp_tls_handshakes_total` | counter | `outcome`: `ok`, `failed`; `version`: `TLSv1_2`, `TLSv1_3`, `unknown` | server-side TLS handshakes, STARTTLS and implicit TLS |
//! | `smtp_auth_total` | counter | `mechanism` (`PLAIN`, `LOGIN`, `CRAM-MD5`, `SCRAM-SHA-256`, …); `result`: `success`, `failure` | AUTH attempts the server decided |
//! | `smtp_messages_total` | counter | `result`: `accepted`, `refused`; `class`: `2`, `4`, `5`; `reason`: the enhanced status code of the reply (`2.0.0`, `5.3.4`, … from a fixed set of common ones, others `2.other`/`4.other`/`5.other`, so a handler's or an upstream's replies cannot grow the series without bound) or `disconnected`/`refused` when no reply says more | messages at their end: accepted when a recipient got a 2xx (LMTP), refused otherwise; and bodies the session ended early (too big, bare LF, NUL, long line, timeout, shutdown, disconnect) |
//! | `smtp_received_bytes_total` | counter | | message bytes received (the sizes of the messages that reached their end) |
//! | `smtp_recipients_total` | counter | `result`: `accepted`, `refused` | RCPT decisions |
//! | `smtp_relay_total` | counter | `outcome`: `delivered`, `deferred`, `refused`, `failed` | relayed transactions: the upstream accepted, answered 4xx, answered 5xx, or was lost |
//! | `smtp_relay_upstream_seconds` | histogram | | an upstream transaction's time, from MAIL to the answer to the body |
//! | `smtp_store_fsync_seconds` | histogram | | each `fsync` of the stores (spool, Maildir copies, mbox, directories) |
//!
//! # Example: an embedder's recorder
//!
//! Any recorder sees the events; here `metrics-util`'s debugging one,
//! installed for one thread (a server installs its recorder process-wide
//! with [`metrics::set_global_recorder`]).
//!
//! ```
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use smtp_server::metrics::{self, Refusal};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! ::metrics::with_local_recorder(&recorder, || {
//!     metrics::connection_refused(Refusal::Rate);
//!     metrics::recipient(true);
//! });
//! let counters: Vec<_> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, _, _, value)| {
//!         let key = key.key();
//!         let labels: Vec<_> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
//!         (format!("{}{{{}}}", key.name(), labels.join(",")), value)
//!     })
//!     .collect();
//! assert!(counters.contains(&(
//!     "smtp_connections_refused_total{reason=rate}".to_owned(),
//!     DebugValue::Counter(1)
//! )));
//! assert!(counters.contains(&(
//!     "smtp_recipients_total{result=accepted}".to_owned(),
//!     DebugValue::Counter(1)
//! )));
//! ```

use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, SharedString};
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::{AbortReason, Decision};

/// Gauge: sessions running now.
pub const SESSIONS_OPEN: &str = "smtp_sessions_open";
/// Counter: sessions started.
pub const SESSIONS_TOTAL: &str = "smtp_sessions_total";
/// Counter: connections refused, by `reason` ([`Refusal`]).
pub const CONNECTIONS_REFUSED: &str = "smtp_connections_refused_total";
/// Counter: server-side TLS handshakes, by `outcome` and `version`.
pub const TLS_HANDSHAKES: &str = "smtp_tls_handshakes_total";
/// Counter: AUTH results, by `mechanism` and `result`.
pub const AUTH: &str = "smtp_auth_total";
/// Counter: messages, by `result`, `class` and `reason`.
pub const MESSAGES: &str = "smtp_messages_total";
/// Counter: message bytes received.
pub const RECEIVED_BYTES: &str = "smtp_received_bytes_total";
/// Counter: RCPT decisions, by `result`.
pub const RECIPIENTS: &str = "smtp_recipients_total";
/// Counter: relayed transactions, by `outcome` ([`RelayOutcome`]).
pub const RELAY: &str = "smtp_relay_total";
/// Histogram: the time of an upstream transaction, in seconds.
pub const RELAY_UPSTREAM_SECONDS: &str = "smtp_relay_upstream_seconds";
/// Histogram: the time of one store `fsync`, in seconds.
pub const STORE_FSYNC_SECONDS: &str = "smtp_store_fsync_seconds";

/// The histogram buckets `smtpd --metrics` renders (seconds: from half a
/// millisecond, an fsync on a fast disk, to a minute, a slow upstream).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Why a connection was refused (the `reason` of
/// `smtp_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Over `--max-connections` or `--max-connections-per-ip`.
    Limit,
    /// Over the connection rate (`--max-connection-rate`, [`crate::rate`]).
    Rate,
    /// A bad, missing or untrusted PROXY header ([`crate::accept::ProxyFront`]).
    Proxy,
    /// Refused by the access list ([`crate::access`]).
    Access,
}

impl Refusal {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Limit => "limit",
            Refusal::Rate => "rate",
            Refusal::Proxy => "proxy",
            Refusal::Access => "access",
        }
    }
}

/// How a relayed transaction ended (the `outcome` of `smtp_relay_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayOutcome {
    /// The upstream accepted the message.
    Delivered,
    /// The upstream answered with a temporary failure (4xx).
    Deferred,
    /// The upstream refused the message (5xx).
    Refused,
    /// The upstream was lost (connection, TLS or protocol failure).
    Failed,
}

impl RelayOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RelayOutcome::Delivered => "delivered",
            RelayOutcome::Deferred => "deferred",
            RelayOutcome::Refused => "refused",
            RelayOutcome::Failed => "failed",
        }
    }
}

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

static SESSIONS_OPEN_KEY: Key = Key::from_static_name(SESSIONS_OPEN);
static SESSIONS_TOTAL_KEY: Key = Key::from_static_name(SESSIONS_TOTAL);
static RECEIVED_BYTES_KEY: Key = Key::from_static_name(RECEIVED_BYTES);
static RCPT_ACCEPTED_LABELS: [Label; 1] = [Label::from_static_parts("result", "accepted")];
static RCPT_ACCEPTED_KEY: Key = Key::from_static_parts(RECIPIENTS, &RCPT_ACCEPTED_LABELS);
static RCPT_REFUSED_LABELS: [Label; 1] = [Label::from_static_parts("result", "refused")];
static RCPT_REFUSED_KEY: Key = Key::from_static_parts(RECIPIENTS, &RCPT_REFUSED_LABELS);
static ACCEPTED_LABELS: [Label; 3] = [
    Label::from_static_parts("result", "accepted"),
    Label::from_static_parts("class", "2"),
    Label::from_static_parts("reason", "2.0.0"),
];
static ACCEPTED_KEY: Key = Key::from_static_parts(MESSAGES, &ACCEPTED_LABELS);

fn add(key: &Key, n: u64) {
    metrics::with_recorder(|r| r.register_counter(key, &META).increment(n));
}

fn labelled(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

/// A session's place in `smtp_sessions_open`: counts the session (and
/// `smtp_sessions_total`) when made, leaves the gauge when dropped, so the
/// gauge stays exact however the session ends (a [`Dispatcher`] holds
/// one).
///
/// [`Dispatcher`]: crate::handler::Dispatcher
#[derive(Debug)]
pub struct OpenSession(());

impl OpenSession {
    /// Counts a new session.
    pub fn new() -> OpenSession {
        add(&SESSIONS_TOTAL_KEY, 1);
        metrics::with_recorder(|r| r.register_gauge(&SESSIONS_OPEN_KEY, &META).increment(1.0));
        OpenSession(())
    }
}

impl Default for OpenSession {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics::with_recorder(|r| r.register_gauge(&SESSIONS_OPEN_KEY, &META).decrement(1.0));
    }
}

/// A connection refused for `reason`.
pub fn connection_refused(reason: Refusal) {
    let key = labelled(
        CONNECTIONS_REFUSED,
        vec![Label::from_static_parts("reason", reason.label())],
    );
    add(&key, 1);
}

/// A server-side TLS handshake (STARTTLS or implicit TLS) ended: with
/// the protocol version it agreed, as in
/// [`TlsInfo::version`](smtp_proto::server::TlsInfo) (`TLSv1.3`), or
/// `None` when it failed or timed out.
pub fn tls_handshake(version: Option<&str>) {
    let (outcome, version) = match version {
        None => ("failed", "unknown"),
        Some("TLSv1.3") => ("ok", "TLSv1_3"),
        Some("TLSv1.2") => ("ok", "TLSv1_2"),
        Some(_) => ("ok", "unknown"),
    };
    let key = labelled(
        TLS_HANDSHAKES,
        vec![
            Label::from_static_parts("outcome", outcome),
            Label::from_static_parts("version", version),
        ],
    );
    add(&key, 1);
}

/// An AUTH attempt with `mechanism` decided: `success` or not.
pub fn auth(mechanism: Mechanism, success: bool) {
    let result = if success { "success" } else { "failure" };
    let key = labelled(
        AUTH,
        vec![
            Label::from_static_parts("mechanism", mechanism.name()),
            Label::from_static_parts("result", result),
        ],
    );
    add(&key, 1);
}

/// A RCPT decided: `accepted` or refused.
pub fn recipient(accepted: bool) {
    add(
        if accepted {
            &RCPT_ACCEPTED_KEY
        } else {
            &RCPT_REFUSED_KEY
        },
        1,
    );
}

/// A message at its end, `size` bytes, answered with `decisions` (one, or
/// one per recipient in LMTP; `None`: the handler failed and the session
/// was aborted with `421 4.3.0`). It counts as accepted when any decision
/// accepts (the first accepting one gives the labels), else by its first
/// refusal.
pub fn message_end(size: u64, decisions: Option<&[Decision]>) {
    add(&RECEIVED_BYTES_KEY, size);
    let internal = [Decision::Reply(Reply::INTERNAL_ERROR)];
    let decisions = decisions.unwrap_or(&internal);
    let accepted = decisions.iter().find(|d| accepts(d));
    let (result, reply) = match accepted {
        Some(Decision::Accept) => return add(&ACCEPTED_KEY, 1),
        Some(Decision::Reply(r)) => ("accepted", r),
        None => match decisions.first() {
            Some(Decision::Reply(r)) => ("refused", r),
            // No decision, or an acceptance that did not count (cannot
            // happen): the session's own acceptance.
            _ => return add(&ACCEPTED_KEY, 1),
        },
    };
    let class = class(reply.code());
    message(result, class, status(reply.enhanced()));
}

/// A body the session ended early for `reason` (its reply, if it sent one,
/// gives the class and the reason label).
pub fn message_aborted(reason: AbortReason) {
    let (class, label): (&'static str, &'static str) = match reason {
        AbortReason::TooBig => ("5", "5.3.4"),
        AbortReason::BareLineEnding => ("5", "5.5.2"),
        AbortReason::LongLine | AbortReason::NulByte => ("5", "5.6.0"),
        AbortReason::Timeout => ("4", "4.4.2"),
        AbortReason::Shutdown => ("4", "4.3.2"),
        AbortReason::Disconnected => ("4", "disconnected"),
        AbortReason::Refused => ("5", "refused"),
    };
    message("refused", class, SharedString::const_str(label));
}

fn message(result: &'static str, class: &'static str, reason: SharedString) {
    let key = labelled(
        MESSAGES,
        vec![
            Label::from_static_parts("result", result),
            Label::from_static_parts("class", class),
            Label::new("reason", reason),
        ],
    );
    add(&key, 1);
}

/// A relayed transaction ended with `outcome`, after `elapsed` upstream
/// (from MAIL to the answer to the body) when it got that far.
pub fn relay(outcome: RelayOutcome, elapsed: Option<Duration>) {
    let key = labelled(
        RELAY,
        vec![Label::from_static_parts("outcome", outcome.label())],
    );
    add(&key, 1);
    if let Some(d) = elapsed {
        metrics::histogram!(RELAY_UPSTREAM_SECONDS).record(d.as_secs_f64());
    }
}

/// One store `fsync` that took `elapsed`.
pub fn store_fsync(elapsed: Duration) {
    metrics::histogram!(STORE_FSYNC_SECONDS).record(elapsed.as_secs_f64());
}

/// Gives the installed recorder the help text and unit of every metric
/// (a Prometheus scrape shows them as `# HELP`). Optional.
pub fn describe() {
    use metrics::Unit;
    metrics::describe_gauge!(SESSIONS_OPEN, "SMTP sessions running now");
    metrics::describe_counter!(SESSIONS_TOTAL, "SMTP sessions started");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, by reason (limit, rate, proxy, access)"
    );
    metrics::describe_counter!(
        TLS_HANDSHAKES,
        "Server-side TLS handshakes (STARTTLS and implicit TLS), by outcome and version"
    );
    metrics::describe_counter!(AUTH, "AUTH attempts decided, by mechanism and result");
    metrics::describe_counter!(
        MESSAGES,
        "Messages at their end or ended early, by result, reply class and reason"
    );
    metrics::describe_counter!(RECEIVED_BYTES, Unit::Bytes, "Message bytes received");
    metrics::describe_counter!(RECIPIENTS, "RCPT decisions, by result");
    metrics::describe_counter!(RELAY, "Relayed transactions, by outcome");
    metrics::describe_histogram!(
        RELAY_UPSTREAM_SECONDS,
        Unit::Seconds,
        "Time of an upstream relay transaction, from MAIL to the answer to the body"
    );
    metrics::describe_histogram!(
        STORE_FSYNC_SECONDS,
        Unit::Seconds,
        "Time of one fsync in the stores"
    );
}

fn accepts(d: &Decision) -> bool {
    match d {
        Decision::Accept => true,
        Decision::Reply(r) => r.code() < 400,
    }
}

/// The class label of a reply code.
fn class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2",
        4 => "4",
        _ => "5",
    }
}

/// The enhanced codes a `reason` label names; any other is `2.other`,
/// `4.other` or `5.other`: replies come from handlers and upstreams too,
/// and every label value is a series kept for the life of the process.
const COMMON: &[(u8, u16, u16, &str)] = &[
    (2, 0, 0, "2.0.0"),
    (2, 6, 0, "2.6.0"),
    (4, 2, 0, "4.2.0"),
    (4, 2, 2, "4.2.2"),
    (4, 3, 0, "4.3.0"),
    (4, 3, 1, "4.3.1"),
    (4, 4, 1, "4.4.1"),
    (4, 4, 2, "4.4.2"),
    (4, 5, 3, "4.5.3"),
    (4, 7, 0, "4.7.0"),
    (4, 7, 1, "4.7.1"),
    (5, 1, 1, "5.1.1"),
    (5, 2, 1, "5.2.1"),
    (5, 2, 2, "5.2.2"),
    (5, 3, 4, "5.3.4"),
    (5, 5, 2, "5.5.2"),
    (5, 6, 0, "5.6.0"),
    (5, 6, 3, "5.6.3"),
    (5, 6, 7, "5.6.7"),
    (5, 7, 0, "5.7.0"),
    (5, 7, 1, "5.7.1"),
];

/// The reason label of a reply's enhanced code (`none` without one), from
/// a fixed set ([`COMMON`]).
fn status(code: Option<EnhancedCode>) -> SharedString {
    let Some(e) = code else {
        return SharedString::const_str("none");
    };
    let label = COMMON
        .iter()
        .find(|(c, s, d, _)| (*c, *s, *d) == (e.class, e.subject, e.detail))
        .map_or(
            match e.class {
                2 => "2.other",
                4 => "4.other",
                _ => "5.other",
            },
            |(.., label)| label,
        );
    SharedString::const_str(label)
}

#[cfg(feature = "cli")]
pub use http::{MetricsServer, serve};

#[cfg(feature = "cli")]
mod http {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    /// The process's Prometheus recorder, installed once (a second `smtpd`
    /// run in the same process serves the same one).
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

    /// How often the recorder's upkeep runs (it drains histogram samples
    /// even while nobody scrapes).
    const UPKEEP: Duration = Duration::from_secs(5);

    fn handle() -> io::Result<PrometheusHandle> {
        let installed = HANDLE.get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(super::BUCKETS)
                .map_err(|e| e.to_string())?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            super::describe();
            Ok(handle)
        });
        installed.clone().map_err(io::Error::other)
    }

    /// The `/metrics` endpoint `smtpd --metrics` runs: its thread serves
    /// until this is dropped.
    pub struct MetricsServer {
        addr: SocketAddr,
        server: Arc<tiny_http::Server>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl std::fmt::Debug for MetricsServer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MetricsServer")
                .field("addr", &self.addr)
                .finish_non_exhaustive()
        }
    }

    impl MetricsServer {
        /// The address it is bound to.
        pub fn local_addr(&self) -> SocketAddr {
            self.addr
        }
    }

    impl Drop for MetricsServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            self.server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Installs the Prometheus recorder (once per process; it fails if
    /// another recorder is installed) and serves its text on `GET /metrics`
    /// at `addr`, on a thread of its own (any runtime, or none); other
    /// paths get 404. Logs `metrics listening on=ADDR`.
    pub fn serve(addr: SocketAddr) -> io::Result<MetricsServer> {
        let handle = handle()?;
        let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("metrics listener has no IP address"))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let (serving, stopped) = (server.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("smtpd-metrics".into())
            .spawn(move || run(&serving, &handle, &stopped))?;
        tracing::info!(on = %addr, "metrics listening");
        Ok(MetricsServer {
            addr,
            server,
            stop,
            thread: Some(thread),
        })
    }

    /// Answers requests until `stop` is set (and the server unblocked).
    fn run(server: &tiny_http::Server, handle: &PrometheusHandle, stop: &AtomicBool) {
        let mut last_upkeep = std::time::Instant::now();
        while !stop.load(Ordering::Acquire) {
            let request = server.recv_timeout(UPKEEP).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "metrics request failed");
                None
            });
            if last_upkeep.elapsed() >= UPKEEP {
                handle.run_upkeep();
                last_upkeep = std::time::Instant::now();
            }
            if let Some(request) = request {
                answer(request, handle);
            }
        }
    }

    fn answer(request: tiny_http::Request, handle: &PrometheusHandle) {
        let path = request.url().split('?').next().unwrap_or("");
        let get = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let response = if path == "/metrics" && get {
            let text = handle.render();
            let mut r = tiny_http::Response::from_string(text);
            if let Ok(h) = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            ) {
                r.add_header(h);
            }
            r
        } else if path == "/metrics" {
            tiny_http::Response::from_string("method not allowed\n").with_status_code(405)
        } else {
            tiny_http::Response::from_string("not found\n").with_status_code(404)
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics response failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Runs `f` under a recorder of its own; the counters and gauges it left.
    fn recorded(f: impl FnOnce()) -> Vec<(String, DebugValue)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, f);
        let mut v: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (text(k.key()), v))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `name` or `name{key=value,…}`.
    fn text(k: &Key) -> String {
        let labels: Vec<_> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if labels.is_empty() {
            k.name().to_owned()
        } else {
            format!("{}{{{}}}", k.name(), labels.join(","))
        }
    }

    fn counter(all: &[(String, DebugValue)], key: &str) -> Option<u64> {
        all.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| match v {
                DebugValue::Counter(n) => Some(*n),
                _ => None,
            })
    }

    #[test]
    fn sessions_open_follows_the_guards() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let gauge = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(k, .., v)| match v {
                    DebugValue::Gauge(g) if k.key().name() == SESSIONS_OPEN => Some(g.into_inner()),
                    _ => None,
                })
        };
        metrics::with_local_recorder(&recorder, || {
            let a = OpenSession::new();
            let b = OpenSession::new();
            drop(a);
            let _ = std::panic::catch_unwind(|| {
                let _c = OpenSession::new();
                panic!("a session panics");
            });
            drop(b);
            let _d = OpenSession::new();
            // (A snapshot takes the values; one at the end.)
            assert_eq!(gauge(), Some(1.0));
        });
    }

    #[test]
    fn messages_by_result_class_and_reason() {
        let all = recorded(|| {
            message_end(100, Some(&[Decision::Accept]));
            message_end(
                50,
                Some(&[Decision::Reply(Reply::NO_SUCH_USER), Decision::Accept]),
            );
            message_end(7, Some(&[Decision::Reply(Reply::MESSAGE_TOO_BIG)]));
            message_end(1, None);
            message_aborted(AbortReason::TooBig);
            message_aborted(AbortReason::Disconnected);
        });
        let m = |labels: &str| counter(&all, &format!("smtp_messages_total{{{labels}}}"));
        assert_eq!(m("result=accepted,class=2,reason=2.0.0"), Some(2));
        assert_eq!(m("result=refused,class=5,reason=5.3.4"), Some(2));
        assert_eq!(m("result=refused,class=4,reason=4.3.0"), Some(1));
        assert_eq!(m("result=refused,class=4,reason=disconnected"), Some(1));
        assert_eq!(counter(&all, "smtp_received_bytes_total"), Some(158));
    }

    #[test]
    fn refusals_tls_auth_relay_and_fsync() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            connection_refused(Refusal::Limit);
            connection_refused(Refusal::Access);
            tls_handshake(Some("TLSv1.3"));
            tls_handshake(None);
            auth(Mechanism::Plain, true);
            auth(Mechanism::ScramSha256, false);
            relay(RelayOutcome::Delivered, Some(Duration::from_millis(3)));
            store_fsync(Duration::from_micros(700));
        });
        let all: Vec<_> = snapshotter.snapshot().into_vec();
        let find = |key: &str| {
            all.iter()
                .find(|(k, ..)| text(k.key()) == key)
                .map(|(.., v)| v)
        };
        for key in [
            "smtp_connections_refused_total{reason=limit}",
            "smtp_connections_refused_total{reason=access}",
            "smtp_tls_handshakes_total{outcome=ok,version=TLSv1_3}",
            "smtp_tls_handshakes_total{outcome=failed,version=unknown}",
            "smtp_auth_total{mechanism=PLAIN,result=success}",
            "smtp_auth_total{mechanism=SCRAM-SHA-256,result=failure}",
            "smtp_relay_total{outcome=delivered}",
        ] {
            assert_eq!(find(key), Some(&DebugValue::Counter(1)), "{key}: {all:?}");
        }
        for key in ["smtp_relay_upstream_seconds", "smtp_store_fsync_seconds"] {
            assert!(
                matches!(find(key), Some(DebugValue::Histogram(h)) if h.len() == 1),
                "{key}"
            );
        }
    }

    #[test]
    fn status_labels() {
        assert_eq!(&*status(None), "none");
        assert_eq!(&*status(Some(EnhancedCode::new(5, 3, 4))), "5.3.4");
        // Outside the fixed set: one label per class, never a new series
        // per code an upstream or a handler makes up.
        assert_eq!(&*status(Some(EnhancedCode::new(5, 7, 26))), "5.other");
        assert_eq!(&*status(Some(EnhancedCode::new(4, 999, 999))), "4.other");
    }
}
