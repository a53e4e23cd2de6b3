//! Delivery into a real Dovecot through `smtpd --relay-lmtp` (issue 17):
//! the relay speaks LMTP to its upstream, over a Unix socket
//! (`--relay unix:PATH`) or TCP, and Dovecot's own replies reach the client.
//!
//! Each case starts its own Dovecot ([`Dovecot::start`]) in a temporary
//! directory, with two users: `alice@example.test` (1 GiB quota) and
//! `bob@example.test` (1 KiB quota, so a 2 KiB message is refused after the
//! body). Without Dovecot installed the cases skip loudly (and fail when
//! `CI` is set).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::cases::{p, tmp};
use crate::support::{Ctx, Smtpd, cases, have};

cases!(
    dovecot_fixture_speaks_lmtp,
    dovecot_relay_over_unix_socket_byte_for_byte,
    dovecot_relay_over_tcp_byte_for_byte,
    dovecot_unknown_user_refused_at_rcpt,
    dovecot_one_recipient_per_transaction_and_quota,
    dovecot_lmtp_front_one_reply_per_recipient,
    dovecot_lettre_through_the_relay,
);

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const NOBODY: &str = "nobody@example.test";
const SENDER: &str = "sender@client.example";

/// A running Dovecot (master in the foreground, a child of the test) that
/// serves LMTP on a Unix socket and on 127.0.0.1; stopped (SIGTERM, then
/// waited for with its services) when dropped.
pub(crate) struct Dovecot {
    child: Child,
    /// The configuration, log, sockets and mailboxes; removed last.
    dir: tempfile::TempDir,
    /// The LMTP Unix socket.
    pub(crate) sock: PathBuf,
    /// The LMTP TCP port on 127.0.0.1.
    pub(crate) port: u16,
}

impl Dovecot {
    /// Starts Dovecot and waits (bounded) until both LMTP listeners answer;
    /// `None` when Dovecot is not installed (loud skip, a failure under CI).
    pub(crate) fn start() -> Option<Dovecot> {
        let bin = binary()?;
        // The port is picked by binding and releasing it: another process
        // may take it in between, so a failed start is retried.
        let mut log = String::new();
        for _ in 0..3 {
            match Dovecot::try_start(bin) {
                Ok(d) => return Some(d),
                Err(l) => log = l,
            }
        }
        panic!("Dovecot did not start; its log:\n{log}");
    }

    fn try_start(bin: &str) -> Result<Dovecot, String> {
        let dir = tmp();
        let root = dir.path();
        // Dovecot's mail processes run as the mail user: they must reach
        // the mailboxes through the temporary directory.
        set_mode(root, 0o755);
        let (user, group, uid, gid) = mail_user();
        let mail = root.join("mail");
        std::fs::create_dir(&mail).expect("mail dir");
        std::os::unix::fs::chown(&mail, Some(uid), Some(gid)).expect("chown the mail dir");
        // passwd-file: user:password:uid:gid:gecos:home:shell:extra fields.
        std::fs::write(
            root.join("users"),
            format!("{ALICE}:::::::\n{BOB}:::::::userdb_quota_rule=*:storage=1K\n"),
        )
        .expect("users");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let sock = root.join("lmtp");
        let conf = root.join("dovecot.conf");
        std::fs::write(&conf, config(root, (&user, &group), (uid, gid), port)).expect("config");
        let out = std::fs::File::create(root.join("stderr")).expect("stderr file");
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .expect("start dovecot");
        let mut d = Dovecot {
            child,
            dir,
            sock,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !matches!(d.child.try_wait(), Ok(None)) {
                return Err(d.log());
            }
            if d.answers() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                panic!("Dovecot did not listen within 10 s; its log:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether both listeners greet as Dovecot's LMTP.
    fn answers(&self) -> bool {
        let greets = |s: &mut dyn std::io::Read| {
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line);
            line.starts_with("220 ") && line.contains("Dovecot")
        };
        let timeout = Some(Duration::from_secs(5));
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(timeout);
            greets(&mut s)
        });
        tcp && UnixStream::connect(&self.sock).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(timeout);
            greets(&mut s)
        })
    }

    /// The `--relay` value for the Unix socket.
    pub(crate) fn unix(&self) -> String {
        format!("unix:{}", p(&self.sock))
    }

    /// The `--relay` value for TCP.
    pub(crate) fn tcp(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The files in `new/` of `user`'s Maildir.
    pub(crate) fn new_mail(&self, user: &str) -> Vec<PathBuf> {
        let local = user.split('@').next().unwrap_or(user);
        let new = self.dir.path().join("mail").join(local).join("Maildir/new");
        match std::fs::read_dir(new) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Dovecot's log and its standard error so far.
    pub(crate) fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "{}{}",
            read("dovecot.log").unwrap_or_default(),
            read("stderr").unwrap_or_default()
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = self.child.id();
        let services = children_of(pid);
        // SIGTERM: the master stops its services, then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // No service outlives the test (nor the directory it works in).
        for s in services {
            while running(s) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if running(s) {
                let _ = Command::new("kill")
                    .args(["-KILL", &s.to_string()])
                    .status();
            }
        }
    }
}

