//! The `smtpd` command line, shared by every adapter: flags, and their
//! translation into a [`Config`], a handler and a rustls configuration.
//!
//! Each adapter's `smtpd` (the tokio binary, the smol and blocking
//! examples) is a few lines around [`Setup::from_env`]: the same flags mean
//! the same thing everywhere.
//!
//! ```
//! use clap::Parser;
//! use smtp_server::cli::{Args, Setup};
//!
//! let args = Args::try_parse_from(["smtpd", "--sink", "--max-size", "1000", "--lmtp"]).unwrap();
//! let setup = Setup::from_args(&args).unwrap();
//! assert!(setup.options.config.lmtp);
//! assert_eq!(setup.options.config.limits.max_message_size, 1000);
//! let default = smtp_server::accept::Listen::Tcp("127.0.0.1:2525".parse().unwrap());
//! assert_eq!(setup.options.listen, [default]);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::accept::{Listen, ServerOptions};
use crate::access::{AccessList, AccessRules};
use crate::activation::{self, InheritedSocket};
use crate::certs::Certificates;
use crate::handler::{Body, Envelope, Handler, Message, MessageDecision, Recipient, SessionInfo};
use crate::rate::{RateLimit, RateLimits};
use crate::relay::{Router, Upstream, UpstreamTls};
use crate::reload::{FileReload, Reloader, Swap};
use crate::sasl::Users;
use crate::store::{
    DebugHandler, MaildirHandler, MboxHandler, PasswordAuth, SinkHandler, local_hostname,
};
use smtp_proto::client::ClientAuth;
use smtp_proto::config::Config;
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::Decision;

