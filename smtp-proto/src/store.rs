//! Built-in storage handlers: debug printing, sink, Maildir, mbox, and a
//! served-domains policy wrapper.
//!
//! These are [`Handler`]s that every adapter can use. They are
//! runtime-agnostic: file I/O runs on the [`blocking`] crate's thread pool,
//! so it never blocks an async worker thread. Storage handlers answer `250`
//! only after the data is on disk (`fsync`), and `451 4.3.0` when anything
//! fails, leaving nothing half-delivered.
//!
//! This module touches the file system; the pure core never calls it.
//!
//! ```
//! use smtp_proto::store::{DomainPolicy, MaildirHandler};
//!
//! let handler = DomainPolicy::new(vec!["example.org".into()], MaildirHandler::new("/var/mail/smtpd"));
//! # let _ = handler;
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::handler::{
    Envelope, Handler, MailOptions, Message, MessageDecision, Recipient, SessionInfo,
};
use crate::reply::{EnhancedCode, Reply};
use crate::sasl::Credentials;
use crate::server::{CloseReason, Decision, HeloKind};

/// `550 5.1.3` for a recipient that cannot be stored safely.
const BAD_MAILBOX_NAME: Reply = Reply::constant(
    550,
    EnhancedCode::new(5, 1, 3),
    "Recipient address not valid for local delivery",
);

/// This machine's host name (for Maildir file names and default identities).
pub fn local_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// A writer shared by the sessions of a [`DebugHandler`].
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Prints each message, like Python's `smtpd.DebuggingServer`, and accepts it.
///
/// The output looks like this (the message's CRLF line ends become LF):
///
/// ```text
/// ---------- MESSAGE FOLLOWS ----------
/// X-Peer: 192.0.2.1
/// X-MailFrom: alice@example.org
/// X-RcptTo: bob@example.net, carol@example.net
///
/// Subject: hi
/// ...
/// ------------ END MESSAGE ------------
/// ```
#[derive(Clone)]
pub struct DebugHandler {
    out: SharedWriter,
}

impl std::fmt::Debug for DebugHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugHandler").finish_non_exhaustive()
    }
}

impl Default for DebugHandler {
    fn default() -> Self {
        DebugHandler::stdout()
    }
}

impl DebugHandler {
    /// Prints to standard output.
    pub fn stdout() -> Self {
        DebugHandler::new(Box::new(io::stdout()))
    }

    /// Prints to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        DebugHandler {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Prints to a writer shared with the caller (e.g. to read it back in tests).
    pub fn shared(out: SharedWriter) -> Self {
        DebugHandler { out }
    }

    /// The text printed for one message.
    pub fn format(session: &SessionInfo, envelope: &Envelope, message: &Message) -> Vec<u8> {
        let mut v = Vec::with_capacity(message.data.len() + 256);
        v.extend_from_slice(b"---------- MESSAGE FOLLOWS ----------\n");
        if let Some(addr) = session.peer.remote {
            v.extend_from_slice(format!("X-Peer: {}\n", addr.ip()).as_bytes());
        }
        v.extend_from_slice(format!("X-MailFrom: {}\n", envelope.from).as_bytes());
        let rcpts: Vec<&str> = envelope.recipient_addresses().collect();
        v.extend_from_slice(format!("X-RcptTo: {}\n\n", rcpts.join(", ")).as_bytes());
        push_lf_lines(&mut v, &message.data, |_| false);
        v.extend_from_slice(b"------------ END MESSAGE ------------\n");
        v
    }
}

impl Handler for DebugHandler {
    async fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        let text = DebugHandler::format(session, envelope, message);
        let out = self.out.clone();
        let res = blocking::unblock(move || {
            let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(&text)?;
            w.flush()
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "debug handler could not print a message");
        }
        Decision::Accept.into()
    }
}

/// Accepts every message and throws it away.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkHandler;

impl Handler for SinkHandler {
    fn wants_trace(&self) -> bool {
        false
    }
}

