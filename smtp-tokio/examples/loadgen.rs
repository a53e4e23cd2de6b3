//! `loadgen`: an SMTP load generator on `smtp_proto::client` (our sans-IO
//! client driven over tokio sockets).
//!
//! ```sh
//! cargo run --release -p smtp-tokio --example loadgen -- \
//!     --target 127.0.0.1:2525 --concurrency 16 --messages 100000 --size 1024 \
//!     --recipients 1 --per-connection 0 [--lock-step]
//! ```
//!
//! `--per-connection N`: transactions per connection before QUIT and a new
//! connection (0: all on one connection per worker; 1: connection churn).
//! `--lock-step` turns PIPELINING off (one command, one reply). Prints
//! messages/s, MB/s, connections/s and the p50/p99/max transaction latency
//! (MAIL to the final reply), and exits non-zero if any transaction failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smtp_proto::client::{Client, ClientConfig, ClientEvent, Envelope, TlsPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
struct Opts {
    target: SocketAddr,
    concurrency: usize,
    messages: u64,
    size: usize,
    recipients: usize,
    per_connection: u64,
    pipelining: bool,
    rate: Option<f64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --target ADDR [--concurrency N] [--messages N] [--size BYTES] \
         [--recipients N] [--per-connection N] [--lock-step] [--rate MSGS_PER_SEC]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        target: SocketAddr::from(([127, 0, 0, 1], 2525)),
        concurrency: 16,
        messages: 10_000,
        size: 1024,
        recipients: 1,
        per_connection: 0,
        pipelining: true,
        rate: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--target" => o.target = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => o.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--messages" => o.messages = val().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = val().parse().unwrap_or_else(|_| usage()),
            "--recipients" => o.recipients = val().parse().unwrap_or_else(|_| usage()),
            "--per-connection" => o.per_connection = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = Some(val().parse().unwrap_or_else(|_| usage())),
            "--lock-step" => o.pipelining = false,
            _ => usage(),
        }
    }
    o.concurrency = o.concurrency.max(1);
    o.recipients = o.recipients.max(1);
    o
}

/// A message of about `size` bytes: headers, then 76-character lines.
fn body(size: usize) -> Vec<u8> {
    let mut b = b"From: load@example.org\r\nTo: sink@example.net\r\nSubject: load\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijkl\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b
}

