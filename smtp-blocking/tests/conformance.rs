//! The shared conformance suite (`smtp-conformance`) against this adapter's
//! `smtpd` entry. Run alone: `cargo test -p smtp-blocking --features cli --test conformance`.

fn main() -> std::process::ExitCode {
    smtp_conformance::main(&[("blocking", smtp_blocking::cli::smtpd)])
}
