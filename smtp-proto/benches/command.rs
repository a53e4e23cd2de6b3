//! Command parse cost: ns per MAIL FROM / RCPT TO line.
#![allow(missing_docs, clippy::unwrap_used)]
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use smtp_proto::command::ParseOptions;
use smtp_proto::parse::parse_command;

fn bench(c: &mut Criterion) {
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("parse_command");
    g.bench_function("mail_from", |b| {
        b.iter(|| {
            parse_command(
                black_box(b"MAIL FROM:<someone.long@example.com> SIZE=12345 BODY=8BITMIME"),
                opts,
            )
        })
    });
    g.bench_function("rcpt_to", |b| {
        b.iter(|| parse_command(black_box(b"RCPT TO:<user@example.org>"), opts))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
