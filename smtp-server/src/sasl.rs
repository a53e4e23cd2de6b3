//! SASL verification: the SCRAM-SHA-256 and CRAM-MD5 crypto and the user
//! store behind `smtpd --auth FILE`.
//!
//! [`smtp_proto::sasl`] parses the exchanges and has no crypto; this module
//! checks what they carry:
//!
//! - [`ScramKeys`]: one user's SCRAM-SHA-256 server keys (RFC 5802,
//!   RFC 7677), their PostgreSQL-style text form, proof verification
//!   ([`ScramKeys::verify`]) and a password check for PLAIN and LOGIN
//!   ([`ScramKeys::check_password`]).
//! - [`cram_md5_challenge`], [`cram_md5_digest`], [`cram_md5_verify`]:
//!   CRAM-MD5 (RFC 2195).
//! - [`random_nonce`]: a SCRAM server nonce.
//! - [`Users`]: the credential file, with a decoy for unknown users
//!   ([`Users::scram_keys_or_decoy`]) so SCRAM does not tell who exists.
//!
//! Passwords are used as their UTF-8 bytes: no SASLprep (RFC 4013)
//! normalisation is done, so a non-ASCII password must be typed in the same
//! Unicode normalisation form it was stored in.
//!
//! Every comparison of a secret value is constant-time.
//!
//! # Example: the RFC 7677 exchange
//!
//! ```
//! use base64::Engine as _;
//! use base64::engine::general_purpose::STANDARD;
//! use smtp_server::sasl::ScramKeys;
//!
//! let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
//! let keys = ScramKeys::derive("pencil", &salt, 4096);
//! let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
//!     r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
//!     c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
//! let proof = STANDARD.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
//! let server_signature = keys.verify(auth_message.as_bytes(), &proof).unwrap();
//! assert_eq!(
//!     STANDARD.encode(server_signature),
//!     "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
//! );
//! // The stored form keeps no password.
//! assert!(keys.to_string().starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
//! ```

use core::fmt;
use core::num::NonZeroU32;
use core::str::FromStr;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use md5::Md5;
use ring::rand::{SecureRandom as _, SystemRandom};
use smtp_proto::sasl::Secret;

/// The PBKDF2 iteration count of keys made by [`ScramKeys::generate`] (and of
/// the keys [`Users`] derives from plain passwords): RFC 7677's minimum.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length in bytes of generated salts.
const SALT_LEN: usize = 16;

/// The scheme prefix of the text form.
const SCHEME: &str = "SCRAM-SHA-256$";