/// A debugging SMTP server: prints each message (default), or stores it
/// in a Maildir or an mbox file.
///
/// Socket activation: started by systemd with LISTEN_PID and LISTEN_FDS
/// (a .socket unit), smtpd serves the sockets it was handed instead of
/// the default --listen (--listen* flags given are bound as well). Each
/// socket's name (FileDescriptorName=, in LISTEN_FDNAMES) says what it
/// serves: `smtp` (also unnamed ones), `submissions` (implicit TLS; needs
/// --tls-cert) or `lmtp`. For inetd, see --inetd.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "smtpd", version)]
pub struct Args {
    /// Address to listen on for SMTP (repeatable). Default: 127.0.0.1:2525,
    /// unless another --listen* flag is given or sockets are inherited
    /// (LISTEN_FDS, --inetd).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Serve the socket on standard input (inetd; systemd with
    /// StandardInput=socket) instead of listening: a listening socket
    /// (inetd `wait`, systemd Accept=no) is served like --listen, a
    /// connected one (inetd `nowait`, systemd Accept=yes) as one session,
    /// after which smtpd exits. Standard output is that socket too, so the
    /// debug store (printing to it) is refused: give --maildir, --mbox,
    /// --sink or --relay. Nothing is logged when standard error is the
    /// socket as well. (Sockets systemd hands over with LISTEN_FDS need no
    /// flag.)
    #[arg(long, conflicts_with_all = ["listen", "listen_tls", "listen_unix"])]
    pub inetd: bool,
    /// Unix-domain socket path to listen on (repeatable; e.g. for LMTP).
    #[arg(long, value_name = "PATH")]
    pub listen_unix: Vec<PathBuf>,
    /// Mode of the --listen-unix socket files, in octal (e.g. 0660, 0666),
    /// set before anyone can connect (default: from the umask).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "listen_unix")]
    pub listen_unix_mode: Option<u32>,
    /// Address to listen on for implicit TLS (RFC 8314; repeatable). Needs --tls-cert.
    #[arg(long, value_name = "ADDR")]
    pub listen_tls: Vec<SocketAddr>,
    /// Host name for the greeting and the Received header (default: this machine's).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// A served domain (repeatable; `*` for any; none means any). The first is our own.
    #[arg(long, value_name = "D")]
    pub domain: Vec<String>,
    /// Store messages in Maildirs under DIR, one per recipient.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["mbox", "sink"])]
    pub maildir: Option<PathBuf>,
    /// Append messages to the mbox FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "sink")]
    pub mbox: Option<PathBuf>,
    /// Accept and discard messages.
    #[arg(long)]
    pub sink: bool,
    /// Largest message in bytes (0: no limit).
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,
    /// Most recipients per message.
    #[arg(long, value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Most connections at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections at once from one client IP address.
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per client IP address per minute; beyond it
    /// `421 4.7.0` and the connection closes (IPv6 counts by /64; the
    /// PROXY header's client counts, not the balancer).
    #[arg(long, value_name = "N")]
    pub max_connection_rate: Option<u32>,
    /// Messages (accepted MAIL commands) per client IP address per
    /// minute; beyond it MAIL gets `450 4.7.1`.
    #[arg(long, value_name = "N")]
    pub max_message_rate: Option<u32>,
    /// Recipients (accepted RCPT commands) per client IP address per
    /// minute; beyond it RCPT gets `452 4.5.3`.
    #[arg(long, value_name = "N")]
    pub max_recipient_rate: Option<u32>,
    /// Commands that make no progress (NOOP, RSET, refused RCPTs, …) allowed
    /// per session before it is closed (0: no limit).
    #[arg(long, value_name = "N")]
    pub junk_command_limit: Option<u32>,
    /// Delay in milliseconds added to each error reply past the soft error limit.
    #[arg(long, value_name = "MS")]
    pub error_delay_ms: Option<u64>,
    /// Seconds sessions may take to finish their transaction after SIGINT or
    /// SIGTERM before they get `421 4.3.2` (default 30).
    #[arg(long, value_name = "SECS")]
    pub grace_period: Option<u64>,
    /// Threads that run sessions (default: one per CPU; 1 runs everything
    /// on one thread, which suits small machines and is the fastest where
    /// a load generator shares the CPUs). The blocking adapter, with a
    /// thread per session, and an async-std build ignore it.
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Seconds to wait for the client, at every wait: each command, TLS
    /// handshakes, and inside DATA/BDAT too unless --data-timeout is given
    /// (default: RFC 5321's 300, and 180 in DATA).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Seconds to wait for the next line of a DATA body or the next BDAT
    /// octets, apart from --timeout (default: --timeout's, else 180).
    #[arg(long, value_name = "SECS")]
    pub data_timeout: Option<u64>,
    /// TLS certificate chain (PEM); enables STARTTLS. Repeatable, paired
    /// in order with --tls-key: each handshake uses the first certificate
    /// valid for the name the client asks for (SNI), else the first. On
    /// SIGHUP every pair is re-read (new handshakes use the new files;
    /// a pair that fails to load keeps its old certificate), with the
    /// --auth, --oauth-tokens and --relay-auth-file files.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Vec<PathBuf>,
    /// TLS private key (PEM) of the --tls-cert in the same position.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Vec<PathBuf>,
    /// Refuse mail transactions before STARTTLS.
    #[arg(long)]
    pub require_tls: bool,
    /// Users for AUTH: lines `user:password`, or
    /// `user:SCRAM-SHA-256$iterations:salt$storedkey:serverkey` (base64
    /// parts; no password kept: SCRAM, PLAIN and LOGIN work, CRAM-MD5 does
    /// not). Offered after TLS only.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// The SASL mechanisms AUTH offers, comma-separated, from PLAIN, LOGIN,
    /// SCRAM-SHA-256, SCRAM-SHA-256-PLUS (offered under TLS 1.3 only),
    /// CRAM-MD5 (needs plain passwords), XOAUTH2, OAUTHBEARER (tokens from
    /// --oauth-tokens). Default: PLAIN,LOGIN,SCRAM-SHA-256,SCRAM-SHA-256-PLUS,
    /// plus XOAUTH2,OAUTHBEARER with --oauth-tokens.
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "auth")]
    pub auth_mechanisms: Vec<String>,
    /// Bearer tokens XOAUTH2 and OAUTHBEARER accept: lines `user:token`.
    #[arg(long, value_name = "FILE", requires = "auth")]
    pub oauth_tokens: Option<PathBuf>,
    /// Failed AUTH attempts per client IP per minute before AUTH gets
    /// `454 4.7.0` unchecked; each failure also delays the client's next
    /// command (1 s, doubled per failure, 30 s at most). 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_auth_failures: u32,
    /// Offer AUTH on plaintext connections too.
    #[arg(long, requires = "auth")]
    pub auth_insecure: bool,
    /// Refuse mail until the client authenticated.
    #[arg(long, requires = "auth")]
    pub require_auth: bool,
    /// Speak LMTP (RFC 2033) instead of SMTP.
    #[arg(long)]
    pub lmtp: bool,
    /// Expect a HAProxy PROXY protocol header on every connection.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Believe the PROXY header only from peers in this network
    /// (repeatable; CIDR, e.g. 10.0.0.5/32); others are closed as for a
    /// missing header. Default: from any peer.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
    pub proxy_from: Vec<crate::accept::Cidr>,
    /// Offer and accept XCLIENT (Postfix) from clients in this network
    /// (repeatable; CIDR): a front proxy such as nginx's mail proxy passes
    /// the real client's NAME, ADDR, PORT, PROTO, HELO, LOGIN, DESTADDR and
    /// DESTPORT, and the session restarts with a 220 greeting as that
    /// client (its address then decides relaying, rate limits and the
    /// Received header). Anyone else gets `550 5.7.0`.
    #[arg(long, value_name = "CIDR")]
    pub xclient_from: Vec<crate::accept::Cidr>,
    /// Offer and accept XFORWARD (Postfix) from clients in this network
    /// (repeatable; CIDR): the original client's NAME, ADDR, PORT, PROTO,
    /// HELO, IDENT and SOURCE are recorded for the next transaction, shown
    /// in the Received header and to the handler. Anyone else gets `550 5.7.0`.
    #[arg(long, value_name = "CIDR")]
    pub xforward_from: Vec<crate::accept::Cidr>,
    /// Relay to this upstream SMTP server (`host:port`, or `unix:PATH` for
    /// a Unix-domain socket): every recipient without a local store, or
    /// outside the served domains with one.
    /// No open relay: recipients outside the --domain list (`*` counts as
    /// none here) are relayed only for loopback and Unix-socket clients,
    /// --relay-from-network networks and authenticated sessions (the PROXY
    /// protocol's source address is the client's); others get 550 5.7.1.
    /// STARTTLS to the upstream is used whenever it is offered.
    #[arg(long, value_name = "HOST:PORT|unix:PATH")]
    pub relay: Option<String>,
    /// The --relay upstream speaks LMTP (a mail store such as Dovecot's
    /// `lmtp`: LHLO, one reply per recipient after the body). Each RCPT
    /// gets the store's own reply. With --lmtp each recipient gets the
    /// store's own answer to the body; an SMTP client's transaction that
    /// relays holds that one recipient only (later RCPTs, relayed or
    /// local, get `452 4.5.3` and are retried in a new transaction), so
    /// the store's answer to the body is that recipient's and nothing is
    /// delivered twice.
    #[arg(long, requires = "relay")]
    pub relay_lmtp: bool,
    /// Require STARTTLS to the upstream (no clear-text fallback; the
    /// certificate is not checked unless --relay-tls-verify).
    #[arg(long, requires = "relay")]
    pub relay_starttls: bool,
    /// Never use STARTTLS to the upstream (by default it is used whenever
    /// the upstream offers it).
    #[arg(long, requires = "relay", conflicts_with_all = ["relay_starttls", "relay_tls_verify"])]
    pub relay_no_starttls: bool,
    /// Check the upstream's certificate (against the CA PEM file given, or
    /// the Mozilla roots). Implies --relay-starttls.
    #[arg(long, value_name = "CA", num_args = 0..=1, requires = "relay")]
    pub relay_tls_verify: Option<Option<PathBuf>>,
    /// Authenticate to the upstream (AUTH PLAIN/LOGIN), `user:password`.
    /// Any user on the machine can read it in the process list: prefer
    /// --relay-auth-file.
    #[arg(long, value_name = "USER:PASS", requires = "relay")]
    pub relay_auth: Option<String>,
    /// Authenticate to the upstream with the `user:password` on the first
    /// line of this file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "relay",
        conflicts_with = "relay_auth"
    )]
    pub relay_auth_file: Option<PathBuf>,
    /// Send the upstream credentials even on a connection without TLS
    /// (by default they go only inside TLS, and --relay-auth with
    /// --relay-no-starttls is refused).
    #[arg(long, requires = "relay")]
    pub relay_auth_insecure: bool,
    /// Clients in this network may relay to any domain (repeatable; CIDR,
    /// e.g. 10.0.0.0/8). Authenticated clients always may.
    #[arg(long, value_name = "CIDR", requires = "relay")]
    pub relay_from_network: Vec<crate::accept::Cidr>,
    /// Let clients in this network in (repeatable; CIDR, e.g.
    /// 192.0.2.0/24). With any --allow, clients outside every --allow
    /// network are refused. The most specific --allow or --deny network
    /// containing a client decides (deny on a tie). Refused clients get
    /// `554 5.7.1` as their greeting (then `503` to all but QUIT). The
    /// PROXY header's or XCLIENT's client is judged; Unix-socket clients
    /// are always let in.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<crate::accept::Cidr>,
    /// Refuse clients in this network at connect with `554 5.7.1`
    /// (repeatable; CIDR; see --allow).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<crate::accept::Cidr>,
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9090): sessions, refused connections, TLS handshakes,
    /// AUTH results, messages, bytes, recipients, relay and fsync times.
    /// Give a loopback or internal address: the exporter takes a thread
    /// per open connection.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log: tracing::Level,
}

