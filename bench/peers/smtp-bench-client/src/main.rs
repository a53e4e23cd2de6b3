//! A small SMTP load generator for bench/run.sh (std only, a thread per session).
//!
//! ```text
//! smtp-bench-client send [-s SESSIONS] [-m MESSAGES] [-l BYTES] [-r RCPTS]
//!                        [-k PER_CONN] [--lockstep] [--no-chain] [--rate MSGS_PER_S] ADDR
//! smtp-bench-client idle -n CONNECTIONS [--hold SECS] ADDR
//! smtp-bench-client hold -n SESSIONS -l BYTES [--wait SECS] [--release FILE]
//!                        [--hold SECS] [--finish SECS] ADDR
//! ```
//!
//! `send` runs MESSAGES transactions over SESSIONS concurrent sessions
//! (taking work from one shared counter) and prints one `key=value` line:
//! messages, seconds, msgs/s, MB/s of payload, and latency percentiles.
//!
//! * Pipelined (the default, when the server offers PIPELINING, RFC 2920):
//!   `MAIL`, every `RCPT` and `DATA` go in one write; the message body, its
//!   final dot and the next transaction's `MAIL`/`RCPT`/`DATA` go in the
//!   next one, so a transaction costs one round trip.
//! * `--lockstep` (or a server without PIPELINING): one command, one reply.
//! * `-k N`: N transactions per connection, then QUIT and reconnect
//!   (`-k 1` is connection churn; 0, the default, keeps one connection).
//! * `--rate R`: paced, open-loop: transaction n is due at start + n/R; its
//!   latency runs from that due time (so queueing behind a slow server
//!   counts) to the final 250 after the dot. Pacing turns off the chaining
//!   of the next transaction behind the dot.
//! * `--no-chain`: pipelined, but without that chaining (two round trips a
//!   transaction: the shape `--rate` paces, so its unpaced peak).
//!
//! `idle` opens N connections one after another, sends EHLO on each and
//! waits for its reply, prints `ready connections=N`, then holds them until
//! standard input closes or `--hold` seconds pass (bench/run.sh reads the
//! server's RSS meanwhile).
//!
//! `hold` (held bodies): SESSIONS sessions at once, each on its own thread,
//! send EHLO, MAIL, RCPT and DATA, then a body of exactly `-l` BYTES (a few
//! header lines, then 78-character text lines with CRLF) but not the final
//! dot. When every session has written its whole body, or `--wait` seconds
//! (default 120) after the start, whichever comes first, it prints `ready
//! connections=N written=W sessions=M bytes=B written_bytes=X failed=F
//! ready_seconds=S` (N of the M sessions got their 354; W wrote their whole
//! body; X bytes of body written in all, of B; F sessions already failed)
//! and waits to be released: by the file `--release FILE` appearing, else
//! by a line (or the end) on standard input, at the latest after `--hold`
//! seconds (default 600). Then every session sends the dot as soon as its
//! body is written, reads the reply and QUITs; after all are done, or
//! `--finish` seconds (default 600), it prints `accepted=K refused=R
//! errors=E unfinished=U sessions=M finish_seconds=T seconds=S` (refused: a
//! 4xx/5xx reply; errors: I/O errors, timeouts and the U sessions still
//! unfinished; T from the release to the end) and exits. "Written" means
//! handed to the kernel: a server that stops reading leaves up to the
//! socket buffers' size (several MiB a session) unread, which bench/run.sh
//! measures. The body comes from one shared 64 KB buffer of whole lines,
//! never a copy per session; `-l` counts its header lines too.
//!
//! For `send`, the payload length `-l` excludes the few header lines, like
//! Postfix's `smtp-source -l`. Lines are 78 `X` plus CRLF.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

struct Opts {
    mode: String,
    addr: SocketAddr,
    sessions: u64,
    messages: u64,
    length: usize,
    rcpts: usize,
    per_conn: u64,
    lockstep: bool,
    no_chain: bool,
    rate: Option<f64>,
    connections: usize,
    hold: Option<f64>,
    wait: f64,
    finish: f64,
    release: Option<String>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: smtp-bench-client send [-s N] [-m N] [-l BYTES] [-r N] [-k N] [--lockstep] [--no-chain] [--rate R] ADDR\n       smtp-bench-client idle -n N [--hold SECS] ADDR\n       smtp-bench-client hold -n N -l BYTES [--wait SECS] [--release FILE] [--hold SECS] [--finish SECS] ADDR"
    );
    ExitCode::from(2)
}