/// The Dovecot master binary, if installed (`/usr/sbin` may not be on PATH).
fn binary() -> Option<&'static str> {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let bin = ["dovecot", "/usr/sbin/dovecot"]
        .into_iter()
        .find(|b| runs(b))
        .unwrap_or("dovecot");
    // Skips loudly, or fails under CI.
    have(bin).then_some(bin)
}

/// Who runs Dovecot's services (this user and group, by name: a non-root
/// Dovecot can give its sockets to no one else) and who owns the mail: this
/// user, except that Dovecot refuses to deliver as root, so root delivers
/// as `nobody`.
fn mail_user() -> (String, String, u32, u32) {
    let me = std::fs::metadata("/proc/self").expect("/proc/self");
    let id = |flag: &str| {
        Command::new("id")
            .arg(flag)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("id")
    };
    let (user, group) = (id("-un"), id("-gn"));
    if me.uid() == 0 {
        (user, group, 65534, 65534)
    } else {
        (user, group, me.uid(), me.gid())
    }
}

/// A minimal Dovecot configuration: LMTP only, everything under `root`,
/// users from `root/users`, Maildir with quota.
fn config(root: &Path, (user, group): (&str, &str), (uid, gid): (u32, u32), port: u16) -> String {
    let r = p(root);
    format!(
        "protocols = lmtp
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
ssl = no
listen = 127.0.0.1
hostname = dovecot.test
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_location = maildir:{r}/mail/%n/Maildir
mail_plugins = quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=1G
}}
passdb {{
  driver = passwd-file
  args = {r}/users
}}
userdb {{
  driver = passwd-file
  args = {r}/users
  default_fields = uid={uid} gid={gid} home={r}/mail/%n
}}
service lmtp {{
  unix_listener {r}/lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"
    )
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let child: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// A message in wire form (CRLF, dot-stuffed), ending with CRLF but without
/// the final `.` line, and what Dovecot stores for it (unstuffed, LF).
struct Msg {
    wire: String,
    stored: String,
}

impl Msg {
    fn new(subject: &str, body_lines: &[String]) -> Msg {
        let mut lines = vec![
            format!("From: Sender <{SENDER}>"),
            format!("To: Alice <{ALICE}>"),
            format!("Subject: {subject}"),
            "Date: Thu, 01 Jan 2026 00:00:00 +0000".to_owned(),
            format!("Message-ID: <{subject}@client.example>"),
            String::new(),
        ];
        lines.extend(body_lines.iter().cloned());
        let mut wire = String::new();
        let mut stored = String::new();
        for l in &lines {
            if l.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(l);
            wire.push_str("\r\n");
            stored.push_str(l);
            stored.push('\n');
        }
        Msg { wire, stored }
    }

    /// A short message with a dot-stuffed line, a lone dot, and a
    /// 998-octet line (the longest RFC 5321 allows).
    fn tricky(subject: &str) -> Msg {
        Msg::new(
            subject,
            &[
                "Hello Alice,".to_owned(),
                ".a line with a leading dot".to_owned(),
                ".".to_owned(),
                "  indented, and trailing space ".to_owned(),
                "y".repeat(998),
                String::new(),
                "-- the end".to_owned(),
            ],
        )
    }

    /// About 2 KiB: above bob's 1 KiB quota, far below alice's.
    fn two_kib(subject: &str) -> Msg {
        let lines: Vec<String> = (0..28)
            .map(|i| format!("{i:02} {}", "z".repeat(70)))
            .collect();
        Msg::new(subject, &lines)
    }
}

/// The trace fields at the top of a stored message (each with its
/// continuation lines) and the rest, which is what the client sent.
fn split_trace(text: &str) -> (Vec<&str>, &str) {
    const TRACE: [&str; 3] = ["return-path:", "delivered-to:", "received:"];
    let mut fields = Vec::new();
    let mut rest = text;
    loop {
        let lower = rest.get(..14).unwrap_or(rest).to_ascii_lowercase();
        if !TRACE.iter().any(|t| lower.starts_with(t)) {
            return (fields, rest);
        }
        // The field ends at the first line end not followed by folding white space.
        let mut end = 0;
        loop {
            match rest[end..].find('\n') {
                Some(i) => end += i + 1,
                None => end = rest.len(),
            }
            if !rest[end..].starts_with([' ', '\t']) {
                break;
            }
        }
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
}

/// The one message in `user`'s Maildir, read as text.
fn only_message(d: &Dovecot, user: &str, smtpd: &Smtpd) -> String {
    let files = d.new_mail(user);
    assert_eq!(
        files.len(),
        1,
        "{user}: {files:?}\nsmtpd:\n{}\ndovecot:\n{}",
        smtpd.log(),
        d.log()
    );
    String::from_utf8(std::fs::read(&files[0]).expect("read")).expect("UTF-8")
}

/// Checks that `user` has exactly `msg`, after trace fields: Dovecot's
/// (Return-Path first, a Received `with LMTP`) and smtpd's own Received.
/// Returns the trace fields.
fn assert_delivered(d: &Dovecot, user: &str, msg: &Msg, smtpd: &Smtpd) -> Vec<String> {
    let text = only_message(d, user, smtpd);
    let (trace, rest) = split_trace(&text);
    assert_eq!(
        rest, msg.stored,
        "the message as the client sent it, after the trace fields {trace:?}"
    );
    assert!(
        trace
            .first()
            .is_some_and(|f| *f == format!("Return-Path: <{SENDER}>\n")),
        "{trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|f| f.starts_with("Received: ") && f.contains("by dovecot.test with LMTP")),
        "Dovecot's Received: {trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|f| f.starts_with("Received: ") && f.contains("by conformance.test")),
        "smtpd's Received: {trace:?}"
    );
    trace.iter().map(|f| f.to_string()).collect()
}

/// Sends `msg` from [`SENDER`] to `rcpt` through the SMTP front of `smtpd`;
/// returns the reply to the end of data.
async fn send_one(smtpd: &Smtpd, rcpt: &str, msg: &Msg) -> String {
    let mut c = smtpd.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250").await;
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>\r\n")).await;
    assert!(r.starts_with("250 "), "RCPT {rcpt}: {r:?}\n{}", smtpd.log());
    c.expect("DATA\r\n", "354").await;
    let r = c.cmd(&format!("{}.\r\n", msg.wire)).await;
    c.expect("QUIT\r\n", "221").await;
    r
}

/// `smtpd` serving example.test, with `extra` flags, relaying into the
/// store at `upstream` (`unix:PATH` or `HOST:PORT`) over LMTP.
fn relay_smtpd(ctx: &Ctx, upstream: &str, extra: &[&str]) -> Smtpd {
    let mut args = vec![
        "--relay",
        upstream,
        "--relay-lmtp",
        "--domain",
        "example.test",
    ];
    args.extend_from_slice(extra);
    ctx.spawn(args)
}

/// Relays one message to alice through `upstream` and checks it arrives
/// byte for byte.
async fn relay_one(ctx: &Ctx, d: &Dovecot, upstream: &str) {
    let smtpd = relay_smtpd(ctx, upstream, &[]);
    let msg = Msg::tricky("relayed");
    let r = send_one(&smtpd, ALICE, &msg).await;
    assert!(
        r.starts_with("250 "),
        "end of data: {r:?}\nsmtpd:\n{}\ndovecot:\n{}",
        smtpd.log(),
        d.log()
    );
    let trace = assert_delivered(d, ALICE, &msg, &smtpd);
    // The per-message log line gives the store's own reply.
    let lines = crate::hardening_ops::log_lines(&smtpd, "message accepted", 1).await;
    let want = format!("stored=relay:{upstream} (250 2.0.0 <{ALICE}>");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&want) && l.contains("Saved")),
        "{want:?} in {lines:?}"
    );
    // One recipient in Dovecot's transaction: it names it.
    assert!(
        trace.contains(&format!("Delivered-To: {ALICE}\n")),
        "{trace:?}"
    );
}

