//! Serving sockets someone else opened: systemd socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) and inetd (the socket on
//! standard input).
//!
//! An [`InheritedSocket`] goes into [`ServerOptions::listen`] as
//! [`Listen::Inherited`]; every adapter's `bind` then serves it instead of
//! binding. It says what it serves ([`Protocol`]): plain SMTP (STARTTLS
//! when TLS is configured), implicit TLS (`submissions`) or LMTP. A
//! listening socket is served like a bound listener; a connected one
//! (inetd `nowait`, systemd `Accept=yes`) is served as one session, and a
//! server with nothing else to serve ends when that session does.
//!
//! [`systemd_sockets`] reads systemd's variables (fds 3, 4, … named
//! `smtp`, `submissions` or `lmtp` with `FileDescriptorName=`);
//! [`stdin_socket`] takes standard input (`smtpd --inetd`).
//!
//! [`ServerOptions::listen`]: crate::accept::ServerOptions::listen
//! [`Listen::Inherited`]: crate::accept::Listen::Inherited

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

/// What an inherited socket serves, by its systemd name
/// (`FileDescriptorName=`, `LISTEN_FDNAMES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// `smtp`: SMTP, with STARTTLS when TLS is configured. Unnamed and
    /// unknown sockets serve it too.
    #[default]
    Smtp,
    /// `submissions`: implicit TLS (RFC 8314), the handshake first; needs
    /// a TLS configuration.
    Submissions,
    /// `lmtp`: LMTP (RFC 2033), LHLO and one reply per recipient after
    /// the body.
    Lmtp,
}

impl Protocol {
    /// Every protocol, by its socket name.
    pub const NAMES: [(&'static str, Protocol); 3] = [
        ("smtp", Protocol::Smtp),
        ("submissions", Protocol::Submissions),
        ("lmtp", Protocol::Lmtp),
    ];

    /// The protocol a socket name stands for (`smtp`, `submissions`, `lmtp`).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
    }

    /// The socket name of this protocol.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submissions => "submissions",
            Protocol::Lmtp => "lmtp",
        }
    }
}

/// The protocol of each of `n` sockets named by `names` (`LISTEN_FDNAMES`:
/// colon-separated, in fd order). A missing or empty name, systemd's
/// default names (the socket unit's, `*.socket`, and `connection` for
/// `Accept=yes`) mean `smtp`; an unknown name means `smtp` too, with a
/// warning.
pub fn protocols(names: &str, n: usize) -> Vec<Protocol> {
    let mut names = names.split(':');
    (0..n)
        .map(|i| match names.next().unwrap_or("") {
            "" | "connection" => Protocol::Smtp,
            name if name.ends_with(".socket") => Protocol::Smtp,
            name => Protocol::from_name(name).unwrap_or_else(|| {
                tracing::warn!(
                    fd = 3 + i,
                    name,
                    "unknown socket name (expected smtp, submissions or lmtp): serving SMTP"
                );
                Protocol::Smtp
            }),
        })
        .collect()
}

/// An open socket: a TCP or Unix-domain listener, or one connection.
#[derive(Debug)]
pub enum Socket {
    /// A listening TCP socket.
    TcpListener(TcpListener),
    /// A connected TCP socket: one session.
    TcpStream(TcpStream),
    /// A listening Unix-domain socket.
    #[cfg(unix)]
    UnixListener(UnixListener),
    /// A connected Unix-domain socket: one session.
    #[cfg(unix)]
    UnixStream(UnixStream),
}

impl Socket {
    /// Tells what `fd` is: a TCP or a Unix-domain socket, listening or
    /// connected. Anything else (a file, a terminal) is an error.
    ///
    /// A socket that is neither connected nor listening counts as
    /// listening (its accepts then fail).
    #[cfg(unix)]
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Socket> {
        use std::os::fd::OwnedFd;
        let tcp = TcpStream::from(fd);
        // The standard library's addresses are TCP/IP ones only (a
        // Unix-domain socket's `getsockname` is refused), and vice versa.
        if tcp.local_addr().is_ok() {
            return match tcp.peer_addr() {
                Ok(_) => Ok(Socket::TcpStream(tcp)),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    Ok(Socket::TcpListener(TcpListener::from(OwnedFd::from(tcp))))
                }
                Err(e) => Err(e),
            };
        }
        let unix = UnixStream::from(OwnedFd::from(tcp));
        unix.local_addr().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a TCP or Unix-domain socket: {e}"),
            )
        })?;
        match unix.peer_addr() {
            Ok(_) => Ok(Socket::UnixStream(unix)),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(Socket::UnixListener(
                UnixListener::from(OwnedFd::from(unix)),
            )),
            Err(e) => Err(e),
        }
    }

    /// Whether it is a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        match self {
            Socket::TcpListener(_) | Socket::TcpStream(_) => false,
            #[cfg(unix)]
            Socket::UnixListener(_) | Socket::UnixStream(_) => true,
        }
    }

    /// Whether it is a listening socket (else one connection).
    pub fn is_listener(&self) -> bool {
        match self {
            Socket::TcpListener(_) => true,
            Socket::TcpStream(_) => false,
            #[cfg(unix)]
            Socket::UnixListener(_) => true,
            #[cfg(unix)]
            Socket::UnixStream(_) => false,
        }
    }

    /// The local address of a TCP socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::TcpListener(l) => l.local_addr().ok(),
            Socket::TcpStream(s) => s.local_addr().ok(),
            #[cfg(unix)]
            Socket::UnixListener(_) | Socket::UnixStream(_) => None,
        }
    }
}

