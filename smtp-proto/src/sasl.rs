//! SASL exchanges for SMTP AUTH (RFC 4954), server side: PLAIN (RFC 4616),
//! LOGIN, CRAM-MD5 (RFC 2195), SCRAM-SHA-256 and SCRAM-SHA-256-PLUS
//! (RFC 5802, RFC 7677, with the `tls-exporter` channel binding of
//! RFC 9266), XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628).
//!
//! [`SaslExchange`] is a small state machine, sans-IO like the rest of the
//! crate: no clock, no randomness and no cryptography. Start it with the
//! mechanism and the optional initial response of the `AUTH` command, plus
//! a [`SaslContext`] (the TLS channel binding data), then act on every
//! [`SaslStep`] it returns:
//!
//! | step | what the caller does |
//! |---|---|
//! | [`SaslStep::Challenge`] | send `334 <text>`, feed the next client line to [`SaslExchange::step`] |
//! | [`SaslStep::Request`] | do what the [`SaslRequest`] asks (make a challenge, look keys up, check an HMAC, a proof or a token; it may take an `.await`), then call [`SaslExchange::answer`] |
//! | [`SaslStep::Done`] | PLAIN or LOGIN: check the password, answer `235` or `535` |
//! | [`SaslStep::Authenticated`] | answer `235` |
//! | [`SaslStep::Refused`] | send that reply |
//! | [`SaslStep::Cancelled`] | answer `501 5.0.0` |
//! | [`SaslStep::Failed`] | answer as the [`SaslError`] says |
//!
//! The rounds of each mechanism (`[..]` when there is no initial response):
//!
//! - PLAIN: `[Challenge("")]`, `Done`.
//! - LOGIN: `Challenge(Username:)`, `Challenge(Password:)`, `Done` (an
//!   initial response is the user name).
//! - CRAM-MD5: `Request(CramMd5Challenge)`, `Challenge`, `Request(CramMd5)`,
//!   `Authenticated` (no initial response allowed).
//! - SCRAM-SHA-256(-PLUS): `[Challenge("")]`, `Request(ScramFirst)`,
//!   `Challenge` (server-first), `Request(ScramFinal)`, `Challenge`
//!   (server-final), `Authenticated` once the client sends an empty line.
//! - XOAUTH2, OAUTHBEARER: `[Challenge("")]`, `Request(Token)`, then
//!   `Authenticated`, or, after [`SaslAnswer::TokenRefused`], a `Challenge`
//!   with the JSON error and `Refused` whatever the client answers.
//!
//! A refusing [`Decision`] answers any request and ends the exchange with
//! [`SaslStep::Refused`] at once. A client line `*` cancels at any client
//! step ([`SaslStep::Cancelled`]).
//!
//! Misuse by the application (an answer of the wrong kind or with invalid
//! values, an answer when no request is outstanding, a client line while one
//! is) ends the exchange with [`SaslError::Unexpected`], which is told apart
//! from the client's errors. Once an exchange is over, every
//! [`SaslExchange::step`] fails with [`SaslError::Malformed`] and every
//! [`SaslExchange::answer`] with [`SaslError::Unexpected`].
//!
//! Passwords and tokens are kept in a [`Secret`], whose `Debug` output is
//! redacted, and the `Debug` output of a [`SaslRequest`] hides the CRAM-MD5
//! digest and the SCRAM proof, so that logging these values leaks nothing
//! that could be used to guess a password offline.
//!
//! [`encode_plain`], [`encode_base64`], [`scram_client_first`],
//! [`scram_client_final`], [`encode_xoauth2`] and [`encode_oauthbearer`]
//! build the client side's responses.

use core::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::reply::Reply;
use crate::server::Decision;

/// Longest client response line accepted, in bytes (without CRLF).
pub const MAX_RESPONSE_LEN: usize = 12288;

/// Longest authorization identity, user name or password accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 255;

/// Longest decoded challenge the server sends, in bytes: its base64 form
/// after `334 ` fits one reply line of 512 octets (RFC 5321 §4.5.3.1.5).
///
/// Bounds a CRAM-MD5 challenge and an OAuth error status given in a
/// [`SaslAnswer`].
pub const MAX_CHALLENGE_LEN: usize = 378;

/// Longest SCRAM nonce part accepted, in bytes: the client's, and the
/// server's in [`SaslAnswer::ScramFirst`] (so that server-first fits
/// [`MAX_CHALLENGE_LEN`]).
pub const MAX_NONCE_LEN: usize = 128;

/// Longest SCRAM salt accepted in [`SaslAnswer::ScramFirst`], in bytes.
pub const MAX_SALT_LEN: usize = 64;

/// The length of a SHA-256 output: a SCRAM-SHA-256 proof and server signature.
const SHA256_LEN: usize = 32;

/// The only channel binding type SCRAM-SHA-256-PLUS accepts (RFC 9266).
const TLS_EXPORTER: &str = "tls-exporter";

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
    /// `CRAM-MD5` (RFC 2195).
    CramMd5,
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677).
    ScramSha256,
    /// `SCRAM-SHA-256-PLUS`: SCRAM with the `tls-exporter` channel binding
    /// (RFC 5802, RFC 9266); TLS 1.3 only.
    ScramSha256Plus,
    /// `XOAUTH2` (Google's OAuth 2.0 bearer token mechanism).
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628).
    OAuthBearer,
}

impl Mechanism {
    /// Every mechanism, in the order of the enum.
    pub const ALL: [Mechanism; 7] = [
        Self::Plain,
        Self::Login,
        Self::CramMd5,
        Self::ScramSha256,
        Self::ScramSha256Plus,
        Self::XOAuth2,
        Self::OAuthBearer,
    ];

    /// Looks a mechanism up by its name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The mechanism's name as advertised in the EHLO `AUTH` keyword.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
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

/// Shown by `Debug` in place of a value that must not be logged.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
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

/// What the session knows that an exchange needs.
#[derive(Debug, Clone, Default)]
pub struct SaslContext {
    /// The `tls-exporter` channel binding data (RFC 9266: 32 bytes exported
    /// with label "EXPORTER-Channel-Binding", empty context) when the
    /// connection is TLS 1.3; `None` otherwise.
    pub channel_binding: Option<Vec<u8>>,
    /// Whether SCRAM-SHA-256-PLUS is advertised (a client that sends the
    /// gs2 flag "y" while it is must fail: downgrade, RFC 5802 §6).
    pub plus_offered: bool,
}

/// What the server does next in an exchange.
#[derive(Debug, Clone)]
pub enum SaslStep {
    /// Send `334 <text>` (base64 already, or `""` for an empty challenge:
    /// send `334 ` with a trailing space, or `334`) and read a response line.
    Challenge(String),
    /// PLAIN or LOGIN finished: check the password, then answer 235 or 535.
    Done(Credentials),
    /// The application must answer with [`SaslExchange::answer`] before
    /// the exchange goes on.
    Request(SaslRequest),
    /// The mechanism finished successfully after its last round (SCRAM
    /// after the client acknowledged the server-final message; CRAM-MD5 and
    /// the OAuth mechanisms after an accepting [`Decision`]): answer 235.
    Authenticated,
    /// The exchange ended with a refusal the application chose (a refusing
    /// [`Decision`], or OAuth after the error challenge was acknowledged):
    /// send this reply.
    Refused(Reply),
    /// The client cancelled with `*`: answer `501 5.0.0`.
    Cancelled,
    /// The exchange failed: answer as [`SaslError`] says.
    Failed(SaslError),
}

/// What the application must compute before an exchange goes on; answer
/// with [`SaslExchange::answer`].
///
/// `Debug` output hides the CRAM-MD5 digest and the SCRAM proof.
#[derive(Clone)]
pub enum SaslRequest {
    /// CRAM-MD5 starts: give a challenge ([`SaslAnswer::Challenge`], e.g.
    /// `<12345.1700000000@mx.example>`: unique, with a random part).
    CramMd5Challenge,
    /// CRAM-MD5 response: verify `digest` = HMAC-MD5(password, challenge);
    /// answer with [`SaslAnswer::Decision`].
    CramMd5 {
        /// The user name (non-empty, no NUL, at most [`MAX_FIELD_LEN`] bytes).
        username: String,
        /// The challenge the application gave (not base64).
        challenge: String,
        /// The client's HMAC-MD5 digest.
        digest: [u8; 16],
    },
    /// SCRAM client-first message: look the user up and answer
    /// [`SaslAnswer::ScramFirst`] (or refuse with a [`SaslAnswer::Decision`];
    /// a real server should answer with decoy keys for unknown users so as
    /// not to reveal them).
    ScramFirst {
        /// The user name, unescaped (`=2C` and `=3D` decoded); not SASLprepped.
        username: String,
        /// The authorization identity of the gs2 header (`a=`), unescaped.
        authzid: Option<String>,
        /// Whether the channel is bound (SCRAM-SHA-256-PLUS).
        plus: bool,
    },
    /// SCRAM client-final: verify `proof` against StoredKey over
    /// `auth_message`, answer [`SaslAnswer::ScramVerified`] or a refusing
    /// [`SaslAnswer::Decision`].
    ScramFinal {
        /// The user name of client-first.
        username: String,
        /// The authorization identity of client-first.
        authzid: Option<String>,
        /// `client-first-bare "," server-first "," client-final-without-proof`
        /// (RFC 5802 §3), the text the proof and the server signature sign.
        auth_message: String,
        /// The ClientProof (32 bytes).
        proof: Vec<u8>,
    },
    /// XOAUTH2 or OAUTHBEARER: verify the bearer token; answer
    /// `SaslAnswer::Decision(Decision::Accept)` or [`SaslAnswer::TokenRefused`].
    Token(OAuthToken),
}

impl fmt::Debug for SaslRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CramMd5Challenge => f.write_str("CramMd5Challenge"),
            Self::CramMd5 {
                username,
                challenge,
                digest: _,
            } => f
                .debug_struct("CramMd5")
                .field("username", username)
                .field("challenge", challenge)
                .field("digest", &Redacted)
                .finish(),
            Self::ScramFirst {
                username,
                authzid,
                plus,
            } => f
                .debug_struct("ScramFirst")
                .field("username", username)
                .field("authzid", authzid)
                .field("plus", plus)
                .finish(),
            Self::ScramFinal {
                username,
                authzid,
                auth_message,
                proof: _,
            } => f
                .debug_struct("ScramFinal")
                .field("username", username)
                .field("authzid", authzid)
                .field("auth_message", auth_message)
                .field("proof", &Redacted)
                .finish(),
            Self::Token(token) => f.debug_tuple("Token").field(token).finish(),
        }
    }
}