// The fixture itself, straight to Dovecot: the replies the relay cases
// expect to see passed through.
async fn dovecot_fixture_speaks_lmtp(_ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    let s = tokio::net::UnixStream::connect(&d.sock)
        .await
        .expect("connect");
    let mut c = crate::Client::new(s);
    assert!(c.reply().await.starts_with("220 "));
    c.expect("LHLO client.example\r\n", "250-dovecot.test")
        .await;
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250 2.1.0")
        .await;
    c.expect(&format!("RCPT TO:<{ALICE}>\r\n"), "250 2.1.5")
        .await;
    let r = c.cmd(&format!("RCPT TO:<{NOBODY}>\r\n")).await;
    assert!(
        r.starts_with("550 5.1.1 ") && r.contains("doesn't exist"),
        "{r:?}"
    );
    c.expect(&format!("RCPT TO:<{BOB}>\r\n"), "250 2.1.5").await;
    c.expect("DATA\r\n", "354").await;
    c.send(&format!("{}.\r\n", Msg::two_kib("direct").wire))
        .await;
    let (a, b) = (c.reply().await, c.reply().await);
    assert!(a.starts_with("250 2.0.0 <alice@example.test> "), "{a:?}");
    assert!(
        b.starts_with("552 5.2.2 <bob@example.test> Quota exceeded"),
        "{b:?}"
    );
    c.expect("QUIT\r\n", "221").await;
    assert_eq!(d.new_mail(ALICE).len(), 1, "{}", d.log());
    assert!(d.new_mail(BOB).is_empty(), "{}", d.log());
}

