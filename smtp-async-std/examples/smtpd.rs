//! `smtpd` on smol (or async-std): a debugging SMTP server (prints
//! messages), or a Maildir/mbox server. The flags are [`smtp_server::cli`]'s.

fn main() -> std::process::ExitCode {
    match smtp_server::cli::Setup::from_env() {
        Ok(setup) => smtp_async_std::cli::smtpd(setup),
        Err(code) => code,
    }
}
