//! SASL mechanisms (issue 15, part 2) with real clients: GNU SASL's
//! `gsasl` for SCRAM-SHA-256, SCRAM-SHA-256-PLUS (tls-exporter under TLS
//! 1.3), CRAM-MD5, PLAIN and LOGIN; curl for XOAUTH2 and OAUTHBEARER.

use std::process::Command;

use crate::cases::{p, tls_server, tmp};
use crate::support::{Ctx, cases, have};

cases!(
    sasl_gsasl_every_password_mechanism,
    sasl_gsasl_scram_keys_from_its_own_mkpasswd,
    sasl_gsasl_scram_plus_binds_tls13,
    sasl_curl_oauth_bearer_tokens,
);

/// Runs a client to the end, off the async runtime; whether it succeeded,
/// and what it printed.
async fn run(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the client");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("join")
}

/// `gsasl` authenticating to `addr` with `mechanism` (STARTTLS when
/// `ca` is given, trusting nothing else; plaintext otherwise).
fn gsasl(addr: std::net::SocketAddr, mechanism: &str, pass: &str, ca: Option<&str>) -> Command {
    let mut c = Command::new("gsasl");
    c.args(["--smtp", "--connect", &addr.to_string(), "-m", mechanism])
        .args(["-a", "bob", "-p", pass, "--verbose"]);
    match ca {
        // "" = do not fail on the test certificate's name.
        Some(_) => c.args(["--starttls", "--x509-ca-file", ""]),
        None => c.arg("--no-starttls"),
    };
    c
}

/// Every password mechanism against a plain `user:password` file; a wrong
/// password fails each.
async fn sasl_gsasl_every_password_mechanism(ctx: Ctx) {
    if !have("gsasl") {
        return;
    }
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, "bob:s3cret\n").expect("users");
    let d = ctx.spawn([
        "--sink",
        "--auth",
        p(&users),
        "--auth-insecure",
        "--auth-mechanisms",
        "PLAIN,LOGIN,SCRAM-SHA-256,CRAM-MD5",
        "--max-auth-failures",
        "0",
    ]);
    let mut c = d.greeted().await;
    let ehlo = c.expect("EHLO x\r\n", "250").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5\r\n"),
        "{ehlo}"
    );
    c.expect("QUIT\r\n", "221").await;
    for m in ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"] {
        let (ok, log) = run(gsasl(d.addr(), m, "s3cret", None)).await;
        assert!(ok, "{m}:\n{log}");
        // "server trusted": for SCRAM, gsasl checked our server signature.
        assert!(
            log.contains("Client authentication finished"),
            "{m}:\n{log}"
        );
        let (ok, log) = run(gsasl(d.addr(), m, "wrong", None)).await;
        assert!(
            !ok && log.contains("535 5.7.8"),
            "{m} with a wrong password:\n{log}"
        );
    }
}

/// SCRAM keys made by another implementation (`gsasl --mkpasswd`) in the
/// `--auth` file: no password is stored, SCRAM and PLAIN still work.
async fn sasl_gsasl_scram_keys_from_its_own_mkpasswd(ctx: Ctx) {
    if !have("gsasl") {
        return;
    }
    let mut mk = Command::new("gsasl");
    mk.args([
        "--mkpasswd",
        "-m",
        "SCRAM-SHA-256",
        "-p",
        "s3cret",
        "--iteration-count",
        "4096",
    ]);
    let (ok, out) = run(mk).await;
    assert!(ok, "{out}");
    // {SCRAM-SHA-256}count,salt,stored,server → SCRAM-SHA-256$count:salt$stored:server
    let fields: Vec<&str> = out
        .trim()
        .trim_start_matches("{SCRAM-SHA-256}")
        .split(',')
        .collect();
    assert_eq!(fields.len(), 4, "{out}");
    let line = format!(
        "bob:SCRAM-SHA-256${}:{}${}:{}\n",
        fields[0], fields[1], fields[2], fields[3]
    );
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, line).expect("users");
    let d = ctx.spawn([
        "--sink",
        "--auth",
        p(&users),
        "--auth-insecure",
        "--max-auth-failures",
        "0",
    ]);
    for m in ["SCRAM-SHA-256", "PLAIN"] {
        let (ok, log) = run(gsasl(d.addr(), m, "s3cret", None)).await;
        assert!(ok, "{m}:\n{log}");
    }
    let (ok, log) = run(gsasl(d.addr(), "SCRAM-SHA-256", "wrong", None)).await;
    assert!(!ok, "{log}");
}