/// The Maildir folder name for a recipient, or `None` if the address could
/// leave the root directory or is otherwise unusable as a file name.
///
/// The name is the address in lower case; the bare `Postmaster` is `postmaster`.
pub fn mailbox_folder(address: &str) -> Option<String> {
    if address.eq_ignore_ascii_case("postmaster") {
        return Some("postmaster".to_owned());
    }
    let name = address.to_lowercase();
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    (!bad).then_some(name)
}

/// Stores each message in a Maildir per recipient: `ROOT/<recipient>/{tmp,new,cur}`.
///
/// Each copy starts with `Return-Path:` and `Delivered-To:` headers and the
/// `Received:` header. It is written to `tmp/`, synced, moved into `new/`,
/// and the directory is synced before the message is accepted. Recipients
/// whose address could escape `ROOT` are refused at RCPT with `550 5.1.3`.
/// All copies are delivered or none: any failure answers `451 4.3.0`.
#[derive(Debug)]
pub struct MaildirHandler {
    root: PathBuf,
    hostname: String,
    counter: AtomicU64,
}

impl MaildirHandler {
    /// A Maildir store under `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let host = local_hostname().replace('/', "\\057").replace(':', "\\072");
        MaildirHandler {
            root: root.into(),
            hostname: host,
            counter: AtomicU64::new(0),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            self.hostname
        )
    }
}

/// One copy to deliver: the folder and the file contents' head.
struct Copy {
    dir: PathBuf,
    head: Vec<u8>,
}

fn deliver_maildir(copies: &[Copy], names: &[String], message: &Message) -> io::Result<()> {
    let mut tmps: Vec<PathBuf> = Vec::new();
    let mut result = (|| {
        for (c, name) in copies.iter().zip(names) {
            for sub in ["tmp", "new", "cur"] {
                fs::create_dir_all(c.dir.join(sub))?;
            }
            let tmp = c.dir.join("tmp").join(name);
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            tmps.push(tmp);
            f.write_all(&c.head)?;
            f.write_all(&message.trace)?;
            f.write_all(&message.data)?;
            f.sync_all()?;
        }
        Ok(())
    })();
    let mut moved: Vec<PathBuf> = Vec::new();
    if result.is_ok() {
        result = (|| {
            for ((c, name), tmp) in copies.iter().zip(names).zip(&tmps) {
                let new = c.dir.join("new").join(name);
                fs::rename(tmp, &new)?;
                moved.push(new);
                File::open(c.dir.join("new"))?.sync_all()?;
            }
            Ok(())
        })();
    }
    if result.is_err() {
        for p in tmps.iter().chain(&moved) {
            let _ = fs::remove_file(p);
        }
    }
    result
}

impl Handler for MaildirHandler {
    async fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
        match mailbox_folder(&to.address) {
            Some(_) => Decision::Accept,
            None => BAD_MAILBOX_NAME.into(),
        }
    }

    async fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        let mut copies: Vec<Copy> = Vec::new();
        for r in &envelope.recipients {
            let Some(folder) = mailbox_folder(&r.address) else {
                return Reply::TEMPORARY_FAILURE.into();
            };
            let dir = self.root.join(folder);
            if copies.iter().any(|c| c.dir == dir) {
                continue;
            }
            let head = format!(
                "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
                envelope.from, r.address
            );
            copies.push(Copy {
                dir,
                head: head.into_bytes(),
            });
        }
        let names: Vec<String> = copies.iter().map(|_| self.unique_name()).collect();
        // Shared with the blocking thread without copying the body.
        let message = Arc::clone(message);
        let res = blocking::unblock(move || deliver_maildir(&copies, &names, &message)).await;
        match res {
            Ok(()) => Decision::Accept.into(),
            Err(e) => {
                tracing::error!(session = %session.id, error = %e, "maildir delivery failed");
                Reply::TEMPORARY_FAILURE.into()
            }
        }
    }
}

/// Appends each message to an mbox file (mboxrd format), under an advisory lock.
///
/// Each message starts with a `From sender date` line, lines matching
/// `^>*From ` get one more `>`, line ends are LF, and a blank line follows.
/// The file is synced before the message is accepted; on failure it is cut
/// back to its previous length and the answer is `451 4.3.0`.
#[derive(Debug, Clone)]
pub struct MboxHandler {
    path: PathBuf,
}