fn parse() -> Option<Opts> {
    let mut args = std::env::args().skip(1);
    let mode = args.next()?;
    if mode != "send" && mode != "idle" && mode != "hold" {
        return None;
    }
    let mut o = Opts {
        mode,
        addr: "127.0.0.1:2525".parse().ok()?,
        sessions: 16,
        messages: 1000,
        length: 1024,
        rcpts: 1,
        per_conn: 0,
        lockstep: false,
        no_chain: false,
        rate: None,
        connections: 100,
        hold: None,
        wait: 120.0,
        finish: 600.0,
        release: None,
    };
    let mut addr = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-s" => o.sessions = args.next()?.parse().ok()?,
            "-m" => o.messages = args.next()?.parse().ok()?,
            "-l" => o.length = args.next()?.parse().ok()?,
            "-r" => o.rcpts = args.next()?.parse().ok()?,
            "-k" => o.per_conn = args.next()?.parse().ok()?,
            "-n" => o.connections = args.next()?.parse().ok()?,
            "--lockstep" => o.lockstep = true,
            "--no-chain" => o.no_chain = true,
            "--rate" => o.rate = Some(args.next()?.parse().ok()?),
            "--hold" => o.hold = Some(args.next()?.parse().ok()?),
            "--wait" => o.wait = args.next()?.parse().ok()?,
            "--finish" => o.finish = args.next()?.parse().ok()?,
            "--release" => o.release = Some(args.next()?),
            _ if addr.is_none() && !a.starts_with('-') => addr = Some(a),
            _ => return None,
        }
    }
    o.addr = addr?.to_socket_addrs().ok()?.next()?;
    (o.sessions > 0 && o.rcpts > 0).then_some(o)
}

/// One SMTP client connection.
struct Conn {
    /// The socket, read through a buffer and written through `w()`: one file
    /// descriptor per session (no `try_clone`), so 10,000 idle sessions fit a
    /// 20,000-descriptor limit.
    r: BufReader<TcpStream>,
    pipelining: bool,
    line: String,
}

fn bad(what: &str, code: u16) -> io::Error {
    io::Error::other(format!("unexpected reply {code} to {what}"))
}

impl Conn {
    fn w(&self) -> &TcpStream {
        self.r.get_ref()
    }

    fn open(addr: SocketAddr, lockstep: bool) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut c = Conn { r: BufReader::with_capacity(16 * 1024, s), pipelining: false, line: String::new() };
        let (code, _) = c.reply()?;
        if code != 220 {
            return Err(bad("greeting", code));
        }
        c.w().write_all(b"EHLO bench.client\r\n")?;
        let (code, pipelining) = c.reply()?;
        if code != 250 {
            return Err(bad("EHLO", code));
        }
        c.pipelining = pipelining && !lockstep;
        Ok(c)
    }

    /// Reads one (possibly multiline) reply: its code, and whether a line says PIPELINING.
    fn reply(&mut self) -> io::Result<(u16, bool)> {
        let mut pipelining = false;
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"));
            }
            let l = self.line.trim_end();
            let code: u16 = l.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| io::Error::other(format!("bad reply line {l:?}")))?;
            if l.len() > 4 && l[4..].eq_ignore_ascii_case("PIPELINING") {
                pipelining = true;
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, pipelining));
            }
        }
    }

    fn expect(&mut self, what: &str, ok: impl Fn(u16) -> bool) -> io::Result<()> {
        let (code, _) = self.reply()?;
        if ok(code) { Ok(()) } else { Err(bad(what, code)) }
    }

    fn quit(mut self) {
        let _ = self.w().write_all(b"QUIT\r\n");
        let _ = self.reply();
    }
}

fn envelope(rcpts: usize) -> Vec<Vec<u8>> {
    let mut cmds = vec![b"MAIL FROM:<sender@bench.client>\r\n".to_vec()];
    for i in 0..rcpts {
        cmds.push(format!("RCPT TO:<rcpt{i}@bench.test>\r\n").into_bytes());
    }
    cmds.push(b"DATA\r\n".to_vec());
    cmds
}

fn body(length: usize) -> Vec<u8> {
    let mut b = b"From: <sender@bench.client>\r\nTo: <rcpt0@bench.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut left = length;
    while left > 0 {
        let n = left.min(78);
        b.extend(std::iter::repeat_n(b'X', n));
        b.extend_from_slice(b"\r\n");
        left -= n;
    }
    b.extend_from_slice(b".\r\n");
    b
}

struct Shared {
    opts: Opts,
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    unpipelined: AtomicU64,
    lat_us: Mutex<Vec<u64>>,
    start: Instant,
    envelope: Vec<Vec<u8>>,
    envelope_joined: Vec<u8>,
    body: Vec<u8>,
    stop: AtomicBool,
}