/// A problem with the flags or the files they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

fn err(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

/// Where messages go.
#[derive(Debug)]
pub enum Store {
    /// Print them (the default).
    Debug(DebugHandler),
    /// Discard them.
    Sink(SinkHandler),
    /// Maildir per recipient.
    Maildir(MaildirHandler),
    /// One mbox file.
    Mbox(MboxHandler),
}

impl Handler for Store {
    fn wants_trace(&self) -> bool {
        match self {
            Store::Debug(h) => h.wants_trace(),
            Store::Sink(h) => h.wants_trace(),
            Store::Maildir(h) => h.wants_trace(),
            Store::Mbox(h) => h.wants_trace(),
        }
    }

    async fn rcpt(&self, s: &SessionInfo, e: &Envelope, to: &Recipient) -> Decision {
        match self {
            Store::Debug(h) => h.rcpt(s, e, to).await,
            Store::Sink(h) => h.rcpt(s, e, to).await,
            Store::Maildir(h) => h.rcpt(s, e, to).await,
            Store::Mbox(h) => h.rcpt(s, e, to).await,
        }
    }

    async fn body(&self, s: &SessionInfo, e: &Envelope, m: &Message) -> Body {
        match self {
            Store::Debug(h) => h.body(s, e, m).await,
            Store::Sink(h) => h.body(s, e, m).await,
            Store::Maildir(h) => h.body(s, e, m).await,
            Store::Mbox(h) => h.body(s, e, m).await,
        }
    }

    async fn message(&self, s: &SessionInfo, e: &Envelope, m: &Arc<Message>) -> MessageDecision {
        match self {
            Store::Debug(h) => h.message(s, e, m).await,
            Store::Sink(h) => h.message(s, e, m).await,
            Store::Maildir(h) => h.message(s, e, m).await,
            Store::Mbox(h) => h.message(s, e, m).await,
        }
    }
}

/// The handler `smtpd` runs: the access list, rate limits per client, a
/// user list for AUTH, then served domains routed to a local store or an
/// upstream relay.
pub type CliHandler = AccessList<RateLimit<PasswordAuth<Router<Store>>>>;

/// Builds the `smtpd` handler: `store` for `domains` (no relay), AUTH
/// `users` (name → password).
pub fn cli_handler(
    domains: Vec<String>,
    store: Store,
    users: HashMap<String, String>,
) -> CliHandler {
    let router = Router::new(domains, Some(store), None, Vec::new());
    let limits = RateLimit::new(
        PasswordAuth::new(users, router),
        RateLimits::default(),
        Arc::default(),
    );
    AccessList::new(AccessRules::default(), limits)
}

/// The upstream `--relay*` flags describe, if any.
fn relay_upstream(
    a: &Args,
    hello_name: &str,
    timeout: Duration,
) -> Result<Option<Upstream>, CliError> {
    let Some(address) = &a.relay else {
        return Ok(None);
    };
    let valid = match crate::dial::unix_path(address) {
        Some(path) => !path.as_os_str().is_empty(),
        None => (address.rsplit_once(':'))
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
    };
    if !valid {
        return Err(err(format!(
            "--relay {address}: expected HOST:PORT or unix:PATH"
        )));
    }
    let mut up = Upstream::new(address.clone(), hello_name.to_owned());
    up.lmtp = a.relay_lmtp;
    up.timeout = timeout;
    up.tls = match &a.relay_tls_verify {
        Some(ca) => UpstreamTls::verify(ca.as_deref())
            .map_err(|e| err(format!("--relay-tls-verify: {e}")))?,
        None if a.relay_starttls => UpstreamTls::Encrypt,
        None if a.relay_no_starttls => UpstreamTls::None,
        None => UpstreamTls::Opportunistic,
    };
    up.auth_insecure = a.relay_auth_insecure;
    let auth = match (&a.relay_auth, &a.relay_auth_file) {
        (Some(auth), _) => Some(("--relay-auth", parse_relay_auth("--relay-auth", auth)?)),
        (None, Some(path)) => Some(("--relay-auth-file", read_relay_auth(path)?)),
        (None, None) => None,
    };
    if let Some((flag, auth)) = auth {
        up.auth = Some(Swap::shared(auth));
        if a.relay_no_starttls && !a.relay_auth_insecure {
            return Err(err(format!(
                "{flag} with --relay-no-starttls would send the credentials in clear text: \
                 drop --relay-no-starttls, or add --relay-auth-insecure"
            )));
        }
    }
    Ok(Some(up))
}

/// `USER:PASS` as upstream credentials; `what` names the source in errors.
fn parse_relay_auth(what: &str, line: &str) -> Result<ClientAuth, CliError> {
    match line.split_once(':') {
        Some((user, pass)) => Ok(ClientAuth::new(user, pass)),
        None => Err(err(format!("{what}: expected USER:PASS"))),
    }
}

/// The upstream credentials on the first line of `--relay-auth-file`.
fn read_relay_auth(path: &Path) -> Result<ClientAuth, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("--relay-auth-file {}: {e}", path.display())))?;
    let first = text.lines().next().unwrap_or("");
    parse_relay_auth(&format!("--relay-auth-file {}", path.display()), first)
}

