//! `smtpd` on threads: a debugging SMTP server (prints messages), or a
//! Maildir/mbox server. The flags are [`smtp_server::cli`]'s:
//!
//! ```text
//! cargo run -p smtp-blocking --features cli --example smtpd -- --maildir ./mail
//! ```

fn main() -> std::process::ExitCode {
    match smtp_server::cli::Setup::from_env() {
        Ok(setup) => smtp_blocking::cli::smtpd(setup),
        Err(code) => code,
    }
}
