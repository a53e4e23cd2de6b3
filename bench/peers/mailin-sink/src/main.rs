//! `mailin-sink ADDR [THREADS]`: an SMTP sink on `mailin-embedded`.
//!
//! mailin-embedded runs one blocking session per pool thread, so THREADS
//! (default 64) is also the most sessions served at once; bench/run.sh
//! raises it for the idle-sessions scenario.

use mailin_embedded::{Handler, Server};

/// Accepts everything; the trait's default `data` drops the bytes.
#[derive(Clone)]
struct Discard;

impl Handler for Discard {}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:2525".into());
    let threads: u32 = args.next().map_or(64, |t| t.parse().expect("THREADS is a number"));
    let mut server = Server::new(Discard);
    server
        .with_name("bench.test")
        .with_num_threads(threads)
        .with_addr(addr.as_str())
        .expect("valid listen address");
    eprintln!("listening addr={addr} threads={threads}");
    server.serve().expect("mailin server");
}