impl MboxHandler {
    /// An mbox store at `path` (created when needed).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MboxHandler { path: path.into() }
    }

    /// The mbox file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One message in mboxrd form, `From ` line and trailing blank line included.
    pub fn format(from: &str, unix_time: i64, message: &Message) -> Vec<u8> {
        let sender = if from.is_empty() {
            "MAILER-DAEMON"
        } else {
            from
        };
        let mut v = Vec::with_capacity(message.trace.len() + message.data.len() + 128);
        v.extend_from_slice(format!("From {sender} {}\n", asctime(unix_time)).as_bytes());
        let quote = |line: &[u8]| {
            let rest = &line[line.iter().take_while(|&&b| b == b'>').count()..];
            rest.starts_with(b"From ")
        };
        push_lf_lines(&mut v, &message.trace, quote);
        push_lf_lines(&mut v, &message.data, quote);
        v.push(b'\n');
        v
    }
}

fn append_mbox(path: &Path, text: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    fs4::FileExt::lock(&f)?;
    let len = f.metadata()?.len();
    let res = (|| {
        let mut w = &f;
        w.write_all(text)?;
        f.sync_all()
    })();
    if res.is_err() {
        let _ = f.set_len(len);
        let _ = f.sync_all();
    }
    // Dropping the file releases the lock.
    res
}

impl Handler for MboxHandler {
    async fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> MessageDecision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let text = MboxHandler::format(&envelope.from, now, message);
        let path = self.path.clone();
        match blocking::unblock(move || append_mbox(&path, &text)).await {
            Ok(()) => Decision::Accept.into(),
            Err(e) => {
                tracing::error!(session = %session.id, error = %e, "mbox delivery failed");
                Reply::TEMPORARY_FAILURE.into()
            }
        }
    }
}

/// Restricts recipients to served domains, then delegates to `inner`.
///
/// Recipients in other domains get `550 5.7.1` ([`Reply::RELAY_DENIED`]);
/// the bare `postmaster` (any case) is always let through, and
/// `postmaster@` a served domain like any address there (RFC 5321 §4.5.1;
/// `postmaster@` another domain is not ours). An empty list, or a list containing `*`, serves any
/// domain. The first domain names the server's own mail domain (the one
/// `MAILER-DAEMON` and `postmaster` belong to).
#[derive(Debug, Clone)]
pub struct DomainPolicy<H> {
    /// Served domains, compared without regard to ASCII case.
    pub domains: Vec<String>,
    /// The handler every other decision goes to.
    pub inner: H,
}

impl<H> DomainPolicy<H> {
    /// Serves `domains` in front of `inner`.
    pub fn new(domains: Vec<String>, inner: H) -> Self {
        DomainPolicy { domains, inner }
    }

    /// The server's own mail domain: the first one listed (unless it is `*`).
    pub fn primary_domain(&self) -> Option<&str> {
        self.domains
            .first()
            .map(String::as_str)
            .filter(|d| *d != "*")
    }

    /// Whether mail for `address` is accepted by the domain check: any
    /// address when no domain or `*` is listed, else
    /// [`DomainPolicy::serves_by_name`].
    pub fn serves(&self, address: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d == "*") || self.serves_by_name(address)
    }

    /// Whether `address` is the bare `postmaster` or in a domain listed by
    /// name (`*` names none). The postmaster exception of RFC 5321 §4.5.1
    /// is for our own domains only: `postmaster@elsewhere` is not ours.
    pub fn serves_by_name(&self, address: &str) -> bool {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return address.eq_ignore_ascii_case("postmaster");
        };
        let domain = domain.trim_start_matches('[').trim_end_matches(']');
        self.domains
            .iter()
            .any(|d| d != "*" && d.eq_ignore_ascii_case(domain))
    }
}

impl<H: Handler> Handler for DomainPolicy<H> {
    fn wants_trace(&self) -> bool {
        self.inner.wants_trace()
    }

    fn connect(&self, session: &SessionInfo) -> impl Future<Output = Decision> + Send {
        self.inner.connect(session)
    }

