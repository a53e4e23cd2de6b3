//! The fuzz targets' invariants under `cargo test`, on generated inputs
//! (so a developer without cargo-fuzz still exercises them).
#![cfg(feature = "fuzzing")]

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn server_session(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        smtp_proto::fuzzing::server_session(&data);
    }

    #[test]
    fn server_session_smtp_shaped(
        control in proptest::collection::vec(any::<u8>(), 16),
        lines in proptest::collection::vec(prop_oneof![
            Just("EHLO a\r\n"), Just("MAIL FROM:<a@b.c>\r\n"), Just("RCPT TO:<d@e.f>\r\n"),
            Just("DATA\r\n"), Just("x\r\n"), Just(".\r\n"), Just("\n.\n"), Just("BDAT 4 LAST\r\nabcd"),
            Just("STARTTLS\r\n"), Just("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), Just("RSET\r\n"), Just("QUIT\r\n"),
            Just("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        ], 0..40),
    ) {
        let mut data = control;
        data.extend(lines.concat().bytes());
        smtp_proto::fuzzing::server_session(&data);
    }
}
