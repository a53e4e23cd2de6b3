//! The kit's [`Dial`] on threads: a handler's client connections (the
//! relay's upstream) are sockets driven on the session's own thread, by the
//! same [`Link`] that drives the sessions.

use std::cell::RefCell;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::client::{Client, ClientEvent};
use smtp_server::dial::{
    BoxFuture, ClientLink, Connecting, Dial, DialRequest, Dialer, connect_any, unix_path,
};

use crate::connection::Socket;

use crate::link::{Link, Stream, TlsSide};
use crate::stop::StopBus;

/// Opens blocking connections (each future completes on the thread that
/// polls it: the session's, under `block_on`).
struct ThreadDial;

static DIAL: ThreadDial = ThreadDial;

thread_local! {
    /// The stop bus of the server whose session runs its hooks on this
    /// thread now ([`under_server`]).
    static SERVER: RefCell<Option<Arc<StopBus>>> = const { RefCell::new(None) };
}

/// Runs `f` (a session's hooks) with links it opens watching `bus`.
pub(crate) fn under_server<T>(bus: Option<Arc<StopBus>>, f: impl FnOnce() -> T) -> T {
    let before = SERVER.with(|s| s.replace(bus));
    let out = f();
    SERVER.with(|s| *s.borrow_mut() = before);
    out
}

/// The dialer every session of this adapter gets.
pub(crate) fn dialer() -> Dialer {
    Dialer::new(&DIAL)
}

impl Dial for ThreadDial {
    fn connect(&'static self, req: DialRequest) -> Connecting {
        let limit = req.timeout;
        Box::pin(async move {
            #[cfg(unix)]
            if let Some(path) = unix_path(&req.address) {
                return Ok(client_link(connect_unix(path, limit)?, req));
            }
            let connect = |a| std::future::ready(TcpStream::connect_timeout(&a, limit));
            let tcp = connect_any(&req.address, connect).await?;
            let _ = tcp.set_nodelay(true);
            Ok(client_link(tcp, req))
        })
    }
}

/// Connects to the Unix-domain socket at `path`, waiting at most `limit`
/// for room in its backlog (a busy mail store's): Linux bounds a Unix
/// `connect` by the socket's send timeout.
#[cfg(unix)]
fn connect_unix(
    path: &std::path::Path,
    limit: std::time::Duration,
) -> io::Result<std::os::unix::net::UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(limit).filter(|l| !l.is_zero()))?;
    socket.connect(&SockAddr::unix(path)?)?;
    socket.set_write_timeout(None)?;
    Ok(std::os::unix::net::UnixStream::from(
        std::os::fd::OwnedFd::from(socket),
    ))
}

/// The client `req` describes, driven over `socket` on the polling thread,
/// watching the stop bus of the server whose session opened it.
fn client_link<S: Socket + Send + 'static>(socket: S, req: DialRequest) -> Box<dyn ClientLink> {
    let client = Client::new(req.client, Instant::now());
    let mut link = Link::new(Stream::Plain(socket), client, req.timeout);
    link.set_tls(req.tls.map(|t| TlsSide::Connect(t.config, t.name)));
    link.bus = SERVER.with(|s| s.borrow().clone());
    Box::new(link)
}

impl<S: Socket + Send + 'static> ClientLink for Link<S, Client> {
    fn client(&mut self) -> &mut Client {
        &mut self.machine
    }

    fn next_event(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
        // Polled by the session's own `block_on` (no nested executor).
        Box::pin(smtp_server::link::next_event(self))
    }

    fn until_body(&mut self) -> BoxFuture<'_, io::Result<Option<ClientEvent>>> {
        Box::pin(smtp_server::link::next_event_unless(
            self,
            Client::wants_body,
        ))
    }

    fn flush(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(std::future::ready(Link::flush(self)))
    }

    fn close(mut self: Box<Self>) {
        // QUIT is written (a few bytes into the socket buffer), its reply
        // not awaited: a closing upstream never holds up the session's thread.
        if self.machine.quit(Instant::now()).is_ok() {
            let _ = Link::flush(&mut self);
        }
    }
}