// Case 1: SMTP in front, Dovecot's LMTP Unix socket behind.
async fn dovecot_relay_over_unix_socket_byte_for_byte(ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    relay_one(&ctx, &d, &d.unix()).await;
}

// Case 2: the same over TCP.
async fn dovecot_relay_over_tcp_byte_for_byte(ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    relay_one(&ctx, &d, &d.tcp()).await;
}

// Case 3: Dovecot's own refusal of an unknown user reaches the client at
// RCPT, and the transaction goes on for a known one.
async fn dovecot_unknown_user_refused_at_rcpt(ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    let smtpd = relay_smtpd(&ctx, &d.unix(), &[]);
    let mut c = smtpd.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250").await;
    let r = c.cmd(&format!("RCPT TO:<{NOBODY}>\r\n")).await;
    assert!(
        r.starts_with("550 5.1.1 ") && r.contains("doesn't exist"),
        "Dovecot's reply passed through: {r:?}\nsmtpd:\n{}\ndovecot:\n{}",
        smtpd.log(),
        d.log()
    );
    c.expect(&format!("RCPT TO:<{ALICE}>\r\n"), "250").await;
    c.expect("DATA\r\n", "354").await;
    let msg = Msg::tricky("after-refusal");
    let r = c.cmd(&format!("{}.\r\n", msg.wire)).await;
    assert!(r.starts_with("250 "), "{r:?}\n{}", smtpd.log());
    c.expect("QUIT\r\n", "221").await;
    assert_delivered(&d, ALICE, &msg, &smtpd);
}

