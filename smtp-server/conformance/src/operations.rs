//! Operations (issue 16, parts 1 and 4): certificates per SNI name,
//! SIGHUP re-reading certificates, user lists and relay credentials
//! without dropping sessions, and the `--allow`/`--deny` access list.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::cases::{p, send_through, tmp};
use crate::support::{Client, Ctx, Smtpd, cases, delivered};

cases!(
    sni_chooses_the_certificate_by_name,
    sighup_renews_certificates_without_dropping_sessions,
    sighup_rereads_auth_and_relay_credentials,
    access_list_refuses_at_connect,
);

/// A self-signed certificate for `names`, written as `<tag>.crt`/`<tag>.key`
/// in `dir`; returns its DER.
fn write_cert(dir: &Path, tag: &str, names: &[&str]) -> CertificateDer<'static> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let (c, k) = cert_paths(dir, tag);
    std::fs::write(&c, ck.cert.pem()).expect("write cert");
    std::fs::write(&k, ck.signing_key.serialize_pem()).expect("write key");
    ck.cert.der().clone()
}

fn cert_paths(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    )
}

/// A TLS connector trusting every certificate in `certs`.
fn trusting(certs: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add((*c).clone()).expect("root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The certificate the server shows a client asking for `name` over
/// implicit TLS at `addr`.
async fn presented(addr: std::net::SocketAddr, tls: &TlsConnector, name: &str) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let stream = tls.connect(name, tcp).await.expect("handshake");
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().expect("certificates")[0].to_vec()
}

/// Sends SIGHUP and waits until the log shows the reload's outcome
/// (`reloaded`, or a `reload failed:` error) one more time than before.
async fn hangup(d: &Smtpd) -> String {
    let count = |log: &str| {
        log.matches("reloaded sources=").count() + log.matches("reload failed: ").count()
    };
    let before = count(&d.log());
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(d.child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP");
    for _ in 0..200 {
        let log = d.log();
        if count(&log) > before {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no reload logged:\n{}", d.log());
}

/// Two `--tls-cert`/`--tls-key` pairs: a client asking for a name gets the
/// certificate valid for it (wildcards too); others get the first.
async fn sni_chooses_the_certificate_by_name(ctx: Ctx) {
    let dir = tmp();
    let a = write_cert(dir.path(), "a", &["mx.a.test"]);
    let b = write_cert(dir.path(), "b", &["*.b.test"]);
    let ((ac, ak), (bc, bk)) = (cert_paths(dir.path(), "a"), cert_paths(dir.path(), "b"));
    let d = ctx.spawn([
        "--sink",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        p(&ac),
        "--tls-key",
        p(&ak),
        "--tls-cert",
        p(&bc),
        "--tls-key",
        p(&bk),
    ]);
    let tls = trusting(&[&a, &b]);
    assert_eq!(presented(d.addrs[1], &tls, "mx.b.test").await, b.to_vec());
    assert_eq!(presented(d.addrs[1], &tls, "mx.a.test").await, a.to_vec());
    // A name no certificate has: the default (first) one, which the
    // client then refuses for that name.
    let tcp = TcpStream::connect(d.addrs[1]).await.expect("connect");
    let other = ServerName::try_from("other.test").expect("name");
    assert!(tls.connect(other, tcp).await.is_err());
    // STARTTLS picks by name too.
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("STARTTLS\r\n", "220").await;
    let name = ServerName::try_from("smtp.b.test").expect("name");
    let t = tls
        .connect(name, c.io.into_inner())
        .await
        .expect("handshake");
    assert_eq!(t.get_ref().1.peer_certificates().expect("certs")[0], b);
    // Unpaired flags are refused at start.
    let out = ctx
        .command(["--sink", "--tls-cert", p(&ac), "--tls-key", p(&ak)])
        .args(["--tls-cert", p(&bc)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A client holding a session across SIGHUP finishes its message with the
/// old certificate; a new client sees the new certificate. A broken file at
/// the next SIGHUP is logged and the last good certificate stays.
async fn sighup_renews_certificates_without_dropping_sessions(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let old = write_cert(dir.path(), "mx", &["localhost"]);
    let (cert, key) = cert_paths(dir.path(), "mx");
    let d = ctx.spawn([
        "--maildir",
        p(&md),
        "--tls-cert",
        p(&cert),
        "--tls-key",
        p(&key),
    ]);
    // The old session: inside TLS, in the middle of its message.
    let mut held = d.greeted().await;
    held.expect("EHLO x\r\n", "250").await;
    held.expect("STARTTLS\r\n", "220").await;
    let before = write_cert(dir.path(), "unused", &["localhost"]);
    let tls = trusting(&[&old, &before]);
    let localhost = ServerName::try_from("localhost").expect("name");
    let t = tls
        .connect(localhost.clone(), held.io.into_inner())
        .await
        .expect("handshake");
    assert_eq!(t.get_ref().1.peer_certificates().expect("certs")[0], old);
    let mut held = Client::new(t);
    held.expect("EHLO x\r\n", "250").await;
    held.expect("MAIL FROM:<a@x.example>\r\n", "250").await;
    held.expect("RCPT TO:<b@y.example>\r\n", "250").await;
    held.expect("DATA\r\n", "354").await;
    held.send("Subject: across a reload\r\n\r\nfirst half\r\n")
        .await;

    // Renewal: new files, same paths; SIGHUP.
    let new = write_cert(dir.path(), "mx", &["localhost"]);
    let log = hangup(&d).await;
    assert!(!log.contains("reload failed: "), "{log}");
    let tls = trusting(&[&old, &new]);
    let mut fresh = d.greeted().await;
    fresh.expect("EHLO x\r\n", "250").await;
    fresh.expect("STARTTLS\r\n", "220").await;
    let t = tls
        .connect(localhost.clone(), fresh.io.into_inner())
        .await
        .expect("handshake");
    assert_eq!(t.get_ref().1.peer_certificates().expect("certs")[0], new);

    // The held session finishes its message.
    held.expect("second half\r\n.\r\n", "250").await;
    held.expect("QUIT\r\n", "221").await;
    let files = delivered(&md, "b@y.example");
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).expect("read");
    assert!(text.contains("first half\nsecond half\n"), "{text}");

    // A broken key at the next SIGHUP: logged, the server keeps serving
    // the last good certificate.
    std::fs::write(&key, "not a key").expect("write");
    let log = hangup(&d).await;
    assert!(log.contains("keeping the old certificate"), "{log}");
    let mut again = d.greeted().await;
    again.expect("EHLO x\r\n", "250").await;
    again.expect("STARTTLS\r\n", "220").await;
    let t = tls
        .connect(localhost, again.io.into_inner())
        .await
        .expect("handshake");
    assert_eq!(t.get_ref().1.peer_certificates().expect("certs")[0], new);
}

fn auth_plain(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let raw = format!("\0{user}\0{pass}");
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// SIGHUP re-reads `--auth` (the old user is gone, the new one logs in)
/// and `--relay-auth-file` (the relay's next connection upstream uses the
/// new credentials).
async fn sighup_rereads_auth_and_relay_credentials(ctx: Ctx) {
    let dir = tmp();
    let md = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "old:pw1\n").expect("users");
    let up = ctx.spawn([
        "--maildir",
        p(&md),
        "--auth",
        p(&users),
        "--auth-insecure",
        "--require-auth",
        "--hostname",
        "up.test",
    ]);
    auths(&up, &[("old", "pw1", "235")]).await;
    std::fs::write(&users, "new:pw2\n").expect("users");
    hangup(&up).await;
    auths(&up, &[("old", "pw1", "535"), ("new", "pw2", "235")]).await;
    // A broken list keeps the last good one.
    std::fs::write(&users, "other:pw3\nno colon here\n").expect("users");
    let log = hangup(&up).await;
    assert!(log.contains("reload failed: --auth"), "{log}");
    // Kept: the broken list does not name `new`.
    auths(&up, &[("new", "pw2", "235")]).await;
    // An emptied list revokes everyone (it is no broken file).
    std::fs::write(&users, "").expect("users");
    hangup(&up).await;
    auths(&up, &[("new", "pw2", "535")]).await;
    std::fs::write(&users, "new:pw2\n").expect("users");
    hangup(&up).await;

    // The relay authenticates with the old credentials and fails, until
    // its file is rewritten and re-read.
    let creds = dir.path().join("relay-auth");
    std::fs::write(&creds, "old:pw1\n").expect("creds");
    let upstream = up.addr().to_string();
    let relay = ctx.spawn([
        "--relay",
        upstream.as_str(),
        "--relay-no-starttls",
        "--relay-auth-insecure",
        "--relay-auth-file",
        p(&creds),
    ]);
    let r = relay_one(&relay, "1").await;
    assert!(!r.starts_with('2'), "old credentials: {r:?}");
    std::fs::write(&creds, "new:pw2\n").expect("creds");
    hangup(&relay).await;
    let r = relay_one(&relay, "2").await;
    assert!(
        r.starts_with("250"),
        "new credentials: {r:?}\n{}",
        relay.log()
    );
    assert_eq!(delivered(&md, "b@y.example").len(), 1);
}

/// A new session of `d`: EHLO, then each AUTH PLAIN `(user, password)`
/// with the reply code it wants.
async fn auths(d: &Smtpd, tries: &[(&str, &str, &str)]) {
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    for (user, pass, want) in tries {
        c.expect(&auth_plain(user, pass), want).await;
    }
}

/// One message (subject and body `n`) through `relay` in a session of
/// its own; the reply to its end.
async fn relay_one(relay: &Smtpd, n: &str) -> String {
    let mut c = relay.greeted().await;
    let body = format!("Subject: {n}\r\n\r\n{n}\r\n");
    let r = send_through(&mut c, "a@x.example", &["b@y.example"], &body).await;
    c.expect("QUIT\r\n", "221").await;
    r.into_iter().next().unwrap_or_default()
}

/// Connects to `addr` from the local address `from` (any of 127/8 on Linux).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> Client<TcpStream> {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    Client::new(s.connect(addr).await.expect("connect"))
}

/// `--deny` refuses a network at connect with `554 5.7.1` (and `503` to
/// every command but QUIT); a more specific `--allow` inside it lets a
/// client in; with an allow list, clients outside it are refused.
async fn access_list_refuses_at_connect(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--deny", "127.0.0.0/8", "--allow", "127.0.0.2/32"]);
    let mut c = connect_from("127.0.0.1", d.addr()).await;
    let g = c.reply().await;
    assert!(g.starts_with("554 5.7.1 "), "{g}");
    c.expect("EHLO x\r\n", "503 5.5.1").await;
    c.expect("MAIL FROM:<a@x>\r\n", "503").await;
    c.expect("QUIT\r\n", "221").await;
    let mut c = connect_from("127.0.0.2", d.addr()).await;
    assert!(c.reply().await.starts_with("220 "));
    let r = send_through(
        &mut c,
        "a@x.example",
        &["b@y.example"],
        "Subject: in\r\n\r\nok\r\n",
    )
    .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    drop(d);
    let d = ctx.spawn(["--sink", "--allow", "10.0.0.0/8"]);
    let mut c = connect_from("127.0.0.1", d.addr()).await;
    assert!(c.reply().await.starts_with("554 5.7.1 "));
    // The PROXY header's client is the one judged.
    let d = ctx.spawn(["--sink", "--allow", "192.0.2.0/24", "--proxy-protocol"]);
    for (src, want) in [("192.0.2.7", "220 "), ("198.51.100.7", "554 5.7.1")] {
        let mut c = Client::connect(d.addr()).await;
        c.send(&format!("PROXY TCP4 {src} 127.0.0.1 4000 25\r\n"))
            .await;
        let g = c.reply().await;
        assert!(g.starts_with(want), "{src}: {g}");
    }
}