impl From<TcpListener> for Socket {
    fn from(l: TcpListener) -> Self {
        Socket::TcpListener(l)
    }
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Self {
        Socket::TcpStream(s)
    }
}

#[cfg(unix)]
impl From<UnixListener> for Socket {
    fn from(l: UnixListener) -> Self {
        Socket::UnixListener(l)
    }
}

#[cfg(unix)]
impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Self {
        Socket::UnixStream(s)
    }
}

/// An already-open [`Socket`] for a server to serve, and what it serves.
///
/// Cheap to clone, so [`ServerOptions`](crate::accept::ServerOptions)
/// stays `Clone`: the clones share the one socket, which the first `bind`
/// takes (a second `bind` with it fails). Equal to its clones only.
#[derive(Clone)]
pub struct InheritedSocket {
    protocol: Protocol,
    unix: bool,
    listener: bool,
    local: Option<SocketAddr>,
    socket: Arc<Mutex<Option<Socket>>>,
}

impl InheritedSocket {
    /// `socket`, serving `protocol`.
    pub fn new(socket: impl Into<Socket>, protocol: Protocol) -> Self {
        let socket = socket.into();
        InheritedSocket {
            protocol,
            unix: socket.is_unix(),
            listener: socket.is_listener(),
            local: socket.local_addr(),
            socket: Arc::new(Mutex::new(Some(socket))),
        }
    }

    /// What it serves.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether it is a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        self.unix
    }

    /// Whether it is a listening socket (else one connection).
    pub fn is_listener(&self) -> bool {
        self.listener
    }

    /// The local address of a TCP socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Takes the socket out, for the server that binds it; fails once
    /// taken.
    pub fn take(&self) -> io::Result<Socket> {
        let mut slot = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        slot.take().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "an inherited socket is served by the first server bound with it",
            )
        })
    }
}

impl PartialEq for InheritedSocket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.socket, &other.socket)
    }
}

impl Eq for InheritedSocket {}

impl std::fmt::Debug for InheritedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InheritedSocket")
            .field("protocol", &self.protocol)
            .field("unix", &self.unix)
            .field("listener", &self.listener)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The sockets systemd passed this process (socket activation), in fd
/// order, each with the protocol its `LISTEN_FDNAMES` name gives
/// ([`protocols`]).
///
/// Only when `LISTEN_PID` is this process's id: otherwise (or without the
/// variables) there are none, and the variables, meant for another
/// process, are ignored. Then `LISTEN_FDS` = n gives fds 3 … 3+n−1 (TCP or
/// Unix-domain stream sockets, listening or, with `Accept=yes`,
/// connected), each marked close-on-exec; `LISTEN_PID` and `LISTEN_FDS`
/// are removed from the environment (so children do not inherit them).
/// Call it once, early (it takes the fds), before other threads start.
#[cfg(unix)]
pub fn systemd_sockets() -> io::Result<Vec<InheritedSocket>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let ours =
        pid.as_deref().and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        if let Some(pid) = pid {
            tracing::debug!(
                LISTEN_PID = pid,
                "socket activation for another process: ignored"
            );
        }
        return Ok(Vec::new());
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let kinds = protocols(&names, fds.len());
    let mut out = Vec::with_capacity(kinds.len());
    for (i, protocol) in kinds.into_iter().enumerate() {
        let socket = match fds.take_tcp_listener(i) {
            Ok(Some(tcp)) => Socket::from_fd(tcp.into())?,
            Ok(None) => continue,
            Err(_) => match fds.take_unix_listener(i) {
                Ok(Some(unix)) => Socket::from_fd(unix.into())?,
                Ok(None) => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("LISTEN_FDS: fd {}: {e}", 3 + i),
                    ));
                }
            },
        };
        out.push(InheritedSocket::new(socket, protocol));
    }
    Ok(out)
}

/// Standard input as the socket to serve (inetd; systemd with
/// `StandardInput=socket`): a listening socket (inetd `wait`, systemd
/// `Accept=no`) serves like a listener, a connected one (inetd `nowait`,
/// systemd `Accept=yes`) is one session. The fd is duplicated
/// (close-on-exec); standard input itself stays open.
#[cfg(unix)]
pub fn stdin_socket(protocol: Protocol) -> io::Result<InheritedSocket> {
    use std::os::fd::AsFd;
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let socket = Socket::from_fd(fd)
        .map_err(|e| io::Error::new(e.kind(), format!("standard input: {e}")))?;
    Ok(InheritedSocket::new(socket, protocol))
}

