//! The shared conformance suite (`smtp-conformance`) against this adapter's
//! `smtpd` entry. Run alone: `cargo test -p smtp-tokio --features cli --test conformance`.

fn main() -> std::process::ExitCode {
    smtp_conformance::main(&[("tokio", smtp_tokio::cli::smtpd)])
}