/// Everything `smtpd` needs to start, built from [`Args`] before binding.
#[derive(Debug)]
pub struct Setup {
    /// The handler.
    pub handler: CliHandler,
    /// The server: configuration, listeners, TLS, limits, grace period
    /// (every adapter's `Server::options` takes it).
    pub options: ServerOptions,
    /// Threads to run sessions on (`--threads`; default one per CPU; 0
    /// counts as 1).
    pub threads: usize,
    /// The `/metrics` endpoint (`--metrics`), serving from the moment the
    /// flags are checked until the `Setup` (or this field) is dropped:
    /// every adapter's `smtpd` keeps it for its whole run.
    pub metrics: Option<crate::metrics::MetricsServer>,
}

impl Setup {
    /// Checks the flags and reads the certificate, key and user files
    /// (no inherited socket: [`Setup::with_sockets`]).
    pub fn from_args(a: &Args) -> Result<Setup, CliError> {
        Setup::with_sockets(a, Vec::new())
    }

    /// Like [`Setup::from_args`], serving `inherited` sockets too
    /// ([`inherited_sockets`]: socket activation, `--inetd`), after the
    /// `--listen*` ones; with any, there is no default `--listen`.
    pub fn with_sockets(a: &Args, inherited: Vec<InheritedSocket>) -> Result<Setup, CliError> {
        let mut config = Config::new(a.hostname.clone().unwrap_or_else(local_hostname));
        config.lmtp = a.lmtp;
        config.proxy_protocol = a.proxy_protocol;
        config.require_tls = a.require_tls;
        if let Some(n) = a.max_size {
            config.limits.max_message_size = n;
        }
        if let Some(n) = a.max_recipients {
            config.limits.max_recipients = n.max(1);
        }
        if let Some(n) = a.junk_command_limit {
            config.limits.junk_command_limit = if n == 0 { u32::MAX } else { n };
        }
        if let Some(ms) = a.error_delay_ms {
            config.limits.error_delay = Duration::from_millis(ms);
        }
        if let Some(t) = a.timeout {
            if t == 0 {
                return Err(err("--timeout must be at least 1 second"));
            }
            // Every wait for the client, DATA included (issue 12 item 21).
            config.timeouts.command = Duration::from_secs(t);
            config.timeouts.data = Duration::from_secs(t);
        }
        if let Some(t) = a.data_timeout {
            if t == 0 {
                return Err(err("--data-timeout must be at least 1 second"));
            }
            config.timeouts.data = Duration::from_secs(t);
        }
        let mut reload = Reloader::default();
        let tls = match (a.tls_cert.len(), a.tls_key.len()) {
            (0, 0) => None,
            (c, k) if c == k => {
                let pairs = a.tls_cert.iter().cloned().zip(a.tls_key.iter().cloned());
                let certs = Certificates::from_files(pairs).map_err(err)?;
                reload = reload.with(certs.clone());
                Some(certs.server_config())
            }
            (c, k) => {
                return Err(err(format!(
                    "{c} --tls-cert but {k} --tls-key: give them in pairs"
                )));
            }
        };
        if tls.is_none() && (a.require_tls || !a.listen_tls.is_empty()) {
            return Err(err(
                "--require-tls and --listen-tls need --tls-cert and --tls-key",
            ));
        }
        config.forwarding.xclient_from.clone_from(&a.xclient_from);
        config.forwarding.xforward_from.clone_from(&a.xforward_from);
        // Shared cells: SIGHUP swaps new user and token lists in.
        let users = Swap::shared(Users::from_passwords(std::iter::empty()));
        let tokens = Swap::shared(HashMap::new());
        config.auth.max_failures = a.max_auth_failures;
        if let Some(path) = &a.auth {
            if tls.is_none() && !a.auth_insecure {
                return Err(err(
                    "--auth needs TLS (--tls-cert/--tls-key) or --auth-insecure",
                ));
            }
            users.set(load_users(path)?);
            if let Some(path) = &a.oauth_tokens {
                tokens.set(load_tokens(path)?);
                reload = reload.with(Arc::new(FileReload::new(
                    "--oauth-tokens",
                    path,
                    tokens.clone(),
                    |p| load_tokens(p).map_err(|e| e.0),
                )));
            }
            config.auth.mechanisms =
                auth_mechanisms(&a.auth_mechanisms, &users.get(), !tokens.get().is_empty())?;
            // The mechanisms stay as started: a reloaded list must still
            // serve them (CRAM-MD5 needs every password in clear).
            let cram = config.auth.mechanisms.contains(&Mechanism::CramMd5);
            reload = reload.with(Arc::new(FileReload::new(
                "--auth",
                path,
                users.clone(),
                move |p| {
                    let users = read_users(p).map_err(|e| e.0)?;
                    if users.is_empty() {
                        tracing::warn!(file = %p.display(), "--auth names no user: every AUTH fails");
                    }
                    if cram && !users.all_have_passwords() {
                        return Err("CRAM-MD5 is offered: every user needs a plain password".into());
                    }
                    Ok(users)
                },
            )));
            config.auth.allow_plaintext = a.auth_insecure;
            config.auth.required = a.require_auth;
        }
        if a.inetd && a.maildir.is_none() && a.mbox.is_none() && !a.sink && a.relay.is_none() {
            return Err(err(
                "--inetd: the debug store prints messages to standard output, which is the \
                 socket: give --maildir, --mbox, --sink or --relay",
            ));
        }
        let store = if let Some(dir) = &a.maildir {
            Store::Maildir(MaildirHandler::new(dir))
        } else if let Some(file) = &a.mbox {
            Store::Mbox(MboxHandler::new(file))
        } else if a.sink {
            Store::Sink(SinkHandler)
        } else {
            Store::Debug(DebugHandler::stdout())
        };
        let upstream = relay_upstream(a, &config.hostname, config.timeouts.command)?;
        if let (Some(up), Some(path)) = (&upstream, &a.relay_auth_file) {
            if let Some(cell) = &up.auth {
                let file = FileReload::new("--relay-auth-file", path, cell.clone(), |p| {
                    read_relay_auth(p).map_err(|e| e.0)
                });
                reload = reload.with(Arc::new(file));
            }
        }

        // With a relay, only a Maildir or mbox is a local store.
        let local = match (&upstream, &store) {
            (Some(_), Store::Debug(_) | Store::Sink(_)) => None,
            _ => Some(store),
        };
        let router = Router::new(
            a.domain.clone(),
            local,
            upstream,
            a.relay_from_network.clone(),
        );
        let mut listen: Vec<Listen> = (a.listen.iter().copied().map(Listen::Tcp))
            .chain(a.listen_tls.iter().copied().map(Listen::Tls))
            .chain(a.listen_unix.iter().cloned().map(Listen::Unix))
            .chain(inherited.into_iter().map(Listen::Inherited))
            .collect();
        if listen.is_empty() {
            listen.push(Listen::Tcp(DEFAULT_LISTEN));
        }
        let defaults = ServerOptions::default();
        // Last: nothing serves unless every flag was good.
        let metrics = a
            .metrics
            .map(crate::metrics::serve)
            .transpose()
            .map_err(|e| err(format!("--metrics: {e}")))?;
        Ok(Setup {
            metrics,
            handler: AccessList::new(
                AccessRules::new(a.allow.clone(), a.deny.clone()),
                RateLimit::new(
                    PasswordAuth::with_shared_users(users, router).with_shared_tokens(tokens),
                    RateLimits {
                        connections: a.max_connection_rate,
                        messages: a.max_message_rate,
                        recipients: a.max_recipient_rate,
                    },
                    Arc::default(),
                ),
            ),
            options: ServerOptions {
                config: Arc::new(config),
                listen,
                tls,
                max_connections: a.max_connections.unwrap_or(defaults.max_connections),
                max_connections_per_ip: a.max_connections_per_ip,
                grace_period: a
                    .grace_period
                    .map_or(defaults.grace_period, Duration::from_secs),
                unix_mode: a.listen_unix_mode,
                proxy_from: a.proxy_from.clone(),
                reload,
            },
            threads: a
                .threads
                .or_else(|| std::thread::available_parallelism().ok())
                .map_or(1, std::num::NonZeroUsize::get),
        })
    }

