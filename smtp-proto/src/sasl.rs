//! SASL PLAIN (RFC 4616) and LOGIN exchanges for SMTP AUTH (RFC 4954).
//!
//! [`SaslExchange`] is a small state machine for the server side: start it
//! with the mechanism and optional initial response of the `AUTH` command,
//! send each [`SaslStep::Challenge`] as a `334` line, feed each client line
//! back with [`SaslExchange::step`], and stop at [`SaslStep::Done`],
//! [`SaslStep::Cancelled`] or [`SaslStep::Failed`]. Checking the credentials
//! is the caller's business.
//!
//! The password is kept in a [`Secret`], whose `Debug` output is redacted, so
//! that logging a [`Credentials`] value does not leak it.
//!
//! [`encode_plain`] and [`encode_base64`] build the client side's responses.

use core::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Longest client response line accepted, in bytes (without CRLF).
pub const MAX_RESPONSE_LEN: usize = 12288;

/// Longest authorization identity, user name or password accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 255;

/// The `334` challenge text of LOGIN's first step: base64 of `Username:`.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";

/// The `334` challenge text of LOGIN's second step: base64 of `Password:`.
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// Standard base64 alphabet; padding may be present or not when decoding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A SASL mechanism supported by [`SaslExchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login; widely deployed).
    Login,
}

impl Mechanism {
    /// Looks a mechanism up by its name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Self::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Self::Login)
        } else {
            None
        }
    }

    /// The mechanism's name as advertised in the EHLO `AUTH` keyword.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

/// A value that is not shown by `Debug` (and has no `Display`).
#[derive(Clone, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the secret value.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// The credentials a client presented; the password is redacted in `Debug` output.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The mechanism they were presented with.
    pub mechanism: Mechanism,
    /// The authorization identity to act as, when the client asked for one (PLAIN only).
    pub authzid: Option<String>,
    /// The authentication identity (user name).
    pub username: String,
    /// The password.
    pub password: Secret<String>,
}

/// What the server does next in an exchange.
#[derive(Debug, Clone)]
pub enum SaslStep {
    /// Send `334 <text>`: the base64 challenge, `""` for an empty challenge
    /// (send `334 ` with a trailing space, or `334`), then read a response line.
    Challenge(&'static str),
    /// The exchange is complete: check these credentials, then answer 235 or 535.
    Done(Credentials),
    /// The client cancelled with `*`: answer `501 5.0.0`.
    Cancelled,
    /// The exchange failed: answer `501 5.5.2` (or `500 5.5.6` for
    /// [`SaslError::TooLong`]).
    Failed(SaslError),
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslError {
    /// A response was not valid base64 (answer `501 5.5.2`).
    Base64,
    /// A decoded response does not fit the mechanism, or the exchange was
    /// already over (answer `501 5.5.2`).
    Malformed,
    /// A response line was longer than [`MAX_RESPONSE_LEN`] (answer `500 5.5.6`).
    TooLong,
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Base64 => "invalid base64 in SASL response",
            Self::Malformed => "malformed SASL response",
            Self::TooLong => "SASL response too long",
        })
    }
}

impl std::error::Error for SaslError {}

/// Where an exchange stands.
#[derive(Debug, Clone)]
enum State {
    /// PLAIN sent its empty challenge and waits for the message.
    PlainMessage,
    /// LOGIN asked for the user name.
    LoginUsername,
    /// LOGIN asked for the password.
    LoginPassword {
        /// The user name already received.
        username: String,
    },
    /// Done, cancelled or failed: any further step is an error.
    Finished,
}

/// The server side of one SASL PLAIN or LOGIN exchange.
#[derive(Debug, Clone)]
pub struct SaslExchange {
    mechanism: Mechanism,
    state: State,
}

impl SaslExchange {
    /// Starts an exchange; `initial` is the AUTH command's initial response ("=" means empty).
    ///
    /// With LOGIN, an initial response is taken as the base64 user name, as
    /// many clients send it that way.
    pub fn start(mechanism: Mechanism, initial: Option<&str>) -> (SaslExchange, SaslStep) {
        let mut exchange = SaslExchange {
            mechanism,
            state: match mechanism {
                Mechanism::Plain => State::PlainMessage,
                Mechanism::Login => State::LoginUsername,
            },
        };
        let step = match (initial, mechanism) {
            (None, Mechanism::Plain) => SaslStep::Challenge(""),
            (None, Mechanism::Login) => SaslStep::Challenge(LOGIN_USERNAME),
            (Some("="), _) => exchange.respond(Ok(Vec::new())),
            (Some(line), _) => exchange.step(line),
        };
        (exchange, step)
    }