/// SCRAM-SHA-256-PLUS is offered inside TLS 1.3 only, and binds the
/// exchange to the connection (tls-exporter, RFC 9266).
async fn sasl_gsasl_scram_plus_binds_tls13(ctx: Ctx) {
    if !have("gsasl") {
        return;
    }
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, "bob:s3cret\n").expect("users");
    let (d, _cert) = tls_server(&ctx, dir.path(), &["--sink", "--auth", p(&users)]);
    // Not offered before TLS (nor is AUTH at all).
    let mut c = d.greeted().await;
    let ehlo = c.expect("EHLO x\r\n", "250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    c.expect("QUIT\r\n", "221").await;
    let (ok, log) = run(gsasl(d.addr(), "SCRAM-SHA-256-PLUS", "s3cret", Some(""))).await;
    assert!(ok, "{log}");
    assert!(log.contains("AUTH SCRAM-SHA-256-PLUS"), "{log}");
    let (ok, log) = run(gsasl(d.addr(), "SCRAM-SHA-256-PLUS", "wrong", Some(""))).await;
    assert!(!ok, "{log}");
}

/// curl's `--oauth2-bearer`: XOAUTH2 and OAUTHBEARER with a token from
/// `--oauth-tokens`; a bad token gets the JSON error and `535 5.7.8`.
async fn sasl_curl_oauth_bearer_tokens(ctx: Ctx) {
    if !have("curl") {
        return;
    }
    let dir = tmp();
    let users = dir.path().join("users");
    std::fs::write(&users, "bob:s3cret\n").expect("users");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "bob:ya29.token-for-bob\n").expect("tokens");
    let body = dir.path().join("body");
    std::fs::write(&body, "Subject: oauth\r\n\r\nhi\r\n").expect("body");
    for mech in ["XOAUTH2", "OAUTHBEARER"] {
        let d = ctx.spawn([
            "--sink",
            "--auth",
            p(&users),
            "--auth-insecure",
            "--oauth-tokens",
            p(&tokens),
            "--auth-mechanisms",
            mech,
            "--max-auth-failures",
            "0",
        ]);
        for token in ["ya29.token-for-bob", "forged"] {
            let mut curl = Command::new("curl");
            curl.args(["-sv", "--url", &format!("smtp://{}", d.addr())])
                .args(["--login-options", &format!("AUTH={mech}")])
                .args(["--user", "bob", "--oauth2-bearer", token])
                .args(["--mail-from", "a@x.example", "--mail-rcpt", "b@y.example"])
                .args(["-T", p(&body)]);
            let (_, log) = run(curl).await;
            assert!(log.contains(&format!("> AUTH {mech}")), "{mech}:\n{log}");
            if token == "forged" {
                // The RFC 7628 error: base64 of the JSON status, in a 334
                // (curl gives up there for XOAUTH2, and answers it for
                // OAUTHBEARER, which then gets the 535).
                assert!(
                    log.contains("< 334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIi"),
                    "{log}"
                );
                assert!(!log.contains("< 235"), "{log}");
                if mech == "OAUTHBEARER" {
                    assert!(log.contains("< 535 5.7.8"), "{log}");
                }
            } else {
                assert!(log.contains("< 235 2.7.0"), "{mech}:\n{log}");
                assert!(log.contains("< 250 2.0.0"), "{mech}: delivered\n{log}");
            }
        }
    }
}