    /// Parses the process's arguments, starts logging to stderr at
    /// `--log`, and checks the flags and files. On an error, prints it and
    /// returns exit code 2 (bad flags exit with 2 inside clap already), so
    /// `main` can `return` it before binding anything.
    ///
    /// Takes the inherited sockets ([`inherited_sockets`]). Under `--inetd`
    /// with standard error on the socket too, nothing is logged (nor
    /// printed on a panic): it would go to the client.
    pub fn from_env() -> Result<Setup, ExitCode> {
        SignalWatch::catch_early_hangups();
        let args = <Args as clap::Parser>::parse();
        if args.inetd && crate::activation::stderr_is_stdin() {
            std::panic::set_hook(Box::new(|_| {}));
        } else {
            init_logging(args.log);
        }
        let fail = |e: &dyn fmt::Display| {
            tracing::error!("smtpd: {e}");
            ExitCode::from(2)
        };
        let inherited = inherited_sockets(&args).map_err(|e| fail(&e))?;
        Setup::with_sockets(&args, inherited).map_err(|e| fail(&e))
    }
}

/// Where `smtpd` listens when no `--listen*` flag is given and no socket
/// is inherited.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    2525,
));

/// The sockets `smtpd` serves besides its `--listen*` ones: those systemd
/// handed over ([`activation::systemd_sockets`]: `LISTEN_PID` this
/// process, `LISTEN_FDS`, `LISTEN_FDNAMES`), then with `--inetd`
/// standard input ([`activation::stdin_socket`], serving SMTP). Takes file
/// descriptors: call it once.
pub fn inherited_sockets(a: &Args) -> std::io::Result<Vec<InheritedSocket>> {
    let mut sockets = activation::systemd_sockets()?;
    if a.inetd {
        sockets.push(activation::stdin_socket(activation::Protocol::Smtp)?);
    }
    for s in &sockets {
        tracing::debug!(
            protocol = s.protocol().name(),
            listener = s.is_listener(),
            local = ?s.local_addr(),
            "inherited socket"
        );
    }
    Ok(sockets)
}

