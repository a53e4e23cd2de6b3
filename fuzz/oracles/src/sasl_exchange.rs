//! The `sasl` oracle: [`SaslExchange`] for every mechanism, driven by
//! client lines and by the application's answers.

use smtp_proto::reply::Reply;
use smtp_proto::sasl::{
    Credentials, MAX_CHALLENGE_LEN, MAX_FIELD_LEN, MAX_NONCE_LEN, MAX_RESPONSE_LEN, MAX_SALT_LEN,
    Mechanism, OAuthToken, SaslAnswer, SaslContext, SaslError, SaslExchange, SaslRequest, SaslStep,
    encode_base64, encode_oauthbearer, encode_plain, encode_xoauth2, scram_client_final,
    scram_client_first,
};
use smtp_proto::server::Decision;

use super::{Input, gen_chars, gen_len};

/// LOGIN's challenges: base64 of `Username:` and `Password:`.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// RFC 2195's challenge.
const CRAM_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";

/// RFC 7677's server nonce part, salt (base64) and signature (base64).
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)kNlwr";
const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// RFC 7628 §4.3's error status.
const STATUS: &str = r#"{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}"#;

/// A made-up 32-byte `tls-exporter` value.
fn binding() -> Vec<u8> {
    (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect()
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    // smtp-proto's decoder is not public; a small one suffices here.
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn valid_field(f: &str) -> bool {
    !f.is_empty() && f.len() <= MAX_FIELD_LEN && !f.contains('\0')
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NONCE_LEN
        && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 6750 `b64token`.
fn valid_token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && t.len() <= MAX_RESPONSE_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn check_credentials(c: &Credentials) {
    assert!(valid_field(&c.username), "bad user name accepted");
    assert!(valid_field(c.password.expose()), "bad password accepted");
    if let Some(z) = &c.authzid {
        assert!(valid_field(z), "bad authzid accepted");
    }
    assert!(
        format!("{c:?}").contains("REDACTED"),
        "password not redacted"
    );
}

fn check_token(t: &OAuthToken, mechanism: Mechanism) {
    assert_eq!(t.mechanism, mechanism);
    assert!(valid_token(t.token.expose()), "bad token accepted");
    if let Some(u) = &t.user {
        assert!(valid_field(u), "bad OAuth user accepted");
    }
    assert!(mechanism != Mechanism::XOAuth2 || t.user.is_some());
    if let Some(h) = &t.host {
        assert!(!h.is_empty() && h.len() <= MAX_FIELD_LEN);
    }
    let formatted = format!("{t:?}");
    assert!(formatted.contains("REDACTED"), "token not redacted");
    let token = t.token.expose();
    let elsewhere = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains(token.as_str()));
    if token.len() >= 12 && !elsewhere(&t.user) && !elsewhere(&t.host) {
        assert!(!formatted.contains(token.as_str()), "token in Debug output");
    }
}

/// What the oracle expects of the exchange between calls.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    /// Waiting for a client line; `ack` when it is SCRAM's final (empty)
    /// one, `refusal` in the OAuth error round.
    Client { ack: bool, refusal: Option<Reply> },
    /// A request is outstanding.
    Request(Pending),
    /// Done, authenticated, refused, cancelled or failed.
    Over,
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    CramChallenge,
    Cram,
    ScramFirst {
        username: String,
        authzid: Option<String>,
    },
    ScramFinal,
    Token,
}

/// The application's answer chosen by a `#` line: `kind` then `param`.
fn make_answer(kind: u8, param: &[u8]) -> SaslAnswer {
    let text = String::from_utf8_lossy(param).into_owned();
    match kind % 12 {
        0 => SaslAnswer::Decision(Decision::Accept),
        1 => SaslAnswer::Decision(Decision::Reply(Reply::AUTH_FAILED)),
        2 => SaslAnswer::Decision(Decision::Reply(Reply::AUTH_TEMPORARY)),
        3 => SaslAnswer::Decision(Decision::Reply(Reply::AUTH_OK)),
        4 => SaslAnswer::Challenge(text),
        5 => SaslAnswer::Challenge(CRAM_CHALLENGE.to_owned()),
        6 => SaslAnswer::ScramFirst {
            server_nonce: SERVER_NONCE.to_owned(),
            salt: unbase64(SALT).unwrap_or_default(),
            iterations: 4096,
        },
        7 => SaslAnswer::ScramFirst {
            server_nonce: text,
            salt: param.to_vec(),
            iterations: u32::from(kind / 12),
        },
        8 => SaslAnswer::ScramVerified {
            server_signature: unbase64(SIGNATURE).unwrap_or_default(),
        },
        9 => SaslAnswer::ScramVerified {
            server_signature: param.to_vec(),
        },
        10 => SaslAnswer::TokenRefused {
            status: STATUS.to_owned(),
            reply: None,
        },
        _ => SaslAnswer::TokenRefused {
            status: text,
            reply: Some(if kind >= 128 {
                Reply::AUTH_OK
            } else {
                Reply::AUTH_TEMPORARY
            }),
        },
    }
}

/// What an answer must give, by the model: the step and the next model.
/// `None` as the step: a challenge checked by `check_challenge`.
fn expect_answer(model: &Model, answer: &SaslAnswer) -> Expected {
    let Model::Request(pending) = model else {
        return Expected::Fail(SaslError::Unexpected);
    };
    if let SaslAnswer::Decision(Decision::Reply(r)) = answer {
        if r.code() >= 400 {
            return Expected::Refused(r.clone());
        }
    }
    match (pending, answer) {
        (Pending::CramChallenge, SaslAnswer::Challenge(c))
            if !c.is_empty() && c.len() <= MAX_CHALLENGE_LEN =>
        {
            Expected::Challenge(encode_base64(c.as_bytes()))
        }
        (Pending::Cram | Pending::Token, SaslAnswer::Decision(_)) => Expected::Authenticated,
        (
            Pending::ScramFirst { .. },
            SaslAnswer::ScramFirst {
                server_nonce,
                salt,
                iterations,
            },
        ) if valid_nonce(server_nonce)
            && !salt.is_empty()
            && salt.len() <= MAX_SALT_LEN
            && *iterations >= 1 =>
        {
            Expected::ServerFirst(format!(
                "{server_nonce},s={},i={iterations}",
                encode_base64(salt)
            ))
        }
        (Pending::ScramFinal, SaslAnswer::ScramVerified { server_signature })
            if server_signature.len() == 32 =>
        {
            Expected::Challenge(encode_base64(
                format!("v={}", encode_base64(server_signature)).as_bytes(),
            ))
        }
        (Pending::Token, SaslAnswer::TokenRefused { status, reply })
            if !status.is_empty()
                && status.len() <= MAX_CHALLENGE_LEN
                && reply.as_ref().is_none_or(|r| r.code() >= 400) =>
        {
            Expected::Challenge(encode_base64(status.as_bytes()))
        }
        _ => Expected::Fail(SaslError::Unexpected),
    }
}

#[derive(Debug)]
enum Expected {
    Fail(SaslError),
    Refused(Reply),
    Authenticated,
    Challenge(String),
    /// A SCRAM server-first: `r=<client nonce>` then this suffix.
    ServerFirst(String),
}

/// Checks a step against the mechanism's rules and returns the next model.
/// `from_answer`: the step answered a request; `line`: the client line it
/// answered, if any.
struct Checker {
    mechanism: Mechanism,
    context: SaslContext,
    /// The CRAM-MD5 challenge given, the SCRAM server-first sent.
    cram_challenge: Option<String>,
    server_first: Option<String>,
    scram_user: Option<(String, Option<String>)>,
    steps: usize,
}

impl Checker {
    fn check(&mut self, ex: &SaslExchange, step: &SaslStep, from_answer: bool) -> Model {
        self.steps += 1;
        assert!(self.steps <= 64, "too many steps");
        assert_eq!(ex.mechanism(), self.mechanism);
        assert_eq!(
            ex.awaiting_answer(),
            matches!(step, SaslStep::Request(_)),
            "awaiting_answer disagrees with {step:?}"
        );
        let m = self.mechanism;
        let scram = matches!(m, Mechanism::ScramSha256 | Mechanism::ScramSha256Plus);
        let oauth = matches!(m, Mechanism::XOAuth2 | Mechanism::OAuthBearer);
        match step {
            SaslStep::Challenge(c) => {
                if !from_answer {
                    assert!(
                        m == Mechanism::Login && c == LOGIN_PASSWORD,
                        "{m:?}: unexpected challenge {c:?} from a client line"
                    );
                }
                Model::Client {
                    ack: false,
                    refusal: None,
                }
            }
            SaslStep::Done(c) => {
                assert!(matches!(m, Mechanism::Plain | Mechanism::Login));
                assert!(!from_answer);
                assert_eq!(c.mechanism, m);
                check_credentials(c);
                Model::Over
            }
            SaslStep::Request(r) => {
                assert!(!from_answer, "a request answered by a request");
                let formatted = format!("{r:?}");
                match r {
                    SaslRequest::CramMd5Challenge => {
                        panic!("CramMd5Challenge after the start")
                    }
                    SaslRequest::CramMd5 {
                        username,
                        challenge,
                        ..
                    } => {
                        assert_eq!(m, Mechanism::CramMd5);
                        assert!(valid_field(username));
                        assert_eq!(Some(challenge), self.cram_challenge.as_ref());
                        assert!(formatted.contains("[REDACTED]"));
                        Model::Request(Pending::Cram)
                    }
                    SaslRequest::ScramFirst {
                        username,
                        authzid,
                        plus,
                    } => {
                        assert!(scram);
                        assert_eq!(*plus, m == Mechanism::ScramSha256Plus);
                        if *plus {
                            assert!(
                                self.context
                                    .channel_binding
                                    .as_ref()
                                    .is_some_and(|d| !d.is_empty()),
                                "PLUS without binding data"
                            );
                        }
                        assert!(valid_field(username));
                        if let Some(z) = authzid {
                            assert!(valid_field(z));
                        }
                        self.scram_user = Some((username.clone(), authzid.clone()));
                        Model::Request(Pending::ScramFirst {
                            username: username.clone(),
                            authzid: authzid.clone(),
                        })
                    }
                    SaslRequest::ScramFinal {
                        username,
                        authzid,
                        auth_message,
                        proof,
                    } => {
                        assert!(scram);
                        assert_eq!(
                            Some(&(username.clone(), authzid.clone())),
                            self.scram_user.as_ref()
                        );
                        assert_eq!(proof.len(), 32);
                        let server_first = self.server_first.as_deref().unwrap_or("\0");
                        assert!(
                            auth_message.contains(&format!(",{server_first},c=")),
                            "auth message without server-first: {auth_message:?}"
                        );
                        assert!(auth_message.starts_with("n="));
                        assert!(formatted.contains("[REDACTED]"));
                        Model::Request(Pending::ScramFinal)
                    }
                    SaslRequest::Token(t) => {
                        assert!(oauth);
                        check_token(t, m);
                        Model::Request(Pending::Token)
                    }
                }
            }
            SaslStep::Authenticated => {
                assert!(matches!(m, Mechanism::CramMd5) || scram || oauth);
                Model::Over
            }
            SaslStep::Refused(_) | SaslStep::Cancelled | SaslStep::Failed(_) => Model::Over,
        }
    }
}

/// Every SASL mechanism's exchange.
///
/// Raw: byte 0 holds the choices: the mechanism is `ALL[(bit 0 | bits 2-4
/// << 1) % 7]` (so 0-3 are PLAIN and LOGIN as before), bit 1 makes the
/// first line the initial response, bit 5 gives the context `tls-exporter`
/// binding data, bit 6 says SCRAM-SHA-256-PLUS is offered. The rest, split
/// at LF (a CR before it dropped), is a script: a line `#` K P... answers
/// the outstanding request with answer kind K (see `make_answer`: accept,
/// refusals, an accepting 235, challenges, SCRAM values fixed (RFC 7677) or
/// from P, OAuth refusals) and parameter P; a line `~` X... is the client
/// line base64(X...); any other line is the client's line as it is.
///
/// No panic; `awaiting_answer` says whether a request is outstanding; only
/// the mechanism's challenges, requests and outcomes; an answer gives
/// exactly what the model says (the CRAM-MD5 challenge and SCRAM
/// server-first and server-final built from it, `Refused` with the reply
/// given, `Authenticated` for accepting CRAM-MD5 and OAuth verdicts, and
/// `Unexpected` for every misuse, including a client line while a request
/// is outstanding); SCRAM authenticates only after the empty line; the OAuth
/// error round ends with the chosen reply; requests hold valid fields and
/// hide digests, proofs and tokens from `Debug`; a finished exchange fails
/// every further call.
///
/// Structured: PLAIN, LOGIN, CRAM-MD5, SCRAM (with and without channel
/// binding, with corrupted client-final messages) and both OAuth
/// mechanisms, with fields from the input encoded as a client would, come
/// back unchanged when valid and are refused when not.
pub fn sasl(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    raw(flags, rest);
    structured(data);
}

fn raw(flags: u8, rest: &[u8]) {
    let index = usize::from((flags & 1) | (((flags >> 2) & 7) << 1)) % Mechanism::ALL.len();
    let mechanism = Mechanism::ALL[index];
    let context = SaslContext {
        channel_binding: (flags & 0x20 != 0).then(binding),
        plus_offered: flags & 0x40 != 0,
    };
    let client_line = |l: &[u8]| match l.strip_prefix(b"~") {
        Some(x) => encode_base64(x),
        None => String::from_utf8_lossy(l).into_owned(),
    };
    let mut lines = rest
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let initial = if flags & 2 != 0 {
        lines.next().map(client_line)
    } else {
        None
    };
    let (mut ex, step) = SaslExchange::start(mechanism, initial.as_deref(), context.clone());
    let mut checker = Checker {
        mechanism,
        context,
        cram_challenge: None,
        server_first: None,
        scram_user: None,
        steps: 0,
    };
    // The start.
    let mut model = match (&step, mechanism, initial.is_some()) {
        (SaslStep::Request(SaslRequest::CramMd5Challenge), Mechanism::CramMd5, false) => {
            assert!(ex.awaiting_answer());
            Model::Request(Pending::CramChallenge)
        }
        (SaslStep::Failed(SaslError::Malformed), Mechanism::CramMd5, true) => Model::Over,
        (_, Mechanism::CramMd5, _) => panic!("CRAM-MD5 start: {step:?}"),
        (SaslStep::Challenge(c), Mechanism::Login, false) => {
            assert_eq!(c, LOGIN_USERNAME);
            checker.check(&ex, &step, true)
        }
        (SaslStep::Challenge(c), _, false) => {
            assert_eq!(c, "", "{mechanism:?}: first challenge");
            checker.check(&ex, &step, true)
        }
        (_, _, false) => panic!("{mechanism:?} without an initial response: {step:?}"),
        (_, _, true) => {
            let from_star = initial.as_deref() == Some("*");
            assert_eq!(matches!(step, SaslStep::Cancelled), from_star);
            checker.check(&ex, &step, false)
        }
    };
    for l in lines {
        let (step, next) = if let Some(script) = l.strip_prefix(b"#") {
            let (kind, param) = script.split_first().map_or((0, &[][..]), |(k, p)| (*k, p));
            let answer = make_answer(kind, param);
            let expected = expect_answer(&model, &answer);
            let step = ex.answer(answer);
            let next = match (&expected, &step) {
                (Expected::Fail(e), SaslStep::Failed(got)) => {
                    assert_eq!(e, got);
                    Model::Over
                }
                (Expected::Refused(r), SaslStep::Refused(got)) => {
                    assert_eq!(r, got);
                    Model::Over
                }
                (Expected::Authenticated, SaslStep::Authenticated) => Model::Over,
                (Expected::Challenge(c), SaslStep::Challenge(got)) => {
                    assert_eq!(c, got);
                    match (&model, &answer_kind(kind)) {
                        (Model::Request(Pending::CramChallenge), _) => {
                            checker.cram_challenge =
                                unbase64(c).map(|b| String::from_utf8_lossy(&b).into_owned());
                            Model::Client {
                                ack: false,
                                refusal: None,
                            }
                        }
                        (Model::Request(Pending::ScramFinal), _) => Model::Client {
                            ack: true,
                            refusal: None,
                        },
                        (Model::Request(Pending::Token), AnswerKind::TokenRefused(r)) => {
                            Model::Client {
                                ack: false,
                                refusal: Some(r.clone()),
                            }
                        }
                        other => panic!("challenge after {other:?}"),
                    }
                }
                (Expected::ServerFirst(suffix), SaslStep::Challenge(got)) => {
                    let text = unbase64(got)
                        .and_then(|b| String::from_utf8(b).ok())
                        .expect("server-first is base64 UTF-8");
                    assert!(text.len() <= MAX_CHALLENGE_LEN);
                    let client_nonce = text
                        .strip_prefix("r=")
                        .and_then(|t| t.strip_suffix(suffix.as_str()))
                        .expect("server-first layout");
                    assert!(valid_nonce(client_nonce), "client nonce {client_nonce:?}");
                    checker.server_first = Some(text);
                    Model::Client {
                        ack: false,
                        refusal: None,
                    }
                }
                _ => panic!("{model:?}: expected {expected:?}, got {step:?}"),
            };
            if !matches!(next, Model::Over) {
                checker.check(&ex, &step, true);
            }
            (step, next)
        } else {
            let line = client_line(l);
            let step = ex.step(&line);
            let next = match &model {
                Model::Over => {
                    assert!(matches!(step, SaslStep::Failed(SaslError::Malformed)));
                    Model::Over
                }
                Model::Request(_) => {
                    assert!(matches!(step, SaslStep::Failed(SaslError::Unexpected)));
                    Model::Over
                }
                Model::Client { .. } if line == "*" => {
                    assert!(matches!(step, SaslStep::Cancelled), "{step:?}");
                    Model::Over
                }
                Model::Client {
                    refusal: Some(r), ..
                } => {
                    assert!(matches!(&step, SaslStep::Refused(got) if got == r));
                    Model::Over
                }
                Model::Client { ack: true, .. } => {
                    match &step {
                        SaslStep::Authenticated => assert_eq!(line, ""),
                        SaslStep::Failed(_) => assert_ne!(line, ""),
                        other => panic!("after server-final: {other:?}"),
                    }
                    Model::Over
                }
                Model::Client { .. } => {
                    if line.len() > MAX_RESPONSE_LEN {
                        assert!(matches!(step, SaslStep::Failed(SaslError::TooLong)));
                    }
                    assert!(!matches!(
                        step,
                        SaslStep::Authenticated | SaslStep::Refused(_) | SaslStep::Cancelled
                    ));
                    checker.check(&ex, &step, false)
                }
            };
            (step, next)
        };
        if matches!(next, Model::Over) {
            assert!(!ex.awaiting_answer(), "{step:?}");
        }
        model = next;
    }
    if model == Model::Over {
        assert!(matches!(
            ex.step(""),
            SaslStep::Failed(SaslError::Malformed)
        ));
        assert!(matches!(
            ex.answer(SaslAnswer::Decision(Decision::Accept)),
            SaslStep::Failed(SaslError::Unexpected)
        ));
    }
}

#[derive(Debug)]
enum AnswerKind {
    TokenRefused(Reply),
    Other,
}

/// The reply a `TokenRefused` answer of this kind ends with.
fn answer_kind(kind: u8) -> AnswerKind {
    match kind % 12 {
        10 => AnswerKind::TokenRefused(Reply::AUTH_FAILED),
        11 => AnswerKind::TokenRefused(Reply::AUTH_TEMPORARY),
        _ => AnswerKind::Other,
    }
}

fn structured(data: &[u8]) {
    let mut u = Input::new(data);
    let field = |u: &mut Input| {
        let n = gen_len(u, 16, MAX_FIELD_LEN);
        gen_chars(u, n, b"abcXYZ019 @.:\0,=", true)
    };
    let authzid = if u.bool() { Some(field(&mut u)) } else { None };
    let user = field(&mut u);
    let pass = field(&mut u);
    let authz_ok = authzid
        .as_deref()
        .is_none_or(|z| z.len() <= MAX_FIELD_LEN && !z.contains('\0'));
    let with_initial = u.bool();
    plain_and_login(authzid.as_deref(), &user, &pass, authz_ok, with_initial);
    cram(&mut u, &user);
    scram(&mut u, authzid.as_deref(), &user, with_initial);
    oauth(&mut u, authzid.as_deref(), &user);
}

fn plain_and_login(
    authzid: Option<&str>,
    user: &str,
    pass: &str,
    authz_ok: bool,
    with_initial: bool,
) {
    let plain = encode_plain(authzid, user, pass);
    let (mut ex, first) = SaslExchange::start(
        Mechanism::Plain,
        with_initial.then_some(plain.as_str()),
        SaslContext::default(),
    );
    let step = if with_initial {
        first
    } else {
        assert!(matches!(&first, SaslStep::Challenge(c) if c.is_empty()));
        ex.step(&plain)
    };
    match step {
        SaslStep::Done(c) => {
            assert!(
                valid_field(user) && valid_field(pass) && authz_ok,
                "PLAIN accepted bad fields"
            );
            assert_eq!(c.username, user);
            assert_eq!(c.password.expose(), pass);
            assert_eq!(c.authzid.as_deref(), authzid.filter(|z| !z.is_empty()));
        }
        SaslStep::Failed(SaslError::Malformed) => {
            assert!(
                !(valid_field(user) && valid_field(pass) && authz_ok),
                "PLAIN refused good fields"
            );
        }
        other => panic!("PLAIN: {other:?}"),
    }
    let (mut ex, first) = SaslExchange::start(
        Mechanism::Login,
        with_initial
            .then(|| encode_base64(user.as_bytes()))
            .as_deref(),
        SaslContext::default(),
    );
    let step = if with_initial {
        first
    } else {
        assert!(matches!(&first, SaslStep::Challenge(c) if c == LOGIN_USERNAME));
        ex.step(&encode_base64(user.as_bytes()))
    };
    let step = match step {
        SaslStep::Challenge(c) if c == LOGIN_PASSWORD => ex.step(&encode_base64(pass.as_bytes())),
        other => other,
    };
    match step {
        SaslStep::Done(c) => {
            assert!(
                valid_field(user) && valid_field(pass),
                "LOGIN accepted bad fields"
            );
            assert_eq!(c.username, user);
            assert_eq!(c.password.expose(), pass);
            assert_eq!(c.authzid, None);
        }
        SaslStep::Failed(SaslError::Malformed) => {
            assert!(
                !(valid_field(user) && valid_field(pass)),
                "LOGIN refused good fields"
            );
        }
        other => panic!("LOGIN: {other:?}"),
    }
}

fn cram(u: &mut Input, user: &str) {
    let mut digest = [0u8; 16];
    digest.iter_mut().for_each(|b| *b = u.byte());
    let upper = u.bool();
    let hex: String = digest
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect();
    let (mut ex, step) = SaslExchange::start(Mechanism::CramMd5, None, SaslContext::default());
    assert!(matches!(
        step,
        SaslStep::Request(SaslRequest::CramMd5Challenge)
    ));
    let challenge = ex.answer(SaslAnswer::Challenge(CRAM_CHALLENGE.to_owned()));
    assert!(
        matches!(&challenge, SaslStep::Challenge(c) if *c == encode_base64(CRAM_CHALLENGE.as_bytes()))
    );
    match ex.step(&encode_base64(format!("{user} {hex}").as_bytes())) {
        SaslStep::Request(SaslRequest::CramMd5 {
            username,
            challenge,
            digest: d,
        }) => {
            assert!(valid_field(user), "CRAM-MD5 accepted a bad user name");
            assert_eq!(username, user);
            assert_eq!(challenge, CRAM_CHALLENGE);
            assert_eq!(d, digest);
        }
        SaslStep::Failed(SaslError::Malformed) => {
            assert!(!valid_field(user), "CRAM-MD5 refused a good user name");
        }
        other => panic!("CRAM-MD5: {other:?}"),
    }
}

fn scram(u: &mut Input, authzid: Option<&str>, user: &str, with_initial: bool) {
    let n = gen_len(u, 24, MAX_NONCE_LEN);
    let nonce = gen_chars(u, n, b"abcXYZ019!~%)+-/, ", false);
    let plus = u.bool();
    let corruption = u.byte() % 8;
    let mut proof = [0u8; 32];
    proof.iter_mut().for_each(|b| *b = u.byte());
    let mechanism = if plus {
        Mechanism::ScramSha256Plus
    } else {
        Mechanism::ScramSha256
    };
    let context = SaslContext {
        channel_binding: Some(binding()),
        plus_offered: true,
    };
    let first = scram_client_first(user, &nonce);
    let bare = first.strip_prefix("n,,").expect("gs2 header n,,");
    let escape = |s: &str| s.replace('=', "=3D").replace(',', "=2C");
    let authzid = authzid.filter(|z| !z.is_empty());
    let header = format!(
        "{},{},",
        if plus { "p=tls-exporter" } else { "n" },
        authzid
            .map(|z| format!("a={}", escape(z)))
            .unwrap_or_default()
    );
    let first = encode_base64(format!("{header}{bare}").as_bytes());
    let (mut ex, step) =
        SaslExchange::start(mechanism, with_initial.then_some(first.as_str()), context);
    let step = if with_initial {
        step
    } else {
        assert!(matches!(&step, SaslStep::Challenge(c) if c.is_empty()));
        ex.step(&first)
    };
    let valid = valid_field(user) && authzid.is_none_or(valid_field) && valid_nonce(&nonce);
    match step {
        SaslStep::Request(SaslRequest::ScramFirst {
            username,
            authzid: z,
            plus: p,
        }) => {
            assert!(valid, "SCRAM accepted bad fields");
            assert_eq!(username, user);
            assert_eq!(z.as_deref(), authzid);
            assert_eq!(p, plus);
        }
        SaslStep::Failed(SaslError::Malformed) => {
            assert!(!valid, "SCRAM refused good fields");
            return;
        }
        other => panic!("SCRAM client-first: {other:?}"),
    }
    let step = ex.answer(SaslAnswer::ScramFirst {
        server_nonce: SERVER_NONCE.to_owned(),
        salt: unbase64(SALT).unwrap_or_default(),
        iterations: 4096,
    });
    let full = format!("{nonce}{SERVER_NONCE}");
    let server_first = format!("r={full},s={SALT},i=4096");
    assert!(
        matches!(&step, SaslStep::Challenge(c) if *c == encode_base64(server_first.as_bytes())),
        "{step:?}"
    );
    let mut cbind_input = header.into_bytes();
    if plus {
        cbind_input.extend(binding());
    }
    let (cbind_input, full, proof, expected) = match corruption {
        1 => (
            cbind_input,
            format!("{full}x"),
            proof.to_vec(),
            Err(SaslError::Malformed),
        ),
        2 => {
            let mut c = cbind_input;
            if let Some(last) = c.last_mut() {
                *last ^= 1;
            }
            (c, full, proof.to_vec(), Err(SaslError::ChannelBinding))
        }
        3 => (
            cbind_input,
            full,
            proof[..31].to_vec(),
            Err(SaslError::Malformed),
        ),
        _ => (cbind_input, full, proof.to_vec(), Ok(())),
    };
    let last = scram_client_final(&cbind_input, &full, &proof);
    let without_proof = last.rsplit_once(",p=").map_or("", |(w, _)| w);
    match (ex.step(&encode_base64(last.as_bytes())), expected) {
        (
            SaslStep::Request(SaslRequest::ScramFinal {
                username,
                auth_message,
                proof: p,
                ..
            }),
            Ok(()),
        ) => {
            assert_eq!(username, user);
            assert_eq!(
                auth_message,
                format!("{bare},{server_first},{without_proof}")
            );
            assert_eq!(p, proof);
        }
        (SaslStep::Failed(e), Err(expected)) => {
            assert_eq!(e, expected);
            return;
        }
        (other, expected) => panic!("SCRAM client-final: {other:?}, expected {expected:?}"),
    }
    let step = ex.answer(SaslAnswer::ScramVerified {
        server_signature: unbase64(SIGNATURE).unwrap_or_default(),
    });
    let server_final = encode_base64(format!("v={SIGNATURE}").as_bytes());
    assert!(matches!(&step, SaslStep::Challenge(c) if *c == server_final));
    assert!(matches!(ex.step(""), SaslStep::Authenticated));
}

fn oauth(u: &mut Input, authzid: Option<&str>, user: &str) {
    let n = gen_len(u, 40, 200);
    let token = gen_chars(u, n, b"abcXYZ019-._~+/= !", false);
    let host = if u.bool() {
        let n = gen_len(u, 16, MAX_FIELD_LEN);
        Some(gen_chars(u, n, b"abc.019-: ", false))
    } else {
        None
    };
    let port = if u.bool() { Some(u.u16()) } else { None };

    // `Bearer` may be followed by more than one space.
    let expected = token.trim_start_matches(' ');
    let (mut ex, step) = SaslExchange::start(
        Mechanism::XOAuth2,
        Some(&encode_xoauth2(user, &token)),
        SaslContext::default(),
    );
    let valid = valid_field(user) && valid_token(expected);
    match step {
        SaslStep::Request(SaslRequest::Token(t)) => {
            assert!(valid, "XOAUTH2 accepted bad fields");
            check_token(&t, Mechanism::XOAuth2);
            assert_eq!(t.user.as_deref(), Some(user));
            assert_eq!(t.token.expose(), expected);
            let step = ex.answer(SaslAnswer::TokenRefused {
                status: STATUS.to_owned(),
                reply: None,
            });
            assert!(matches!(step, SaslStep::Challenge(_)));
            assert!(matches!(ex.step(""), SaslStep::Refused(r) if r == Reply::AUTH_FAILED));
        }
        SaslStep::Failed(SaslError::Malformed) => assert!(!valid, "XOAUTH2 refused good fields"),
        other => panic!("XOAUTH2: {other:?}"),
    }

    let authzid = authzid.filter(|z| !z.is_empty());
    let (mut ex, step) = SaslExchange::start(
        Mechanism::OAuthBearer,
        Some(&encode_oauthbearer(authzid, &token, host.as_deref(), port)),
        SaslContext::default(),
    );
    let valid = authzid.is_none_or(valid_field)
        && valid_token(expected)
        && host
            .as_deref()
            .is_none_or(|h| !h.is_empty() && h.len() <= MAX_FIELD_LEN);
    match step {
        SaslStep::Request(SaslRequest::Token(t)) => {
            assert!(valid, "OAUTHBEARER accepted bad fields");
            check_token(&t, Mechanism::OAuthBearer);
            assert_eq!(t.user.as_deref(), authzid);
            assert_eq!(t.token.expose(), expected);
            assert_eq!(t.host, host);
            assert_eq!(t.port, port);
            assert!(matches!(
                ex.answer(SaslAnswer::Decision(Decision::Accept)),
                SaslStep::Authenticated
            ));
        }
        SaslStep::Failed(SaslError::Malformed) => {
            assert!(!valid, "OAUTHBEARER refused good fields");
        }
        other => panic!("OAUTHBEARER: {other:?}"),
    }
}