    fn helo(
        &self,
        session: &SessionInfo,
        kind: HeloKind,
        name: &str,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.helo(session, kind, name)
    }

    fn mail(
        &self,
        session: &SessionInfo,
        from: &str,
        options: &MailOptions,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.mail(session, from, options)
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        if !self.serves(&to.address) {
            return Reply::RELAY_DENIED.into();
        }
        self.inner.rcpt(session, envelope, to).await
    }

    fn verify(
        &self,
        session: &SessionInfo,
        arg: &str,
        expand: bool,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.verify(session, arg, expand)
    }

    fn auth(
        &self,
        session: &SessionInfo,
        credentials: &Credentials,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.auth(session, credentials)
    }

    fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> impl Future<Output = MessageDecision> + Send {
        self.inner.message(session, envelope, message)
    }

    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        self.inner.disconnect(session, reason);
    }
}

/// Appends `data` with CRLF line ends turned into LF, prefixing `>` to lines
/// for which `quote` says so. A last line without a line end gets one.
fn push_lf_lines(out: &mut Vec<u8>, data: &[u8], quote: impl Fn(&[u8]) -> bool) {
    let mut rest = data;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if quote(line) {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
}

/// `Thu Jan  1 00:00:00 1970` (UTC) for Unix seconds.
fn asctime(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        y
    )
}

/// AUTH against a fixed list of users (name → password), compared in
/// constant time; every other hook goes to `inner`. `Debug` shows only how
/// many users there are, never a password.
pub struct PasswordAuth<H> {
    users: HashMap<String, String>,
    /// The handler every other decision goes to.
    pub inner: H,
}

impl<H> PasswordAuth<H> {
    /// Checks AUTH against `users` in front of `inner`.
    pub fn new(users: HashMap<String, String>, inner: H) -> Self {
        PasswordAuth { users, inner }
    }

    /// Whether the credentials name a known user with the right password
    /// and no foreign authorization identity.
    pub fn check(&self, c: &Credentials) -> bool {
        let authz_ok = c
            .authzid
            .as_deref()
            .is_none_or(|z| z.is_empty() || z == c.username);
        let stored = self.users.get(&c.username).map(String::as_bytes);
        // Compare against something even for unknown users.
        let ok = constant_time_eq(stored.unwrap_or(b"\0"), c.password.expose().as_bytes());
        ok && authz_ok && stored.is_some()
    }
}

impl<H: std::fmt::Debug> std::fmt::Debug for PasswordAuth<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("users", &self.users.len())
            .field("inner", &self.inner)
            .finish()
    }
}

