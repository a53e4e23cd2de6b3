//! How a handler reaches another server from inside a session, on the
//! session's own runtime: the relay's upstream, a content filter, an LMTP
//! store.
//!
//! Each adapter's connection puts its [`Dialer`] in
//! [`SessionInfo::dialer`](crate::handler::SessionInfo::dialer): on tokio
//! and smol the upstream connection is a task-free [`Link`] driven inside
//! the hook's own future (no thread, no thread-pool hop per I/O); on
//! `smtp-blocking` it is a socket driven on the session's own thread.
//! Either way a [`Client`] is driven by the same
//! [drive loop](smtp_proto::drive#the-drive-loop) as the server's sessions.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use smtp_proto::client::{Client, ClientConfig, ClientEvent};

use crate::link::{Link, Stream, TlsSide};
use crate::runtime::{Runtime, StreamIo, timeout};

/// A boxed future (the [`Dial`] traits are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// TLS settings for a client's STARTTLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls client configuration (roots, verification).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub name: ServerName<'static>,
}

/// A connection to open, and the client to drive over it.
#[derive(Debug)]
pub struct DialRequest {
    /// `host:port` (each address the name resolves to is tried in turn),
    /// or `unix:PATH` for a Unix-domain socket (an LMTP store's, say).
    pub address: String,
    /// Bounds each connection attempt, every write and the TLS handshake
    /// (the client's own timeouts bound its waits for replies).
    pub timeout: Duration,
    /// The client's configuration (TLS policy, AUTH, LMTP, …); the client
    /// starts once connected, so its greeting timeout counts from then.
    pub client: ClientConfig,
    /// The STARTTLS settings, when the client may ask for it.
    pub tls: Option<ClientTls>,
}

/// What [`Dial::connect`] returns.
pub type Connecting = BoxFuture<'static, io::Result<Box<dyn ClientLink>>>;

/// Opens client connections on some runtime.
pub trait Dial: Send + Sync + 'static {
    /// Connects as `request` says and returns its client driven over the
    /// new connection.
    fn connect(&'static self, request: DialRequest) -> Connecting;
}

/// A [`Client`] with its connection, driven on the runtime that opened it.
pub trait ClientLink: Send {
    /// The client, to queue commands ([`Client::send_mail`], …).
    fn client(&mut self) -> &mut Client;
    /// Does I/O until the client has an event (STARTTLS done inside);
    /// `None` once the client closed and its last bytes are written.
    fn next_event(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>>;
    /// [`ClientLink::next_event`], returning `None` as well once the
    /// client takes more body ([`Client::wants_body`]): BDAT chunk replies
    /// make room for more of it without an event.
    fn until_body(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>>;
    /// Writes what the client holds.
    fn flush(&mut self) -> BoxFuture<'_, io::Result<()>>;
    /// Ends the session without holding up the caller: QUIT where the
    /// client is still in step, then the connection closes. On an async
    /// runtime a task of its own (smol: its global executor) awaits the
    /// reply up to [`QUIT_WAIT`]; on threads QUIT is written, not awaited.
    fn close(self: Box<Self>);
}

/// The [`Dial`] of a session's runtime, as handlers see it.
#[derive(Clone, Copy)]
pub struct Dialer(&'static dyn Dial);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

impl Dialer {
    /// A dialer from a [`Dial`] that lives for the whole program (a
    /// `static`, or a unit struct).
    pub const fn new(dial: &'static dyn Dial) -> Dialer {
        Dialer(dial)
    }

    /// The dialer of the async runtime `R`.
    pub fn of<R: Runtime>() -> Dialer {
        Dialer(&RuntimeDial::<R>(PhantomData))
    }
}

impl Dialer {
    /// Connects as `request` says ([`Dial::connect`]).
    pub fn connect(self, request: DialRequest) -> Connecting {
        self.0.connect(request)
    }
}

/// The addresses `address` (`host:port`) names. A literal needs no
/// lookup; a name goes to the system resolver, which blocks, on a thread
/// of its own (once per connection, never on the runtime's workers).
pub async fn resolve(address: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (tx, rx) = futures_channel::oneshot::channel();
    let name = address.to_owned();
    std::thread::Builder::new()
        .name("smtp-resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(Iterator::collect));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the resolver thread ended"))?
}

/// The socket path of a `unix:PATH` address, `None` for `host:port`.
pub fn unix_path(address: &str) -> Option<&std::path::Path> {
    address.strip_prefix("unix:").map(std::path::Path::new)
}

/// Tries each address `address` names in turn with `connect` (which bounds
/// each attempt itself); the first connection, or the last error.
pub async fn connect_any<T, F: Future<Output = io::Result<T>>>(
    address: &str,
    mut connect: impl FnMut(SocketAddr) -> F,
) -> io::Result<T> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in resolve(address).await? {
        match connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// [`Dial`] for an async runtime: connections are [`Link`]s of `R`.
struct RuntimeDial<R>(PhantomData<fn() -> R>);

impl<R: Runtime> Dial for RuntimeDial<R> {
    fn connect(&'static self, req: DialRequest) -> Connecting {
        let limit = req.timeout;
        Box::pin(async move {
            #[cfg(unix)]
            if let Some(path) = unix_path(&req.address) {
                let unix = timeout::<R, _>(limit, R::connect_unix(path.to_owned()))
                    .await
                    .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))?;
                return Ok(client_link::<R, _>(unix, req));
            }
            let tcp = connect_any(&req.address, |a| async move {
                timeout::<R, _>(limit, R::connect_tcp(a))
                    .await
                    .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
            })
            .await?;
            Ok(client_link::<R, _>(tcp, req))
        })
    }
}

/// The client `req` describes, driven over `stream`.
fn client_link<R: Runtime, S>(stream: S, req: DialRequest) -> Box<dyn ClientLink>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send + 'static,
{
    let client = Client::new(req.client, Instant::now());
    let mut link = Link::<R, S, Client>::new(Stream::Plain(stream), client, req.timeout);
    link.set_tls(
        req.tls
            .map(|t| TlsSide::Connect(TlsConnector::from(t.config), t.name)),
    );
    Box::new(link)
}

/// How long a closing client waits for the reply to its QUIT.
pub const QUIT_WAIT: Duration = Duration::from_secs(5);

impl<R: Runtime, S> ClientLink for Link<R, S, Client>
where
    R::Io: StreamIo<S>,
    S: Unpin + Send + 'static,
{
    fn client(&mut self) -> &mut Client {
        self.machine_mut()
    }

    fn next_event(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
        Box::pin(Link::next_event(self))
    }

    fn until_body(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
        Box::pin(crate::link::next_event_unless(self, Client::wants_body))
    }

    fn flush(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(Link::flush(self))
    }

    fn close(mut self: Box<Self>) {
        R::default().spawn(async move {
            let _ = self.machine_mut().quit(Instant::now());
            let _ = timeout::<R, _>(QUIT_WAIT, async {
                while let Ok(Some(_)) = Link::next_event(&mut *self).await {}
            })
            .await;
        });
    }
}
