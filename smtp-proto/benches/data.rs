//! Throughput of the DATA body decoder against a plain newline scan.
//!
//! Both groups use the same buffer: 10 MiB of 76 printable characters plus
//! CR LF per line, ending with the `.` CR LF terminator.
//!
//! Run: `cargo bench --bench data -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smtp_proto::data::{DataDecoder, DecodeStep};

/// Builds roughly `size` bytes of 78-octet lines followed by `.` CR LF.
fn body(size: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size + 80);
    let mut seed: u32 = 0x1234_5678;
    while buf.len() + 78 <= size {
        for i in 0..76 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Printable ASCII, 0x20..=0x7e; no dot at a line start.
            let mut c = b' ' + ((seed >> 24) % 95) as u8;
            if i == 0 && c == b'.' {
                c = b'x';
            }
            buf.push(c);
        }
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b".\r\n");
    buf
}

/// Decodes a whole buffer, returning the body length and the end offset.
fn decode_all(buf: &[u8]) -> (usize, usize) {
    let mut dec = DataDecoder::new(1000);
    let mut off = 0;
    let mut body = 0;
    loop {
        match dec.decode(buf.get(off..).unwrap_or_default()) {
            DecodeStep::Chunk {
                start,
                end,
                consumed,
            } => {
                body += end - start;
                off += consumed;
            }
            DecodeStep::NeedMore { consumed } => {
                off += consumed;
                if consumed == 0 {
                    break;
                }
            }
            DecodeStep::End { consumed } => {
                off += consumed;
                break;
            }
        }
    }
    (body, off)
}

fn bench(c: &mut Criterion) {
    let buf = body(10 << 20);
    let (body_len, end) = decode_all(&buf);
    assert_eq!(end, buf.len());
    assert_eq!(body_len, buf.len() - 3);

    let mut g = c.benchmark_group("data_decode");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("10MiB_78col", |b| b.iter(|| decode_all(black_box(&buf))));
    g.finish();

    let mut g = c.benchmark_group("memchr_newline_scan");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("10MiB_78col", |b| {
        b.iter(|| memchr::memchr_iter(b'\n', black_box(&buf)).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