/// One user's SCRAM-SHA-256 server-side keys (RFC 5802 §3, RFC 7677).
///
/// The password cannot be recovered from them, but they let a client
/// authenticate (whoever holds `stored_key` and a captured exchange can
/// recover the client key), so keep them as private as passwords.
///
/// The text form ([`FromStr`], [`Display`](fmt::Display)) is PostgreSQL's:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 with
/// padding. `Debug` shows only the iteration count and the salt length.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The PBKDF2 iteration count (`i`), at least 1.
    pub iterations: u32,
    /// The salt (`s`, sent base64-encoded in server-first-message).
    pub salt: Vec<u8>,
    /// `StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl ScramKeys {
    /// Derives the keys of `password` with `salt` and `iterations` (an
    /// `iterations` of 0 is taken as 1).
    ///
    /// `SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)`,
    /// then `StoredKey` and `ServerKey` as RFC 5802 §3 says. The password is
    /// used as its UTF-8 bytes: SASLprep is not applied.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramKeys {
            iterations: iterations.get(),
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Derives the keys of `password` with a fresh random 16-byte salt and
    /// [`DEFAULT_ITERATIONS`].
    ///
    /// # Panics
    ///
    /// If the system random number generator fails.
    pub fn generate(password: &str) -> ScramKeys {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        ScramKeys::derive(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Checks a client's proof (the decoded `p=` of client-final-message)
    /// over `auth_message` (client-first-message-bare `,`
    /// server-first-message `,` client-final-message-without-proof).
    ///
    /// Returns the `ServerSignature` to send back (base64, as `v=`) when the
    /// proof is right, `None` otherwise (also when it is not 32 bytes long).
    pub fn verify(&self, auth_message: &[u8], client_proof: &[u8]) -> Option<[u8; 32]> {
        let proof: &[u8; 32] = client_proof.try_into().ok()?;
        let client_signature = hmac_sha256(&self.stored_key, auth_message);
        let mut client_key = [0u8; 32];
        for ((key, p), s) in client_key.iter_mut().zip(proof).zip(&client_signature) {
            *key = p ^ s;
        }
        ct_eq(&sha256(&client_key), &self.stored_key)
            .then(|| hmac_sha256(&self.server_key, auth_message))
    }

    /// Whether `password` is the one these keys were derived from (derives
    /// with the same salt and iterations, then compares in constant time), so
    /// PLAIN and LOGIN work for a user known only by SCRAM keys.
    pub fn check_password(&self, password: &str) -> bool {
        let derived = ScramKeys::derive(password, &self.salt, self.iterations);
        ct_eq(&derived.stored_key, &self.stored_key)
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScramKeys {
    /// Writes the text form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl FromStr for ScramKeys {
    type Err = String;

    /// Parses the text form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (padded standard base64; at least one iteration, a non-empty salt,
    /// 32-byte keys). The error message never quotes the keys.
    fn from_str(s: &str) -> Result<ScramKeys, String> {
        const SHAPE: &str = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("SCRAM keys: {SHAPE}"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| format!("SCRAM keys: no `$` before the keys; {SHAPE}"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| format!("SCRAM keys: no `:` between iterations and salt; {SHAPE}"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or_else(|| {
            format!("SCRAM keys: no `:` between StoredKey and ServerKey; {SHAPE}")
        })?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| "SCRAM keys: the iteration count is not a number".to_owned())?;
        if iterations < 1 {
            return Err("SCRAM keys: the iteration count must be at least 1".to_owned());
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "SCRAM keys: the salt is not valid base64".to_owned())?;
        if salt.is_empty() {
            return Err("SCRAM keys: the salt is empty".to_owned());
        }
        Ok(ScramKeys {
            iterations,
            salt,
            stored_key: decode_key(stored_key, "StoredKey")?,
            server_key: decode_key(server_key, "ServerKey")?,
        })
    }
}

/// Decodes one base64 32-byte key of the text form.
fn decode_key(text: &str, name: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| format!("SCRAM keys: the {name} is not valid base64"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "SCRAM keys: the {name} is {} bytes long, not 32",
            bytes.len()
        )
    })
}

/// The CRAM-MD5 digest (RFC 2195): HMAC-MD5 keyed by `password` over
/// `challenge` (the text of the challenge, before base64). The client sends
/// it as 32 lowercase hexadecimal digits.
pub fn cram_md5_digest(password: &str, challenge: &str) -> [u8; 16] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(password.as_bytes()) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(challenge.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Whether `digest` (the 16 bytes, hex-decoded from the client's response)
/// is the CRAM-MD5 digest of `challenge` under `password`; constant-time.
pub fn cram_md5_verify(password: &str, challenge: &str, digest: &[u8]) -> bool {
    ct_eq(&cram_md5_digest(password, challenge), digest)
}

/// A fresh CRAM-MD5 challenge in RFC 2195's shape,
/// `<{random digits}.{unix seconds}@{hostname}>`, the random part from the
/// system random number generator.
///
/// # Panics
///
/// If the system random number generator fails.
pub fn cram_md5_challenge(hostname: &str) -> String {
    let mut random = [0u8; 8];
    fill_random(&mut random);
    let random = u64::from_le_bytes(random);
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("<{random}.{seconds}@{hostname}>")
}

/// Decoy SCRAM keys for an unknown `user`, the same for one name all
/// process long (a client asking twice sees the same salt), that no proof
/// verifies against: for handlers that know no keys of a user.
pub fn decoy_keys(user: &str) -> ScramKeys {
    static DECOYS: std::sync::OnceLock<Users> = std::sync::OnceLock::new();
    DECOYS
        .get_or_init(|| Users::from_passwords(std::iter::empty()))
        .scram_keys_or_decoy(user)
        .0
}

/// A fresh SCRAM server nonce: 18 random bytes from the system random number
/// generator, base64-encoded (24 printable characters, no comma).
///
/// # Panics
///
/// If the system random number generator fails.
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes);
    BASE64.encode(bytes)
}

/// One user of a [`Users`] store.
#[derive(Clone)]
struct Entry {
    /// The plain password, for `user:password` lines.
    password: Option<Secret<String>>,
    /// The SCRAM keys: given, or derived from the plain password at load.
    keys: ScramKeys,
}

impl Entry {
    /// An entry for a plain password, with SCRAM keys derived under a random salt.
    fn plain(password: &str) -> Entry {
        Entry {
            keys: ScramKeys::generate(password),
            password: Some(Secret::new(password.to_owned())),
        }
    }
}

/// The credential store of `smtpd --auth FILE`: user names to passwords or
/// SCRAM keys.
///
/// The file has one user a line, either `user:password` (a plain password:
/// every mechanism works, SCRAM keys are derived at load under a random
/// salt) or `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
/// (SCRAM keys only, see [`ScramKeys`]: PLAIN, LOGIN and SCRAM-SHA-256 work,
/// CRAM-MD5 cannot). The user name ends at the first `:`, so a password may
/// contain `:`, but a plain password cannot start with `SCRAM-SHA-256$`.
/// Blank lines and lines starting with `#` are skipped; a trailing `\r` is
/// trimmed.
///
/// `Debug` shows only the number of users.
#[derive(Clone)]
pub struct Users {
    /// The users by name.
    entries: HashMap<String, Entry>,
    /// The key the decoys of unknown users are derived under.
    decoy_secret: [u8; 32],
}

impl Users {
    /// An empty store with a fresh decoy secret.
    fn empty() -> Users {
        let mut decoy_secret = [0u8; 32];
        fill_random(&mut decoy_secret);
        Users {
            entries: HashMap::new(),
            decoy_secret,
        }
    }

    /// Parses the text of a credential file; `origin` (its path) names it in
    /// errors, which read `<origin>:<line>: <what is wrong>`.
    ///
    /// A line without `:`, an empty user name, a user named twice, an empty
    /// password or a malformed `SCRAM-SHA-256$…` value is an error.
    ///
    /// # Panics
    ///
    /// If the system random number generator fails.
    pub fn parse(text: &str, origin: &str) -> Result<Users, String> {
        let mut users = Users::empty();
        for (index, line) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, secret)) = line.split_once(':') else {
                return Err(format!(
                    "{origin}:{number}: expected `user:password` or `user:SCRAM-SHA-256$…`, found no `:`"
                ));
            };
            if user.is_empty() {
                return Err(format!("{origin}:{number}: empty user name"));
            }
            if users.entries.contains_key(user) {
                return Err(format!(
                    "{origin}:{number}: user `{user}` is already defined"
                ));
            }
            let entry = if secret.starts_with(SCHEME) {
                Entry {
                    password: None,
                    keys: secret
                        .parse()
                        .map_err(|e| format!("{origin}:{number}: {e}"))?,
                }
            } else if secret.is_empty() {
                return Err(format!(
                    "{origin}:{number}: empty password for user `{user}`"
                ));
            } else {
                Entry::plain(secret)
            };
            users.entries.insert(user.to_owned(), entry);
        }
        Ok(users)
    }

    /// A store of plain passwords (SCRAM keys derived under random salts); a
    /// user named twice keeps the last password.
    ///
    /// # Panics
    ///
    /// If the system random number generator fails.
    pub fn from_passwords(users: impl IntoIterator<Item = (String, String)>) -> Users {
        let mut store = Users::empty();
        for (user, password) in users {
            let entry = Entry::plain(&password);
            store.entries.insert(user, entry);
        }
        store
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `password` is `user`'s (for PLAIN and LOGIN).
    ///
    /// Every case spends about the same work, so the time taken does not tell
    /// which users exist: a plain entry is compared in constant time *and*
    /// checked against its derived SCRAM keys, a SCRAM entry derives and
    /// compares, and an unknown user derives against a decoy, then fails.
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        match self.entries.get(user) {
            Some(Entry {
                password: Some(plain),
                keys,
            }) => {
                let same = ct_eq(
                    &sha256(plain.expose().as_bytes()),
                    &sha256(password.as_bytes()),
                );
                same & keys.check_password(password)
            }
            Some(Entry {
                password: None,
                keys,
            }) => keys.check_password(password),
            None => {
                let _ = core::hint::black_box(self.decoy(user).check_password(password));
                false
            }
        }
    }

    /// `user`'s SCRAM keys, `None` for an unknown user (see
    /// [`scram_keys_or_decoy`](Users::scram_keys_or_decoy) to answer SCRAM
    /// without telling).
    pub fn scram_keys(&self, user: &str) -> Option<&ScramKeys> {
        self.entries.get(user).map(|entry| &entry.keys)
    }

    /// `user`'s SCRAM keys and `true`, or for an unknown user a decoy and
    /// `false`.
    ///
    /// The decoy lets the exchange go on as for a real user, so
    /// server-first-message does not tell that the user does not exist: it is
    /// the same for every call with the same name on this store (its salt is
    /// derived from the name and a secret of this store, its iteration count
    /// is [`DEFAULT_ITERATIONS`]), and its keys are pseudo-random, so no
    /// proof verifies against them. Fail the exchange at the end, as for a
    /// wrong password.
    pub fn scram_keys_or_decoy(&self, user: &str) -> (ScramKeys, bool) {
        match self.entries.get(user) {
            Some(entry) => (entry.keys.clone(), true),
            None => (self.decoy(user), false),
        }
    }

    /// The decoy keys of an unknown `user`.
    fn decoy(&self, user: &str) -> ScramKeys {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.decoy_secret);
        let derive = |label: &[u8]| {
            let mut context = ring::hmac::Context::with_key(&key);
            context.update(label);
            context.update(user.as_bytes());
            to_array(context.sign().as_ref())
        };
        ScramKeys {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"salt\0")[..SALT_LEN].to_vec(),
            stored_key: derive(b"stored-key\0"),
            server_key: derive(b"server-key\0"),
        }
    }

    /// `user`'s plain password, `None` for an unknown user or one known only
    /// by SCRAM keys.
    pub fn password(&self, user: &str) -> Option<&Secret<String>> {
        self.entries.get(user)?.password.as_ref()
    }

    /// Whether every user has a plain password, that is whether CRAM-MD5 can
    /// work for everyone (true for an empty store).
    pub fn all_have_passwords(&self) -> bool {
        self.entries.values().all(|entry| entry.password.is_some())
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA-256 of `data` under `key`.
fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    to_array(ring::hmac::sign(&key, data).as_ref())
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    to_array(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// The first 32 bytes of a SHA-256 output (all of it).
fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// Fills `buf` from the system random number generator.
fn fill_random(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed");
}

/// Compares two byte strings in time that depends only on their lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    core::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST_BARE: &str = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL_WITHOUT_PROOF: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn auth_message() -> String {
        format!("{CLIENT_FIRST_BARE},{SERVER_FIRST},{CLIENT_FINAL_WITHOUT_PROOF}")
    }

    fn pencil() -> ScramKeys {
        ScramKeys::derive("pencil", &BASE64.decode(SALT).unwrap(), 4096)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc7677_example_verifies() {
        let keys = pencil();
        let proof = BASE64.decode(PROOF).unwrap();
        let signature = keys.verify(auth_message().as_bytes(), &proof).unwrap();
        assert_eq!(BASE64.encode(signature), SERVER_SIGNATURE);
    }

    #[test]
    fn rfc7677_wrong_proofs_fail() {
        let keys = pencil();
        let auth = auth_message();
        let proof = BASE64.decode(PROOF).unwrap();
        for bit in [0, 7, 100, 255] {
            let mut flipped = proof.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(keys.verify(auth.as_bytes(), &flipped), None, "bit {bit}");
        }
        assert_eq!(keys.verify(auth.as_bytes(), &proof[..31]), None);
        assert_eq!(
            keys.verify(auth.as_bytes(), &[proof.as_slice(), &[0]].concat()),
            None
        );
        assert_eq!(keys.verify(auth.as_bytes(), &[]), None);
        // The right proof over another message.
        assert_eq!(keys.verify(b"n=user,r=other", &proof), None);
    }

    #[test]
    fn scram_check_password() {
        let keys = pencil();
        assert!(keys.check_password("pencil"));
        assert!(!keys.check_password("pencil "));
        assert!(!keys.check_password("Pencil"));
        assert!(!keys.check_password(""));
    }

    #[test]
    fn zero_iterations_are_one() {
        let keys = ScramKeys::derive("p", b"salt", 0);
        assert_eq!(keys.iterations, 1);
        assert_eq!(keys, ScramKeys::derive("p", b"salt", 1));
        assert_eq!(keys.to_string().parse::<ScramKeys>().unwrap(), keys);
    }

    #[test]
    fn rfc2195_example() {
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        let digest = cram_md5_digest("tanstaaftanstaaf", challenge);
        assert_eq!(hex(&digest), "b913a602c7eda7a495b4e6e7334d3890");
        assert!(cram_md5_verify("tanstaaftanstaaf", challenge, &digest));
        assert!(!cram_md5_verify("tanstaaftanstaaF", challenge, &digest));
        assert!(!cram_md5_verify(
            "tanstaaftanstaaf",
            challenge,
            &digest[..15]
        ));
        let mut wrong = digest;
        wrong[15] ^= 1;
        assert!(!cram_md5_verify("tanstaaftanstaaf", challenge, &wrong));
        // The hex text itself is not the digest.
        assert!(!cram_md5_verify(
            "tanstaaftanstaaf",
            challenge,
            hex(&digest).as_bytes()
        ));
    }

    #[test]
    fn cram_md5_challenge_shape() {
        let challenge = cram_md5_challenge("mx.example");
        let inner = challenge
            .strip_prefix('<')
            .and_then(|c| c.strip_suffix("@mx.example>"))
            .unwrap();
        let (random, seconds) = inner.split_once('.').unwrap();
        assert!(!random.is_empty() && random.bytes().all(|b| b.is_ascii_digit()));
        assert!(seconds.parse::<u64>().unwrap() > 1_600_000_000);
        assert_ne!(challenge, cram_md5_challenge("mx.example"));
    }

    #[test]
    fn nonces_are_printable_and_fresh() {
        let nonce = random_nonce();
        assert_eq!(nonce.len(), 24);
        assert!(nonce.bytes().all(|b| b.is_ascii_graphic() && b != b','));
        assert_eq!(BASE64.decode(&nonce).unwrap().len(), 18);
        assert_ne!(nonce, random_nonce());
    }

    #[test]
    fn text_form_round_trip() {
        let keys = pencil();
        let text = keys.to_string();
        // StoredKey and ServerKey as Python's hashlib and hmac compute them.
        assert_eq!(
            text,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert_eq!(text.parse::<ScramKeys>().unwrap(), keys);

        let generated = ScramKeys::generate("secret");
        assert_eq!(generated.iterations, DEFAULT_ITERATIONS);
        assert_eq!(generated.salt.len(), 16);
        assert_ne!(generated.salt, ScramKeys::generate("secret").salt);
        let parsed: ScramKeys = generated.to_string().parse().unwrap();
        assert_eq!(parsed, generated);
        assert!(parsed.check_password("secret"));
    }

    #[test]
    fn bad_text_forms_are_rejected() {
        let good = pencil().to_string();
        let key = BASE64.encode([7u8; 32]);
        let short = BASE64.encode([7u8; 31]);
        let bad = [
            String::new(),
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
            good.to_lowercase(),
            good.replacen("4096", "0", 1),
            good.replacen("4096", "-1", 1),
            good.replacen("4096", "", 1),
            good.replacen("4096", "4294967296", 1),
            good.replacen(SALT, "", 1),
            good.replacen(SALT, "not base64!", 1),
            good.replacen(SALT, "W22ZaJ0SNY7soEsUEjb6gQ", 1),
            format!("SCRAM-SHA-256$4096:{SALT}${key}"),
            format!("SCRAM-SHA-256$4096:{SALT}:{key}:{key}"),
            format!("SCRAM-SHA-256$4096{SALT}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{SALT}${short}:{key}"),
            format!("SCRAM-SHA-256$4096:{SALT}${key}:{short}"),
            format!("SCRAM-SHA-256$4096:{SALT}${key}:{key}="),
            format!("SCRAM-SHA-256$4096:{SALT}${key}:{key}$"),
        ];
        for text in bad {
            let err = text.parse::<ScramKeys>().unwrap_err();
            assert!(err.starts_with("SCRAM keys: "), "{text}: {err}");
            assert!(!err.contains(&key), "{err}");
        }
        let err = format!("SCRAM-SHA-256$4096:{SALT}${short}:{key}")
            .parse::<ScramKeys>()
            .unwrap_err();
        assert_eq!(err, "SCRAM keys: the StoredKey is 31 bytes long, not 32");
        let err = good
            .replacen("4096", "0", 1)
            .parse::<ScramKeys>()
            .unwrap_err();
        assert_eq!(err, "SCRAM keys: the iteration count must be at least 1");
    }

    #[test]
    fn users_parse_plain_and_scram() {
        let scram = ScramKeys::derive("pencil", b"salty", 16);
        let text = format!(
            "# test users\r\n\nalice:wonder:land\r\n   \n  # indented comment\nuser:{scram}\n\n"
        );
        let users = Users::parse(&text, "users.txt").unwrap();
        assert_eq!(users.len(), 2);
        assert!(!users.is_empty());

        assert_eq!(users.password("alice").unwrap().expose(), "wonder:land");
        assert!(users.check_password("alice", "wonder:land"));
        assert!(!users.check_password("alice", "wonder:land\r"));
        assert!(!users.check_password("alice", "wonder"));
        let alice = users.scram_keys("alice").unwrap();
        assert_eq!(alice.iterations, DEFAULT_ITERATIONS);
        assert!(alice.check_password("wonder:land"));

        assert!(users.password("user").is_none());
        assert_eq!(users.scram_keys("user"), Some(&scram));
        assert!(users.check_password("user", "pencil"));
        assert!(!users.check_password("user", "pen"));

        assert!(users.password("bob").is_none());
        assert!(users.scram_keys("bob").is_none());
        assert!(!users.check_password("bob", "pencil"));
        assert!(!users.check_password("bob", ""));

        assert!(!users.all_have_passwords());
        let plain = Users::parse("a:1\nb:2\n", "f").unwrap();
        assert!(plain.all_have_passwords());
        assert!(plain.check_password("b", "2"));
        assert!(!plain.check_password("a", "2"));
    }

    #[test]
    fn users_parse_empty() {
        let users = Users::parse("\n# nobody\r\n", "f").unwrap();
        assert!(users.is_empty());
        assert_eq!(users.len(), 0);
        assert!(users.all_have_passwords());
        assert!(!users.check_password("", ""));
    }

    #[test]
    fn users_parse_errors() {
        let cases = [
            ("a:1\n\n# c\nno colon here\n", "users.txt:4: expected"),
            ("a:1\r\nb\r\n", "users.txt:2: expected"),
            (":pw\n", "users.txt:1: empty user name"),
            ("a:1\na:2\n", "users.txt:2: user `a` is already defined"),
            ("a:\n", "users.txt:1: empty password for user `a`"),
            ("a:SCRAM-SHA-256$0:AAAA$x:y\n", "users.txt:1: SCRAM keys: "),
            ("a:SCRAM-SHA-256$\n", "users.txt:1: SCRAM keys: "),
        ];
        for (text, expected) in cases {
            let err = Users::parse(text, "users.txt").unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn from_passwords() {
        let users = Users::from_passwords([
            ("tim".to_owned(), "tanstaaftanstaaf".to_owned()),
            ("ann".to_owned(), "first".to_owned()),
            ("ann".to_owned(), "second".to_owned()),
        ]);
        assert_eq!(users.len(), 2);
        assert!(users.all_have_passwords());
        assert!(users.check_password("tim", "tanstaaftanstaaf"));
        assert!(users.check_password("ann", "second"));
        assert!(!users.check_password("ann", "first"));
        let tim = users.password("tim").unwrap().expose();
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            hex(&cram_md5_digest(tim, challenge)),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
    }

    #[test]
    fn decoys_are_stable_and_never_verify() {
        let scram = ScramKeys::derive("pencil", b"salty", 16);
        let users = Users::parse(&format!("user:{scram}\n"), "f").unwrap();

        let (keys, known) = users.scram_keys_or_decoy("user");
        assert!(known);
        assert_eq!(keys, scram);

        let (decoy, known) = users.scram_keys_or_decoy("nobody");
        assert!(!known);
        assert_eq!(decoy.iterations, DEFAULT_ITERATIONS);
        assert_eq!(decoy.salt.len(), 16);
        assert_eq!(users.scram_keys_or_decoy("nobody").0, decoy);
        let (other, _) = users.scram_keys_or_decoy("nobody2");
        assert_ne!(other.salt, decoy.salt);
        assert_ne!(other.stored_key, decoy.stored_key);
        // Another store's decoys differ (a secret of each store).
        let again = Users::parse(&format!("user:{scram}\n"), "f").unwrap();
        assert_ne!(again.scram_keys_or_decoy("nobody").0.salt, decoy.salt);

        let auth = auth_message();
        assert_eq!(decoy.verify(auth.as_bytes(), &[0; 32]), None);
        assert_eq!(
            decoy.verify(auth.as_bytes(), &BASE64.decode(PROOF).unwrap()),
            None
        );
        assert_eq!(decoy.verify(auth.as_bytes(), &decoy.stored_key), None);
        assert_eq!(decoy.verify(auth.as_bytes(), &decoy.server_key), None);
        assert!(!decoy.check_password(""));
    }

    #[test]
    fn debug_is_redacted() {
        let keys = pencil();
        let shown = format!("{keys:?}");
        assert_eq!(shown, "ScramKeys { iterations: 4096, salt_len: 16, .. }");

        let users = Users::parse(&format!("alice:hunter2\nbob:{keys}\n"), "f").unwrap();
        let shown = format!("{users:?}");
        assert_eq!(shown, "Users { users: 2, .. }");
        let shown = format!("{:?}", users.password("alice").unwrap());
        assert!(!shown.contains("hunter2"));
    }
}