impl Shared {
    /// The next transaction's number, or None when all are handed out.
    fn ticket(&self) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.opts.messages && !self.stop.load(Ordering::Relaxed)).then_some(n)
    }

    fn due(&self, n: u64) -> Option<Instant> {
        self.opts.rate.map(|r| self.start + Duration::from_secs_f64(n as f64 / r))
    }
}

/// Sends the envelope (pipelined or lock-step) and reads its replies up to the 354.
fn send_envelope(c: &mut Conn, sh: &Shared) -> io::Result<()> {
    if c.pipelining {
        c.w().write_all(&sh.envelope_joined)?;
    }
    read_envelope(c, sh, !c.pipelining)
}

fn read_envelope(c: &mut Conn, sh: &Shared, write_each: bool) -> io::Result<()> {
    let last = sh.envelope.len() - 1;
    for (i, cmd) in sh.envelope.iter().enumerate() {
        if write_each {
            c.w().write_all(cmd)?;
        }
        if i == last {
            c.expect("DATA", |code| code == 354)?;
        } else {
            c.expect("MAIL/RCPT", |code| (200..300).contains(&code))?;
        }
    }
    Ok(())
}

fn session(sh: &Shared) {
    let mut ticket = sh.ticket();
    while let Some(n) = ticket {
        ticket = match connection(sh, n) {
            Ok(next) => next,
            Err(e) => {
                if sh.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("smtp-bench-client: {e}");
                }
                if sh.errors.load(Ordering::Relaxed) > 100 {
                    sh.stop.store(true, Ordering::Relaxed);
                }
                sh.ticket()
            }
        };
    }
}