/// An OAuth 2.0 bearer token presented with XOAUTH2 or OAUTHBEARER; the
/// token is redacted in `Debug` output.
#[derive(Debug, Clone)]
pub struct OAuthToken {
    /// [`Mechanism::XOAuth2`] or [`Mechanism::OAuthBearer`].
    pub mechanism: Mechanism,
    /// The user: `a=` of the OAUTHBEARER gs2 header (optional there), or
    /// XOAUTH2's `user=` (always present).
    pub user: Option<String>,
    /// The bearer token (RFC 6750 `b64token`, at most [`MAX_RESPONSE_LEN`] bytes).
    pub token: Secret<String>,
    /// OAUTHBEARER's `host=`, when sent.
    pub host: Option<String>,
    /// OAUTHBEARER's `port=`, when sent.
    pub port: Option<u16>,
}

/// The application's answer to a [`SaslRequest`].
#[derive(Debug, Clone)]
pub enum SaslAnswer {
    /// Accept or refuse outright. A refusing decision (a reply with a code
    /// of 400 or more) answers any request and ends the exchange with
    /// [`SaslStep::Refused`]; accepting is only an answer to
    /// [`SaslRequest::CramMd5`] and [`SaslRequest::Token`] (then
    /// [`SaslStep::Authenticated`]; an accepting reply's text is not kept).
    Decision(Decision),
    /// The CRAM-MD5 challenge text (not base64: the exchange encodes it);
    /// non-empty, at most [`MAX_CHALLENGE_LEN`] bytes.
    Challenge(String),
    /// SCRAM: the server's nonce part (printable ASCII but `,`, non-empty,
    /// at most [`MAX_NONCE_LEN`] bytes), the user's salt (1 to
    /// [`MAX_SALT_LEN`] bytes) and iteration count (at least 1).
    ScramFirst {
        /// The server's part of the nonce (random, at least 18 characters is usual).
        server_nonce: String,
        /// The salt of the user's SaltedPassword.
        salt: Vec<u8>,
        /// The PBKDF2 iteration count (RFC 7677 recommends at least 4096).
        iterations: u32,
    },
    /// SCRAM: the proof verified; the server signature (32 bytes) goes out
    /// as `v=` in a 334, and the client's (empty) response completes the
    /// exchange with [`SaslStep::Authenticated`].
    ScramVerified {
        /// ServerSignature = HMAC(ServerKey, AuthMessage).
        server_signature: Vec<u8>,
    },
    /// OAuth refused: `status` is the JSON error object (RFC 7628 §3.2.2,
    /// e.g. `{"status":"invalid_token","schemes":"bearer"}`, non-empty, at
    /// most [`MAX_CHALLENGE_LEN`] bytes), sent base64 in a 334; any client
    /// response then ends with [`SaslStep::Refused`] with `reply` (by
    /// default [`Reply::AUTH_FAILED`], `535 5.7.8`; a reply given here must
    /// refuse), and `*` with [`SaslStep::Cancelled`].
    TokenRefused {
        /// The JSON error object (not base64).
        status: String,
        /// The final reply; `None` for `535 5.7.8`.
        reply: Option<Reply>,
    },
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
    /// The client's channel binding is wrong: SCRAM-SHA-256-PLUS without
    /// `p=tls-exporter` or without binding data on this connection, a `p=`
    /// flag on a mechanism without channel binding, a `y` flag while
    /// SCRAM-SHA-256-PLUS is offered (a downgrade, RFC 5802 §6), or a
    /// client-final `c=` that does not match (answer `535 5.7.8`).
    ChannelBinding,
    /// The application misused the exchange: an answer of the wrong kind or
    /// with invalid values, an answer when no request is outstanding, or a
    /// client line while a request is. The client did nothing wrong: answer
    /// `454 4.7.0` (temporary authentication failure).
    Unexpected,
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Base64 => "invalid base64 in SASL response",
            Self::Malformed => "malformed SASL response",
            Self::TooLong => "SASL response too long",
            Self::ChannelBinding => "SASL channel binding mismatch",
            Self::Unexpected => "SASL exchange misused by the application",
        })
    }
}

impl std::error::Error for SaslError {}

/// What a SCRAM exchange keeps between its rounds.
#[derive(Debug, Clone)]
struct Scram {
    /// What client-final's `c=` must decode to: the gs2 header, then the
    /// channel binding data with `p=tls-exporter`.
    cbind_input: Vec<u8>,
    /// client-first-bare, as sent.
    bare: String,
    /// The client's nonce, then the whole nonce once the server's part is known.
    nonce: String,
    /// The user name, unescaped.
    username: String,
    /// The authorization identity, unescaped.
    authzid: Option<String>,
}

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
    /// CRAM-MD5 waits for the application's challenge.
    CramChallengeWanted,
    /// CRAM-MD5 sent the challenge and waits for the response.
    CramResponse {
        /// The challenge (not base64).
        challenge: String,
    },
    /// CRAM-MD5 waits for the application's verdict.
    CramVerdictWanted,
    /// SCRAM sent an empty challenge and waits for client-first.
    ScramClientFirst,
    /// SCRAM waits for the application's salt and iterations.
    ScramFirstWanted(Box<Scram>),
    /// SCRAM sent server-first and waits for client-final.
    ScramClientFinal {
        /// What the exchange knows so far (the whole nonce).
        scram: Box<Scram>,
        /// server-first, as sent.
        server_first: String,
    },
    /// SCRAM waits for the application's verdict on the proof.
    ScramVerdictWanted,
    /// SCRAM sent server-final and waits for the empty response.
    ScramClientAck,
    /// XOAUTH2 or OAUTHBEARER sent an empty challenge and waits for the message.
    TokenMessage,
    /// XOAUTH2 or OAUTHBEARER waits for the application's verdict on the token.
    TokenVerdictWanted,
    /// XOAUTH2 or OAUTHBEARER sent the error status and waits for any response.
    TokenErrorAck {
        /// The reply that ends the exchange.
        reply: Reply,
    },
    /// Done, cancelled or failed: any further step is an error.
    Finished,
}

impl State {
    /// Whether a [`SaslRequest`] is outstanding.
    fn awaiting(&self) -> bool {
        matches!(
            self,
            Self::CramChallengeWanted
                | Self::CramVerdictWanted
                | Self::ScramFirstWanted(_)
                | Self::ScramVerdictWanted
                | Self::TokenVerdictWanted
        )
    }
}

/// The server side of one SASL exchange (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct SaslExchange {
    mechanism: Mechanism,
    context: SaslContext,
    state: State,
}

impl SaslExchange {
    /// Starts an exchange; `initial` is the AUTH command's initial response
    /// (`"="` means empty).
    ///
    /// With LOGIN, an initial response is taken as the base64 user name, as
    /// many clients send it that way. CRAM-MD5 has no initial response: one
    /// fails the exchange with [`SaslError::Malformed`].
    pub fn start(
        mechanism: Mechanism,
        initial: Option<&str>,
        context: SaslContext,
    ) -> (SaslExchange, SaslStep) {
        let mut exchange = SaslExchange {
            mechanism,
            context,
            state: match mechanism {
                Mechanism::Plain => State::PlainMessage,
                Mechanism::Login => State::LoginUsername,
                Mechanism::CramMd5 => State::CramChallengeWanted,
                Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => State::ScramClientFirst,
                Mechanism::XOAuth2 | Mechanism::OAuthBearer => State::TokenMessage,
            },
        };
        let step = match (initial, mechanism) {
            (None, Mechanism::Login) => SaslStep::Challenge(LOGIN_USERNAME.to_owned()),
            (None, Mechanism::CramMd5) => SaslStep::Request(SaslRequest::CramMd5Challenge),
            (Some(_), Mechanism::CramMd5) => {
                exchange.state = State::Finished;
                SaslStep::Failed(SaslError::Malformed)
            }
            (None, _) => SaslStep::Challenge(String::new()),
            (Some("="), _) => exchange.respond(Ok(Vec::new())),
            (Some(line), _) => exchange.step(line),
        };
        (exchange, step)
    }

    /// Feeds one client response line (without CRLF).
    ///
    /// While a request is outstanding this is a misuse: the exchange ends
    /// with [`SaslError::Unexpected`].
    pub fn step(&mut self, line: &str) -> SaslStep {
        match self.state {
            State::Finished => return SaslStep::Failed(SaslError::Malformed),
            ref s if s.awaiting() => {
                self.state = State::Finished;
                return SaslStep::Failed(SaslError::Unexpected);
            }
            _ => {}
        }
        if line == "*" {
            self.state = State::Finished;
            return SaslStep::Cancelled;
        }
        if let State::TokenErrorAck { .. } = self.state {
            // Whatever the client says, the refusal stands.
            return match core::mem::replace(&mut self.state, State::Finished) {
                State::TokenErrorAck { reply } => SaslStep::Refused(reply),
                _ => SaslStep::Failed(SaslError::Malformed),
            };
        }
        let decoded = if line.len() > MAX_RESPONSE_LEN {
            Err(SaslError::TooLong)
        } else {
            BASE64.decode(line).map_err(|_| SaslError::Base64)
        };
        self.respond(decoded)
    }

