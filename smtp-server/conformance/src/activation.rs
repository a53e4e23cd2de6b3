//! Socket activation: sockets the test opens itself and hands to the
//! server the way systemd does (fds 3, 4, … with `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, set by `sh` right before it `exec`s
//! the server, so the pid is the server's) or inetd does (`--inetd`: the
//! socket on standard input).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::cases::{p, tmp};
use crate::support::{Client, Ctx, Smtpd, TestCert, cases, delivered};

cases!(
    systemd_smtp_and_submissions_sockets,
    systemd_lmtp_socket_beside_smtp,
    systemd_submissions_without_tls_is_refused,
    systemd_variables_for_another_process_are_ignored,
    inetd_connected_stream_is_one_session,
    inetd_with_stderr_on_the_socket_logs_nothing_there,
    inetd_listening_socket_serves_clients_in_turn,
);

/// The server started as systemd would: `fds` (at most two: they travel
/// as sh's stdin and stdout) become fds 3, 4; `LISTEN_PID` is `pid`
/// (`$$`: sh's, which `exec` makes the server's).
fn activated(ctx: &Ctx, fds: Vec<OwnedFd>, names: &str, pid: &str, args: &[&str]) -> Command {
    assert!((1..=2).contains(&fds.len()));
    let n = fds.len();
    let mut fds = fds.into_iter();
    let redirect = if n == 2 { "3<&0 4>&1" } else { "3<&0" };
    let script = format!(
        "export LISTEN_PID={pid} LISTEN_FDS={n} LISTEN_FDNAMES={names}; \
         exec \"$0\" \"$@\" {redirect} 0</dev/null 1>/dev/null"
    );
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg(exe)
        .args(args)
        .env(crate::SERVE_ENV, ctx.variant())
        .stdin(Stdio::from(fds.next().expect("one fd")))
        .stdout(fds.next().map_or_else(Stdio::null, Stdio::from));
    c
}

/// A TCP listener on 127.0.0.1 with an OS-picked port, as an fd to hand over.
fn tcp_socket() -> (OwnedFd, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("address");
    (OwnedFd::from(l), addr)
}

