//! The shared conformance suite (`smtp-conformance`) against this crate's
//! `smtpd` entry, on the runtime the features select. Run alone:
//! `cargo test -p smtp-async-std --features cli --test conformance`.

fn main() -> std::process::ExitCode {
    #[cfg(feature = "smol")]
    let variant = "smol";
    #[cfg(not(feature = "smol"))]
    let variant = "async-std";
    smtp_conformance::main(&[(variant, smtp_async_std::cli::smtpd)])
}
