//! Built-in storage handlers: debug printing, sink, Maildir, mbox, and a
//! served-domains policy wrapper.
//!
//! These are [`Handler`]s that every adapter can use. They are
//! runtime-agnostic: file I/O runs on the [`blocking`] crate's thread pool,
//! so it never blocks an async worker thread.
//!
//! Every store takes the body as it arrives ([`Handler::body`] returns a
//! [`Body::Stream`] or [`Body::Discard`]), so a session holds at most 64 KiB
//! of a message whatever its size: [`SinkHandler`] keeps none of it;
//! [`MaildirHandler`] writes the mailbox's `tmp/` file in 64 KiB runs;
//! [`MboxHandler`] and [`DebugHandler`] spool past 64 KiB to an anonymous
//! temporary file (nothing is left behind, even after a crash) and append
//! or print the message whole at its end, under a lock. A body cut off
//! (too big, a bad line, a disconnect, a timeout) leaves nothing behind.
//! Their [`Handler::message`] (the whole-message form) still works, for
//! callers that hold a message already. Storage handlers answer `250`
//! only after the data is on disk (`fsync` of the file, and of every
//! directory whose entries changed), and a 4xx when anything fails (`452`
//! for a full disk or quota, `451 4.3.0` otherwise), leaving nothing
//! half-delivered.
//!
//! This module touches the file system; the pure core never calls it.
//!
//! ```
//! use smtp_server::store::{DomainPolicy, MaildirHandler};
//!
//! let handler = DomainPolicy::new(vec!["example.org".into()], MaildirHandler::new("/var/mail/smtpd"));
//! # let _ = handler;
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::handler::{
    Body, BodySink, Envelope, Handler, Layer, Message, MessageDecision, Recipient, SessionInfo,
    TokenDecision,
};
use crate::reload::Swap;
use smtp_proto::server::AbortReason;
use spool::{LfLines, Spool, SpoolFile, Spooled};

mod spool;
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::sasl::{Credentials, OAuthToken, Secret};
use smtp_proto::server::Decision;

/// `550 5.1.3` for a recipient that cannot be stored safely.
const BAD_MAILBOX_NAME: Reply = Reply::constant(
    550,
    EnhancedCode::new(5, 1, 3),
    "Recipient address not valid for local delivery",
);

/// `452 4.2.2` when a mailbox's quota is exceeded.
const MAILBOX_FULL: Reply = Reply::constant(452, EnhancedCode::new(4, 2, 2), "Mailbox full");

/// `452 4.3.1` when the file system is full.
const STORAGE_FULL: Reply = Reply::constant(
    452,
    EnhancedCode::new(4, 3, 1),
    "Insufficient system storage",
);

/// The reply for a store that could not write: `452` for a full disk or
/// quota, `451 4.3.0` for anything else.
fn write_failure(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::StorageFull => STORAGE_FULL,
        io::ErrorKind::QuotaExceeded => MAILBOX_FULL,
        _ => Reply::TEMPORARY_FAILURE,
    }
}

/// Makes a directory's entries (created, renamed or removed files)
/// durable: `fsync` of the directory. Replaceable so tests can watch it.
/// Also remembers the mailbox directories already made durable, so a
/// delivery to a known mailbox neither looks at nor syncs them again.
#[derive(Clone)]
struct DirSync(Arc<SyncFn>, Arc<Mutex<HashSet<PathBuf>>>);

/// Known-durable directories remembered at most (then forgotten, which
/// costs a few `stat` calls and syncs, never durability).
const KNOWN_DIRS: usize = 100_000;

/// The function behind a [`DirSync`].
type SyncFn = dyn Fn(&Path) -> io::Result<()> + Send + Sync;

impl Default for DirSync {
    fn default() -> Self {
        DirSync::new(Arc::new(|dir: &Path| sync_file(&File::open(dir)?)))
    }
}

impl std::fmt::Debug for DirSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirSync")
    }
}

impl DirSync {
    fn new(f: Arc<SyncFn>) -> DirSync {
        DirSync(f, Arc::default())
    }

    fn sync(&self, dir: &Path) -> io::Result<()> {
        (self.0)(dir)
    }
}