/// One connection: a socket driving a client.
struct Conn {
    tcp: TcpStream,
    client: Client,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(o: &Opts) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(o.target).await?;
        tcp.set_nodelay(true)?;
        let mut config = ClientConfig::new("loadgen.example");
        config.tls = TlsPolicy::None;
        config.pipelining = o.pipelining;
        config.chunking = false;
        let mut c = Conn {
            tcp,
            client: Client::new(config, Instant::now()),
            buf: vec![0; 64 * 1024],
        };
        match c.event().await? {
            ClientEvent::Ready { .. } => Ok(c),
            other => Err(std::io::Error::other(format!("not ready: {other:?}"))),
        }
    }

    /// Writes what the client holds, reads until it has an event.
    async fn event(&mut self) -> std::io::Result<ClientEvent> {
        loop {
            if let Some(ev) = self.event_or_room(false).await? {
                return Ok(ev);
            }
        }
    }

    /// [`Conn::event`], or `None` once the client takes more body (with
    /// `room`): the `354`, or BDAT chunk replies, make room without an event.
    async fn event_or_room(&mut self, room: bool) -> std::io::Result<Option<ClientEvent>> {
        loop {
            if let Some(ev) = self.client.poll().event() {
                return Ok(Some(ev));
            }
            if room && self.client.wants_body() {
                return Ok(None);
            }
            while self.client.wants_write() {
                let n = self.tcp.write(self.client.transmit()).await?;
                self.client.transmitted(n);
            }
            if let Some(ev) = self.client.poll().event() {
                return Ok(Some(ev));
            }
            if room && self.client.wants_body() {
                return Ok(None);
            }
            if self.client.is_closed() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let n = tokio::time::timeout(Duration::from_secs(60), self.tcp.read(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 {
                self.client.receive_eof(Instant::now());
            } else {
                let mut rest = &self.buf[..n];
                while !rest.is_empty() {
                    let k = self.client.receive(rest, Instant::now());
                    if k == 0 {
                        return Err(std::io::Error::other("input not taken"));
                    }
                    rest = &rest[k..];
                }
            }
        }
    }

    /// One transaction; the time from MAIL to the final reply.
    async fn send(&mut self, env: &Envelope, body: &[u8]) -> std::io::Result<Duration> {
        let start = Instant::now();
        self.client
            .send_mail(env, start)
            .map_err(std::io::Error::other)?;
        let mut rest = body;
        loop {
            while !rest.is_empty() && self.client.wants_body() {
                let n = self
                    .client
                    .push_body(rest, Instant::now())
                    .map_err(std::io::Error::other)?;
                rest = &rest[n..];
                if n == 0 {
                    break;
                }
                while self.client.wants_write() {
                    let n = self.tcp.write(self.client.transmit()).await?;
                    self.client.transmitted(n);
                }
            }
            if rest.is_empty() && self.client.wants_body() {
                self.client
                    .end_body(Instant::now())
                    .map_err(std::io::Error::other)?;
                rest = &[];
            }
            let Some(event) = self.event_or_room(!rest.is_empty()).await? else {
                continue;
            };
            match event {
                ClientEvent::MessageAccepted { .. } => return Ok(start.elapsed()),
                ClientEvent::MessageRejected { reply, .. } => {
                    return Err(std::io::Error::other(format!("refused: {}", reply.code())));
                }
                ClientEvent::Error(e) => return Err(std::io::Error::other(e.to_string())),
                _ => {}
            }
        }
    }

    async fn quit(mut self) {
        if self.client.quit(Instant::now()).is_ok() {
            let _ = self.event().await;
            let _ = self.event().await;
        }
    }
}

struct Shared {
    opts: Opts,
    body: Vec<u8>,
    envelope: Envelope,
    next: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    start: Instant,
}

async fn worker(s: Arc<Shared>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut on_conn = 0u64;
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.opts.messages {
            break;
        }
        if let Some(rate) = s.opts.rate {
            let due = s.start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if conn.is_none() {
            match Conn::open(&s.opts).await {
                Ok(c) => {
                    s.connections.fetch_add(1, Ordering::Relaxed);
                    conn = Some(c);
                    on_conn = 0;
                }
                Err(e) => {
                    eprintln!("loadgen: connect: {e}");
                    s.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.send(&s.envelope, &s.body).await {
            Ok(d) => latencies.push(d),
            Err(e) => {
                eprintln!("loadgen: {e}");
                s.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
        }
        on_conn += 1;
        if s.opts.per_connection > 0 && on_conn >= s.opts.per_connection {
            if let Some(c) = conn.take() {
                c.quit().await;
            }
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> std::process::ExitCode {
    let opts = parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("loadgen: {e}");
            std::process::exit(1)
        });
    let recipients: Vec<String> = (0..opts.recipients)
        .map(|i| format!("sink{i}@example.net"))
        .collect();
    let shared = Arc::new(Shared {
        body: body(opts.size),
        envelope: Envelope::new(Some("load@example.org"), recipients),
        opts: opts.clone(),
        next: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        start: Instant::now(),
    });
    let start = Instant::now();
    let mut all = runtime.block_on(async {
        let tasks: Vec<_> = (0..opts.concurrency)
            .map(|_| tokio::spawn(worker(shared.clone())))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let ok = all.len() as f64;
    let failed = shared.failed.load(Ordering::Relaxed);
    println!(
        "messages={} failed={} seconds={:.3} msgs_per_sec={:.0} mb_per_s={:.1} conns_per_sec={:.0} \
         p50_ms={:.3} p99_ms={:.3} max_ms={:.3} concurrency={} size={} recipients={} pipelining={}",
        all.len(),
        failed,
        secs,
        ok / secs,
        ok * shared.body.len() as f64 / secs / 1e6,
        shared.connections.load(Ordering::Relaxed) as f64 / secs,
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        opts.concurrency,
        shared.body.len(),
        opts.recipients,
        opts.pipelining,
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