    /// Feeds one client response line (without CRLF).
    pub fn step(&mut self, line: &str) -> SaslStep {
        if matches!(self.state, State::Finished) {
            return SaslStep::Failed(SaslError::Malformed);
        }
        if line == "*" {
            self.state = State::Finished;
            return SaslStep::Cancelled;
        }
        let decoded = if line.len() > MAX_RESPONSE_LEN {
            Err(SaslError::TooLong)
        } else {
            BASE64.decode(line).map_err(|_| SaslError::Base64)
        };
        self.respond(decoded)
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Advances the state machine with a decoded response.
    fn respond(&mut self, decoded: Result<Vec<u8>, SaslError>) -> SaslStep {
        let state = core::mem::replace(&mut self.state, State::Finished);
        let decoded = match decoded {
            Ok(bytes) => bytes,
            Err(e) => return SaslStep::Failed(e),
        };
        let result = match state {
            State::PlainMessage => parse_plain(decoded).map(SaslStep::Done),
            State::LoginUsername => login_field(decoded).map(|username| {
                self.state = State::LoginPassword { username };
                SaslStep::Challenge(LOGIN_PASSWORD)
            }),
            State::LoginPassword { username } => login_field(decoded).map(|password| {
                SaslStep::Done(Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    username,
                    password: Secret::new(password),
                })
            }),
            State::Finished => Err(SaslError::Malformed),
        };
        result.unwrap_or_else(SaslStep::Failed)
    }
}

/// Checks one field: not empty, at most [`MAX_FIELD_LEN`] bytes, no NUL.
fn valid_field(field: &[u8]) -> bool {
    !field.is_empty() && field.len() <= MAX_FIELD_LEN && !field.contains(&0)
}

/// Decodes a LOGIN user name or password.
fn login_field(decoded: Vec<u8>) -> Result<String, SaslError> {
    if !valid_field(&decoded) {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(decoded).map_err(|_| SaslError::Malformed)
}

/// Parses a PLAIN message: `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
fn parse_plain(decoded: Vec<u8>) -> Result<Credentials, SaslError> {
    let message = String::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let mut fields = message.split('\0');
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authzid.len() > MAX_FIELD_LEN
        || !valid_field(authcid.as_bytes())
        || !valid_field(passwd.as_bytes())
    {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        username: authcid.to_owned(),
        password: Secret::new(passwd.to_owned()),
    })
}

/// Builds a PLAIN initial response: base64 of `[authzid] NUL user NUL pass`.
pub fn encode_plain(authzid: Option<&str>, user: &str, pass: &str) -> String {
    let authzid = authzid.unwrap_or("");
    let mut message = Vec::with_capacity(authzid.len() + user.len() + pass.len() + 2);
    message.extend_from_slice(authzid.as_bytes());
    message.push(0);
    message.extend_from_slice(user.as_bytes());
    message.push(0);
    message.extend_from_slice(pass.as_bytes());
    encode_base64(&message)
}

