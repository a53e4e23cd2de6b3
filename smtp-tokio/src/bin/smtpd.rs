//! `smtpd`: a debugging SMTP server (prints messages), or a Maildir/mbox server.
//!
//! Run `smtpd --help` for the flags (shared with the other adapters'
//! examples: [`smtp_server::cli`]).

fn main() -> std::process::ExitCode {
    match smtp_server::cli::Setup::from_env() {
        Ok(setup) => smtp_tokio::cli::smtpd(setup),
        Err(code) => code,
    }
}