/// `fsync` of `f`, timed for the metrics (`smtp_store_fsync_seconds`).
fn sync_file(f: &File) -> io::Result<()> {
    let start = std::time::Instant::now();
    let synced = f.sync_all();
    crate::metrics::store_fsync(start.elapsed());
    synced
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates whichever of `dirs` are missing, with their missing parents,
/// and syncs every directory whose entries changed: each one found missing
/// and the directory it was made in. Sessions do this one at a time, and a
/// directory counts as known only once its sync succeeded: a delivery that
/// finds a directory another session made is never answered before that
/// directory is durable (one not yet known is synced again, with its parent).
fn create_dirs_synced(dirs: &[PathBuf], sync: &DirSync) -> io::Result<()> {
    let mut known = sync.1.lock().unwrap_or_else(|e| e.into_inner());
    if dirs.iter().all(|d| known.contains(d)) {
        return Ok(());
    }
    let mut changed: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let mut missing: Vec<&Path> = Vec::new();
        let mut cur = dir.as_path();
        loop {
            match fs::metadata(cur) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(cur);
                    match cur.parent() {
                        Some(p) if !p.as_os_str().is_empty() => cur = p,
                        _ => break,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let Some(top) = missing.last() else {
            // Present but not known durable: made by a session whose sync
            // failed, or before this process (syncing again is harmless).
            for d in [parent_dir(dir), dir.as_path()] {
                if !known.contains(d) && !changed.iter().any(|c| c == d) {
                    changed.push(d.to_path_buf());
                }
            }
            continue;
        };
        for d in [parent_dir(top)].into_iter().chain(missing.iter().copied()) {
            if !changed.iter().any(|c| c == d) {
                changed.push(d.to_path_buf());
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }
    for d in &changed {
        sync.sync(d)?;
    }
    if known.len() + dirs.len() > KNOWN_DIRS {
        known.clear();
    }
    known.extend(dirs.iter().cloned());
    Ok(())
}

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

/// Prints each message, like Python's `smtpd.DebuggingServer`, and accepts
/// it once printed: a failed write (closed stdout, full disk) answers
/// `451 4.3.0`.
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
        let mut v = DebugHandler::head(session, envelope);
        LfLines::convert(&message.data, false, &mut v);
        v.extend_from_slice(DEBUG_FOOTER);
        v
    }

    /// What is printed before the message's lines.
    fn head(session: &SessionInfo, envelope: &Envelope) -> Vec<u8> {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(b"---------- MESSAGE FOLLOWS ----------\n");
        if let Some(addr) = session.peer.remote {
            v.extend_from_slice(format!("X-Peer: {}\n", addr.ip()).as_bytes());
        }
        v.extend_from_slice(format!("X-MailFrom: {}\n", envelope.from).as_bytes());
        let rcpts: Vec<&str> = envelope.recipient_addresses().collect();
        v.extend_from_slice(format!("X-RcptTo: {}\n\n", rcpts.join(", ")).as_bytes());
        v
    }
}

/// What is printed after a message's lines.
const DEBUG_FOOTER: &[u8] = b"------------ END MESSAGE ------------\n";

/// Where a spooled message goes whole at its end, under the target's
/// lock (so concurrent messages never interleave): the debug printer's
/// output, an mbox.
trait Append: Send + 'static {
    /// What follows the message's lines.
    const TRAILER: &'static [u8];
    /// Appends the message (on the blocking pool); on failure nothing of
    /// it stays.
    fn append(&self, spooled: Spooled<File>) -> io::Result<()>;
    /// Where it went, for the per-message log line.
    fn place(&self) -> String;
    /// The answer when it failed.
    fn refusal(&self, e: &io::Error) -> Reply {
        write_failure(e)
    }
}

impl Append for SharedWriter {
    const TRAILER: &'static [u8] = DEBUG_FOOTER;

    fn append(&self, spooled: Spooled<File>) -> io::Result<()> {
        let mut w = self.lock().unwrap_or_else(|e| e.into_inner());
        spooled.copy_to(&mut *w)?;
        w.flush()
    }

    fn place(&self) -> String {
        "printed".into()
    }

    /// `451 4.3.0` whatever failed (a closed stdout is not a full disk).
    fn refusal(&self, _: &io::Error) -> Reply {
        Reply::TEMPORARY_FAILURE
    }
}

/// A message spooled (in memory, then an anonymous temporary file) and
/// appended whole at its end ([`Append`]).
struct AppendSink<A> {
    spool: Spool<File>,
    to: A,
    session: String,
}

impl<A: Append> BodySink for AppendSink<A> {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
        Box::pin(spool_write(&mut self.spool, chunk, &self.session))
    }

    fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
        let AppendSink { spool, to, session } = *self;
        let spooled = spool.end(true, A::TRAILER);
        Box::pin(async move {
            let (to, res) = blocking::unblock(move || {
                let res = to.append(spooled);
                (to, res)
            })
            .await;
            match res {
                Ok(()) => {
                    message.record_delivery(to.place());
                    Decision::Accept.into()
                }
                Err(e) => {
                    tracing::error!(session = %session, store = %to.place(), error = %e, "could not store a message");
                    to.refusal(&e).into()
                }
            }
        })
    }

    /// The spool's temporary file goes with it; the target was not touched.
    fn abort(self: Box<Self>, _: AbortReason) {}
}

/// One chunk into a store's spool; a failed write is logged and refuses
/// the message (`452` for a full disk or quota, `451 4.3.0` otherwise).
async fn spool_write<T: SpoolFile>(
    spool: &mut Spool<T>,
    chunk: &[u8],
    session: &str,
) -> Result<(), Reply> {
    spool.write(chunk).await.map_err(|e| {
        tracing::error!(session = %session, error = %e, "could not spool a message");
        write_failure(&e)
    })
}

/// [`Handler::message`] of a streaming store: [`through_sink`].
macro_rules! whole_message_through_body {
    () => {
        /// The whole-message form: the message through this store's own
        /// body sink (see [`Handler::body`]).
        async fn message(
            &self,
            session: &SessionInfo,
            envelope: &Envelope,
            message: &Arc<Message>,
        ) -> MessageDecision {
            Box::pin(through_sink(self, session, envelope, message)).await
        }
    };
}

/// The whole-message form ([`Handler::message`]) of a streaming store:
/// the message's bytes through the sink its `body` hook makes. Boxed by
/// its callers: the dispatcher streams bodies to these stores, so this is
/// rare, and its future stays out of every session's.
async fn through_sink<H: Handler>(
    h: &H,
    session: &SessionInfo,
    envelope: &Envelope,
    message: &Arc<Message>,
) -> MessageDecision {
    match h.body(session, envelope, message).await {
        Body::Stream(mut sink) => {
            if let Err(refusal) = sink.write(&message.data).await {
                sink.abort(AbortReason::Refused);
                return refusal.into();
            }
            sink.finish(message.clone()).await
        }
        Body::Refuse(refusal) => refusal.into(),
        _ => Reply::TEMPORARY_FAILURE.into(),
    }
}

impl Handler for DebugHandler {
    /// The printout shows the message as received, without our trace.
    fn wants_trace(&self) -> bool {
        false
    }

    /// Spooled (a temporary file past 64 KiB), printed at the end.
    async fn body(&self, session: &SessionInfo, envelope: &Envelope, _: &Message) -> Body {
        let spool = Spool::new(
            DebugHandler::head(session, envelope),
            false,
            spool::anonymous_in(None),
        );
        Body::Stream(Box::new(AppendSink {
            spool,
            to: self.out.clone(),
            session: session.id.clone(),
        }))
    }

    whole_message_through_body!();
}

/// Accepts every message and throws it away.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkHandler;

impl Handler for SinkHandler {
    fn wants_trace(&self) -> bool {
        false
    }

