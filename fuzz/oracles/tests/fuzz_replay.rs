//! The fuzz targets' invariants under `cargo test`: every function of
//! `smtp_fuzz_oracles` runs on the committed seeds (`fuzz/seeds/<target>/`)
//! and on proptest inputs, so a developer without cargo-fuzz (or a
//! nightly-only sanitizer) still exercises them on every test run.

use std::path::PathBuf;

use proptest::prelude::*;
use smtp_fuzz_oracles as fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("server_session", fuzzing::server_session),
    ("bdat", fuzzing::bdat),
    ("command_line", fuzzing::command_line),
    ("data_decoder", fuzzing::data_decoder),
    ("proxy_header", fuzzing::proxy_header),
    ("sasl", fuzzing::sasl),
    ("reply_parser", fuzzing::reply_parser),
    ("address", fuzzing::address),
    ("client_session", fuzzing::client_session),
];

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

#[test]
fn every_target_has_seeds_and_passes_them() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for (path, data) in seeds {
            // A failing seed names itself before the target's panic.
            eprintln!("{}", path.display());
            target(&data);
        }
    }
}

/// Seeds cut short or with one byte changed: the neighbourhood libFuzzer
/// explores first.
#[test]
fn seed_mutations() {
    for (name, target) in TARGETS {
        for (_, data) in seeds(name) {
            for cut in [1, 8, 16, 33, data.len() / 2] {
                target(&data[..cut.min(data.len())]);
            }
            let step = (data.len() / 16).max(1);
            for i in (0..data.len()).step_by(step) {
                let mut d = data.clone();
                d[i] = d[i].wrapping_add(0x5b);
                target(&d);
            }
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// SMTP-shaped client streams for the session targets.
fn smtp_stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(&b"EHLO a\r\n"[..]),
            Just(&b"LHLO a\r\n"[..]),
            Just(&b"MAIL FROM:<a@b.c>\r\n"[..]),
            Just(&b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n"[..]),
            Just(&b"RCPT TO:<d@e.f>\r\n"[..]),
            Just(&b"DATA\r\n"[..]),
            Just(&b"x\r\n"[..]),
            Just(&b".\r\n"[..]),
            Just(&b"..y\r\n"[..]),
            Just(&b"\n.\n"[..]),
            Just(&b"\r.\r"[..]),
            Just(&b"BDAT 4\r\nab\ncd"[..]),
            Just(&b"BDAT 4 LAST\r\nabcd"[..]),
            Just(&b"BDAT 0 LAST\r\n"[..]),
            Just(&b"STARTTLS\r\n"[..]),
            Just(&b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"[..]),
            Just(&b"AUTH LOGIN\r\nYm9i\r\nc2VjcmV0\r\n"[..]),
            Just(&b"VRFY x\r\n"[..]),
            Just(&b"RSET\r\n"[..]),
            Just(&b"NOOP\r\n"[..]),
            Just(&b"QUIT\r\n"[..]),
            Just(&b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..]),
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn server_session_bytes(data in bytes(2048)) {
        fuzzing::server_session(&data);
    }

    #[test]
    fn server_session_smtp_shaped(head in proptest::collection::vec(any::<u8>(), 32), stream in smtp_stream()) {
        let mut data = head;
        data.extend(stream);
        fuzzing::server_session(&data);
    }

    #[test]
    fn bdat_model(data in bytes(1024)) {
        fuzzing::bdat(&data);
    }

    #[test]
    fn command_line_bytes(data in bytes(300)) {
        fuzzing::command_line(&data);
    }

    #[test]
    fn command_line_shaped(flags in any::<u8>(), line in "(MAIL FROM:|RCPT TO:|EHLO |BDAT |AUTH |VRFY )[ <>@.a-z0-9\"\\[\\]:=+;,-]{0,60}( (SIZE|BODY|RET|ENVID|AUTH|NOTIFY|ORCPT)=[A-Za-z0-9+;,.<>-]{0,12}){0,3}") {
        let mut data = vec![flags];
        data.extend(line.bytes());
        fuzzing::command_line(&data);
    }

    #[test]
    fn data_decoder_bytes(data in bytes(1024)) {
        fuzzing::data_decoder(&data);
    }

    #[test]
    fn data_decoder_shaped(head in proptest::collection::vec(any::<u8>(), 2), body in proptest::collection::vec(prop_oneof![
        Just(&b"\r\n"[..]), Just(&b"."[..]), Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b"ab"[..]), Just(&b".\r\n"[..]),
    ], 0..60)) {
        let mut data = head;
        data.extend(body.concat());
        fuzzing::data_decoder(&data);
    }

    #[test]
    fn proxy_header_bytes(data in bytes(600)) {
        fuzzing::proxy_header(&data);
    }

    #[test]
    fn proxy_header_after_signatures(v2 in any::<bool>(), tail in bytes(300)) {
        let mut data = if v2 { b"\r\n\r\n\0\r\nQUIT\n".to_vec() } else { b"PROXY ".to_vec() };
        data.extend(tail);
        fuzzing::proxy_header(&data);
    }

    #[test]
    fn sasl_bytes(data in bytes(600)) {
        fuzzing::sasl(&data);
    }

    #[test]
    fn reply_parser_bytes(data in bytes(600)) {
        fuzzing::reply_parser(&data);
    }

    #[test]
    fn reply_parser_shaped(m in any::<u8>(), lines in proptest::collection::vec("[2-5][0-9]{2}[ -]([245]\\.[0-9]{1,3}\\.[0-9]{1,3} )?[a-z ]{0,8}\r?\n", 1..5)) {
        let mut data = vec![m];
        data.extend(lines.concat().bytes());
        fuzzing::reply_parser(&data);
    }

    #[test]
    fn address_bytes(data in bytes(300)) {
        fuzzing::address(&data);
    }

    #[test]
    fn address_shaped(flags in any::<u8>(), s in "[\"a-z0-9.@\\[\\]:+é-]{0,40}") {
        let mut data = vec![flags];
        data.extend(s.bytes());
        fuzzing::address(&data);
    }

    #[test]
    fn client_session_bytes(data in bytes(600)) {
        fuzzing::client_session(&data);
    }

    #[test]
    fn client_session_shaped(head in proptest::collection::vec(any::<u8>(), 28), lines in proptest::collection::vec("(220|250|235|334|354|421|450|550|502)[ -]([245]\\.[0-9]\\.[0-9] )?[A-Z]{0,10}\r\n", 0..14)) {
        let mut data = head;
        data.extend(lines.concat().bytes());
        fuzzing::client_session(&data);
    }
}
