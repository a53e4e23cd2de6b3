//! One conformance suite, written once and run against every adapter.
//!
//! Each adapter has a test target with `harness = false` whose `main` is
//! one call to [`main`], naming the adapter's `smtpd` entry (the function its
//! `smtpd` binary or example runs). The test binary then plays two roles:
//!
//! - run normally, it is a test harness (libtest-compatible flags and
//!   output) whose cases start **the test binary itself** as the server
//!   under test, with `smtpd` flags, on 127.0.0.1 with OS-picked ports;
//! - started with the environment variable [`SERVE_ENV`], it is that
//!   server: it parses the flags with [`smtp_server::cli::Setup::from_env`]
//!   and calls the adapter's entry.
//!
//! So every case drives a real process through the same flags a user
//! would type: transcripts, real clients (lettre, curl, Python smtplib),
//! STARTTLS and implicit TLS, attacks (smuggling, injection, floods,
//! traversal), limits, graceful shutdown by SIGTERM, and durability under
//! SIGKILL. A divergence between adapters shows up as the same case failing
//! on one of them.
//!
//! ```no_run
//! // smtp-tokio/tests/conformance.rs (harness = false)
//! fn main() -> std::process::ExitCode {
//!     smtp_conformance::main(&[("tokio", smtp_tokio_entry)])
//! }
//! # fn smtp_tokio_entry(_: smtp_server::cli::Setup) -> std::process::ExitCode { todo!() }
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod activation;
mod cases;
mod dovecot;
mod forward;
mod hardening_core;
mod hardening_net;
mod hardening_ops;
mod hardening_relay;
mod hardening_store;
mod metrics;
mod operations;
mod rate;
mod sasl;
mod streaming;
mod support;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};
use smtp_server::cli::Setup;

pub use support::{Client, Ctx, Smtpd, TestCert, all_files, delivered};

/// An adapter's `smtpd` entry: runs the server a [`Setup`] describes until
/// SIGINT/SIGTERM.
pub type Serve = fn(Setup) -> ExitCode;

/// When set (to a variant name), the test binary is the server under test.
pub const SERVE_ENV: &str = "SMTP_CONFORMANCE_SERVE";

/// The entry point of an adapter's conformance test binary: serves when
/// [`SERVE_ENV`] names one of `variants`, runs the suite against each
/// variant otherwise (test names are prefixed with the variant's name).
pub fn main(variants: &[(&'static str, Serve)]) -> ExitCode {
    if let Ok(name) = std::env::var(SERVE_ENV) {
        let Some((_, serve)) = variants.iter().find(|(n, _)| *n == name) else {
            return ExitCode::from(3);
        };
        return match Setup::from_env() {
            Ok(setup) => serve(setup),
            Err(code) => code,
        };
    }
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (variant, _) in variants {
        let all = cases::ALL
            .iter()
            .chain(activation::ALL)
            .chain(hardening_core::ALL)
            .chain(hardening_net::ALL)
            .chain(hardening_ops::ALL)
            .chain(hardening_relay::ALL)
            .chain(hardening_store::ALL)
            .chain(streaming::ALL)
            .chain(rate::ALL)
            .chain(forward::ALL)
            .chain(sasl::ALL)
            .chain(operations::ALL)
            .chain(metrics::ALL)
            .chain(dovecot::ALL);
        for (name, case) in all {
            let ctx = Ctx::new(variant);
            trials.push(Trial::test(format!("{variant}::{name}"), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(case(ctx));
                Ok(())
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}