/// Compares without an early exit, so timing does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl<H: Handler> Handler for PasswordAuth<H> {
    fn wants_trace(&self) -> bool {
        self.inner.wants_trace()
    }

    fn connect(&self, session: &SessionInfo) -> impl Future<Output = Decision> + Send {
        self.inner.connect(session)
    }

    fn helo(
        &self,
        session: &SessionInfo,
        kind: HeloKind,
        name: &str,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.helo(session, kind, name)
    }

    fn mail(
        &self,
        session: &SessionInfo,
        from: &str,
        options: &MailOptions,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.mail(session, from, options)
    }

    fn rcpt(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        to: &Recipient,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.rcpt(session, envelope, to)
    }

    fn verify(
        &self,
        session: &SessionInfo,
        arg: &str,
        expand: bool,
    ) -> impl Future<Output = Decision> + Send {
        self.inner.verify(session, arg, expand)
    }

    async fn auth(&self, session: &SessionInfo, credentials: &Credentials) -> Decision {
        if self.check(credentials) {
            tracing::info!(session = %session.id, user = %credentials.username, "authenticated");
            Decision::Accept
        } else {
            tracing::info!(session = %session.id, user = %credentials.username, "authentication failed");
            Reply::AUTH_FAILED.into()
        }
    }

    fn message(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        message: &Arc<Message>,
    ) -> impl Future<Output = MessageDecision> + Send {
        self.inner.message(session, envelope, message)
    }

    fn disconnect(&self, session: &SessionInfo, reason: CloseReason) {
        self.inner.disconnect(session, reason);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_executor::block_on;

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            notify: None,
            orcpt: None,
        }
    }

    fn envelope(from: &str, to: &[&str]) -> Envelope {
        Envelope {
            from: from.into(),
            recipients: to.iter().map(|a| rcpt(a)).collect(),
            ..Envelope::default()
        }
    }

    fn message(data: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            data: data.to_vec(),
            trace: b"Received: from x by y; Thu, 1 Jan 1970 00:00:00 +0000\r\n".to_vec(),
        })
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        match fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn maildir_layout_and_headers() {
        let root = tempfile::tempdir().unwrap();
        let h = MaildirHandler::new(root.path());
        let s = SessionInfo::default();
        let env = envelope(
            "alice@example.org",
            &["Bob@Example.NET", "Postmaster", "bob@example.net"],
        );
        let d = block_on(h.message(&s, &env, &message(b"Subject: hi\r\n\r\nbody\r\n")));
        assert_eq!(d, Decision::Accept.into());
        let bob = root.path().join("bob@example.net");
        for sub in ["tmp", "new", "cur"] {
            assert!(bob.join(sub).is_dir());
        }
        let new = files(&bob.join("new"));
        assert_eq!(new.len(), 1, "one copy per distinct mailbox");
        assert!(files(&bob.join("tmp")).is_empty());
        let text = fs::read_to_string(&new[0]).unwrap();
        assert!(text.starts_with(
            "Return-Path: <alice@example.org>\r\nDelivered-To: Bob@Example.NET\r\nReceived: from x"
        ));
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
        let name = new[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.contains(&format!("P{}", std::process::id())), "{name}");
        assert_eq!(files(&root.path().join("postmaster").join("new")).len(), 1);
    }

    #[test]
    fn maildir_refuses_traversal_names() {
        let root = tempfile::tempdir().unwrap();
        let h = MaildirHandler::new(root.path());
        let s = SessionInfo::default();
        let e = Envelope::default();
        let long = "a".repeat(251) + "@b.cd";
        for bad in [
            "../x@y",
            "a/b@c",
            "a\\b@c",
            ".",
            "..",
            ".hidden@x",
            "",
            "a\0b@c",
            "a\tb@c",
            long.as_str(),
        ] {
            let d = block_on(h.rcpt(&s, &e, &rcpt(bad)));
            assert_eq!(d, BAD_MAILBOX_NAME.into(), "{bad:?}");
        }
        for good in ["user@example.org", "POSTMASTER", "a.b@c"] {
            assert_eq!(
                block_on(h.rcpt(&s, &e, &rcpt(good))),
                Decision::Accept,
                "{good}"
            );
        }
        // A bad name reaching the message hook anyway is refused, and nothing is written.
        let d = block_on(h.message(&s, &envelope("", &["ok@x", "../evil"]), &message(b"x\r\n")));
        assert_eq!(d, Reply::TEMPORARY_FAILURE.into());
        assert!(files(root.path()).is_empty());
    }

    #[test]
    fn maildir_failure_leaves_nothing_in_new() {
        let root = tempfile::tempdir().unwrap();
        // A file where the second mailbox's directory should be.
        fs::write(root.path().join("b@x"), b"").unwrap();
        let h = MaildirHandler::new(root.path());
        let d = block_on(h.message(
            &SessionInfo::default(),
            &envelope("", &["a@x", "b@x"]),
            &message(b"x\r\n"),
        ));
        assert_eq!(d, Reply::TEMPORARY_FAILURE.into());
        assert!(files(&root.path().join("a@x").join("new")).is_empty());
        assert!(files(&root.path().join("a@x").join("tmp")).is_empty());
    }

    #[test]
    fn mbox_quoting_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbox");
        let h = MboxHandler::new(&path);
        let s = SessionInfo::default();
        let data =
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\n>>From x\r\nFromage\r\n From y\r\n";
        let d = block_on(h.message(&s, &envelope("a@b", &["c@d"]), &message(data)));
        assert_eq!(d, Decision::Accept.into());
        let d = block_on(h.message(&s, &envelope("", &["c@d"]), &message(b"second")));
        assert_eq!(d, Decision::Accept.into());
        let text = fs::read_to_string(&path).unwrap();
        let mut msgs = text.split("\n\nFrom ");
        let first = msgs.next().unwrap();
        assert!(first.starts_with("From a@b "), "{first}");
        assert!(first.contains("\nReceived: from x by y;"));
        assert!(
            first.ends_with("\n>From here\n>>From there\n>>>From x\nFromage\n From y"),
            "{first}"
        );
        assert!(!text.contains('\r'));
        let second = msgs.next().unwrap();
        assert!(second.starts_with("MAILER-DAEMON "), "{second}");
        assert!(second.ends_with("second\n\n"));
    }

    #[test]
    fn asctime_format() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(1_709_210_096), "Thu Feb 29 12:34:56 2024");
    }

    #[test]
    fn domain_policy() {
        let p = DomainPolicy::new(
            vec!["Example.org".into(), "example.net".into()],
            SinkHandler,
        );
        let s = SessionInfo::default();
        let e = Envelope::default();
        for (a, ok) in [
            ("bob@example.org", true),
            ("bob@EXAMPLE.NET", true),
            ("bob@evil.example", false),
            ("PostMaster@evil.example", true),
            ("Postmaster", true),
            ("bob", false),
        ] {
            let want = if ok {
                Decision::Accept
            } else {
                Reply::RELAY_DENIED.into()
            };
            assert_eq!(block_on(p.rcpt(&s, &e, &rcpt(a))), want, "{a}");
        }
        assert_eq!(p.primary_domain(), Some("Example.org"));
        let any = DomainPolicy::new(vec!["*".into()], SinkHandler);
        assert!(any.serves("x@anything"));
        assert!(DomainPolicy::new(Vec::new(), SinkHandler).serves("x@y"));
    }

    #[test]
    fn debug_format() {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        struct W(Arc<Mutex<Vec<u8>>>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let h = DebugHandler::new(Box::new(W(buf.clone())));
        let mut s = SessionInfo::default();
        s.peer.remote = Some("192.0.2.1:25".parse().unwrap());
        block_on(h.message(
            &s,
            &envelope("a@b", &["c@d", "e@f"]),
            &message(b"Subject: x\r\n\r\nhi\r\n"),
        ));
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "---------- MESSAGE FOLLOWS ----------\nX-Peer: 192.0.2.1\nX-MailFrom: a@b\nX-RcptTo: c@d, e@f\n\nSubject: x\n\nhi\n------------ END MESSAGE ------------\n"
        );
    }

    #[test]
    fn password_auth_checks_and_hides_passwords() {
        use crate::sasl::{Mechanism, Secret};
        let users = HashMap::from([("bob".to_owned(), "s3cret".to_owned())]);
        let h = PasswordAuth::new(users, SinkHandler);
        let creds = |authzid: Option<&str>, user: &str, pass: &str| Credentials {
            mechanism: Mechanism::Plain,
            authzid: authzid.map(str::to_owned),
            username: user.to_owned(),
            password: Secret::new(pass.to_owned()),
        };
        let s = SessionInfo::default();
        assert_eq!(
            block_on(h.auth(&s, &creds(None, "bob", "s3cret"))),
            Decision::Accept
        );
        assert_eq!(
            block_on(h.auth(&s, &creds(Some("bob"), "bob", "s3cret"))),
            Decision::Accept
        );
        let refused = Decision::Reply(Reply::AUTH_FAILED);
        assert_eq!(
            block_on(h.auth(&s, &creds(None, "bob", "s3cret!"))),
            refused
        );
        assert_eq!(block_on(h.auth(&s, &creds(None, "bob", ""))), refused);
        assert_eq!(block_on(h.auth(&s, &creds(None, "eve", "s3cret"))), refused);
        assert_eq!(
            block_on(h.auth(&s, &creds(Some("root"), "bob", "s3cret"))),
            refused
        );
        assert!(!format!("{h:?}").contains("s3cret"));
    }
}