// Case 4: SMTP has one reply after the body, so toward an LMTP store the
// relay takes one recipient per transaction (452 4.5.3 for the others,
// RFC 5321 4.5.3.1.10: the client retries them); bob's quota refusal
// after the body is Dovecot's 552, and alice is not delivered twice.
async fn dovecot_one_recipient_per_transaction_and_quota(ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    let smtpd = relay_smtpd(&ctx, &d.unix(), &[]);
    let logs = || format!("\nsmtpd:\n{}\ndovecot:\n{}", smtpd.log(), d.log());
    let msg = Msg::two_kib("quota");
    let mut c = smtpd.greeted().await;
    c.expect("EHLO client.example\r\n", "250").await;
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250").await;
    c.expect(&format!("RCPT TO:<{ALICE}>\r\n"), "250").await;
    let r = c.cmd(&format!("RCPT TO:<{BOB}>\r\n")).await;
    assert!(r.starts_with("452 4.5.3 "), "{r:?}{}", logs());
    c.expect("DATA\r\n", "354").await;
    let r = c.cmd(&format!("{}.\r\n", msg.wire)).await;
    assert!(r.starts_with("250 "), "{r:?}{}", logs());
    assert_delivered(&d, ALICE, &msg, &smtpd);
    // The retry for bob, as a client does it.
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250").await;
    c.expect(&format!("RCPT TO:<{BOB}>\r\n"), "250").await;
    c.expect("DATA\r\n", "354").await;
    let r = c.cmd(&format!("{}.\r\n", msg.wire)).await;
    assert!(
        r.starts_with("552 5.2.2 ") && r.contains("Quota exceeded"),
        "Dovecot's quota refusal passed through: {r:?}{}",
        logs()
    );
    c.expect("QUIT\r\n", "221").await;
    assert!(d.new_mail(BOB).is_empty(), "{:?}", d.new_mail(BOB));
    assert_eq!(d.new_mail(ALICE).len(), 1, "no second copy{}", logs());
}

// Case 5: LMTP in front and behind (the store's Unix socket, then its
// TCP port): one transaction for alice and bob, and after the body
// Dovecot's two replies, in recipient order.
async fn dovecot_lmtp_front_one_reply_per_recipient(ctx: Ctx) {
    for tcp in [false, true] {
        let Some(d) = Dovecot::start() else { return };
        let upstream = if tcp { d.tcp() } else { d.unix() };
        lmtp_front(&ctx, &d, &upstream).await;
    }
}

async fn lmtp_front(ctx: &Ctx, d: &Dovecot, upstream: &str) {
    let smtpd = relay_smtpd(ctx, upstream, &["--lmtp"]);
    let logs = || format!("\nsmtpd:\n{}\ndovecot:\n{}", smtpd.log(), d.log());
    let msg = Msg::two_kib("lmtp-front");
    let mut c = smtpd.greeted().await;
    c.expect("LHLO client.example\r\n", "250").await;
    c.expect(&format!("MAIL FROM:<{SENDER}>\r\n"), "250").await;
    c.expect(&format!("RCPT TO:<{ALICE}>\r\n"), "250").await;
    c.expect(&format!("RCPT TO:<{BOB}>\r\n"), "250").await;
    c.expect("DATA\r\n", "354").await;
    c.send(&format!("{}.\r\n", msg.wire)).await;
    let (a, b) = (c.reply().await, c.reply().await);
    assert!(
        a.starts_with("250 2.0.0 ") && a.contains(ALICE) && a.contains("Saved"),
        "alice: Dovecot's reply passed through: {a:?}{}",
        logs()
    );
    assert!(
        b.starts_with("552 5.2.2 ") && b.contains(BOB) && b.contains("Quota exceeded"),
        "bob: Dovecot's reply passed through: {b:?}{}",
        logs()
    );
    // Nothing more: exactly one reply per recipient.
    c.expect("NOOP\r\n", "250").await;
    c.expect("QUIT\r\n", "221").await;
    let text = only_message(d, ALICE, &smtpd);
    assert_eq!(split_trace(&text).1, msg.stored, "{text}");
    assert!(d.new_mail(BOB).is_empty(), "{:?}", d.new_mail(BOB));
}

// Case 6: a real client (lettre) through the relay into Dovecot.
async fn dovecot_lettre_through_the_relay(ctx: Ctx) {
    let Some(d) = Dovecot::start() else { return };
    let smtpd = relay_smtpd(&ctx, &d.unix(), &[]);
    let msg = Msg::tricky("lettre");
    // Lettre dot-stuffs and ends the data with CRLF.CRLF itself: give it
    // the unstuffed text without its last line end.
    let raw = msg.stored.replace('\n', "\r\n");
    let raw = raw.strip_suffix("\r\n").unwrap_or(&raw);
    let envelope = Envelope::new(
        Some(SENDER.parse().expect("sender")),
        vec![ALICE.parse().expect("alice")],
    )
    .expect("envelope");
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtpd.addr().port())
        .build();
    let sent = mailer.send_raw(&envelope, raw.as_bytes()).await;
    assert!(
        sent.is_ok(),
        "{sent:?}\nsmtpd:\n{}\ndovecot:\n{}",
        smtpd.log(),
        d.log()
    );
    assert_delivered(&d, ALICE, &msg, &smtpd);
}
