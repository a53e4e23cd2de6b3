//! More end-to-end tests: durability of `smtpd` under SIGKILL, real clients
//! (Python smtplib, curl, lettre with AUTH LOGIN and SMTPUTF8), recipient and
//! line-length floods, and the PROXY protocol.
#![cfg(all(feature = "cli", unix))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestCert, all_files, delivered, localhost, start};
use smtp_proto::config::Config;
use smtp_proto::sasl::Mechanism as SaslMechanism;
use smtp_proto::store::{MaildirHandler, PasswordAuth, SinkHandler};
use smtp_tokio::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_smtpd");

/// A running `smtpd` process, killed (by its own handle) when dropped.
struct Smtpd {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Smtpd {
    /// Starts `smtpd` with `args` and waits for `listeners` "listening" log lines.
    fn spawn(args: &[&std::ffi::OsStr], listeners: usize) -> Smtpd {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("smtpd exited before listening");
            }
            if let Some(i) = line.find("addr=") {
                let a = line[i + 5..].split_whitespace().next().unwrap();
                addrs.push(a.parse().unwrap());
            }
        }
        // Keep draining the log so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Smtpd { child, addrs }
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `tool` runs; prints a loud skip line if not, and fails under CI.
fn have(tool: &str) -> bool {
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

/// A blocking line client for talking to a separate `smtpd` process.
struct SyncClient {
    r: BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl SyncClient {
    fn connect(addr: SocketAddr) -> Self {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        SyncClient {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, s: &str) -> String {
        self.w.write_all(s.as_bytes()).unwrap();
        self.reply()
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Checks one stored Maildir message: trace headers first, `tail` last.
fn assert_stored(root: &Path, rcpt: &str, from: &str, tail: &str) -> String {
    let files = delivered(root, rcpt);
    assert_eq!(files.len(), 1, "{rcpt}: {:?}", all_files(root));
    let text = String::from_utf8(std::fs::read(&files[0]).unwrap()).unwrap();
    assert!(
        text.starts_with(&format!(
            "Return-Path: <{from}>\r\nDelivered-To: {rcpt}\r\nReceived: "
        )),
        "{text}"
    );
    assert!(text.ends_with(tail), "{text:?}");
    text
}

#[test]
fn smtpd_maildir_survives_sigkill_after_250() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("mail");
    let mut d = Smtpd::spawn(
        &[
            os("--maildir"),
            md.as_os_str(),
            os("--listen"),
            os("127.0.0.1:0"),
            os("--hostname"),
            os("kill.test"),
        ],
        1,
    );
    let mut c = SyncClient::connect(d.addrs[0]);
    assert!(c.reply().starts_with("220 kill.test"));
    assert!(c.cmd("EHLO x\r\n").starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@example.org>\r\n")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.net>\r\n").starts_with("250"));
    assert!(c.cmd("DATA\r\n").starts_with("354"));
    let body = "Subject: durable\r\n\r\nline one\r\nthe very last line\r\n";
    let r = c.cmd(&format!("{body}.\r\n"));
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // No QUIT, no shutdown: the process dies right after the 250.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let text = assert_stored(&md, "bob@example.net", "alice@example.org", body);
    assert!(text.contains("Subject: durable\r\n"), "{text}");
    let tmp: Vec<_> = std::fs::read_dir(md.join("bob@example.net").join("tmp"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    assert_eq!(all_files(&md).len(), 1, "{:?}", all_files(&md));
}

const PY_SCRIPT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
m = EmailMessage()
m["From"] = "alice@example.org"
m["To"] = "bob@example.net"
m["Subject"] = "from python"
m.set_content("Hello from smtplib\n")
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="py.test", timeout=10) as s:
    s.starttls(context=ctx)
    s.login("alice", "s3cret")
    s.send_message(m)
"#;

#[test]
fn python_smtplib_starttls_login() {
    if !have("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = TestCert::new().write_pem(dir.path());
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").unwrap();
    let md = dir.path().join("mail");
    let d = Smtpd::spawn(
        &[
            os("--listen"),
            os("127.0.0.1:0"),
            os("--maildir"),
            md.as_os_str(),
            os("--tls-cert"),
            cert.as_os_str(),
            os("--tls-key"),
            key.as_os_str(),
            os("--auth"),
            users.as_os_str(),
            os("--require-auth"),
        ],
        1,
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_SCRIPT)
        .arg("127.0.0.1")
        .arg(d.addrs[0].port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = assert_stored(
        &md,
        "bob@example.net",
        "alice@example.org",
        "\r\n\r\nHello from smtplib\r\n",
    );
    assert!(text.contains("Subject: from python\r\n"), "{text}");
    assert!(text.contains("with ESMTPSA"), "{text}");
    drop(d);
}

/// Runs curl with `args`, off the runtime's thread.
async fn curl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn curl_smtp_and_smtps() {
    if !have("curl") {
        return;
    }
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("mail");
    let server = start(
        Server::new(MaildirHandler::new(&md))
            .tls(cert.server_config())
            .listen(localhost())
            .listen_tls(localhost()),
    )
    .await;
    let (plain, tls) = (server.addrs[0], server.addrs[1]);
    let file = dir.path().join("msg.eml");
    for (url, rcpt, extra) in [
        (format!("smtp://{plain}"), "c@d.example", None),
        (format!("smtps://{tls}"), "e@d.example", Some("--insecure")),
    ] {
        let body =
            format!("From: a@b.example\r\nTo: {rcpt}\r\nSubject: curl\r\n\r\nhello from curl\r\n");
        std::fs::write(&file, &body).unwrap();
        let mut args = vec![
            "--url".to_owned(),
            url.clone(),
            "--mail-from".to_owned(),
            "a@b.example".to_owned(),
            "--mail-rcpt".to_owned(),
            rcpt.to_owned(),
            "--upload-file".to_owned(),
            file.to_str().unwrap().to_owned(),
        ];
        args.extend(extra.map(str::to_owned));
        let out = curl(args).await;
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = assert_stored(&md, rcpt, "a@b.example", &body);
        if extra.is_some() {
            assert!(text.contains("with ESMTPS"), "{text}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_pipelined_rcpts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("rcpt.test");
    // The default 1 s per error past the soft limit would make this test slow.
    config.limits.error_delay = Duration::from_millis(1);
    assert_eq!(config.limits.max_recipients, 100);
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = Client::connect(server.addr()).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO x\r\n").await.contains("PIPELINING"));
    let mut batch = String::from("MAIL FROM:<a@x>\r\n");
    for i in 0..10_000 {
        batch.push_str(&format!("RCPT TO:<r{i}@y>\r\n"));
    }
    batch.push_str("DATA\r\n");
    let (mut rd, mut wr) = c.io.into_inner().into_split();
    // Write in a task: the server pauses when its replies are not read.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(batch.as_bytes()).await;
        wr
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out))
        .await
        .expect("closed in time");
    let _wr = writer.await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let mut want = vec!["250 2.1.0 Sender OK"];
    want.extend(std::iter::repeat_n("250 2.1.5 Recipient OK", 100));
    // junk_command_limit (100) 452s are free; the next 20 are errors, the
    // 20th reaching the hard error limit.
    want.extend(std::iter::repeat_n("452 4.5.3 Too many recipients", 120));
    want.push("421 4.7.0 Too many errors, closing connection");
    assert_eq!(lines, want);
    assert!(all_files(dir.path()).is_empty(), "nothing delivered");
    // The server still serves.
    let mut d = Client::connect(server.addr()).await;
    assert!(d.reply().await.starts_with("220 "));
    assert!(d.cmd("EHLO y\r\n").await.starts_with("250"));
    assert!(d.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn ten_mib_command_line() {
    let server = start(Server::new(SinkHandler).listen(localhost())).await;
    let mut c = Client::connect(server.addr()).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO x\r\n").await.starts_with("250"));
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..160 {
        c.send_bytes(&chunk).await;
    }
    // Nothing is said before the line ends.
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.io.read(&mut b))
            .await
            .is_err(),
        "replied before the CRLF"
    );
    assert_eq!(c.cmd("\r\n").await, "500 5.5.2 Line too long\r\n");
    assert!(c.cmd("NOOP\r\n").await.starts_with("250"));
    assert!(c.cmd("QUIT\r\n").await.starts_with("221"));
    server.stop().await;
}

#[tokio::test]
async fn lettre_auth_login_smtputf8_8bit() {
    use lettre::message::SinglePart;
    use lettre::message::header::{ContentTransferEncoding, ContentType};
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("utf8.test");
    config.auth.mechanisms = vec![SaslMechanism::Login];
    config.auth.required = true;
    let users = HashMap::from([("jörg".to_owned(), "pässword".to_owned())]);
    let server = start(
        Server::new(PasswordAuth::new(users, MaildirHandler::new(dir.path())))
            .config(Arc::new(config))
            .tls(cert.server_config())
            .listen(localhost()),
    )
    .await;
    let rcpt = "jörg@bücher.example";
    let body = "Grüße aus Köln — ¡olé! 日本語\r\nzweite Zeile\r\n";
    let msg = Message::builder()
        .from("Ålice <ålice@exämple.org>".parse().unwrap())
        .to(rcpt.parse().unwrap())
        .subject("8bit")
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .header(ContentTransferEncoding::EightBit)
                .body(body.to_owned()),
        )
        .unwrap();
    let raw = msg.formatted();
    assert!(!raw.is_ascii());
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_der(cert.cert.to_vec()).unwrap())
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(server.addr().port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("jörg".into(), "pässword".into()))
        .authentication(vec![Mechanism::Login])
        .build();
    mailer.send(msg).await.unwrap();
    // lettre always ends with CRLF.CRLF, so the stored copy has one more CRLF.
    let mut tail = raw.clone();
    tail.extend_from_slice(b"\r\n");
    let text = assert_stored(
        dir.path(),
        rcpt,
        "ålice@exämple.org",
        std::str::from_utf8(&tail).unwrap(),
    );
    assert!(text.contains("with UTF8SMTPSA"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("proxy.test");
    config.proxy_protocol = true;
    let server = start(
        Server::new(MaildirHandler::new(dir.path()))
            .config(Arc::new(config))
            .listen(localhost()),
    )
    .await;
    let mut c = Client::connect(server.addr()).await;
    c.send("PROXY TCP4 198.51.100.7 203.0.113.1 51000 25\r\n")
        .await;
    assert!(c.reply().await.starts_with("220 proxy.test"));
    assert!(c.cmd("EHLO client\r\n").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@y>\r\n").await.starts_with("250"));
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    assert!(
        c.cmd("Subject: p\r\n\r\nvia proxy\r\n.\r\n")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("QUIT\r\n").await.starts_with("221"));
    let text = assert_stored(dir.path(), "b@y", "a@x", "\r\n\r\nvia proxy\r\n");
    let received = text.split("\r\nReceived: ").nth(1).unwrap();
    let received = received.split("\r\nSubject").next().unwrap();
    assert!(received.contains("198.51.100.7"), "{received}");
    assert!(!received.contains("127.0.0.1"), "{received}");

    // Without a PROXY header: closed, not a word said.
    let mut bad = Client::connect(server.addr()).await;
    bad.send("EHLO x\r\n").await;
    assert_eq!(bad.read_to_end().await, "");
    assert_eq!(delivered(dir.path(), "b@y").len(), 1);
    server.stop().await;
}

/// An implicit-TLS client that never starts its handshake is closed after
/// the command timeout, without a clear-text byte.
#[tokio::test]
async fn implicit_tls_handshake_times_out_silently() {
    let cert = TestCert::new();
    let mut config = Config::new("tls.test");
    config.timeouts.command = Duration::from_millis(300);
    let server = start(
        Server::new(SinkHandler)
            .config(Arc::new(config))
            .tls(cert.server_config())
            .listen_tls(localhost()),
    )
    .await;
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut got))
        .await
        .expect("closed well before 5 s")
        .ok();
    assert!(got.is_empty(), "no clear-text reply: {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}