    /// Answers the outstanding [`SaslRequest`].
    ///
    /// A refusing [`Decision`] ends the exchange with [`SaslStep::Refused`].
    /// An answer that does not fit the request (see [`SaslAnswer`]), or no
    /// request outstanding, ends it with [`SaslError::Unexpected`].
    pub fn answer(&mut self, answer: SaslAnswer) -> SaslStep {
        let state = core::mem::replace(&mut self.state, State::Finished);
        if !state.awaiting() {
            return SaslStep::Failed(SaslError::Unexpected);
        }
        let answer = match answer {
            SaslAnswer::Decision(Decision::Reply(reply)) if reply.code() >= 400 => {
                return SaslStep::Refused(reply);
            }
            other => other,
        };
        let step = match (state, answer) {
            (State::CramChallengeWanted, SaslAnswer::Challenge(challenge))
                if !challenge.is_empty() && challenge.len() <= MAX_CHALLENGE_LEN =>
            {
                let text = encode_base64(challenge.as_bytes());
                self.state = State::CramResponse { challenge };
                Some(SaslStep::Challenge(text))
            }
            (State::CramVerdictWanted | State::TokenVerdictWanted, SaslAnswer::Decision(_)) => {
                Some(SaslStep::Authenticated)
            }
            (
                State::ScramFirstWanted(mut scram),
                SaslAnswer::ScramFirst {
                    server_nonce,
                    salt,
                    iterations,
                },
            ) if valid_nonce(&server_nonce)
                && !salt.is_empty()
                && salt.len() <= MAX_SALT_LEN
                && iterations >= 1 =>
            {
                scram.nonce.push_str(&server_nonce);
                let server_first = format!(
                    "r={},s={},i={iterations}",
                    scram.nonce,
                    encode_base64(&salt)
                );
                let text = encode_base64(server_first.as_bytes());
                self.state = State::ScramClientFinal {
                    scram,
                    server_first,
                };
                Some(SaslStep::Challenge(text))
            }
            (State::ScramVerdictWanted, SaslAnswer::ScramVerified { server_signature })
                if server_signature.len() == SHA256_LEN =>
            {
                let server_final = format!("v={}", encode_base64(&server_signature));
                self.state = State::ScramClientAck;
                Some(SaslStep::Challenge(encode_base64(server_final.as_bytes())))
            }
            (State::TokenVerdictWanted, SaslAnswer::TokenRefused { status, reply }) => {
                let reply = reply.unwrap_or(Reply::AUTH_FAILED);
                (reply.code() >= 400 && !status.is_empty() && status.len() <= MAX_CHALLENGE_LEN)
                    .then(|| {
                        self.state = State::TokenErrorAck { reply };
                        SaslStep::Challenge(encode_base64(status.as_bytes()))
                    })
            }
            _ => None,
        };
        step.unwrap_or(SaslStep::Failed(SaslError::Unexpected))
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Whether a [`SaslRequest`] is outstanding: the next call must be
    /// [`SaslExchange::answer`].
    pub fn awaiting_answer(&self) -> bool {
        self.state.awaiting()
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
                SaslStep::Challenge(LOGIN_PASSWORD.to_owned())
            }),
            State::LoginPassword { username } => login_field(decoded).map(|password| {
                SaslStep::Done(Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    username,
                    password: Secret::new(password),
                })
            }),
            State::CramResponse { challenge } => parse_cram(&decoded).map(|(username, digest)| {
                self.state = State::CramVerdictWanted;
                SaslStep::Request(SaslRequest::CramMd5 {
                    username,
                    challenge,
                    digest,
                })
            }),
            State::ScramClientFirst => parse_client_first(self.mechanism, &self.context, &decoded)
                .map(|scram| {
                    let request = SaslRequest::ScramFirst {
                        username: scram.username.clone(),
                        authzid: scram.authzid.clone(),
                        plus: self.mechanism == Mechanism::ScramSha256Plus,
                    };
                    self.state = State::ScramFirstWanted(Box::new(scram));
                    SaslStep::Request(request)
                }),
            State::ScramClientFinal {
                scram,
                server_first,
            } => parse_client_final(&scram, &decoded).map(|(without_proof, proof)| {
                self.state = State::ScramVerdictWanted;
                let Scram {
                    bare,
                    username,
                    authzid,
                    ..
                } = *scram;
                SaslStep::Request(SaslRequest::ScramFinal {
                    username,
                    authzid,
                    auth_message: format!("{bare},{server_first},{without_proof}"),
                    proof,
                })
            }),
            State::ScramClientAck => {
                if decoded.is_empty() {
                    Ok(SaslStep::Authenticated)
                } else {
                    Err(SaslError::Malformed)
                }
            }
            State::TokenMessage => {
                let token = if self.mechanism == Mechanism::XOAuth2 {
                    parse_xoauth2(&decoded)
                } else {
                    parse_oauthbearer(&decoded)
                };
                token.map(|token| {
                    self.state = State::TokenVerdictWanted;
                    SaslStep::Request(SaslRequest::Token(token))
                })
            }
            // Not reached: `step` handles these before decoding.
            State::CramChallengeWanted
            | State::CramVerdictWanted
            | State::ScramFirstWanted(_)
            | State::ScramVerdictWanted
            | State::TokenVerdictWanted
            | State::TokenErrorAck { .. }
            | State::Finished => Err(SaslError::Malformed),
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

/// Parses a CRAM-MD5 response: `username SP 32 hex digits` (RFC 2195 §2);
/// the user name may contain spaces.
fn parse_cram(decoded: &[u8]) -> Result<(String, [u8; 16]), SaslError> {
    let text = core::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let (username, hex) = text.rsplit_once(' ').ok_or(SaslError::Malformed)?;
    if !valid_field(username.as_bytes()) || hex.len() != 32 {
        return Err(SaslError::Malformed);
    }
    let mut digest = [0u8; 16];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
            return Err(SaslError::Malformed);
        };
        *byte = (hi << 4) | lo;
    }
    Ok((username.to_owned(), digest))
}

/// The value of one hex digit, either case.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A gs2 channel binding flag (RFC 5801 §4, RFC 5802 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbindFlag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    Yes,
    /// `p=<cb-name>`: the client uses this channel binding.
    Use(&'a str),
}

/// Parses a gs2 header: `cbind-flag "," [ "a=" saslname ] ","`; returns
/// the flag, the authorization identity and the rest of the message.
fn parse_gs2_header(text: &str) -> Result<(CbindFlag<'_>, Option<String>, &str), SaslError> {
    let (flag, rest) = text.split_once(',').ok_or(SaslError::Malformed)?;
    let flag = match flag {
        "n" => CbindFlag::No,
        "y" => CbindFlag::Yes,
        _ => {
            let name = flag.strip_prefix("p=").ok_or(SaslError::Malformed)?;
            let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
            if name.is_empty() || !name.bytes().all(name_char) {
                return Err(SaslError::Malformed);
            }
            CbindFlag::Use(name)
        }
    };
    let (authzid, rest) = rest.split_once(',').ok_or(SaslError::Malformed)?;
    let authzid = match authzid {
        "" => None,
        _ => Some(saslname(
            authzid.strip_prefix("a=").ok_or(SaslError::Malformed)?,
        )?),
    };
    Ok((flag, authzid, rest))
}

/// Decodes a `saslname` (RFC 5802 §7): `=2C` is `,`, `=3D` is `=`, any
/// other `=` is malformed; non-empty, no NUL or `,`, at most
/// [`MAX_FIELD_LEN`] bytes once decoded.
fn saslname(s: &str) -> Result<String, SaslError> {
    let mut name = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        name.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3);
        name.push(match escape {
            Some("=2C") => ',',
            Some("=3D") => '=',
            _ => return Err(SaslError::Malformed),
        });
        rest = &rest[i + 3..];
    }
    name.push_str(rest);
    if !valid_field(name.as_bytes()) || s.contains(',') {
        return Err(SaslError::Malformed);
    }
    Ok(name)
}

/// Escapes a `saslname`: `,` as `=2C`, `=` as `=3D`.
fn escape_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// Whether a SCRAM nonce part is valid: printable ASCII but `,`
/// (RFC 5802 §7), non-empty, at most [`MAX_NONCE_LEN`] bytes.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Checks SCRAM extensions: `attr-val *("," attr-val)`, `attr-val = ALPHA
/// "=" 1*value-char` (any UTF-8 but NUL and `,`); they are then ignored.
fn valid_extensions<'a>(mut parts: impl Iterator<Item = &'a str>) -> bool {
    parts.all(|part| {
        let b = part.as_bytes();
        b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b'=' && !b.contains(&0)
    })
}

/// Parses SCRAM client-first and applies the channel binding rules.
fn parse_client_first(
    mechanism: Mechanism,
    context: &SaslContext,
    decoded: &[u8],
) -> Result<Scram, SaslError> {
    let text = core::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let (flag, authzid, bare) = parse_gs2_header(text)?;
    let gs2_header = &text[..text.len() - bare.len()];
    let mut parts = bare.split(',');
    let username = parts
        .next()
        .and_then(|p| p.strip_prefix("n="))
        .ok_or(SaslError::Malformed)?;
    let username = saslname(username)?;
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .filter(|n| valid_nonce(n))
        .ok_or(SaslError::Malformed)?;
    if !valid_extensions(parts) {
        return Err(SaslError::Malformed);
    }
    let binding = context.channel_binding.as_deref().filter(|d| !d.is_empty());
    let mut cbind_input = gs2_header.as_bytes().to_vec();
    match (mechanism, flag) {
        (Mechanism::ScramSha256Plus, CbindFlag::Use(TLS_EXPORTER)) => match binding {
            Some(data) => cbind_input.extend_from_slice(data),
            None => return Err(SaslError::ChannelBinding),
        },
        (Mechanism::ScramSha256Plus, _) | (_, CbindFlag::Use(_)) => {
            return Err(SaslError::ChannelBinding);
        }
        (_, CbindFlag::Yes) if context.plus_offered => return Err(SaslError::ChannelBinding),
        (_, CbindFlag::No | CbindFlag::Yes) => {}
    }
    Ok(Scram {
        cbind_input,
        bare: bare.to_owned(),
        nonce: nonce.to_owned(),
        username,
        authzid,
    })
}

/// Parses SCRAM client-final against what the exchange knows; returns
/// client-final-without-proof and the proof.
fn parse_client_final(scram: &Scram, decoded: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let text = core::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let proof = BASE64
        .decode(proof)
        .ok()
        .filter(|p| p.len() == SHA256_LEN)
        .ok_or(SaslError::Malformed)?;
    let mut parts = without_proof.split(',');
    let cbind = parts
        .next()
        .and_then(|p| p.strip_prefix("c="))
        .and_then(|c| BASE64.decode(c).ok())
        .ok_or(SaslError::Malformed)?;
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(SaslError::Malformed)?;
    if !valid_extensions(parts) || nonce != scram.nonce {
        return Err(SaslError::Malformed);
    }
    if cbind != scram.cbind_input {
        return Err(SaslError::ChannelBinding);
    }
    Ok((without_proof.to_owned(), proof))
}

/// Parses an `auth` value, `Bearer 1*SP b64token` (RFC 6750 §2.1; the
/// scheme in any case), and returns the token.
fn parse_bearer(value: &str) -> Result<String, SaslError> {
    let (scheme, token) = value.split_once(' ').ok_or(SaslError::Malformed)?;
    let token = token.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    let b64char = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    if !scheme.eq_ignore_ascii_case("Bearer")
        || body.is_empty()
        || token.len() > MAX_RESPONSE_LEN
        || !body.bytes().all(b64char)
    {
        return Err(SaslError::Malformed);
    }
    Ok(token.to_owned())
}

/// Parses an XOAUTH2 message: `"user=" user ^A "auth=Bearer " token ^A ^A`.
fn parse_xoauth2(decoded: &[u8]) -> Result<OAuthToken, SaslError> {
    let text = core::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let body = text.strip_suffix("\x01\x01").ok_or(SaslError::Malformed)?;
    let (user, auth) = body.split_once('\x01').ok_or(SaslError::Malformed)?;
    let user = user.strip_prefix("user=").ok_or(SaslError::Malformed)?;
    let auth = auth.strip_prefix("auth=").ok_or(SaslError::Malformed)?;
    if !valid_field(user.as_bytes()) || user.contains('\x01') {
        return Err(SaslError::Malformed);
    }
    Ok(OAuthToken {
        mechanism: Mechanism::XOAuth2,
        user: Some(user.to_owned()),
        token: Secret::new(parse_bearer(auth)?),
        host: None,
        port: None,
    })
}