    /// No byte of a body is kept (memory stays flat whatever the size).
    async fn body(&self, _: &SessionInfo, _: &Envelope, _: &Message) -> Body {
        Body::Discard
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
/// `Received:` header, and has LF line ends (as Unix Maildir readers
/// expect). It is written to `tmp/`, synced, moved into `new/`, and `new/`
/// is synced before the message is accepted; directories it creates (the
/// mailbox, its `tmp`, `new` and `cur`, a missing root) are synced with the
/// directory they were made in. Recipients whose address could escape
/// `ROOT` are refused at RCPT with `550 5.1.3`.
///
/// By default all copies are delivered or none: any failure answers every
/// recipient alike (`452 4.3.1` for a full disk, `452 4.2.2` for a quota,
/// `451 4.3.0` otherwise). In an LMTP session ([`SessionInfo::lmtp`]) each
/// recipient gets the outcome of its own mailbox instead (RFC 2033): one
/// that cannot be written gets its 4xx, the others are delivered. Never in
/// SMTP, where one reply covers every recipient, so a refusal would refuse
/// the message for recipients already delivered.
#[derive(Debug)]
pub struct MaildirHandler {
    root: PathBuf,
    hostname: String,
    counter: AtomicU64,
    sync: DirSync,
}

impl MaildirHandler {
    /// A Maildir store under `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let host = local_hostname().replace('/', "\\057").replace(':', "\\072");
        MaildirHandler {
            root: root.into(),
            hostname: host,
            counter: AtomicU64::new(0),
            sync: DirSync::default(),
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

/// One copy to deliver: the mailbox folder, the file's name and the
/// trace head that precedes the `Received:` header.
struct Copy {
    dir: PathBuf,
    name: String,
    head: Vec<u8>,
}

impl Copy {
    /// Where the copy lands, for the per-message log line.
    fn stored_path(&self) -> String {
        format!(
            "maildir:{}",
            self.dir.join("new").join(&self.name).display()
        )
    }

    /// Its file in `tmp/`.
    fn tmp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(&self.name)
    }
}

/// An `io::Error` like `e` (one failure answering several copies).
fn same_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Where a Maildir body is spooled as it arrives: the `tmp/` file of the
/// first copy whose mailbox could be made, that copy's head written first.
struct Placed {
    file: File,
    at: usize,
    /// Per copy: why its mailbox could not be made (LMTP only: in SMTP
    /// that fails the message at once).
    failed: Vec<Option<io::Error>>,
}

impl SpoolFile for Placed {
    fn file(&self) -> &File {
        &self.file
    }
}

/// Makes every copy's mailbox (syncing the directories that changed) and
/// opens the spool in the first one that works. `gone` is set when the
/// message was aborted meanwhile: then nothing is left behind.
fn place(copies: &[Copy], lmtp: bool, sync: &DirSync, gone: &AtomicBool) -> io::Result<Placed> {
    let mut failed: Vec<Option<io::Error>> = Vec::with_capacity(copies.len());
    for c in copies {
        let subs = ["tmp", "new", "cur"].map(|sub| c.dir.join(sub));
        match create_dirs_synced(&subs, sync) {
            Ok(()) => failed.push(None),
            Err(e) if lmtp => failed.push(Some(e)),
            Err(e) => return Err(e),
        }
    }
    for (at, c) in copies.iter().enumerate() {
        if failed[at].is_some() {
            continue;
        }
        let path = c.tmp_path();
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if lmtp => {
                failed[at] = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let res = if gone.load(Ordering::SeqCst) {
            Err(io::Error::other("message aborted"))
        } else {
            (&file).write_all(&c.head)
        };
        if let Err(e) = res {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        return Ok(Placed { file, at, failed });
    }
    Err(failed
        .iter_mut()
        .find_map(Option::take)
        .unwrap_or_else(|| io::Error::other("no mailbox")))
}

/// Writes copy `c` into its `tmp/` from the spool's body (the bytes from
/// `from` on, after the spool's own head) and syncs it; on failure
/// nothing is left in `tmp/`.
fn copy_tmp(c: &Copy, mut spool: &File, from: u64) -> io::Result<PathBuf> {
    let path = c.tmp_path();
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let res = (|| {
        (&f).write_all(&c.head)?;
        spool.seek(SeekFrom::Start(from))?;
        io::copy(&mut spool, &mut &f)?;
        sync_file(&f)
    })();
    if let Err(e) = res {
        drop(f);
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Moves a synced `tmp` file into `new/` and syncs `new/`; returns the
/// delivered file. On failure the message is neither in `tmp/` nor `new/`.
fn publish(c: &Copy, tmp: &Path, sync: &DirSync) -> io::Result<PathBuf> {
    let new_dir = c.dir.join("new");
    let new = new_dir.join(&c.name);
    if let Err(e) = fs::rename(tmp, &new) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    if let Err(e) = sync.sync(&new_dir) {
        unpublish(&new, sync);
        return Err(e);
    }
    Ok(new)
}

/// Takes a delivered file back (best effort, for a failed transaction).
fn unpublish(new: &Path, sync: &DirSync) {
    let _ = fs::remove_file(new);
    let _ = sync.sync(parent_dir(new));
}

/// Removes whatever `tmp/` files a message's copies may have.
fn remove_tmps(copies: &[Copy]) {
    for c in copies {
        let _ = fs::remove_file(c.tmp_path());
    }
}

/// Makes a spooled message durable: the spool is synced, copied for every
/// other mailbox (each copy has its own `Delivered-To:`, so a copy rather
/// than a link), and each copy moved into `new/`, which is then synced.
/// One outcome per copy: in SMTP all or none are delivered (a failure
/// takes back what was moved); in LMTP each copy fares on its own.
fn deliver(
    spooled: Spooled<Placed>,
    copies: &[Copy],
    lmtp: bool,
    sync: &DirSync,
) -> Vec<io::Result<()>> {
    let all = |e: &io::Error| copies.iter().map(|_| Err(same_error(e))).collect();
    let placed = match spooled
        .into_file()
        .and_then(|p| sync_file(&p.file).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => {
            remove_tmps(copies);
            return all(&e);
        }
    };
    let Placed {
        file,
        at,
        mut failed,
    } = placed;
    let mut tmps: Vec<Option<PathBuf>> = copies.iter().map(|_| None).collect();
    tmps[at] = Some(copies[at].tmp_path());
    let from = copies[at].head.len() as u64;
    for (i, c) in copies.iter().enumerate() {
        if i == at || failed[i].is_some() {
            continue;
        }
        match copy_tmp(c, &file, from) {
            Ok(p) => tmps[i] = Some(p),
            Err(e) if lmtp => failed[i] = Some(e),
            Err(e) => {
                remove_tmps(copies);
                return all(&e);
            }
        }
    }
    drop(file);
    if lmtp {
        return copies
            .iter()
            .zip(tmps)
            .zip(failed)
            .map(|((c, tmp), failed)| match (failed, tmp) {
                (Some(e), _) => Err(e),
                (None, Some(tmp)) => publish(c, &tmp, sync).map(drop),
                (None, None) => Err(io::Error::other("not written")),
            })
            .collect();
    }
    let mut moved: Vec<PathBuf> = Vec::with_capacity(copies.len());
    for (c, tmp) in copies.iter().zip(&tmps) {
        let res = match tmp {
            Some(tmp) => publish(c, tmp, sync),
            None => Err(io::Error::other("not written")),
        };
        match res {
            Ok(new) => moved.push(new),
            Err(e) => {
                remove_tmps(copies);
                for new in &moved {
                    unpublish(new, sync);
                }
                return all(&e);
            }
        }
    }
    copies.iter().map(|_| Ok(())).collect()
}

/// A message on its way into Maildirs ([`MaildirHandler`]): the body is
/// spooled into the first mailbox's `tmp/` file as it arrives (64 KiB at
/// a time), and delivered ([`deliver`]) at its end.
struct MaildirSink {
    copies: Arc<Vec<Copy>>,
    /// Per recipient: its copy (`None`: an address that cannot be stored).
    which: Vec<Option<usize>>,
    lmtp: bool,
    sync: DirSync,
    session: String,
    /// Set when the message is aborted (a spool file opened meanwhile
    /// removes itself).
    gone: Arc<AtomicBool>,
    /// `None` once finished.
    spool: Option<Spool<Placed>>,
}

/// Dropping the sink unfinished (an abort, a dropped session) removes
/// what it wrote: nothing of the message stays in `tmp/`.
impl Drop for MaildirSink {
    fn drop(&mut self) {
        let Some(spool) = self.spool.take() else {
            return;
        };
        self.gone.store(true, Ordering::SeqCst);
        let opened = spool.opened();
        drop(spool);
        if opened {
            remove_tmps(&self.copies);
        }
    }
}

impl BodySink for MaildirSink {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
        Box::pin(async move {
            match self.spool.as_mut() {
                Some(spool) => spool_write(spool, chunk, &self.session).await,
                None => Err(Reply::TEMPORARY_FAILURE),
            }
        })
    }

    fn finish(mut self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
        let spool = self.spool.take();
        Box::pin(async move {
            let Some(spool) = spool else {
                return Reply::TEMPORARY_FAILURE.into();
            };
            let spooled = spool.end(false, b"");
            let (copies, lmtp, sync) = (self.copies.clone(), self.lmtp, self.sync.clone());
            let results = blocking::unblock(move || deliver(spooled, &copies, lmtp, &sync)).await;
            for (c, r) in self.copies.iter().zip(&results) {
                match r {
                    Ok(()) => message.record_delivery(c.stored_path()),
                    Err(e) => tracing::error!(
                        session = %self.session,
                        mailbox = %c.dir.display(),
                        error = %e,
                        "maildir delivery failed"
                    ),
                }
            }
            if !self.lmtp {
                return match results.iter().find_map(|r| r.as_ref().err()) {
                    None => Decision::Accept.into(),
                    Some(e) => write_failure(e).into(),
                };
            }
            MessageDecision::PerRecipient(
                self.which
                    .iter()
                    .map(|w| match w.and_then(|i| results.get(i)) {
                        Some(Ok(())) => Decision::Accept,
                        Some(Err(e)) => write_failure(e).into(),
                        None => Reply::TEMPORARY_FAILURE.into(),
                    })
                    .collect(),
            )
        })
    }

    fn abort(self: Box<Self>, _: AbortReason) {
        // Drop removes what was written.
    }
}

impl MaildirHandler {
    /// The copies of a message (one per distinct mailbox) and the copy
    /// each recipient gets (`None` for an address that cannot be stored:
    /// refused at RCPT, unless a wrapper let it through; in SMTP such an
    /// address fails the message).
    fn copies(&self, envelope: &Envelope, lmtp: bool) -> Option<(Vec<Copy>, Vec<Option<usize>>)> {
        let mut copies: Vec<Copy> = Vec::new();
        let mut which: Vec<Option<usize>> = Vec::with_capacity(envelope.recipients.len());
        for r in &envelope.recipients {
            let Some(folder) = mailbox_folder(&r.address) else {
                if !lmtp {
                    return None;
                }
                which.push(None);
                continue;
            };
            let dir = self.root.join(folder);
            if let Some(i) = copies.iter().position(|c| c.dir == dir) {
                which.push(Some(i));
                continue;
            }
            let head = format!(
                "Return-Path: <{}>\nDelivered-To: {}\n",
                envelope.from, r.address
            );
            copies.push(Copy {
                dir,
                name: self.unique_name(),
                head: head.into_bytes(),
            });
            which.push(Some(copies.len() - 1));
        }
        Some((copies, which))
    }
}

impl Handler for MaildirHandler {
    async fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
        match mailbox_folder(&to.address) {
            Some(_) => Decision::Accept,
            None => BAD_MAILBOX_NAME.into(),
        }
    }

    /// Streams the body into the first mailbox's `tmp/` as it arrives.
    async fn body(&self, session: &SessionInfo, envelope: &Envelope, message: &Message) -> Body {
        let Some((copies, which)) = self.copies(envelope, session.lmtp) else {
            return Body::Refuse(Reply::TEMPORARY_FAILURE);
        };
        if copies.is_empty() {
            // LMTP, and no recipient can be stored.
            return Body::Refuse(Reply::TEMPORARY_FAILURE);
        }
        let copies = Arc::new(copies);
        let gone = Arc::new(AtomicBool::new(false));
        let (c, lmtp, sync, g) = (
            copies.clone(),
            session.lmtp,
            self.sync.clone(),
            gone.clone(),
        );
        let opener = Box::new(move || place(&c, lmtp, &sync, &g));
        let mut spool = Spool::new(Vec::new(), false, opener);
        spool.push_closed(&message.trace);
        Body::Stream(Box::new(MaildirSink {
            copies,
            which,
            lmtp: session.lmtp,
            sync: self.sync.clone(),
            session: session.id.clone(),
            gone,
            spool: Some(spool),
        }))
    }

    whole_message_through_body!();
}

/// Appends each message to an mbox file (mboxrd format), under an advisory lock.
///
/// Each message starts with a `From sender date` line, lines matching
/// `^>*From ` get one more `>`, line ends are LF, and a blank line follows.
/// The file is synced before the message is accepted (and its directory
/// too when the file is new); on failure it is cut back to its previous
/// length and the answer is a 4xx (`452` for a full disk or quota, `451
/// 4.3.0` otherwise).
#[derive(Debug, Clone)]
pub struct MboxHandler {
    path: PathBuf,
    sync: DirSync,
}

impl MboxHandler {
    /// An mbox store at `path` (created when needed).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MboxHandler {
            path: path.into(),
            sync: DirSync::default(),
        }
    }

    /// The mbox file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One message in mboxrd form, `From ` line and trailing blank line included.
    pub fn format(from: &str, unix_time: i64, message: &Message) -> Vec<u8> {
        let mut v = MboxHandler::from_line(from, unix_time);
        LfLines::convert(&message.trace, true, &mut v);
        LfLines::convert(&message.data, true, &mut v);
        v.push(b'\n');
        v
    }

    /// The `From sender date` line that starts a message.
    fn from_line(from: &str, unix_time: i64) -> Vec<u8> {
        let sender = if from.is_empty() {
            "MAILER-DAEMON"
        } else {
            from
        };
        format!("From {sender} {}\n", asctime(unix_time)).into_bytes()
    }
}

/// Appends a spooled message to the mbox at `path` under its lock, and
/// syncs it; on failure the file is cut back to its previous length.
fn append_mbox(path: &Path, spooled: Spooled<File>, sync: &DirSync) -> io::Result<()> {
    let (f, created) = match OpenOptions::new().append(true).open(path) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (
            OpenOptions::new().create(true).append(true).open(path)?,
            true,
        ),
        Err(e) => return Err(e),
    };
    fs4::FileExt::lock(&f)?;
    let len = f.metadata()?.len();
    let res = (|| {
        spooled.copy_to(&mut &f)?;
        sync_file(&f)?;
        // A new file's name is durable only once its directory is synced.
        // An empty file may have been created by a session that has not
        // synced it yet: sync it here, under the lock, to be sure.
        if created || len == 0 {
            sync.sync(parent_dir(path))?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = f.set_len(len);
        let _ = sync_file(&f);
    }
    // Dropping the file releases the lock.
    res
}

/// An mbox to append to.
#[derive(Clone)]
struct MboxFile {
    path: PathBuf,
    sync: DirSync,
}

impl Append for MboxFile {
    const TRAILER: &'static [u8] = b"\n";

    fn append(&self, spooled: Spooled<File>) -> io::Result<()> {
        append_mbox(&self.path, spooled, &self.sync)
    }

    fn place(&self) -> String {
        format!("mbox:{}", self.path.display())
    }
}

impl Handler for MboxHandler {
    /// Spooled (a temporary file beside the mbox past 64 KiB), appended at the end.
    async fn body(&self, session: &SessionInfo, envelope: &Envelope, message: &Message) -> Body {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let dir: Arc<Path> = Arc::from(parent_dir(&self.path));
        let mut spool = Spool::new(
            MboxHandler::from_line(&envelope.from, now),
            true,
            spool::anonymous_in(Some(dir)),
        );
        spool.push_closed(&message.trace);
        Body::Stream(Box::new(AppendSink {
            spool,
            to: MboxFile {
                path: self.path.clone(),
                sync: self.sync.clone(),
            },
            session: session.id.clone(),
        }))
    }

    whole_message_through_body!();
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
        self.domains.is_empty()
            || self.domains.iter().any(|d| d == "*")
            || self.serves_by_name(address)
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

impl<H: Handler> Layer for DomainPolicy<H> {
    type Inner = H;

    fn inner(&self) -> &H {
        &self.inner
    }

    async fn rcpt(&self, session: &SessionInfo, envelope: &Envelope, to: &Recipient) -> Decision {
        if !self.serves(&to.address) {
            return Reply::RELAY_DENIED.into();
        }
        self.inner.rcpt(session, envelope, to).await
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

/// AUTH against a fixed list of users ([`crate::sasl::Users`]: plain
/// passwords or SCRAM keys), compared in constant time, for every mechanism
/// the users' secrets allow (PLAIN, LOGIN, SCRAM-SHA-256(-PLUS), CRAM-MD5
/// for users with a plain password); every other hook goes to `inner`.
/// `Debug` shows only how many users there are, never a secret.
pub struct PasswordAuth<H> {
    users: Arc<Swap<crate::sasl::Users>>,
    /// Bearer tokens (XOAUTH2, OAUTHBEARER) → their user.
    tokens: Arc<Swap<HashMap<String, String>>>,
    /// The handler every other decision goes to.
    pub inner: H,
}

impl<H> PasswordAuth<H> {
    /// Checks AUTH against `users` in front of `inner`.
    pub fn new(users: HashMap<String, String>, inner: H) -> Self {
        Self::with_users(crate::sasl::Users::from_passwords(users), inner)
    }

    /// Checks AUTH against a loaded user store in front of `inner`.
    pub fn with_users(users: crate::sasl::Users, inner: H) -> Self {
        Self::with_shared_users(Swap::shared(users), inner)
    }

    /// Checks AUTH against the user store in `users`, which its owner may
    /// replace at any time (e.g. a [`FileReload`](crate::reload::FileReload)
    /// of the `--auth` file): each AUTH reads the store as it is then.
    pub fn with_shared_users(users: Arc<Swap<crate::sasl::Users>>, inner: H) -> Self {
        PasswordAuth {
            users,
            tokens: Swap::shared(HashMap::new()),
            inner,
        }
    }

    /// Also accepts these bearer tokens (token → user) for XOAUTH2 and
    /// OAUTHBEARER; a token names its user, and a client naming another
    /// user is refused.
    pub fn with_tokens(self, tokens: HashMap<String, String>) -> Self {
        self.with_shared_tokens(Swap::shared(tokens))
    }

    /// Like [`PasswordAuth::with_tokens`], from a cell its owner may
    /// replace at any time.
    pub fn with_shared_tokens(mut self, tokens: Arc<Swap<HashMap<String, String>>>) -> Self {
        self.tokens = tokens;
        self
    }

    /// Whether the credentials name a known user with the right password
    /// and no foreign authorization identity.
    pub fn check(&self, c: &Credentials) -> bool {
        let authz_ok = c
            .authzid
            .as_deref()
            .is_none_or(|z| z.is_empty() || z == c.username);
        self.users
            .get()
            .check_password(&c.username, c.password.expose())
            && authz_ok
    }
}

impl<H: std::fmt::Debug> std::fmt::Debug for PasswordAuth<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("users", &self.users)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<H: Handler> Layer for PasswordAuth<H> {
    type Inner = H;

    fn inner(&self) -> &H {
        &self.inner
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

    async fn scram_keys(&self, _: &SessionInfo, username: &str) -> Option<crate::sasl::ScramKeys> {
        self.users.get().scram_keys(username).cloned()
    }

    async fn password(&self, _: &SessionInfo, username: &str) -> Option<Secret<String>> {
        self.users.get().password(username).cloned()
    }

    async fn auth_token(&self, session: &SessionInfo, token: &OAuthToken) -> TokenDecision {
        let tokens = self.tokens.get();
        let user = tokens.get(token.token.expose());
        let ok = user.is_some_and(|u| token.user.as_ref().is_none_or(|claimed| claimed == u));
        tracing::info!(session = %session.id, user = ?token.user, ok, "bearer token checked");
        if ok {
            TokenDecision::Accept
        } else {
            TokenDecision::invalid()
        }
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
        Arc::new(Message::new(
            data.to_vec(),
            b"Received: from x by y; Thu, 1 Jan 1970 00:00:00 +0000\r\n".to_vec(),
        ))
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
        // LF line ends, trace headers included (issue 12 item 17).
        assert_eq!(
            text,
            "Return-Path: <alice@example.org>\nDelivered-To: Bob@Example.NET\n\
             Received: from x by y; Thu, 1 Jan 1970 00:00:00 +0000\n\
             Subject: hi\n\nbody\n"
        );
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
        // Also when the failing mailbox comes first, and when it is not
        // the mailbox but its `new/` that cannot be written.
        fs::create_dir_all(root.path().join("c@x").join("tmp")).unwrap();
        fs::write(root.path().join("c@x").join("new"), b"").unwrap();
        for rcpts in [["b@x", "a@x"], ["a@x", "c@x"]] {
            let d = block_on(h.message(
                &SessionInfo::default(),
                &envelope("", &rcpts),
                &message(b"x\r\n"),
            ));
            assert_eq!(d, Reply::TEMPORARY_FAILURE.into(), "{rcpts:?}");
            assert!(files(&root.path().join("a@x").join("new")).is_empty());
            assert!(files(&root.path().join("a@x").join("tmp")).is_empty());
            assert!(files(&root.path().join("c@x").join("tmp")).is_empty());
        }
    }

    /// Issue 12 item 16: per recipient (LMTP), a mailbox that cannot be
    /// written fails alone; the others are delivered.
    #[test]
    fn maildir_per_recipient_outcomes() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("b@x"), b"").unwrap();
        let h = MaildirHandler::new(root.path());
        let lmtp = SessionInfo {
            lmtp: true,
            ..SessionInfo::default()
        };
        let d = block_on(h.message(
            &lmtp,
            &envelope("", &["a@x", "b@x", "A@X", "../bad", "c@x"]),
            &message(b"x\r\n"),
        ));
        let fail = Decision::Reply(Reply::TEMPORARY_FAILURE);
        assert_eq!(
            d,
            MessageDecision::PerRecipient(vec![
                Decision::Accept,
                fail.clone(),
                Decision::Accept,
                fail,
                Decision::Accept,
            ])
        );
        assert_eq!(files(&root.path().join("a@x").join("new")).len(), 1);
        assert_eq!(files(&root.path().join("c@x").join("new")).len(), 1);
        assert!(files(&root.path().join("a@x").join("tmp")).is_empty());
        // All good: every recipient accepted.
        let d = block_on(h.message(&lmtp, &envelope("", &["a@x", "c@x"]), &message(b"x\r\n")));
        assert_eq!(
            d,
            MessageDecision::PerRecipient(vec![Decision::Accept, Decision::Accept])
        );
    }

    #[test]
    fn write_failure_codes() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(write_failure(&full), STORAGE_FULL);
        assert_eq!(STORAGE_FULL.code(), 452);
        let quota = io::Error::from(io::ErrorKind::QuotaExceeded);
        assert_eq!(write_failure(&quota), MAILBOX_FULL);
        let other = io::Error::from(io::ErrorKind::NotADirectory);
        assert_eq!(write_failure(&other), Reply::TEMPORARY_FAILURE);
    }

    /// Each directory synced, with how many entries it had then.
    type SyncLog = Arc<Mutex<Vec<(PathBuf, usize)>>>;

    /// A [`DirSync`] that records each directory synced and syncs it for real.
    fn recording_sync() -> (DirSync, SyncLog) {
        let log: SyncLog = Arc::default();
        let l = log.clone();
        let sync = DirSync::new(Arc::new(move |dir: &Path| {
            let n = fs::read_dir(dir)?.count();
            l.lock().unwrap().push((dir.to_owned(), n));
            DirSync::default().sync(dir)
        }));
        (sync, log)
    }

    fn synced(log: &Mutex<Vec<(PathBuf, usize)>>) -> Vec<(PathBuf, usize)> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    /// Issue 12 item 19: every directory created or whose entries changed
    /// is synced before the answer.
    #[test]
    fn maildir_syncs_every_changed_directory() {
        let top = tempfile::tempdir().unwrap();
        let spool = top.path().join("spool");
        let root = spool.join("mail");
        let (sync, log) = recording_sync();
        for per_recipient in [false, true] {
            let mut h = MaildirHandler::new(&root);
            let session = SessionInfo {
                lmtp: per_recipient,
                ..SessionInfo::default()
            };
            h.sync = sync.clone();
            let bob = root.join(format!("bob{per_recipient}@x"));
            let carol = root.join(format!("carol{per_recipient}@x"));
            let rcpt = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_owned();
            // A new mailbox (and, the first time, a new root and spool).
            let env = envelope("", &[&rcpt(&bob)]);
            let d = block_on(h.message(&session, &env, &message(b"x\r\n")));
            assert!(
                matches!(&d, MessageDecision::All(Decision::Accept))
                    || d == MessageDecision::PerRecipient(vec![Decision::Accept])
            );
            let got = synced(&log);
            let paths: Vec<&Path> = got.iter().map(|(p, _)| p.as_path()).collect();
            let mut want = vec![root.clone(), bob.clone()];
            if !per_recipient {
                want.extend([top.path().to_owned(), spool.clone()]);
            }
            want.extend(["tmp", "new", "cur"].map(|s| bob.join(s)));
            for w in &want {
                assert!(paths.contains(&w.as_path()), "{w:?} not synced: {paths:?}");
            }
            // `new/` is synced last, after the rename: holding the message.
            assert_eq!(got.last(), Some(&(bob.join("new"), 1)), "{got:?}");
            assert_eq!(got.len(), want.len() + 1, "{got:?}");
            // An existing mailbox: only `new/` changes; a second new one
            // beside it: the root and the new mailbox.
            let env = envelope("", &[&rcpt(&bob), &rcpt(&carol)]);
            let d = block_on(h.message(&session, &env, &message(b"x\r\n")));
            assert!(
                matches!(&d, MessageDecision::All(Decision::Accept))
                    || d == MessageDecision::PerRecipient(vec![Decision::Accept; 2])
            );
            let mut got: Vec<PathBuf> = synced(&log).into_iter().map(|(p, _)| p).collect();
            got.sort();
            let mut want = vec![
                root.clone(),
                carol.clone(),
                bob.join("new"),
                carol.join("new"),
            ];
            want.extend(["tmp", "new", "cur"].map(|s| carol.join(s)));
            want.sort();
            assert_eq!(got, want);
        }
    }

    /// Issue 12 item 19: a new mbox file's directory is synced.
    #[test]
    fn mbox_syncs_the_directory_of_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbox");
        let (sync, log) = recording_sync();
        let mut h = MboxHandler::new(&path);
        h.sync = sync;
        let s = SessionInfo::default();
        let d = block_on(h.message(&s, &envelope("a@b", &["c@d"]), &message(b"x\r\n")));
        assert_eq!(d, Decision::Accept.into());
        assert_eq!(synced(&log), vec![(dir.path().to_owned(), 1)]);
        let d = block_on(h.message(&s, &envelope("a@b", &["c@d"]), &message(b"x\r\n")));
        assert_eq!(d, Decision::Accept.into());
        assert_eq!(
            synced(&log),
            Vec::new(),
            "an existing file's directory is unchanged"
        );
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
            ("PostMaster@evil.example", false),
            ("PostMaster@EXAMPLE.org", true),
            ("Postmaster", true),
            ("bob", false),
        ] {
            let want = if ok {
                Decision::Accept
            } else {
                Reply::RELAY_DENIED.into()
            };
            assert_eq!(block_on(Handler::rcpt(&p, &s, &e, &rcpt(a))), want, "{a}");
        }
        assert_eq!(p.primary_domain(), Some("Example.org"));
        let any = DomainPolicy::new(vec!["*".into()], SinkHandler);
        assert!(any.serves("x@anything"));
        assert!(DomainPolicy::new(Vec::new(), SinkHandler).serves("x@y"));
    }

    /// A debug printer writing into a buffer the test reads.
    fn printing() -> (DebugHandler, Arc<Mutex<Vec<u8>>>) {
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
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        (DebugHandler::new(Box::new(W(buf.clone()))), buf)
    }

    #[test]
    fn debug_format() {
        let (h, buf) = printing();
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

    /// Issue 12 item 18: a message that could not be printed is not accepted.
    #[test]
    fn debug_write_failure_451() {
        struct Failing(io::ErrorKind, bool);
        impl Write for Failing {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.1 {
                    Ok(b.len())
                } else {
                    Err(self.0.into())
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(self.0.into())
            }
        }
        let s = SessionInfo::default();
        let env = envelope("a@b", &["c@d"]);
        for (kind, writes) in [
            (io::ErrorKind::BrokenPipe, false),
            (io::ErrorKind::StorageFull, false),
            (io::ErrorKind::StorageFull, true),
        ] {
            let h = DebugHandler::new(Box::new(Failing(kind, writes)));
            let d = block_on(h.message(&s, &env, &message(b"x\r\n")));
            assert_eq!(d, Reply::TEMPORARY_FAILURE.into(), "{kind:?} {writes}");
        }
    }

    #[test]
    fn password_auth_checks_and_hides_passwords() {
        use smtp_proto::sasl::{Mechanism, Secret};
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
            block_on(Handler::auth(&h, &s, &creds(None, "bob", "s3cret"))),
            Decision::Accept
        );
        assert_eq!(
            block_on(Handler::auth(&h, &s, &creds(Some("bob"), "bob", "s3cret"))),
            Decision::Accept
        );
        let refused = Decision::Reply(Reply::AUTH_FAILED);
        assert_eq!(
            block_on(Handler::auth(&h, &s, &creds(None, "bob", "s3cret!"))),
            refused
        );
        assert_eq!(
            block_on(Handler::auth(&h, &s, &creds(None, "bob", ""))),
            refused
        );
        assert_eq!(
            block_on(Handler::auth(&h, &s, &creds(None, "eve", "s3cret"))),
            refused
        );
        assert_eq!(
            block_on(Handler::auth(&h, &s, &creds(Some("root"), "bob", "s3cret"))),
            refused
        );
        assert!(!format!("{h:?}").contains("s3cret"));
    }

    /// A body of `lines` 100-byte lines (CRLF), and the same with LF.
    fn long_body(lines: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut crlf, mut lf) = (Vec::new(), Vec::new());
        for i in 0..lines {
            let line = format!("{i:06} {}", "x".repeat(91));
            crlf.extend_from_slice(line.as_bytes());
            crlf.extend_from_slice(b"\r\n");
            lf.extend_from_slice(line.as_bytes());
            lf.push(b'\n');
        }
        (crlf, lf)
    }

    /// Writes `data` into a store's sink in `chunk`-byte pieces (cutting
    /// CRLFs), and returns the sink unfinished.
    fn stream<H: Handler>(
        h: &H,
        s: &SessionInfo,
        env: &Envelope,
        data: &[u8],
        chunk: usize,
    ) -> Box<dyn BodySink> {
        let Body::Stream(mut sink) = block_on(h.body(s, env, &message(b""))) else {
            panic!("a streaming store");
        };
        for piece in data.chunks(chunk) {
            block_on(sink.write(piece)).unwrap();
        }
        sink
    }

    /// Issue 14: the body goes to `tmp/` as it arrives; each mailbox gets
    /// its own head and the same body; an abort leaves nothing behind.
    #[test]
    fn maildir_streams_into_tmp_and_copies_per_mailbox() {
        let root = tempfile::tempdir().unwrap();
        let h = MaildirHandler::new(root.path());
        let s = SessionInfo::default();
        let env = envelope("a@x", &["b@x", "c@x"]);
        let (crlf, lf) = long_body(3000);
        let sink = stream(&h, &s, &env, &crlf, 4093);
        let tmp = files(&root.path().join("b@x").join("tmp"));
        assert_eq!(tmp.len(), 1, "spooled into the first mailbox's tmp/");
        assert!(fs::metadata(&tmp[0]).unwrap().len() > 200_000);
        let d = block_on(sink.finish(message(b"")));
        assert_eq!(d, Decision::Accept.into());
        let trace = "Received: from x by y; Thu, 1 Jan 1970 00:00:00 +0000\n";
        for who in ["b@x", "c@x"] {
            let dir = root.path().join(who);
            assert!(files(&dir.join("tmp")).is_empty());
            let new = files(&dir.join("new"));
            assert_eq!(new.len(), 1, "{who}");
            let mut want = format!("Return-Path: <a@x>\nDelivered-To: {who}\n{trace}").into_bytes();
            want.extend_from_slice(&lf);
            assert!(fs::read(&new[0]).unwrap() == want, "{who}'s copy");
        }
        // Cut off: nothing in tmp/ or new/.
        let env = envelope("a@x", &["d@x"]);
        let sink = stream(&h, &s, &env, &crlf, 65536);
        assert_eq!(files(&root.path().join("d@x").join("tmp")).len(), 1);
        sink.abort(AbortReason::Disconnected);
        assert!(files(&root.path().join("d@x").join("tmp")).is_empty());
        assert!(files(&root.path().join("d@x").join("new")).is_empty());
        // A small body never touches tmp/ before its end.
        let sink = stream(&h, &s, &envelope("a@x", &["e@x"]), b"hi\r\n", 4);
        assert!(files(&root.path().join("e@x")).is_empty());
        drop(sink);
        assert!(files(&root.path().join("e@x").join("tmp")).is_empty());
    }

    /// Issue 14: concurrent messages are appended whole, never interleaved;
    /// an aborted one leaves the mbox untouched.
    #[test]
    fn mbox_appends_streamed_messages_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbox");
        let h = MboxHandler::new(&path);
        let s = SessionInfo::default();
        let env = envelope("a@x", &["b@x"]);
        let (crlf, lf) = long_body(2000);
        let (mut one, mut two) = (stream(&h, &s, &env, b"", 1), stream(&h, &s, &env, b"", 1));
        let quoted = b"From here\r\n".repeat(2000);
        let (mut a, mut b) = (crlf.chunks(1000), quoted.chunks(100));
        loop {
            let (x, y) = (a.next(), b.next());
            if x.is_none() && y.is_none() {
                break;
            }
            if let Some(x) = x {
                block_on(one.write(x)).unwrap();
            }
            if let Some(y) = y {
                block_on(two.write(y)).unwrap();
            }
        }
        assert!(!path.exists(), "nothing appended before the end");
        let cut = stream(&h, &s, &env, &crlf, 7000);
        assert_eq!(block_on(two.finish(message(b""))), Decision::Accept.into());
        assert_eq!(block_on(one.finish(message(b""))), Decision::Accept.into());
        cut.abort(AbortReason::Timeout);
        let text = fs::read(&path).unwrap();
        let trace = b"Received: from x by y; Thu, 1 Jan 1970 00:00:00 +0000\n";
        let starts: Vec<usize> = (0..text.len())
            .filter(|&i| text[i..].starts_with(b"From a@x "))
            .collect();
        assert_eq!(starts.len(), 2, "two messages, the aborted one absent");
        let second = &text[starts[1]..];
        let body = &second[second.iter().position(|&b| b == b'\n').unwrap() + 1..];
        let mut want = trace.to_vec();
        want.extend_from_slice(&lf);
        want.push(b'\n');
        assert!(
            body == want,
            "the long message whole, after the quoted one: {:?}",
            String::from_utf8_lossy(&body[..200.min(body.len())])
        );
        let first = &text[..starts[1]];
        assert_eq!(
            first.windows(11).filter(|w| w == b">From here\n").count(),
            2000
        );
    }

    /// Issue 14: the debug printer prints each message whole.
    #[test]
    fn debug_prints_streamed_messages_whole() {
        let (h, buf) = printing();
        let s = SessionInfo::default();
        let (crlf, lf) = long_body(1500);
        let mut one = stream(&h, &s, &envelope("a@x", &["b@x"]), b"", 1);
        let mut two = stream(&h, &s, &envelope("c@x", &["d@x"]), b"", 1);
        for piece in crlf.chunks(999) {
            block_on(one.write(piece)).unwrap();
            block_on(two.write(piece)).unwrap();
        }
        block_on(two.finish(message(b"")));
        block_on(one.finish(message(b"")));
        let out = buf.lock().unwrap().clone();
        let mut want = Vec::new();
        for from in ["c@x", "a@x"] {
            let to = if from == "c@x" { "d@x" } else { "b@x" };
            want.extend_from_slice(
                format!(
                    "---------- MESSAGE FOLLOWS ----------\nX-MailFrom: {from}\nX-RcptTo: {to}\n\n"
                )
                .as_bytes(),
            );
            want.extend_from_slice(&lf);
            want.extend_from_slice(DEBUG_FOOTER);
        }
        assert!(out == want, "each message whole, in the order they ended");
    }
}