/// Encodes bytes as standard, padded base64 (RFC 4648 §4), as SMTP AUTH uses.
pub fn encode_base64(s: &[u8]) -> String {
    BASE64.encode(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn done(step: SaslStep) -> Credentials {
        match step {
            SaslStep::Done(c) => c,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn failed(step: SaslStep) -> SaslError {
        match step {
            SaslStep::Failed(e) => e,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    fn challenge(step: SaslStep) -> &'static str {
        match step {
            SaslStep::Challenge(c) => c,
            other => panic!("expected Challenge, got {other:?}"),
        }
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(Mechanism::from_name("PLAIN"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("Login"), Some(Mechanism::Login));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
        assert_eq!(Mechanism::from_name(""), None);
        assert_eq!(Mechanism::Plain.name(), "PLAIN");
        assert_eq!(Mechanism::Login.name(), "LOGIN");
    }

    #[test]
    fn rfc4616_examples() {
        // "\0tim\0tanstaaftanstaaf"
        assert_eq!(
            encode_plain(None, "tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some("AHRpbQB0YW5zdGFhZnRhbnN0YWFm"));
        let c = done(step);
        assert_eq!(c.mechanism, Mechanism::Plain);
        assert_eq!(c.authzid, None);
        assert_eq!(c.username, "tim");
        assert_eq!(c.password.expose(), "tanstaaftanstaaf");

        // "Ursel\0Kurt\0xipj3plmq"
        assert_eq!(
            encode_plain(Some("Ursel"), "Kurt", "xipj3plmq"),
            "VXJzZWwAS3VydAB4aXBqM3BsbXE="
        );
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some("VXJzZWwAS3VydAB4aXBqM3BsbXE="));
        let c = done(step);
        assert_eq!(c.authzid.as_deref(), Some("Ursel"));
        assert_eq!(c.username, "Kurt");
        assert_eq!(c.password.expose(), "xipj3plmq");
    }

    #[test]
    fn plain_without_initial_response() {
        let (mut ex, step) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(challenge(step), "");
        assert_eq!(ex.mechanism(), Mechanism::Plain);
        let c = done(ex.step(&encode_plain(None, "user", "pass word")));
        assert_eq!(
            (c.username.as_str(), c.password.expose().as_str()),
            ("user", "pass word")
        );
        assert_eq!(
            failed(ex.step("AHRpbQB0YW5zdGFhZnRhbnN0YWFm")),
            SaslError::Malformed
        );
    }

    #[test]
    fn plain_utf8_and_unpadded() {
        let (_, step) = SaslExchange::start(
            Mechanism::Plain,
            Some(&encode_plain(None, "jürgen", "pässwörd")),
        );
        let c = done(step);
        assert_eq!(c.username, "jürgen");
        assert_eq!(c.password.expose(), "pässwörd");
        // Padding may be left out.
        let (_, step) = SaslExchange::start(Mechanism::Plain, Some("VXJzZWwAS3VydAB4aXBqM3BsbXE"));
        assert_eq!(done(step).username, "Kurt");
    }

    #[test]
    fn plain_malformed() {
        let cases: &[&[u8]] = &[
            b"",                    // empty
            b"tim",                 // no NUL
            b"\0tim",               // no password
            b"\0tim\0",             // empty password
            b"\0\0pass",            // empty authcid
            b"a\0tim\0pass\0extra", // too many fields
            b"\0tim\xff\0pass",     // not UTF-8
        ];
        for &case in cases {
            let (_, step) = SaslExchange::start(Mechanism::Plain, Some(&encode_base64(case)));
            assert_eq!(failed(step), SaslError::Malformed, "{case:?}");
        }
        // "=" is an empty initial response, which PLAIN cannot use.
        let (mut ex, step) = SaslExchange::start(Mechanism::Plain, Some("="));
        assert_eq!(failed(step), SaslError::Malformed);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        // An empty line after the empty challenge is an empty response.
        let (mut ex, _) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
    }

    #[test]
    fn field_lengths() {
        let long = "x".repeat(MAX_FIELD_LEN);
        let (_, step) = SaslExchange::start(
            Mechanism::Plain,
            Some(&encode_plain(Some(&long), &long, &long)),
        );
        assert_eq!(done(step).username, long);
        let longer = "x".repeat(MAX_FIELD_LEN + 1);
        for (z, u, p) in [
            (&longer, &long, &long),
            (&long, &longer, &long),
            (&long, &long, &longer),
        ] {
            let (_, step) =
                SaslExchange::start(Mechanism::Plain, Some(&encode_plain(Some(z), u, p)));
            assert_eq!(failed(step), SaslError::Malformed);
        }
        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(
            failed(ex.step(&encode_base64(longer.as_bytes()))),
            SaslError::Malformed
        );
    }

    #[test]
    fn login_flow() {
        let (mut ex, step) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(challenge(step), "VXNlcm5hbWU6");
        assert_eq!(encode_base64(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(challenge(ex.step(&encode_base64(b"tim"))), "UGFzc3dvcmQ6");
        assert_eq!(encode_base64(b"Password:"), "UGFzc3dvcmQ6");
        let c = done(ex.step(&encode_base64(b"secret")));
        assert_eq!(c.mechanism, Mechanism::Login);
        assert_eq!(c.authzid, None);
        assert_eq!(c.username, "tim");
        assert_eq!(c.password.expose(), "secret");
        assert_eq!(failed(ex.step("c2VjcmV0")), SaslError::Malformed);
    }

    #[test]
    fn login_with_initial_response() {
        let (mut ex, step) = SaslExchange::start(Mechanism::Login, Some("dGlt"));
        assert_eq!(challenge(step), "UGFzc3dvcmQ6");
        let c = done(ex.step("c2VjcmV0"));
        assert_eq!(
            (c.username.as_str(), c.password.expose().as_str()),
            ("tim", "secret")
        );
        // "=": an empty user name.
        let (_, step) = SaslExchange::start(Mechanism::Login, Some("="));
        assert_eq!(failed(step), SaslError::Malformed);
    }

    #[test]
    fn login_empty_fields() {
        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        assert_eq!(
            failed(ex.step(&encode_base64(b"a\0b"))),
            SaslError::Malformed
        );
    }

    #[test]
    fn cancel_at_any_step() {
        let (mut ex, _) = SaslExchange::start(Mechanism::Plain, None);
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        assert_eq!(failed(ex.step("*")), SaslError::Malformed);

        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        assert_eq!(failed(ex.step("dGlt")), SaslError::Malformed);

        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));

        let (mut ex, step) = SaslExchange::start(Mechanism::Login, Some("*"));
        assert!(matches!(step, SaslStep::Cancelled));
        assert_eq!(failed(ex.step("dGlt")), SaslError::Malformed);
    }

    #[test]
    fn bad_base64() {
        for bad in [
            "not base64!",
            "AHRpbQB0YW5zdGFhZnRhbnN0YWF",
            "dGlt=x",
            " dGlt",
            "dGlt\t",
            "**",
            "A",
        ] {
            let (mut ex, _) = SaslExchange::start(Mechanism::Plain, None);
            assert_eq!(failed(ex.step(bad)), SaslError::Base64, "{bad:?}");
            assert_eq!(failed(ex.step("dGlt")), SaslError::Malformed);
            let (_, step) = SaslExchange::start(Mechanism::Login, Some(bad));
            assert_eq!(failed(step), SaslError::Base64, "{bad:?}");
        }
        let (mut ex, _) = SaslExchange::start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert_eq!(failed(ex.step("%%%%")), SaslError::Base64);
    }

    #[test]
    fn too_long() {
        let line = "A".repeat(MAX_RESPONSE_LEN + 4);
        let (mut ex, _) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step(&line)), SaslError::TooLong);
        let (_, step) = SaslExchange::start(Mechanism::Login, Some(&line));
        assert_eq!(failed(step), SaslError::TooLong);
        // Exactly the limit is decoded (and then judged on its content).
        let line = "A".repeat(MAX_RESPONSE_LEN);
        let (mut ex, _) = SaslExchange::start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step(&line)), SaslError::Malformed);
    }

    #[test]
    fn debug_redacts_password() {
        let (_, step) = SaslExchange::start(
            Mechanism::Plain,
            Some(&encode_plain(Some("admin"), "tim", "hunter2-secret")),
        );
        let formatted = format!("{step:?}");
        assert!(!formatted.contains("hunter2"), "{formatted}");
        assert!(formatted.contains("REDACTED"));
        let c = done(step);
        let formatted = format!("{c:?}");
        assert!(!formatted.contains("hunter2"), "{formatted}");
        assert!(formatted.contains("tim"));
        assert!(formatted.contains("Secret([REDACTED])"));
        let formatted = format!("{c:#?}");
        assert!(!formatted.contains("hunter2"), "{formatted}");
        assert_eq!(format!("{:?}", Secret::new(42)), "Secret([REDACTED])");
        assert_eq!(*Secret::new(42).expose(), 42);
    }

    #[test]
    fn error_display() {
        assert_eq!(
            SaslError::Base64.to_string(),
            "invalid base64 in SASL response"
        );
        let e: Box<dyn std::error::Error> = Box::new(SaslError::TooLong);
        assert!(e.to_string().contains("too long"));
    }

    proptest! {
        #[test]
        fn plain_roundtrip(
            authzid in proptest::option::of("[^\u{0}]{0,40}"),
            user in "[^\u{0}]{1,40}",
            pass in "[^\u{0}]{1,40}",
        ) {
            let (_, step) = SaslExchange::start(Mechanism::Plain, Some(&encode_plain(authzid.as_deref(), &user, &pass)));
            match step {
                SaslStep::Done(c) => {
                    prop_assert_eq!(c.authzid, authzid.filter(|z| !z.is_empty()));
                    prop_assert_eq!(c.username, user);
                    prop_assert_eq!(c.password.expose(), &pass);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn never_panics(lines in proptest::collection::vec(".{0,64}", 0..5), login in any::<bool>(), initial in proptest::option::of(".{0,64}")) {
            let mech = if login { Mechanism::Login } else { Mechanism::Plain };
            let (mut ex, _) = SaslExchange::start(mech, initial.as_deref());
            for line in &lines {
                let _ = ex.step(line);
            }
        }
    }
}