/// Parses an OAUTHBEARER client response (RFC 7628 §3.1): `gs2-header
/// kvsep *(key "=" value kvsep) kvsep`; `auth` required, `host` and `port`
/// taken, other keys ignored.
fn parse_oauthbearer(decoded: &[u8]) -> Result<OAuthToken, SaslError> {
    let text = core::str::from_utf8(decoded).map_err(|_| SaslError::Malformed)?;
    let (flag, user, rest) = parse_gs2_header(text)?;
    if let CbindFlag::Use(_) = flag {
        // No channel binding is defined for OAUTHBEARER.
        return Err(SaslError::ChannelBinding);
    }
    let pairs = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix('\x01'))
        .ok_or(SaslError::Malformed)?;
    let pairs = if pairs.is_empty() {
        ""
    } else {
        pairs.strip_suffix('\x01').ok_or(SaslError::Malformed)?
    };
    let (mut token, mut host, mut port) = (None, None, None);
    for pair in pairs.split('\x01').filter(|_| !pairs.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(SaslError::Malformed)?;
        let value_char = |b: u8| (0x20..=0x7e).contains(&b) || b == b'\t';
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphabetic())
            || !value.bytes().all(value_char)
        {
            return Err(SaslError::Malformed);
        }
        let slot_taken = match key {
            "auth" => token.replace(parse_bearer(value)?).is_some(),
            "host" => {
                if value.is_empty() || value.len() > MAX_FIELD_LEN {
                    return Err(SaslError::Malformed);
                }
                host.replace(value.to_owned()).is_some()
            }
            "port" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SaslError::Malformed);
                }
                let p = value.parse::<u16>().map_err(|_| SaslError::Malformed)?;
                port.replace(p).is_some()
            }
            _ => false,
        };
        if slot_taken {
            return Err(SaslError::Malformed);
        }
    }
    Ok(OAuthToken {
        mechanism: Mechanism::OAuthBearer,
        user,
        token: Secret::new(token.ok_or(SaslError::Malformed)?),
        host,
        port,
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

/// Builds a SCRAM client-first message without channel binding, not yet
/// base64-encoded: the gs2 header `n,,` then client-first-bare
/// `n=<username>,r=<nonce>`.
///
/// The user name is escaped (`,` as `=2C`, `=` as `=3D`); the nonce should
/// be random printable ASCII without `,` (at most [`MAX_NONCE_LEN`] bytes).
/// client-first-bare, which the proof signs, is everything after `n,,`.
pub fn scram_client_first(username: &str, nonce: &str) -> String {
    format!("n,,n={},r={nonce}", escape_saslname(username))
}

/// Builds a SCRAM client-final message, not yet base64-encoded:
/// `c=<base64(cbind_input)>,r=<nonce>,p=<base64(proof)>`.
///
/// `cbind_input` is the gs2 header of client-first (`n,,`), followed by
/// the channel binding data with `p=tls-exporter`; `nonce` is the whole
/// nonce of server-first. client-final-without-proof, which the proof
/// signs, is everything before the final `,p=`.
pub fn scram_client_final(cbind_input: &[u8], nonce: &str, proof: &[u8]) -> String {
    format!(
        "c={},r={nonce},p={}",
        encode_base64(cbind_input),
        encode_base64(proof)
    )
}

/// Builds an XOAUTH2 initial response: base64 of
/// `user=<user> ^A auth=Bearer <token> ^A ^A`.
pub fn encode_xoauth2(user: &str, token: &str) -> String {
    encode_base64(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
}

/// Builds an OAUTHBEARER initial response (RFC 7628 §3.1), base64: the gs2
/// header `n,a=<user>,` (`n,,` without a user, which is escaped as in
/// [`scram_client_first`]), then `host=`, `port=` when given and
/// `auth=Bearer <token>`, each followed by `^A`, and a final `^A`.
pub fn encode_oauthbearer(
    user: Option<&str>,
    token: &str,
    host: Option<&str>,
    port: Option<u16>,
) -> String {
    let mut message = match user {
        Some(user) => format!("n,a={},\x01", escape_saslname(user)),
        None => String::from("n,,\x01"),
    };
    if let Some(host) = host {
        message.push_str(&format!("host={host}\x01"));
    }
    if let Some(port) = port {
        message.push_str(&format!("port={port}\x01"));
    }
    message.push_str(&format!("auth=Bearer {token}\x01\x01"));
    encode_base64(message.as_bytes())
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

    fn challenge(step: SaslStep) -> String {
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
        assert_eq!(Mechanism::from_name("CRAM-MD5"), Some(Mechanism::CramMd5));
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
        let (_, step) = start(Mechanism::Plain, Some("AHRpbQB0YW5zdGFhZnRhbnN0YWFm"));
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
        let (_, step) = start(Mechanism::Plain, Some("VXJzZWwAS3VydAB4aXBqM3BsbXE="));
        let c = done(step);
        assert_eq!(c.authzid.as_deref(), Some("Ursel"));
        assert_eq!(c.username, "Kurt");
        assert_eq!(c.password.expose(), "xipj3plmq");
    }

    #[test]
    fn plain_without_initial_response() {
        let (mut ex, step) = start(Mechanism::Plain, None);
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
        let (_, step) = start(
            Mechanism::Plain,
            Some(&encode_plain(None, "jürgen", "pässwörd")),
        );
        let c = done(step);
        assert_eq!(c.username, "jürgen");
        assert_eq!(c.password.expose(), "pässwörd");
        // Padding may be left out.
        let (_, step) = start(Mechanism::Plain, Some("VXJzZWwAS3VydAB4aXBqM3BsbXE"));
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
            let (_, step) = start(Mechanism::Plain, Some(&encode_base64(case)));
            assert_eq!(failed(step), SaslError::Malformed, "{case:?}");
        }
        // "=" is an empty initial response, which PLAIN cannot use.
        let (mut ex, step) = start(Mechanism::Plain, Some("="));
        assert_eq!(failed(step), SaslError::Malformed);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        // An empty line after the empty challenge is an empty response.
        let (mut ex, _) = start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
    }

    #[test]
    fn field_lengths() {
        let long = "x".repeat(MAX_FIELD_LEN);
        let (_, step) = start(
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
            let (_, step) = start(Mechanism::Plain, Some(&encode_plain(Some(z), u, p)));
            assert_eq!(failed(step), SaslError::Malformed);
        }
        let (mut ex, _) = start(Mechanism::Login, None);
        assert_eq!(
            failed(ex.step(&encode_base64(longer.as_bytes()))),
            SaslError::Malformed
        );
    }

    #[test]
    fn login_flow() {
        let (mut ex, step) = start(Mechanism::Login, None);
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
        let (mut ex, step) = start(Mechanism::Login, Some("dGlt"));
        assert_eq!(challenge(step), "UGFzc3dvcmQ6");
        let c = done(ex.step("c2VjcmV0"));
        assert_eq!(
            (c.username.as_str(), c.password.expose().as_str()),
            ("tim", "secret")
        );
        // "=": an empty user name.
        let (_, step) = start(Mechanism::Login, Some("="));
        assert_eq!(failed(step), SaslError::Malformed);
    }

    #[test]
    fn login_empty_fields() {
        let (mut ex, _) = start(Mechanism::Login, None);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        let (mut ex, _) = start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        let (mut ex, _) = start(Mechanism::Login, None);
        assert_eq!(
            failed(ex.step(&encode_base64(b"a\0b"))),
            SaslError::Malformed
        );
    }

    #[test]
    fn cancel_at_any_step() {
        let (mut ex, _) = start(Mechanism::Plain, None);
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        assert_eq!(failed(ex.step("*")), SaslError::Malformed);

        let (mut ex, _) = start(Mechanism::Login, None);
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        assert_eq!(failed(ex.step("dGlt")), SaslError::Malformed);

        let (mut ex, _) = start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));

        let (mut ex, step) = start(Mechanism::Login, Some("*"));
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
            let (mut ex, _) = start(Mechanism::Plain, None);
            assert_eq!(failed(ex.step(bad)), SaslError::Base64, "{bad:?}");
            assert_eq!(failed(ex.step("dGlt")), SaslError::Malformed);
            let (_, step) = start(Mechanism::Login, Some(bad));
            assert_eq!(failed(step), SaslError::Base64, "{bad:?}");
        }
        let (mut ex, _) = start(Mechanism::Login, None);
        challenge(ex.step("dGlt"));
        assert_eq!(failed(ex.step("%%%%")), SaslError::Base64);
    }

    #[test]
    fn too_long() {
        let line = "A".repeat(MAX_RESPONSE_LEN + 4);
        let (mut ex, _) = start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step(&line)), SaslError::TooLong);
        let (_, step) = start(Mechanism::Login, Some(&line));
        assert_eq!(failed(step), SaslError::TooLong);
        // Exactly the limit is decoded (and then judged on its content).
        let line = "A".repeat(MAX_RESPONSE_LEN);
        let (mut ex, _) = start(Mechanism::Plain, None);
        assert_eq!(failed(ex.step(&line)), SaslError::Malformed);
    }

    #[test]
    fn debug_redacts_password() {
        let (_, step) = start(
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

    // -----------------------------------------------------------------
    // The mechanisms that ask the application
    // -----------------------------------------------------------------

    fn start(mechanism: Mechanism, initial: Option<&str>) -> (SaslExchange, SaslStep) {
        SaslExchange::start(mechanism, initial, SaslContext::default())
    }

    fn b64(s: &str) -> String {
        encode_base64(s.as_bytes())
    }

    fn unb64(s: &str) -> Vec<u8> {
        BASE64.decode(s).unwrap()
    }

    fn request(step: SaslStep) -> SaslRequest {
        match step {
            SaslStep::Request(r) => r,
            other => panic!("expected Request, got {other:?}"),
        }
    }

    fn refused(step: SaslStep) -> Reply {
        match step {
            SaslStep::Refused(r) => r,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    fn authenticated(step: SaslStep) {
        assert!(
            matches!(step, SaslStep::Authenticated),
            "expected Authenticated, got {step:?}"
        );
    }

    fn token(step: SaslStep) -> OAuthToken {
        match request(step) {
            SaslRequest::Token(t) => t,
            other => panic!("expected Token, got {other:?}"),
        }
    }

    /// A made-up `tls-exporter` value.
    fn binding() -> Vec<u8> {
        (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect()
    }

    fn plus_context() -> SaslContext {
        SaslContext {
            channel_binding: Some(binding()),
            plus_offered: true,
        }
    }

    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)kNlwr";
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)kNlwr";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)kNlwr,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)kNlwr,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_first() -> SaslAnswer {
        SaslAnswer::ScramFirst {
            server_nonce: SERVER_NONCE.to_owned(),
            salt: unb64(SALT),
            iterations: 4096,
        }
    }

    fn verified() -> SaslAnswer {
        SaslAnswer::ScramVerified {
            server_signature: unb64(SIGNATURE),
        }
    }

    /// A SCRAM exchange up to server-first, with this client-first.
    fn scram_to_server_first(
        mechanism: Mechanism,
        context: SaslContext,
        client_first: &str,
    ) -> SaslExchange {
        let (mut ex, step) = SaslExchange::start(mechanism, Some(&b64(client_first)), context);
        request(step);
        assert_eq!(challenge(ex.answer(rfc7677_first())), b64(SERVER_FIRST));
        ex
    }

    #[test]
    fn new_mechanism_names() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::from_name("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(
            Mechanism::from_name("Scram-Sha-256-Plus"),
            Some(Mechanism::ScramSha256Plus)
        );
        assert_eq!(Mechanism::from_name("XOAUTH2"), Some(Mechanism::XOAuth2));
        assert_eq!(
            Mechanism::from_name("oauthbearer"),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-256-"), None);
    }

    #[test]
    fn rfc7677_transcript() {
        let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(CLIENT_FIRST)));
        assert_eq!(ex.mechanism(), Mechanism::ScramSha256);
        assert!(ex.awaiting_answer());
        match request(step) {
            SaslRequest::ScramFirst {
                username,
                authzid,
                plus,
            } => {
                assert_eq!(username, "user");
                assert_eq!(authzid, None);
                assert!(!plus);
            }
            other => panic!("{other:?}"),
        }
        let server_first = challenge(ex.answer(rfc7677_first()));
        assert!(!ex.awaiting_answer());
        assert_eq!(server_first, b64(SERVER_FIRST));
        match request(ex.step(&b64(CLIENT_FINAL))) {
            SaslRequest::ScramFinal {
                username,
                authzid,
                auth_message,
                proof,
            } => {
                assert_eq!(username, "user");
                assert_eq!(authzid, None);
                assert_eq!(
                    auth_message,
                    format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{SERVER_FIRST},c=biws,r={NONCE}")
                );
                assert_eq!(proof, unb64(PROOF));
            }
            other => panic!("{other:?}"),
        }
        assert!(ex.awaiting_answer());
        assert_eq!(
            challenge(ex.answer(verified())),
            b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
        authenticated(ex.step(""));
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
        assert_eq!(failed(ex.answer(verified())), SaslError::Unexpected);
        // The client helpers build the same messages.
        assert_eq!(
            scram_client_first("user", "rOprNGfwEbeRWgbNEkqO"),
            CLIENT_FIRST
        );
        assert_eq!(
            scram_client_final(b"n,,", NONCE, &unb64(PROOF)),
            CLIENT_FINAL
        );
    }

    #[test]
    fn scram_without_initial_response() {
        for initial in [None, Some("=")] {
            let (mut ex, step) = start(Mechanism::ScramSha256, initial);
            if initial.is_some() {
                // An empty initial response is an empty client-first.
                assert_eq!(failed(step), SaslError::Malformed);
                continue;
            }
            assert_eq!(challenge(step), "");
            assert!(!ex.awaiting_answer());
            request(ex.step(&b64(CLIENT_FIRST)));
            assert_eq!(challenge(ex.answer(rfc7677_first())), b64(SERVER_FIRST));
            request(ex.step(&b64(CLIENT_FINAL)));
            challenge(ex.answer(verified()));
            authenticated(ex.step(""));
        }
    }

    #[test]
    fn scram_plus_tls_exporter() {
        let first = "p=tls-exporter,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (mut ex, step) = SaslExchange::start(
            Mechanism::ScramSha256Plus,
            Some(&b64(first)),
            plus_context(),
        );
        match request(step) {
            SaslRequest::ScramFirst { plus, .. } => assert!(plus),
            other => panic!("{other:?}"),
        }
        challenge(ex.answer(rfc7677_first()));
        let mut cbind_input = b"p=tls-exporter,,".to_vec();
        cbind_input.extend(binding());
        let last = scram_client_final(&cbind_input, NONCE, &unb64(PROOF));
        let without_proof = last.rsplit_once(",p=").unwrap().0;
        match request(ex.step(&b64(&last))) {
            SaslRequest::ScramFinal { auth_message, .. } => assert_eq!(
                auth_message,
                format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{SERVER_FIRST},{without_proof}")
            ),
            other => panic!("{other:?}"),
        }
        challenge(ex.answer(verified()));
        authenticated(ex.step(""));
    }

    #[test]
    fn scram_plus_wrong_binding() {
        let first = "p=tls-exporter,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let mut wrong = b"p=tls-exporter,,".to_vec();
        wrong.extend(binding());
        wrong[20] ^= 1;
        let mut short = b"p=tls-exporter,,".to_vec();
        short.extend(&binding()[..31]);
        for cbind_input in [&wrong[..], &short[..], b"p=tls-exporter,,", b"n,,"] {
            let mut ex = scram_to_server_first(Mechanism::ScramSha256Plus, plus_context(), first);
            let last = scram_client_final(cbind_input, NONCE, &unb64(PROOF));
            assert_eq!(failed(ex.step(&b64(&last))), SaslError::ChannelBinding);
            assert_eq!(failed(ex.step("")), SaslError::Malformed);
        }
        // PLUS needs p=tls-exporter and binding data on this connection.
        for (first, context) in [
            (CLIENT_FIRST, plus_context()),
            ("y,,n=user,r=abc", plus_context()),
            ("p=tls-unique,,n=user,r=abc", plus_context()),
            ("p=tls-server-end-point,,n=user,r=abc", plus_context()),
            (first, SaslContext::default()),
            (
                first,
                SaslContext {
                    channel_binding: Some(Vec::new()),
                    plus_offered: true,
                },
            ),
        ] {
            let (_, step) =
                SaslExchange::start(Mechanism::ScramSha256Plus, Some(&b64(first)), context);
            assert_eq!(failed(step), SaslError::ChannelBinding, "{first}");
        }
        // A malformed channel binding name is malformed.
        let (_, step) = SaslExchange::start(
            Mechanism::ScramSha256Plus,
            Some(&b64("p=tls_exporter,,n=user,r=abc")),
            plus_context(),
        );
        assert_eq!(failed(step), SaslError::Malformed);
    }

    #[test]
    fn scram_downgrade_and_flags() {
        // "y" while PLUS is offered: a downgrade.
        let (_, step) = SaslExchange::start(
            Mechanism::ScramSha256,
            Some(&b64("y,,n=user,r=abc")),
            plus_context(),
        );
        assert_eq!(failed(step), SaslError::ChannelBinding);
        // "y" when PLUS is not offered is fine, and c= must then be "y,,".
        let mut ex = scram_to_server_first(
            Mechanism::ScramSha256,
            SaslContext::default(),
            "y,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        );
        let bad = scram_client_final(b"n,,", NONCE, &unb64(PROOF));
        assert_eq!(failed(ex.step(&b64(&bad))), SaslError::ChannelBinding);
        let mut ex = scram_to_server_first(
            Mechanism::ScramSha256,
            SaslContext::default(),
            "y,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        );
        request(ex.step(&b64(&scram_client_final(b"y,,", NONCE, &unb64(PROOF)))));
        // "n" is fine even when PLUS is offered.
        let (_, step) = SaslExchange::start(
            Mechanism::ScramSha256,
            Some(&b64(CLIENT_FIRST)),
            plus_context(),
        );
        request(step);
        // "p=" on the mechanism without channel binding.
        let (_, step) = SaslExchange::start(
            Mechanism::ScramSha256,
            Some(&b64("p=tls-exporter,,n=user,r=abc")),
            plus_context(),
        );
        assert_eq!(failed(step), SaslError::ChannelBinding);
        for bad in [
            "x,,n=user,r=abc",
            "N,,n=user,r=abc",
            ",,n=user,r=abc",
            "p=,,n=u,r=a",
        ] {
            let (_, step) = start(Mechanism::ScramSha256, Some(&b64(bad)));
            assert_eq!(failed(step), SaslError::Malformed, "{bad}");
        }
    }

    #[test]
    fn scram_saslname_escapes() {
        let (_, step) = start(
            Mechanism::ScramSha256,
            Some(&b64("n,a=ad=2Cm=3Din,n=us=3Der=2Cx=3D=2C,r=abc")),
        );
        match request(step) {
            SaslRequest::ScramFirst {
                username, authzid, ..
            } => {
                assert_eq!(username, "us=er,x=,");
                assert_eq!(authzid.as_deref(), Some("ad,m=in"));
            }
            other => panic!("{other:?}"),
        }
        let (_, step) = start(Mechanism::ScramSha256, Some(&b64("n,,n=jürgen,r=abc")));
        match request(step) {
            SaslRequest::ScramFirst { username, .. } => assert_eq!(username, "jürgen"),
            other => panic!("{other:?}"),
        }
        let long = "x".repeat(MAX_FIELD_LEN);
        let (_, step) = start(
            Mechanism::ScramSha256,
            Some(&b64(&format!("n,,n={long},r=abc"))),
        );
        request(step);
        for bad in [
            "n,,n=a=2c,r=abc".to_owned(),
            "n,,n=a=,r=abc".to_owned(),
            "n,,n=a=41,r=abc".to_owned(),
            "n,,n=a=2,r=abc".to_owned(),
            "n,,n=a=é=,r=abc".to_owned(),
            "n,,n=,r=abc".to_owned(),
            "n,,n=a\0b,r=abc".to_owned(),
            "n,a=,n=user,r=abc".to_owned(),
            "n,a=x=,n=user,r=abc".to_owned(),
            "n,z=x,n=user,r=abc".to_owned(),
            format!("n,,n={long}x,r=abc"),
            format!("n,,n={long}=2C,r=abc"),
        ] {
            let (_, step) = start(Mechanism::ScramSha256, Some(&b64(&bad)));
            assert_eq!(failed(step), SaslError::Malformed, "{bad:?}");
        }
        let (_, step) = start(
            Mechanism::ScramSha256,
            Some(&encode_base64(b"n,,n=\xff,r=abc")),
        );
        assert_eq!(failed(step), SaslError::Malformed);
        assert_eq!(scram_client_first("a,b=c", "xyz"), "n,,n=a=2Cb=3Dc,r=xyz");
    }

    #[test]
    fn scram_client_first_grammar() {
        for bad in [
            // A mandatory extension.
            "n,,m=ext,n=user,r=abc".to_owned(),
            // Fields missing, out of order, or empty.
            "n,,r=abc,n=user".to_owned(),
            "n,,n=user".to_owned(),
            "n,,n=user,r=".to_owned(),
            "n,,n=user,r=abc,".to_owned(),
            "n,,n=user,r=abc,x".to_owned(),
            "n,,n=user,r=abc,x=".to_owned(),
            "n,,n=user,r=abc,1=x".to_owned(),
            "n,,n=user,r=abc,x=a\0".to_owned(),
            "n,,".to_owned(),
            "n,".to_owned(),
            "n".to_owned(),
            String::new(),
            // Nonces: printable ASCII but ',', bounded.
            "n,,n=user,r=ab c".to_owned(),
            "n,,n=user,r=abé".to_owned(),
            "n,,n=user,r=ab\x7f".to_owned(),
            format!("n,,n=user,r={}", "x".repeat(MAX_NONCE_LEN + 1)),
        ] {
            let (_, step) = start(Mechanism::ScramSha256, Some(&b64(&bad)));
            assert_eq!(failed(step), SaslError::Malformed, "{bad:?}");
        }
        // Optional extensions are ignored.
        let (mut ex, step) = start(
            Mechanism::ScramSha256,
            Some(&b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x=ext=ension,y=1")),
        );
        request(step);
        challenge(ex.answer(rfc7677_first()));
        let last = format!("c=biws,r={NONCE},z=ext,p={PROOF}");
        match request(ex.step(&b64(&last))) {
            SaslRequest::ScramFinal { auth_message, .. } => assert_eq!(
                auth_message,
                format!(
                    "n=user,r=rOprNGfwEbeRWgbNEkqO,x=ext=ension,y=1,{SERVER_FIRST},c=biws,r={NONCE},z=ext"
                )
            ),
            other => panic!("{other:?}"),
        }
        let nonce = "x".repeat(MAX_NONCE_LEN);
        let (_, step) = start(
            Mechanism::ScramSha256,
            Some(&b64(&scram_client_first("u", &nonce))),
        );
        request(step);
    }

    #[test]
    fn scram_client_final_grammar() {
        let cases = [
            // The nonce must be the whole nonce.
            (
                format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={PROOF}"),
                SaslError::Malformed,
            ),
            (format!("c=biws,r={NONCE}x,p={PROOF}"), SaslError::Malformed),
            (format!("c=biws,r=x{NONCE},p={PROOF}"), SaslError::Malformed),
            (format!("c=biws,r=,p={PROOF}"), SaslError::Malformed),
            // The proof: 32 bytes of base64, last.
            (format!("c=biws,r={NONCE}"), SaslError::Malformed),
            (format!("c=biws,r={NONCE},p="), SaslError::Malformed),
            (format!("c=biws,r={NONCE},p=AAAA"), SaslError::Malformed),
            (
                format!("c=biws,r={NONCE},p={}", encode_base64(&[7; 33])),
                SaslError::Malformed,
            ),
            (format!("c=biws,r={NONCE},p=!!!!"), SaslError::Malformed),
            (
                format!("c=biws,r={NONCE},p={PROOF},x=1"),
                SaslError::Malformed,
            ),
            (format!("c=biws,p={PROOF}"), SaslError::Malformed),
            (format!("r={NONCE},c=biws,p={PROOF}"), SaslError::Malformed),
            (format!("c=biws,r={NONCE},,p={PROOF}"), SaslError::Malformed),
            (format!("c=!!!,r={NONCE},p={PROOF}"), SaslError::Malformed),
            (String::new(), SaslError::Malformed),
            // c= must be the gs2 header.
            (format!("c=,r={NONCE},p={PROOF}"), SaslError::ChannelBinding),
            (
                format!("c={},r={NONCE},p={PROOF}", b64("y,,")),
                SaslError::ChannelBinding,
            ),
            (
                format!("c={},r={NONCE},p={PROOF}", b64("n,a=user,")),
                SaslError::ChannelBinding,
            ),
        ];
        for (last, error) in cases {
            let mut ex =
                scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
            assert_eq!(failed(ex.step(&b64(&last))), error, "{last:?}");
        }
        let mut ex =
            scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
        assert_eq!(failed(ex.step("not base64")), SaslError::Base64);
        // With an authzid, c= carries it.
        let first = "n,a=admin,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let mut ex = scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), first);
        let last = scram_client_final(b"n,a=admin,", NONCE, &unb64(PROOF));
        match request(ex.step(&b64(&last))) {
            SaslRequest::ScramFinal { authzid, .. } => {
                assert_eq!(authzid.as_deref(), Some("admin"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scram_ack_must_be_empty() {
        for (ack, error) in [
            ("dj0=", Some(SaslError::Malformed)),
            ("AQ==", Some(SaslError::Malformed)),
            ("=", Some(SaslError::Base64)),
            ("*", None),
        ] {
            let mut ex =
                scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
            request(ex.step(&b64(CLIENT_FINAL)));
            challenge(ex.answer(verified()));
            match error {
                Some(e) => assert_eq!(failed(ex.step(ack)), e, "{ack}"),
                None => assert!(matches!(ex.step(ack), SaslStep::Cancelled)),
            }
        }
    }

    #[test]
    fn scram_answers_checked() {
        let bad_firsts = [
            ("", b"salt".to_vec(), 4096),
            ("a,b", b"salt".to_vec(), 4096),
            ("a b", b"salt".to_vec(), 4096),
            ("abcé", b"salt".to_vec(), 4096),
            (&*"x".repeat(MAX_NONCE_LEN + 1), b"salt".to_vec(), 4096),
            ("abc", Vec::new(), 4096),
            ("abc", vec![1; MAX_SALT_LEN + 1], 4096),
            ("abc", b"salt".to_vec(), 0),
        ];
        for (server_nonce, salt, iterations) in bad_firsts {
            let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(CLIENT_FIRST)));
            request(step);
            let answer = SaslAnswer::ScramFirst {
                server_nonce: server_nonce.to_owned(),
                salt,
                iterations,
            };
            assert_eq!(failed(ex.answer(answer)), SaslError::Unexpected);
            assert!(!ex.awaiting_answer());
            assert_eq!(failed(ex.step(&b64(CLIENT_FINAL))), SaslError::Malformed);
        }
        for signature in [Vec::new(), vec![1; 31], vec![1; 33], vec![1; 64]] {
            let mut ex =
                scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
            request(ex.step(&b64(CLIENT_FINAL)));
            let answer = SaslAnswer::ScramVerified {
                server_signature: signature,
            };
            assert_eq!(failed(ex.answer(answer)), SaslError::Unexpected);
        }
        // The longest server-first still fits one 512-octet reply line.
        let client_nonce = "c".repeat(MAX_NONCE_LEN);
        let (mut ex, step) = start(
            Mechanism::ScramSha256,
            Some(&b64(&scram_client_first("u", &client_nonce))),
        );
        request(step);
        let text = challenge(ex.answer(SaslAnswer::ScramFirst {
            server_nonce: "s".repeat(MAX_NONCE_LEN),
            salt: vec![0xff; MAX_SALT_LEN],
            iterations: u32::MAX,
        }));
        assert!(text.len() <= 512 - 6, "{}", text.len());
        assert!(unb64(&text).len() <= MAX_CHALLENGE_LEN);
    }

    #[test]
    fn scram_refusals() {
        let no_such_user = Reply::AUTH_FAILED;
        let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(CLIENT_FIRST)));
        request(step);
        let r = refused(ex.answer(SaslAnswer::Decision(Decision::Reply(no_such_user.clone()))));
        assert_eq!(r, no_such_user);
        assert!(!ex.awaiting_answer());
        assert_eq!(failed(ex.step(&b64(CLIENT_FINAL))), SaslError::Malformed);

        let mut ex =
            scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
        request(ex.step(&b64(CLIENT_FINAL)));
        let r = refused(ex.answer(SaslAnswer::Decision(Decision::Reply(Reply::AUTH_TEMPORARY))));
        assert_eq!(r.code(), 454);
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
    }

    #[test]
    fn cram_md5_rfc2195() {
        let (mut ex, step) = start(Mechanism::CramMd5, None);
        assert!(matches!(request(step), SaslRequest::CramMd5Challenge));
        assert!(ex.awaiting_answer());
        let challenge_text = "<1896.697170952@postoffice.reston.mci.net>";
        let sent = challenge(ex.answer(SaslAnswer::Challenge(challenge_text.to_owned())));
        assert_eq!(
            sent,
            "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
        );
        assert!(!ex.awaiting_answer());
        let response = b64("tim b913a602c7eda7a495b4e6e7334d3890");
        assert_eq!(response, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
        match request(ex.step(&response)) {
            SaslRequest::CramMd5 {
                username,
                challenge,
                digest,
            } => {
                assert_eq!(username, "tim");
                assert_eq!(challenge, challenge_text);
                assert_eq!(
                    digest,
                    [
                        0xb9, 0x13, 0xa6, 0x02, 0xc7, 0xed, 0xa7, 0xa4, 0x95, 0xb4, 0xe6, 0xe7,
                        0x33, 0x4d, 0x38, 0x90
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        authenticated(ex.answer(SaslAnswer::Decision(Decision::Accept)));
        assert_eq!(failed(ex.step("")), SaslError::Malformed);
    }

    fn cram_to_response() -> SaslExchange {
        let (mut ex, _) = start(Mechanism::CramMd5, None);
        challenge(ex.answer(SaslAnswer::Challenge("<1.2@mx.example>".to_owned())));
        ex
    }

    #[test]
    fn cram_md5_responses() {
        // Upper-case hex, spaces in the user name, an accepting reply.
        let mut ex = cram_to_response();
        match request(ex.step(&b64("tim smith B913A602C7EDA7A495B4E6E7334D3890"))) {
            SaslRequest::CramMd5 {
                username, digest, ..
            } => {
                assert_eq!(username, "tim smith");
                assert_eq!(digest[0], 0xb9);
                assert_eq!(digest[15], 0x90);
            }
            other => panic!("{other:?}"),
        }
        authenticated(ex.answer(SaslAnswer::Decision(Decision::Reply(Reply::AUTH_OK))));
        let hex = "b913a602c7eda7a495b4e6e7334d3890";
        for bad in [
            String::new(),
            "tim".to_owned(),
            format!("tim{hex}"),
            format!(" {hex}"),
            format!("tim {}", &hex[1..]),
            format!("tim {hex}0"),
            format!("tim {}g", &hex[1..]),
            format!("tim {hex} "),
            format!("tim\0x {hex}"),
            format!("{} {hex}", "x".repeat(MAX_FIELD_LEN + 1)),
            format!("tim +{}", &hex[2..]),
        ] {
            let mut ex = cram_to_response();
            assert_eq!(failed(ex.step(&b64(&bad))), SaslError::Malformed, "{bad:?}");
        }
        let mut ex = cram_to_response();
        assert_eq!(failed(ex.step("%%")), SaslError::Base64);
        let mut ex = cram_to_response();
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        // No initial response.
        for initial in ["=", "dGlt", "*"] {
            let (mut ex, step) = start(Mechanism::CramMd5, Some(initial));
            assert_eq!(failed(step), SaslError::Malformed);
            assert_eq!(
                failed(ex.answer(SaslAnswer::Challenge("<1@x>".to_owned()))),
                SaslError::Unexpected
            );
        }
    }

    #[test]
    fn cram_md5_refused_and_checked() {
        let mut ex = cram_to_response();
        request(ex.step(&b64("tim b913a602c7eda7a495b4e6e7334d3890")));
        assert_eq!(
            refused(ex.answer(SaslAnswer::Decision(Decision::Reply(Reply::AUTH_FAILED)))),
            Reply::AUTH_FAILED
        );
        // The application can refuse before any challenge (e.g. no storage).
        let (mut ex, _) = start(Mechanism::CramMd5, None);
        assert_eq!(
            refused(ex.answer(SaslAnswer::Decision(Reply::AUTH_TEMPORARY.into()))),
            Reply::AUTH_TEMPORARY
        );
        for bad in [String::new(), "x".repeat(MAX_CHALLENGE_LEN + 1)] {
            let (mut ex, _) = start(Mechanism::CramMd5, None);
            assert_eq!(
                failed(ex.answer(SaslAnswer::Challenge(bad))),
                SaslError::Unexpected
            );
        }
        let (mut ex, _) = start(Mechanism::CramMd5, None);
        assert_eq!(
            failed(ex.answer(SaslAnswer::Decision(Decision::Accept))),
            SaslError::Unexpected
        );
    }

    #[test]
    fn xoauth2() {
        let initial = encode_xoauth2(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdGhlbmEuZXhhbXBsZS5jb20",
        );
        assert_eq!(
            unb64(&initial),
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdGhlbmEuZXhhbXBsZS5jb20\x01\x01"
        );
        let (mut ex, step) = start(Mechanism::XOAuth2, Some(&initial));
        let t = token(step);
        assert_eq!(t.mechanism, Mechanism::XOAuth2);
        assert_eq!(t.user.as_deref(), Some("someuser@example.com"));
        assert_eq!(
            t.token.expose(),
            "ya29.vF9dft4qmTc2Nvb3RlckBhdGhlbmEuZXhhbXBsZS5jb20"
        );
        assert_eq!((t.host, t.port), (None, None));
        authenticated(ex.answer(SaslAnswer::Decision(Decision::Accept)));

        // Without an initial response; the scheme in any case.
        let (mut ex, step) = start(Mechanism::XOAuth2, None);
        assert_eq!(challenge(step), "");
        let t = token(ex.step(&b64("user=u\x01auth=bearer abc-._~+/==\x01\x01")));
        assert_eq!(t.token.expose(), "abc-._~+/==");

        for bad in [
            "",
            "user=u\x01auth=Bearer abc\x01",
            "user=u\x01auth=Bearer abc",
            "user=u\x01auth=Bearer abc\x01\x01\x01",
            "user=\x01auth=Bearer abc\x01\x01",
            "usr=u\x01auth=Bearer abc\x01\x01",
            "user=u\x01auth=Basic abc\x01\x01",
            "user=u\x01auth=Bearer\x01\x01",
            "user=u\x01auth=Bearer \x01\x01",
            "user=u\x01auth=Bearer ==\x01\x01",
            "user=u\x01auth=Bearer a b\x01\x01",
            "user=u\x01auth=Bearer a=b\x01\x01",
            "user=u\x01auth=Bearer a\x01x=y\x01\x01",
            "user=u\0v\x01auth=Bearer abc\x01\x01",
            "auth=Bearer abc\x01user=u\x01\x01",
        ] {
            let (_, step) = start(Mechanism::XOAuth2, Some(&b64(bad)));
            assert_eq!(failed(step), SaslError::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn oauthbearer_rfc7628_example() {
        let token_text = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==";
        let message = "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        assert_eq!(
            encode_oauthbearer(
                Some("user@example.com"),
                token_text,
                Some("server.example.com"),
                Some(143)
            ),
            b64(message)
        );
        let (mut ex, step) = start(Mechanism::OAuthBearer, Some(&b64(message)));
        let t = token(step);
        assert_eq!(t.mechanism, Mechanism::OAuthBearer);
        assert_eq!(t.user.as_deref(), Some("user@example.com"));
        assert_eq!(t.token.expose(), token_text);
        assert_eq!(t.host.as_deref(), Some("server.example.com"));
        assert_eq!(t.port, Some(143));
        authenticated(ex.answer(SaslAnswer::Decision(Decision::Accept)));
    }

    #[test]
    fn oauthbearer_grammar() {
        for (message, user) in [
            ("n,,\x01auth=Bearer abc\x01\x01", None),
            ("y,,\x01auth=BEARER abc\x01\x01", None),
            ("n,a=a=2Cb,\x01auth=Bearer  abc\x01\x01", Some("a,b")),
            (
                "n,,\x01future=x y\tz\x01auth=Bearer abc\x01empty=\x01\x01",
                None,
            ),
        ] {
            let (_, step) = start(Mechanism::OAuthBearer, Some(&b64(message)));
            let t = token(step);
            assert_eq!(t.user.as_deref(), user, "{message:?}");
            assert_eq!(t.token.expose(), "abc");
        }
        let (mut ex, step) = start(Mechanism::OAuthBearer, None);
        assert_eq!(challenge(step), "");
        token(ex.step(&encode_oauthbearer(None, "abc", None, None)));

        for (bad, error) in [
            ("", SaslError::Malformed),
            ("\x01", SaslError::Malformed),
            ("n,,\x01\x01", SaslError::Malformed),
            ("n,,\x01", SaslError::Malformed),
            ("n,,auth=Bearer abc\x01\x01", SaslError::Malformed),
            ("n,,\x01auth=Bearer abc\x01", SaslError::Malformed),
            ("n,,\x01auth=Bearer abc", SaslError::Malformed),
            ("n,,\x01auth=Bearer abc\x01\x01\x01", SaslError::Malformed),
            ("n,,\x01\x01auth=Bearer abc\x01\x01", SaslError::Malformed),
            ("n,,\x01host=x\x01\x01", SaslError::Malformed),
            ("n,,\x01auth=Basic abc\x01\x01", SaslError::Malformed),
            (
                "n,,\x01auth=Bearer abc\x01auth=Bearer def\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01port=\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01port=65536\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01port=+1\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01host=\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01ho st=x\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01h1=x\x01\x01",
                SaslError::Malformed,
            ),
            ("n,,\x01auth=Bearer abc\x01=x\x01\x01", SaslError::Malformed),
            (
                "n,,\x01auth=Bearer abc\x01novalue\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01x=a\rb\x01\x01",
                SaslError::Malformed,
            ),
            (
                "n,,\x01auth=Bearer abc\x01x=é\x01\x01",
                SaslError::Malformed,
            ),
            ("n,a=,\x01auth=Bearer abc\x01\x01", SaslError::Malformed),
            ("n,u=x,\x01auth=Bearer abc\x01\x01", SaslError::Malformed),
            ("x,,\x01auth=Bearer abc\x01\x01", SaslError::Malformed),
            (
                "p=tls-exporter,,\x01auth=Bearer abc\x01\x01",
                SaslError::ChannelBinding,
            ),
        ] {
            let (_, step) = start(Mechanism::OAuthBearer, Some(&b64(bad)));
            assert_eq!(failed(step), error, "{bad:?}");
        }
        let (_, step) = start(
            Mechanism::OAuthBearer,
            Some(&encode_oauthbearer(None, "abc", None, Some(65535))),
        );
        assert_eq!(token(step).port, Some(65535));
    }

    #[test]
    fn token_refusal_round() {
        let status = r#"{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}"#;
        // RFC 7628 §4.3: the error challenge, then the client's ^A.
        let (mut ex, step) = start(
            Mechanism::OAuthBearer,
            Some(&encode_oauthbearer(
                Some("user@example.com"),
                "abc",
                None,
                None,
            )),
        );
        token(step);
        let sent = challenge(ex.answer(SaslAnswer::TokenRefused {
            status: status.to_owned(),
            reply: None,
        }));
        assert_eq!(
            sent,
            "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
        );
        assert!(!ex.awaiting_answer());
        assert_eq!(refused(ex.step("AQ==")), Reply::AUTH_FAILED);
        assert_eq!(failed(ex.step("AQ==")), SaslError::Malformed);

        // XOAUTH2 clients send an empty line; any line will do.
        for line in ["", "AQ==", "garbage!", &"A".repeat(MAX_RESPONSE_LEN + 1)] {
            let (mut ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", "t")));
            token(step);
            challenge(
                ex.answer(SaslAnswer::TokenRefused {
                    status:
                        r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#
                            .to_owned(),
                    reply: Some(Reply::AUTH_TEMPORARY),
                }),
            );
            assert_eq!(refused(ex.step(line)), Reply::AUTH_TEMPORARY);
        }
        // "*" cancels.
        let (mut ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", "t")));
        token(step);
        challenge(ex.answer(SaslAnswer::TokenRefused {
            status: "{}".to_owned(),
            reply: None,
        }));
        assert!(matches!(ex.step("*"), SaslStep::Cancelled));
        // A refusing Decision skips the round.
        let (mut ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", "t")));
        token(step);
        assert_eq!(
            refused(ex.answer(SaslAnswer::Decision(Reply::AUTH_FAILED.into()))),
            Reply::AUTH_FAILED
        );
        // The status and the reply are checked.
        for (status, reply) in [
            (String::new(), None),
            ("x".repeat(MAX_CHALLENGE_LEN + 1), None),
            ("{}".to_owned(), Some(Reply::AUTH_OK)),
        ] {
            let (mut ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", "t")));
            token(step);
            assert_eq!(
                failed(ex.answer(SaslAnswer::TokenRefused { status, reply })),
                SaslError::Unexpected
            );
        }
    }

    #[test]
    fn secrets_redacted_in_debug() {
        let secret_token = "ya29.TOPSECRETTOKENVALUE";
        let (ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", secret_token)));
        for formatted in [format!("{step:?}"), format!("{step:#?}"), format!("{ex:?}")] {
            assert!(!formatted.contains("TOPSECRET"), "{formatted}");
        }
        assert!(format!("{step:?}").contains("REDACTED"));
        let (_, step) = start(
            Mechanism::OAuthBearer,
            Some(&encode_oauthbearer(None, secret_token, Some("h"), None)),
        );
        assert!(!format!("{step:?}").contains("TOPSECRET"));

        let mut ex = cram_to_response();
        let step = ex.step(&b64("tim b913a602c7eda7a495b4e6e7334d3890"));
        let formatted = format!("{step:?}");
        assert!(formatted.contains("tim"), "{formatted}");
        assert!(!formatted.contains("185"), "{formatted}"); // 0xb9
        assert!(formatted.contains("[REDACTED]"), "{formatted}");

        let mut ex =
            scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
        let step = ex.step(&b64(CLIENT_FINAL));
        let formatted = format!("{step:?}");
        assert!(formatted.contains("auth_message"), "{formatted}");
        assert!(formatted.contains("proof: [REDACTED]"), "{formatted}");
        assert!(!formatted.contains("116"), "{formatted}"); // 0x74, the proof's first byte
    }

    #[test]
    fn misuse() {
        // An answer while a client line is expected.
        let (mut ex, _) = start(Mechanism::ScramSha256, None);
        assert_eq!(
            failed(ex.answer(SaslAnswer::Decision(Decision::Accept))),
            SaslError::Unexpected
        );
        assert_eq!(failed(ex.step(&b64(CLIENT_FIRST))), SaslError::Malformed);
        let (mut ex, _) = start(Mechanism::Plain, None);
        assert_eq!(
            failed(ex.answer(SaslAnswer::Decision(Reply::AUTH_FAILED.into()))),
            SaslError::Unexpected
        );
        let (mut ex, step) = start(Mechanism::Plain, Some(&encode_plain(None, "a", "b")));
        done(step);
        assert_eq!(
            failed(ex.answer(SaslAnswer::Challenge("x".to_owned()))),
            SaslError::Unexpected
        );
        // A client line while a request is outstanding.
        let (mut ex, step) = start(Mechanism::CramMd5, None);
        request(step);
        assert_eq!(failed(ex.step("dGlt")), SaslError::Unexpected);
        assert!(!ex.awaiting_answer());
        assert_eq!(
            failed(ex.answer(SaslAnswer::Challenge("<1@x>".to_owned()))),
            SaslError::Unexpected
        );
        let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(CLIENT_FIRST)));
        request(step);
        assert_eq!(failed(ex.step("*")), SaslError::Unexpected);
        // Answers of the wrong kind, including accepting where a value is due.
        let wrong_for_scram_first = [
            SaslAnswer::Decision(Decision::Accept),
            SaslAnswer::Decision(Decision::Reply(Reply::AUTH_OK)),
            SaslAnswer::Challenge("x".to_owned()),
            verified(),
            SaslAnswer::TokenRefused {
                status: "{}".to_owned(),
                reply: None,
            },
        ];
        for answer in wrong_for_scram_first {
            let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(CLIENT_FIRST)));
            request(step);
            assert_eq!(failed(ex.answer(answer)), SaslError::Unexpected);
            assert!(!ex.awaiting_answer());
        }
        let wrong_for_scram_final = [
            SaslAnswer::Decision(Decision::Accept),
            rfc7677_first(),
            SaslAnswer::Challenge("x".to_owned()),
        ];
        for answer in wrong_for_scram_final {
            let mut ex =
                scram_to_server_first(Mechanism::ScramSha256, SaslContext::default(), CLIENT_FIRST);
            request(ex.step(&b64(CLIENT_FINAL)));
            assert_eq!(failed(ex.answer(answer)), SaslError::Unexpected);
        }
        let wrong_for_token = [
            rfc7677_first(),
            verified(),
            SaslAnswer::Challenge("x".to_owned()),
        ];
        for answer in wrong_for_token {
            let (mut ex, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2("u", "t")));
            token(step);
            assert_eq!(failed(ex.answer(answer)), SaslError::Unexpected);
        }
        let (mut ex, step) = start(Mechanism::CramMd5, None);
        request(step);
        assert_eq!(failed(ex.answer(verified())), SaslError::Unexpected);
        assert_eq!(
            SaslError::Unexpected.to_string(),
            "SASL exchange misused by the application"
        );
        assert!(
            SaslError::ChannelBinding
                .to_string()
                .contains("channel binding")
        );
    }

    #[test]
    fn new_mechanisms_cancel_and_limits() {
        for m in [
            Mechanism::ScramSha256,
            Mechanism::ScramSha256Plus,
            Mechanism::XOAuth2,
            Mechanism::OAuthBearer,
        ] {
            let (mut ex, step) = SaslExchange::start(m, None, plus_context());
            assert_eq!(challenge(step), "");
            assert!(matches!(ex.step("*"), SaslStep::Cancelled));
            let (mut ex, _) = SaslExchange::start(m, None, plus_context());
            assert_eq!(
                failed(ex.step(&"A".repeat(MAX_RESPONSE_LEN + 1))),
                SaslError::TooLong
            );
            let (_, step) = SaslExchange::start(m, Some("*"), plus_context());
            assert!(matches!(step, SaslStep::Cancelled));
        }
        // A token may use up the whole response line.
        let overhead = "user=u\x01auth=Bearer \x01\x01".len();
        let long = "t".repeat(MAX_RESPONSE_LEN / 4 * 3 - overhead);
        let initial = encode_xoauth2("u", &long);
        assert!(initial.len() <= MAX_RESPONSE_LEN);
        let (_, step) = start(Mechanism::XOAuth2, Some(&initial));
        assert_eq!(token(step).token.expose().len(), long.len());
    }

    /// One move of a random exchange: a client line (raw, or base64 of a
    /// text built from the mechanisms' alphabet) or an answer.
    #[derive(Debug, Clone)]
    enum Move {
        Line(String),
        Encoded(String),
        Answer(u8, String),
    }

    fn moves() -> impl Strategy<Value = Vec<Move>> {
        proptest::collection::vec(
            prop_oneof![
                ".{0,64}".prop_map(Move::Line),
                "[nyp=a-zA-Z0-9,\u{1} *=2C3D]{0,48}".prop_map(Move::Encoded),
                (any::<u8>(), "[ -~]{0,40}").prop_map(|(k, s)| Move::Answer(k, s)),
            ],
            0..8,
        )
    }

    fn random_answer(k: u8, s: &str) -> SaslAnswer {
        match k % 8 {
            0 => SaslAnswer::Decision(Decision::Accept),
            1 => SaslAnswer::Decision(Decision::Reply(Reply::AUTH_FAILED)),
            2 => SaslAnswer::Decision(Decision::Reply(Reply::AUTH_OK)),
            3 => SaslAnswer::Challenge(s.to_owned()),
            4 => SaslAnswer::ScramFirst {
                server_nonce: s.to_owned(),
                salt: s.as_bytes().to_vec(),
                iterations: u32::from(k / 8),
            },
            5 => SaslAnswer::ScramVerified {
                server_signature: if k > 128 {
                    vec![k; 32]
                } else {
                    s.as_bytes().to_vec()
                },
            },
            6 => SaslAnswer::TokenRefused {
                status: s.to_owned(),
                reply: None,
            },
            _ => SaslAnswer::TokenRefused {
                status: s.to_owned(),
                reply: Some(if k > 128 {
                    Reply::AUTH_OK
                } else {
                    Reply::AUTH_TEMPORARY
                }),
            },
        }
    }

    proptest! {
        #[test]
        fn plain_roundtrip(
            authzid in proptest::option::of("[^\u{0}]{0,40}"),
            user in "[^\u{0}]{1,40}",
            pass in "[^\u{0}]{1,40}",
        ) {
            let (_, step) = start(Mechanism::Plain, Some(&encode_plain(authzid.as_deref(), &user, &pass)));
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
        fn never_panics(
            mechanism in 0..Mechanism::ALL.len(),
            with_binding in any::<bool>(),
            plus_offered in any::<bool>(),
            initial in proptest::option::of(".{0,64}"),
            moves in moves(),
        ) {
            let context = SaslContext {
                channel_binding: with_binding.then(binding),
                plus_offered,
            };
            let (mut ex, mut step) = SaslExchange::start(Mechanism::ALL[mechanism], initial.as_deref(), context);
            for m in moves {
                let over = matches!(
                    step,
                    SaslStep::Done(_) | SaslStep::Authenticated | SaslStep::Refused(_) | SaslStep::Cancelled | SaslStep::Failed(_)
                );
                prop_assert_eq!(ex.awaiting_answer(), matches!(step, SaslStep::Request(_)));
                step = match m {
                    Move::Line(line) => ex.step(&line),
                    Move::Encoded(text) => ex.step(&b64(&text)),
                    Move::Answer(k, s) => ex.answer(random_answer(k, &s)),
                };
                if over {
                    prop_assert!(matches!(step, SaslStep::Failed(_)), "{:?}", step);
                }
            }
        }

        #[test]
        fn scram_roundtrip(
            user in "[^\u{0}]{1,30}",
            authzid in proptest::option::of("[^\u{0},=]{1,20}"),
            nonce in "[!-+\\--~]{1,40}",
            plus in any::<bool>(),
            proof in proptest::collection::vec(any::<u8>(), 32),
        ) {
            let mechanism = if plus { Mechanism::ScramSha256Plus } else { Mechanism::ScramSha256 };
            let header = match (plus, &authzid) {
                (false, None) => "n,,".to_owned(),
                (false, Some(z)) => format!("n,a={z},"),
                (true, None) => "p=tls-exporter,,".to_owned(),
                (true, Some(z)) => format!("p=tls-exporter,a={z},"),
            };
            let first = scram_client_first(&user, &nonce);
            let bare = first.strip_prefix("n,,").unwrap();
            let (mut ex, step) = SaslExchange::start(mechanism, Some(&b64(&format!("{header}{bare}"))), plus_context());
            match request(step) {
                SaslRequest::ScramFirst { username, authzid: z, plus: p } => {
                    prop_assert_eq!(&username, &user);
                    prop_assert_eq!(&z, &authzid);
                    prop_assert_eq!(p, plus);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            let server_first = unb64(&challenge(ex.answer(rfc7677_first())));
            let server_first = String::from_utf8(server_first).unwrap();
            let full = format!("{nonce}{SERVER_NONCE}");
            prop_assert_eq!(&server_first, &format!("r={full},s={SALT},i=4096"));
            let mut cbind_input = header.into_bytes();
            if plus {
                cbind_input.extend(binding());
            }
            let last = scram_client_final(&cbind_input, &full, &proof);
            match request(ex.step(&b64(&last))) {
                SaslRequest::ScramFinal { username, auth_message, proof: p, .. } => {
                    prop_assert_eq!(username, user);
                    let without_proof = last.rsplit_once(",p=").unwrap().0;
                    prop_assert_eq!(auth_message, format!("{bare},{server_first},{without_proof}"));
                    prop_assert_eq!(p, proof);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            challenge(ex.answer(verified()));
            authenticated(ex.step(""));
        }

        #[test]
        fn oauth_roundtrip(
            user in proptest::option::of("[^\u{0}\u{1}]{1,30}"),
            token_text in "[a-zA-Z0-9._~+/-]{1,60}={0,2}",
            host in proptest::option::of("[!-~]{1,30}"),
            port in proptest::option::of(any::<u16>()),
        ) {
            let (_, step) = start(Mechanism::OAuthBearer, Some(&encode_oauthbearer(user.as_deref(), &token_text, host.as_deref(), port)));
            let t = token(step);
            prop_assert_eq!(t.user, user.clone());
            prop_assert_eq!(t.token.expose(), &token_text);
            prop_assert_eq!(t.host, host);
            prop_assert_eq!(t.port, port);
            if let Some(user) = user {
                let (_, step) = start(Mechanism::XOAuth2, Some(&encode_xoauth2(&user, &token_text)));
                let t = token(step);
                prop_assert_eq!(t.user, Some(user));
                prop_assert_eq!(t.token.expose(), &token_text);
            }
        }
    }
}