/// A message to `rcpts` from `a@x`, after the greeting; every reply checked.
async fn deliver<S>(c: &mut Client<S>, hello: &str, rcpts: &[&str], subject: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.expect(&format!("{hello} client.test\r\n"), "250").await;
    c.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    for r in rcpts {
        c.expect(&format!("RCPT TO:<{r}>\r\n"), "250").await;
    }
    c.expect("DATA\r\n", "354").await;
    let replies = if hello == "LHLO" { rcpts.len() } else { 1 };
    c.send(&format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n"))
        .await;
    for r in rcpts.iter().take(replies) {
        let reply = c.reply().await;
        assert!(reply.starts_with("250"), "{r}: {reply:?}");
    }
    c.expect("QUIT\r\n", "221").await;
}

/// The `listening addr=…` lines of a server's log.
fn listening(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .map(str::to_owned)
        .collect()
}

/// Two sockets named `smtp` and `submissions`: a plain session (STARTTLS
/// offered) and an implicit-TLS one both deliver, each socket logs its
/// `listening` line in fd order, and nothing else is bound (no default
/// 127.0.0.1:2525).
async fn systemd_smtp_and_submissions_sockets(ctx: Ctx) {
    let dir = tmp();
    let cert = TestCert::new();
    let (c, k) = cert.write_pem(dir.path());
    let maildir = dir.path().join("mail");
    let (smtp, smtp_addr) = tcp_socket();
    let (tls, tls_addr) = tcp_socket();
    let args = [
        "--maildir",
        p(&maildir),
        "--tls-cert",
        p(&c),
        "--tls-key",
        p(&k),
        "--hostname",
        "conformance.test",
    ];
    let mut cmd = activated(&ctx, vec![smtp, tls], "smtp:submissions", "$$", &args);
    let d = Smtpd::start(&mut cmd, 2);
    assert_eq!(d.addrs, [smtp_addr, tls_addr], "{}", d.log());

    let mut plain = Client::connect(smtp_addr).await;
    assert!(plain.reply().await.starts_with("220 conformance.test"));
    let ehlo = plain.expect("EHLO client.test\r\n", "250").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    deliver(&mut plain, "EHLO", &["b@y.example"], "plain").await;

    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let stream = cert
        .connector()
        .connect(TestCert::server_name(), tcp)
        .await
        .expect("an implicit-TLS handshake first");
    let mut t = Client::new(stream);
    assert!(t.reply().await.starts_with("220 conformance.test"));
    deliver(&mut t, "EHLO", &["b@y.example"], "implicit tls").await;

    assert_eq!(delivered(&maildir, "b@y.example").len(), 2);
    let log = d.log();
    assert_eq!(listening(&log).len(), 2, "{log}");
    assert!(!log.contains(":2525"), "{log}");
}

/// A Unix-domain socket named `lmtp` speaks LMTP (LHLO, one reply per
/// recipient after the body) while the TCP socket beside it, unnamed,
/// speaks SMTP.
async fn systemd_lmtp_socket_beside_smtp(ctx: Ctx) {
    use tokio::net::UnixStream;
    let dir = tmp();
    let maildir = dir.path().join("mail");
    let path = dir.path().join("lmtp.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let (smtp, smtp_addr) = tcp_socket();
    let args = ["--maildir", p(&maildir), "--hostname", "conformance.test"];
    let fds = vec![smtp, OwnedFd::from(unix)];
    let mut cmd = activated(&ctx, fds, ":lmtp", "$$", &args);
    let d = Smtpd::start(&mut cmd, 1);
    assert_eq!(d.addrs, [smtp_addr]);

    let mut l = Client::new(UnixStream::connect(&path).await.expect("connect"));
    assert!(l.reply().await.starts_with("220 conformance.test"));
    let r = l.cmd("EHLO client.test\r\n").await;
    assert!(r.starts_with('5'), "LMTP has no EHLO: {r:?}");
    let rcpts = ["b@y.example", "c@y.example"];
    deliver(&mut l, "LHLO", &rcpts, "over lmtp").await;
    for r in rcpts {
        assert_eq!(delivered(&maildir, r).len(), 1, "{r}");
    }

    let mut s = d.greeted().await;
    let r = s.cmd("LHLO client.test\r\n").await;
    assert!(r.starts_with('5'), "SMTP has no LHLO: {r:?}");
    deliver(&mut s, "EHLO", &["d@y.example"], "over smtp").await;
    assert_eq!(delivered(&maildir, "d@y.example").len(), 1);
}

/// A `submissions` socket without a certificate is a configuration error:
/// the server exits with a failure that names it.
async fn systemd_submissions_without_tls_is_refused(ctx: Ctx) {
    let (tls, _) = tcp_socket();
    let args = ["--sink", "--hostname", "conformance.test"];
    let mut cmd = activated(&ctx, vec![tls], "submissions", "$$", &args);
    let mut d = Smtpd::start(&mut cmd, 0);
    assert!(!d.wait().await, "must fail");
    assert!(d.log().contains("submissions"), "{}", d.log());
}

/// `LISTEN_PID` naming another process: the variables are not ours, the
/// server binds its `--listen` and leaves fd 3 alone.
async fn systemd_variables_for_another_process_are_ignored(ctx: Ctx) {
    let (fd, foreign) = tcp_socket();
    let args = [
        "--sink",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "conformance.test",
    ];
    let mut cmd = activated(&ctx, vec![fd], "smtp", "1", &args);
    let d = Smtpd::start(&mut cmd, 1);
    assert_ne!(d.addr(), foreign);
    assert_eq!(listening(&d.log()).len(), 1, "{}", d.log());
    let mut c = d.greeted().await;
    c.expect("QUIT\r\n", "221").await;
    // The foreign socket is still open in the server (its fd 3), so the
    // kernel completes the connection, but no one serves it.
    let mut idle = TcpStream::connect(foreign).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(700), idle.read(&mut buf)).await;
    assert!(read.is_err(), "no greeting on a foreign socket: {read:?}");
}

/// A connection accepted by the test (inetd `nowait`) and an `OwnedFd`
/// copy of it for the server's stdin; the client end.
async fn handed_connection() -> (OwnedFd, Client<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(l.local_addr().expect("address"))
        .await
        .expect("connect");
    let (accepted, _) = l.accept().expect("accept");
    (OwnedFd::from(accepted), Client::new(client))
}

/// `smtpd --inetd` storing into a Maildir at `dir`.
fn inetd_maildir(ctx: &Ctx, dir: &Path) -> Command {
    ctx.command(["--inetd", "--maildir", p(dir), "--hostname", "inetd.test"])
}

/// `--inetd` with a connected stream on stdin (and stdout): exactly that
/// session, whose message is stored; after QUIT the server exits 0.
async fn inetd_connected_stream_is_one_session(ctx: Ctx) {
    let dir = tmp();
    let (fd, mut c) = handed_connection().await;
    let out = fd.try_clone().expect("dup");
    let mut cmd = inetd_maildir(&ctx, dir.path());
    cmd.stdin(Stdio::from(fd)).stdout(Stdio::from(out));
    let mut d = Smtpd::start(&mut cmd, 0);
    // The command holds our copies of the socket: closed, the server's
    // exit is the client's end of stream.
    drop(cmd);
    assert!(c.reply().await.starts_with("220 inetd.test"), "{}", d.log());
    deliver(&mut c, "EHLO", &["b@y.example"], "via inetd").await;
    assert_eq!(c.read_to_end().await, "");
    assert!(d.wait().await, "exit 0 after the session: {}", d.log());
    assert_eq!(delivered(dir.path(), "b@y.example").len(), 1);
    assert!(listening(&d.log()).is_empty(), "{}", d.log());
}

/// inetd hands the socket as stdin, stdout and stderr: even at `--log
/// debug` the client reads nothing but replies. The debug store (which
/// prints to stdout) is refused under `--inetd`.
async fn inetd_with_stderr_on_the_socket_logs_nothing_there(ctx: Ctx) {
    let (fd, mut c) = handed_connection().await;
    let (out, err) = (fd.try_clone().expect("dup"), fd.try_clone().expect("dup"));
    let mut child = ctx
        .command([
            "--inetd",
            "--sink",
            "--log",
            "debug",
            "--hostname",
            "inetd.test",
        ])
        .stdin(Stdio::from(fd))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start the server");
    let mut transcript = c.reply().await;
    for cmd in [
        "EHLO x\r\n",
        "MAIL FROM:<a@x>\r\n",
        "RCPT TO:<b@y>\r\n",
        "QUIT\r\n",
    ] {
        transcript.push_str(&c.cmd(cmd).await);
    }
    transcript.push_str(&c.read_to_end().await);
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = child.kill();
    assert!(status.expect("exited").success());
    assert!(transcript.contains("\r\n221 "), "{transcript:?}");
    for line in transcript.lines() {
        let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
        assert!(
            code.is_some(),
            "not a reply line: {line:?} in {transcript:?}"
        );
    }

    // The debug store would print onto the socket: refused (exit 2).
    let (fd, _c) = handed_connection().await;
    let status = ctx
        .command(["--inetd"])
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(2));
}

/// `--inetd` with a listening socket on stdin (inetd `wait`, systemd
/// `Accept=no`): it is served like `--listen`, one client after another,
/// until SIGTERM.
async fn inetd_listening_socket_serves_clients_in_turn(ctx: Ctx) {
    let dir = tmp();
    let (fd, addr) = tcp_socket();
    let mut cmd = inetd_maildir(&ctx, dir.path());
    cmd.stdin(Stdio::from(fd)).stdout(Stdio::null());
    let mut d = Smtpd::start(&mut cmd, 1);
    assert_eq!(d.addrs, [addr]);
    for (i, rcpt) in ["b@y.example", "c@y.example"].into_iter().enumerate() {
        let mut c = d.greeted().await;
        deliver(&mut c, "EHLO", &[rcpt], &format!("client {i}")).await;
        assert_eq!(delivered(dir.path(), rcpt).len(), 1);
    }
    d.terminate();
    assert!(d.wait().await);
}