/// No socket activation outside Unix.
#[cfg(not(unix))]
pub fn systemd_sockets() -> io::Result<Vec<InheritedSocket>> {
    Ok(Vec::new())
}

/// No inetd outside Unix.
#[cfg(not(unix))]
pub fn stdin_socket(_protocol: Protocol) -> io::Result<InheritedSocket> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Never outside Unix.
#[cfg(not(unix))]
pub fn stderr_is_stdin() -> bool {
    false
}

/// Whether standard error is the socket on standard input (inetd hands
/// the socket as all three; same device and inode): then nothing may be
/// logged there, or it would go to the client.
#[cfg(unix)]
pub fn stderr_is_stdin() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn id(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let m = file.metadata().ok()?;
        m.file_type().is_socket().then(|| (m.dev(), m.ino()))
    }
    let (a, b) = (id(io::stdin().as_fd()), id(io::stderr().as_fd()));
    a.is_some() && a == b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_map_to_protocols() {
        use Protocol::*;
        assert_eq!(
            protocols("smtp:submissions:lmtp", 3),
            [Smtp, Submissions, Lmtp]
        );
        // Missing, empty, systemd's defaults and unknown names: SMTP.
        assert_eq!(protocols("", 2), [Smtp, Smtp]);
        assert_eq!(protocols("lmtp", 2), [Lmtp, Smtp]);
        assert_eq!(protocols("smtpd.socket:connection::imap", 4), [Smtp; 4]);
        // More names than sockets: the extra ones are not used.
        assert_eq!(protocols("submissions:lmtp", 1), [Submissions]);
        for (name, p) in Protocol::NAMES {
            assert_eq!(Protocol::from_name(name), Some(p));
            assert_eq!(p.name(), name);
        }
    }

    /// The sample systemd units (`contrib/systemd`) name their sockets
    /// as the code maps them, and the service takes every one of them
    /// with a command line that parses.
    #[test]
    fn sample_units_use_the_mapped_names() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        // `Key=value` settings, continuation lines joined.
        fn values(unit: &str, key: &str) -> Vec<String> {
            let unit = unit.replace("\\\n", " ");
            let value = |l: &str| {
                Some(
                    l.trim()
                        .strip_prefix(key)?
                        .strip_prefix('=')?
                        .trim()
                        .to_owned(),
                )
            };
            unit.lines().filter_map(value).collect()
        }
        let service = read("smtpd.service");
        let sockets = values(&service, "Sockets").join(" ");
        let sockets: Vec<&str> = sockets.split_whitespace().collect();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if !file.ends_with(".socket") {
                continue;
            }
            assert!(sockets.contains(&file.as_str()), "{file} not in Sockets=");
            let unit = read(&file);
            assert_eq!(values(&unit, "Service"), ["smtpd.service"], "{file}");
            assert_eq!(values(&unit, "ListenStream").len(), 1, "{file}");
            let name = values(&unit, "FileDescriptorName");
            assert_eq!(name.len(), 1, "{file}");
            assert!(Protocol::from_name(&name[0]).is_some(), "{file}: {name:?}");
            names.push(name[0].clone());
        }
        names.sort();
        assert_eq!(names, ["smtp", "submissions"]);
        #[cfg(feature = "cli")]
        {
            let exec = values(&service, "ExecStart");
            assert_eq!(exec.len(), 1);
            let a = <crate::cli::Args as clap::Parser>::try_parse_from(exec[0].split_whitespace())
                .unwrap();
            // The submissions socket needs TLS; no --listen: the sockets replace it.
            assert!(!a.tls_cert.is_empty() && a.maildir.is_some() && a.listen.is_empty());
        }
    }

    #[cfg(unix)]
    #[test]
    fn sockets_are_told_apart() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let listening = Socket::from_fd(l.into()).unwrap();
        assert!(listening.is_listener() && !listening.is_unix());
        assert_eq!(listening.local_addr(), Some(addr));
        assert!(matches!(
            Socket::from_fd(s.into()).unwrap(),
            Socket::TcpStream(_)
        ));
        drop(c);
        let dir = tempfile::tempdir().unwrap();
        let u = UnixListener::bind(dir.path().join("s")).unwrap();
        let c = UnixStream::connect(dir.path().join("s")).unwrap();
        assert!(matches!(
            Socket::from_fd(u.into()).unwrap(),
            Socket::UnixListener(_)
        ));
        assert!(matches!(
            Socket::from_fd(c.into()).unwrap(),
            Socket::UnixStream(_)
        ));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(Socket::from_fd(file.into()).is_err());
        // Taken once.
        let t = InheritedSocket::new(TcpListener::bind("127.0.0.1:0").unwrap(), Protocol::Lmtp);
        let clone = t.clone();
        assert_eq!(t, clone);
        assert!(clone.take().is_ok());
        assert!(t.take().is_err());
    }
}