/// An octal file mode (`0660`, `660`, `0o660`) for --listen-unix-mode.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?}: expected an octal mode such as 0660")),
    }
}

/// Logs to stderr at `level` (ANSI colours only on a terminal).
pub fn init_logging(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(level)
        .try_init();
}

/// The process's exit code for a server run's result (errors logged).
pub fn exit_code(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("smtpd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs one `listening addr=…` line per bound address (scripts and tests
/// read the OS-picked ports from these lines).
pub fn log_listening(addrs: &[SocketAddr]) {
    for addr in addrs {
        tracing::info!(%addr, "listening");
    }
}

/// A thread that acts on signals (SIGHUP for reloads; the blocking
/// adapter's SIGINT and SIGTERM too) until dropped: the one way every
/// adapter's `smtpd` gets them, and reloads run off the runtime's threads
/// (they read files).
#[derive(Debug)]
pub struct SignalWatch {
    #[cfg(unix)]
    handle: signal_hook::iterator::Handle,
    #[cfg(unix)]
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Set by a SIGHUP from [`SignalWatch::catch_early_hangups`] on.
#[cfg(unix)]
static EARLY_HANGUP: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// The signals a [`SignalWatch`] takes (POSIX numbers).
#[cfg(unix)]
pub use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

impl SignalWatch {
    /// Calls `on` with each of `signals` received, until it returns
    /// `false` or the watch is dropped.
    #[cfg(unix)]
    pub fn new(
        signals: &[i32],
        mut on: impl FnMut(i32) -> bool + Send + 'static,
    ) -> std::io::Result<SignalWatch> {
        let mut signals = signal_hook::iterator::Signals::new(signals)?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("smtpd-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if !on(sig) {
                        break;
                    }
                }
            })?;
        Ok(SignalWatch {
            handle,
            thread: Some(thread),
        })
    }

    /// From now on a SIGHUP no longer ends the process (its default
    /// action): one that comes while the server starts (reading its
    /// certificates, say: a renewal's deploy hook may send it then) is
    /// remembered, and [`SignalWatch::reload_on_hangup`] reloads for it
    /// once the server runs. [`Setup::from_env`] calls it first thing.
    pub fn catch_early_hangups() {
        #[cfg(unix)]
        if let Err(e) =
            signal_hook::flag::register(SIGHUP, EARLY_HANGUP.get_or_init(Default::default).clone())
        {
            tracing::warn!(error = %e, "cannot catch SIGHUP during start-up");
        }
    }

    /// Reloads through `reload` on each SIGHUP (logged; failures keep the
    /// old values and are logged by the reloader), and once at once for
    /// a SIGHUP that came during start-up ([`SignalWatch::catch_early_hangups`]).
    /// A failure to watch is logged, not fatal: the server runs without
    /// reloads.
    pub fn reload_on_hangup(reload: impl Fn() + Send + Sync + 'static) -> Option<SignalWatch> {
        #[cfg(unix)]
        let reload = Arc::new(reload);
        #[cfg(unix)]
        match SignalWatch::new(&[SIGHUP], {
            let reload = reload.clone();
            move |_| {
                tracing::info!("SIGHUP: reloading");
                reload();
                true
            }
        }) {
            Ok(w) => {
                let early = EARLY_HANGUP
                    .get()
                    .is_some_and(|f| f.swap(false, std::sync::atomic::Ordering::SeqCst));
                if early {
                    tracing::info!("SIGHUP during start-up: reloading");
                    reload();
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; no reloads");
                None
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reload;
            None
        }
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            self.handle.close();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Reads the `--auth` file ([`Users::parse`]: `user:password` or
/// `user:SCRAM-SHA-256$…` lines, blank lines and `#` comments skipped);
/// at start it must name a user.
pub fn load_users(path: &Path) -> Result<Users, CliError> {
    let users = read_users(path)?;
    if users.is_empty() {
        return Err(err(format!("no users in {}", path.display())));
    }
    Ok(users)
}

/// [`load_users`] without the check that a user is named: a reloaded file
/// emptied on purpose revokes everyone.
fn read_users(path: &Path) -> Result<Users, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read auth file {}: {e}", path.display())))?;
    Users::parse(&text, &path.display().to_string()).map_err(err)
}

/// The mechanisms `--auth-mechanisms` names, or the default: PLAIN, LOGIN
/// and SCRAM (which every user store can serve), and the OAuth ones when
/// tokens are given. CRAM-MD5 needs every user's plain password, the OAuth
/// ones `--oauth-tokens`.
fn auth_mechanisms(
    names: &[String],
    users: &Users,
    tokens: bool,
) -> Result<Vec<Mechanism>, CliError> {
    use Mechanism::*;
    if names.is_empty() {
        let mut m = vec![Plain, Login, ScramSha256, ScramSha256Plus];
        if tokens {
            m.extend([XOAuth2, OAuthBearer]);
        }
        return Ok(m);
    }
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let m = Mechanism::from_name(name)
            .ok_or_else(|| err(format!("--auth-mechanisms: unknown mechanism {name:?}")))?;
        if m == CramMd5 && !users.all_have_passwords() {
            return Err(err(
                "--auth-mechanisms CRAM-MD5 needs plain passwords in --auth for every user",
            ));
        }
        if matches!(m, XOAuth2 | OAuthBearer) && !tokens {
            return Err(err(format!(
                "--auth-mechanisms {}: needs --oauth-tokens",
                m.name()
            )));
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Reads `--oauth-tokens`: `user:token` lines (blank lines and `#`
/// comments skipped).
pub fn load_tokens(path: &Path) -> Result<HashMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read token file {}: {e}", path.display())))?;
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, token)) = line.split_once(':') else {
            return Err(err(format!(
                "{}:{}: expected user:token",
                path.display(),
                i + 1
            )));
        };
        tokens.insert(token.to_owned(), user.to_owned());
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    /// Issue 16 review: a SIGHUP while `smtpd` starts does not end it; the
    /// server reloads for it once it runs.
    #[cfg(unix)]
    #[test]
    fn a_hangup_during_start_up_reloads_once_the_server_runs() {
        SignalWatch::catch_early_hangups();
        signal_hook::low_level::raise(SIGHUP).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _watch = SignalWatch::reload_on_hangup(move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("reloaded for the SIGHUP that came first");
    }

    #[test]
    fn relay_auth_from_a_file() {
        let dir = std::env::temp_dir().join(format!("smtpd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auth");
        std::fs::write(&file, "relay:s3cret:with colon\n").unwrap();
        let relay = ["smtpd", "--sink", "--relay", "127.0.0.1:25"];
        let a = Args::try_parse_from(
            relay
                .into_iter()
                .chain(["--relay-auth-file", file.to_str().unwrap()]),
        )
        .unwrap();
        let up = relay_upstream(&a, "mx.example", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let auth = up.auth.unwrap().get();
        assert_eq!(auth.username, "relay");
        assert_eq!(auth.password.expose(), "s3cret:with colon");
        // Both at once, a file without a colon, a missing file: refused.
        assert!(
            Args::try_parse_from(relay.into_iter().chain([
                "--relay-auth",
                "a:b",
                "--relay-auth-file",
                "x"
            ]))
            .is_err()
        );
        std::fs::write(&file, "no colon\n").unwrap();
        assert!(relay_upstream(&a, "mx.example", Duration::from_secs(5)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        let a = Args::try_parse_from(
            relay
                .into_iter()
                .chain(["--relay-auth-file", "/nonexistent/auth"]),
        )
        .unwrap();
        assert!(relay_upstream(&a, "mx.example", Duration::from_secs(5)).is_err());
    }

    /// `--relay` takes `HOST:PORT` or `unix:PATH` (issue 17), `--relay-lmtp`
    /// makes it an LMTP upstream.
    #[test]
    fn relay_addresses() {
        let upstream = |addr: &str, extra: &[&str]| {
            let base = ["smtpd", "--sink", "--relay", addr];
            let a = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            relay_upstream(&a, "mx.example", Duration::from_secs(5)).map(Option::unwrap)
        };
        for good in [
            "127.0.0.1:25",
            "mx.example:24",
            "[::1]:25",
            "unix:/run/lmtp",
        ] {
            assert!(upstream(good, &[]).is_ok(), "{good}");
        }
        for bad in ["unix:", "mx.example", ":25", "mx.example:port"] {
            assert!(upstream(bad, &[]).is_err(), "{bad}");
        }
        assert!(!upstream("unix:/run/lmtp", &[]).unwrap().lmtp);
        assert!(upstream("unix:/run/lmtp", &["--relay-lmtp"]).unwrap().lmtp);
    }

    #[test]
    fn relay_credentials_only_inside_tls() {
        let base = [
            "smtpd",
            "--sink",
            "--relay",
            "127.0.0.1:25",
            "--relay-auth",
            "u:p",
        ];
        let a = Args::try_parse_from(base).unwrap();
        let up = relay_upstream(&a, "mx.example", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(matches!(up.tls, UpstreamTls::Opportunistic));
        assert!(!up.auth_insecure);
        let a = Args::try_parse_from(base.into_iter().chain(["--relay-no-starttls"])).unwrap();
        let e = Setup::from_args(&a).unwrap_err();
        assert!(e.to_string().contains("--relay-auth-insecure"), "{e}");
        let a = Args::try_parse_from(
            base.into_iter()
                .chain(["--relay-no-starttls", "--relay-auth-insecure"]),
        )
        .unwrap();
        let up = relay_upstream(&a, "mx.example", Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(matches!(up.tls, UpstreamTls::None));
        assert!(up.auth_insecure);
        assert!(
            Args::try_parse_from(
                base.into_iter()
                    .chain(["--relay-no-starttls", "--relay-starttls"])
            )
            .is_err()
        );
    }

    /// Inherited sockets replace the default --listen, come after the
    /// given --listen* ones; --inetd refuses the debug store (stdout is
    /// the socket) and the --listen* flags.
    #[test]
    fn inherited_sockets_and_inetd() {
        use crate::activation::{InheritedSocket, Protocol};
        let socket = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            InheritedSocket::new(l, Protocol::Submissions)
        };
        let a = Args::try_parse_from(["smtpd", "--sink"]).unwrap();
        let s = socket();
        let setup = Setup::with_sockets(&a, vec![s.clone()]).unwrap();
        assert_eq!(setup.options.listen, [Listen::Inherited(s.clone())]);
        // A submissions socket needs TLS.
        assert!(setup.options.check().is_err());
        let a = Args::try_parse_from(["smtpd", "--sink", "--listen", "127.0.0.1:0"]).unwrap();
        let setup = Setup::with_sockets(&a, vec![s.clone()]).unwrap();
        let local = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            setup.options.listen,
            [Listen::Tcp(local), Listen::Inherited(s)]
        );
        let a = Args::try_parse_from(["smtpd", "--inetd"]).unwrap();
        let e = Setup::with_sockets(&a, vec![socket()]).unwrap_err();
        assert!(e.to_string().contains("--inetd"), "{e}");
        for store in ["--sink", "--relay"] {
            let mut args = vec!["smtpd", "--inetd", store];
            if store == "--relay" {
                args.push("127.0.0.1:25");
            }
            let a = Args::try_parse_from(args).unwrap();
            assert!(Setup::with_sockets(&a, vec![socket()]).is_ok());
        }
        assert!(
            Args::try_parse_from(["smtpd", "--inetd", "--sink", "--listen", "127.0.0.1:1"])
                .is_err()
        );
    }

    /// Issue 12 item 21: --timeout bounds DATA too; --data-timeout apart.
    #[test]
    fn timeouts() {
        let setup = |args: &[&str]| {
            let a = Args::try_parse_from(["smtpd", "--sink"].iter().chain(args)).unwrap();
            Setup::from_args(&a).map(|s| s.options.config.timeouts.clone())
        };
        let secs = |c, d| (Duration::from_secs(c), Duration::from_secs(d));
        let t = setup(&[]).unwrap();
        assert_eq!((t.command, t.data), secs(300, 180));
        let t = setup(&["--timeout", "2"]).unwrap();
        assert_eq!((t.command, t.data), secs(2, 2));
        let t = setup(&["--timeout", "2", "--data-timeout", "9"]).unwrap();
        assert_eq!((t.command, t.data), secs(2, 9));
        let t = setup(&["--data-timeout", "9"]).unwrap();
        assert_eq!((t.command, t.data), secs(300, 9));
        assert!(setup(&["--data-timeout", "0"]).is_err());
    }

    #[test]
    fn flags() {
        let a = Args::try_parse_from([
            "smtpd",
            "--sink",
            "--max-size",
            "100",
            "--lmtp",
            "--timeout",
            "7",
        ])
        .unwrap();
        assert!(a.listen.is_empty());
        let s = Setup::from_args(&a).unwrap();
        assert_eq!(
            s.options.listen,
            [Listen::Tcp("127.0.0.1:2525".parse::<SocketAddr>().unwrap())]
        );
        assert!(s.options.config.lmtp);
        assert_eq!(s.options.config.limits.max_message_size, 100);
        assert_eq!(s.options.config.timeouts.command, Duration::from_secs(7));
        assert!(Args::try_parse_from(["smtpd", "--maildir", "x", "--mbox", "y"]).is_err());
        assert!(Args::try_parse_from(["smtpd", "--tls-cert", "x"]).is_err());
        let a = Args::try_parse_from(["smtpd", "--require-tls"]).unwrap();
        assert!(Setup::from_args(&a).is_err());
    }
}