/// One connection, starting with transaction `first`; returns the ticket it
/// took but did not run (when it reached `-k`), or None when work ran out.
fn connection(sh: &Shared, first: u64) -> io::Result<Option<u64>> {
    if let Some(due) = sh.due(first) {
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let mut c = Conn::open(sh.opts.addr, sh.opts.lockstep)?;
    if !c.pipelining && !sh.opts.lockstep {
        sh.unpipelined.fetch_add(1, Ordering::Relaxed);
    }
    let chain = c.pipelining && sh.opts.rate.is_none() && !sh.opts.no_chain;
    let mut n = first;
    let mut count = 0u64;
    let mut envelope_sent = false;
    loop {
        let t0 = sh.due(n).unwrap_or_else(Instant::now);
        if let Some(due) = sh.due(n) {
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if envelope_sent {
            read_envelope(&mut c, sh, false)?;
        } else {
            send_envelope(&mut c, sh)?;
        }
        count += 1;
        let next = if sh.opts.per_conn != 0 && count >= sh.opts.per_conn { None } else { sh.ticket() };
        if chain && next.is_some() {
            let mut buf = Vec::with_capacity(sh.body.len() + sh.envelope_joined.len());
            buf.extend_from_slice(&sh.body);
            buf.extend_from_slice(&sh.envelope_joined);
            c.w().write_all(&buf)?;
            envelope_sent = true;
        } else {
            c.w().write_all(&sh.body)?;
            envelope_sent = false;
        }
        c.expect("end of data", |code| code == 250)?;
        sh.done.fetch_add(1, Ordering::Relaxed);
        if sh.opts.rate.is_some() {
            let us = t0.elapsed().as_micros() as u64;
            sh.lat_us.lock().unwrap_or_else(|e| e.into_inner()).push(us);
        }
        match next {
            Some(m) => n = m,
            None => {
                c.quit();
                // Reached -k: hand a new ticket to the caller, which reconnects.
                return Ok(if sh.opts.per_conn != 0 && count >= sh.opts.per_conn { sh.ticket() } else { None });
            }
        }
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn send(opts: Opts) -> ExitCode {
    let sessions = opts.sessions;
    let sh = Arc::new(Shared {
        envelope: envelope(opts.rcpts),
        envelope_joined: envelope(opts.rcpts).concat(),
        body: body(opts.length),
        opts,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        unpipelined: AtomicU64::new(0),
        lat_us: Mutex::new(Vec::new()),
        start: Instant::now(),
        stop: AtomicBool::new(false),
    });
    let threads: Vec<_> = (0..sessions)
        .map(|_| {
            let sh = Arc::clone(&sh);
            thread::spawn(move || session(&sh))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let secs = sh.start.elapsed().as_secs_f64();
    let done = sh.done.load(Ordering::Relaxed);
    let errors = sh.errors.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *sh.lat_us.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    let pipelined = if sh.opts.lockstep {
        "no"
    } else if sh.unpipelined.load(Ordering::Relaxed) > 0 {
        "not-offered"
    } else {
        "yes"
    };
    println!(
        "messages={done} seconds={secs:.4} msgs_per_s={:.1} mb_per_s={:.2} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={errors} pipelined={pipelined}",
        done as f64 / secs,
        done as f64 * sh.opts.length as f64 / secs / 1e6,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
    if errors > 0 || done < sh.opts.messages { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn idle(opts: Opts) -> ExitCode {
    let start = Instant::now();
    let mut conns = Vec::with_capacity(opts.connections);
    let mut errors = 0u64;
    for _ in 0..opts.connections {
        match Conn::open(opts.addr, true) {
            Ok(c) => conns.push(c),
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("smtp-bench-client: {e}");
                }
                if errors > 100 {
                    break;
                }
            }
        }
    }
    println!("ready connections={} errors={errors} seconds={:.3}", conns.len(), start.elapsed().as_secs_f64());
    let _ = io::stdout().flush();
    match opts.hold {
        Some(secs) => thread::sleep(Duration::from_secs_f64(secs)),
        None => {
            let _ = io::stdin().read_to_end(&mut Vec::new());
        }
    }
    drop(conns);
    if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The body `hold` sends: exactly `length` bytes (header lines, then text
/// lines of 78 characters and CRLF), from one shared chunk of whole lines
/// written `chunks` times, then `tail`. No line starts with a dot.
struct HeldBody {
    head: Vec<u8>,
    chunk: Vec<u8>,
    chunks: usize,
    tail: Vec<u8>,
}

const LINE: usize = 80; // 78 characters and CRLF
const CHUNK_LINES: usize = 800; // 64,000 bytes

fn text_lines(out: &mut Vec<u8>, first: usize, bytes: usize) {
    const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog, and pack my box with five dozen liquor jugs; ";
    // `bytes` is whole lines, but the last may be shorter (never 1 byte).
    let mut left = bytes;
    let mut i = first;
    while left > 0 {
        let n = if left >= LINE { LINE - 2 } else { left - 2 };
        let start = out.len();
        out.extend((0..n).map(|k| TEXT[(i * 7 + k) % TEXT.len()]));
        if out.get(start) == Some(&b'.') {
            out[start] = b'x';
        }
        out.extend_from_slice(b"\r\n");
        left -= n + 2;
        i += 1;
    }
}

impl HeldBody {
    fn new(length: usize) -> io::Result<HeldBody> {
        let mut subject = String::from("held body");
        let head = |subject: &str| {
            format!("From: <sender@bench.client>\r\nTo: <rcpt0@bench.test>\r\nSubject: {subject}\r\n\r\n").into_bytes()
        };
        // One more character in the subject when the text would end in a
        // 1-byte line (a line needs its CRLF).
        if length.checked_sub(head(&subject).len()).is_some_and(|r| r % LINE == 1) {
            subject.push('!');
        }
        let head = head(&subject);
        let rest = length
            .checked_sub(head.len())
            .ok_or_else(|| io::Error::other(format!("-l {length}: at least {} bytes", head.len())))?;
        let mut chunk = Vec::with_capacity(CHUNK_LINES * LINE);
        text_lines(&mut chunk, 0, CHUNK_LINES * LINE);
        let chunks = rest / chunk.len();
        let mut tail = Vec::new();
        text_lines(&mut tail, 0, rest % chunk.len());
        let b = HeldBody { head, chunk, chunks, tail };
        debug_assert_eq!(b.head.len() + b.chunk.len() * b.chunks + b.tail.len(), length);
        Ok(b)
    }
}

struct Held {
    opts: Opts,
    body: HeldBody,
    /// Sessions that got their 354.
    in_data: AtomicU64,
    /// Sessions whose whole body is written.
    written: AtomicU64,
    /// Sessions that ended (for any reason).
    ended: AtomicU64,
    bytes: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    released: Mutex<bool>,
    release: std::sync::Condvar,
}

enum Outcome {
    Accepted,
    Refused(u16, &'static str),
}

fn held_session(h: &Held) -> io::Result<Outcome> {
    let mut c = Conn::open(h.opts.addr, true)?;
    // The body may wait behind a server that stops reading (backpressure):
    // no write timeout; the main thread bounds every wait instead.
    c.w().set_write_timeout(None)?;
    for (cmd, what, want) in [
        (&b"MAIL FROM:<sender@bench.client>\r\n"[..], "MAIL", 250),
        (b"RCPT TO:<rcpt0@bench.test>\r\n", "RCPT", 250),
        (b"DATA\r\n", "DATA", 354),
    ] {
        c.w().write_all(cmd)?;
        let (code, _) = c.reply()?;
        if code != want {
            return Ok(Outcome::Refused(code, what));
        }
    }
    h.in_data.fetch_add(1, Ordering::Relaxed);
    let b = &h.body;
    c.w().write_all(&b.head)?;
    h.bytes.fetch_add(b.head.len() as u64, Ordering::Relaxed);
    for _ in 0..b.chunks {
        c.w().write_all(&b.chunk)?;
        h.bytes.fetch_add(b.chunk.len() as u64, Ordering::Relaxed);
    }
    c.w().write_all(&b.tail)?;
    h.bytes.fetch_add(b.tail.len() as u64, Ordering::Relaxed);
    h.written.fetch_add(1, Ordering::Relaxed);
    {
        let mut released = h.released.lock().unwrap_or_else(|e| e.into_inner());
        while !*released {
            released = h.release.wait(released).unwrap_or_else(|e| e.into_inner());
        }
    }
    c.w().set_read_timeout(Some(Duration::from_secs_f64(h.opts.finish.max(1.0))))?;
    c.w().write_all(b".\r\n")?;
    let (code, _) = c.reply()?;
    c.quit();
    Ok(if code == 250 { Outcome::Accepted } else { Outcome::Refused(code, "end of data") })
}

fn hold(opts: Opts) -> ExitCode {
    let body = match HeldBody::new(opts.length) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("smtp-bench-client: {e}");
            return ExitCode::from(2);
        }
    };
    let n = opts.connections as u64;
    let h = Arc::new(Held {
        opts,
        body,
        in_data: AtomicU64::new(0),
        written: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        released: Mutex::new(false),
        release: std::sync::Condvar::new(),
    });
    let start = Instant::now();
    for _ in 0..n {
        let hc = Arc::clone(&h);
        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            match held_session(&hc) {
                Ok(Outcome::Accepted) => {
                    hc.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Refused(code, what)) => {
                    if hc.refused.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("smtp-bench-client: {code} to {what}");
                    }
                }
                Err(e) => {
                    if hc.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("smtp-bench-client: {e}");
                    }
                }
            }
            hc.ended.fetch_add(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            eprintln!("smtp-bench-client: cannot start a session thread: {e}");
            h.errors.fetch_add(1, Ordering::Relaxed);
            h.ended.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Every session has written its body (or ended early), or --wait is up.
    let wait = Duration::from_secs_f64(h.opts.wait);
    while h.written.load(Ordering::Relaxed) + h.ended.load(Ordering::Relaxed) < n && start.elapsed() < wait {
        thread::sleep(Duration::from_millis(20));
    }
    println!(
        "ready connections={} written={} sessions={n} bytes={} written_bytes={} failed={} ready_seconds={:.3}",
        h.in_data.load(Ordering::Relaxed),
        h.written.load(Ordering::Relaxed),
        n * h.opts.length as u64,
        h.bytes.load(Ordering::Relaxed),
        h.errors.load(Ordering::Relaxed) + h.refused.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    let _ = io::stdout().flush();
    // Wait to be released: the file appears, or a line or EOF on stdin.
    let hold = Duration::from_secs_f64(h.opts.hold.unwrap_or(600.0));
    let held = Instant::now();
    match &h.opts.release {
        Some(path) => {
            let path = std::path::Path::new(path);
            while !path.exists() && held.elapsed() < hold {
                thread::sleep(Duration::from_millis(10));
            }
        }
        None => {
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                let _ = io::stdin().lock().read_line(&mut String::new());
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(hold);
        }
    }
    let released = Instant::now();
    *h.released.lock().unwrap_or_else(|e| e.into_inner()) = true;
    h.release.notify_all();
    let finish = Duration::from_secs_f64(h.opts.finish);
    while h.ended.load(Ordering::Relaxed) < n && released.elapsed() < finish {
        thread::sleep(Duration::from_millis(10));
    }
    let unfinished = n - h.ended.load(Ordering::Relaxed).min(n);
    let accepted = h.accepted.load(Ordering::Relaxed);
    println!(
        "accepted={accepted} refused={} errors={} unfinished={unfinished} sessions={n} finish_seconds={:.3} seconds={:.3}",
        h.refused.load(Ordering::Relaxed),
        h.errors.load(Ordering::Relaxed) + unfinished,
        released.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64(),
    );
    let _ = io::stdout().flush();
    // Threads still blocked (a server that never read the rest) die with
    // the process.
    if accepted == n { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn main() -> ExitCode {
    let Some(opts) = parse() else { return usage() };
    match opts.mode.as_str() {
        "idle" => idle(opts),
        "hold" => hold(opts),
        _ => send(opts),
    }
}
