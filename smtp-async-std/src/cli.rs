//! The `smtpd` server on smol or async-std (feature `cli`): the flags are
//! [`smtp_server::cli`]'s, shared with the other adapters.

use std::io;
use std::process::ExitCode;

use futures_lite::{StreamExt, future};
use smtp_server::cli::{CliHandler, Setup, exit_code};

use crate::Server;

/// Runs the server `setup` describes until SIGINT or SIGTERM, then shuts
/// down gracefully (grace: `setup.options.grace_period`). Logs one
/// `listening addr=…` line per bound address.
///
/// With the `smol` feature the sessions run on a smol executor with
/// `setup.threads` threads (`--threads`; default one per CPU), the calling
/// thread among them; with only `async-std`, on async-std's.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     match smtp_server::cli::Setup::from_env() {
///         Ok(setup) => smtp_async_std::cli::smtpd(setup),
///         Err(code) => code,
///     }
/// }
/// ```
pub fn smtpd(setup: Setup) -> ExitCode {
    exit_code(run(setup))
}

#[cfg(feature = "smol")]
fn run(setup: Setup) -> io::Result<()> {
    let ex = std::sync::Arc::new(smol::Executor::new());
    // Dropping `done` ends the worker threads.
    let (done, wait) = smol::channel::bounded::<()>(1);
    // The main thread runs the executor too: `threads - 1` more.
    let workers: Vec<_> = (1..setup.threads)
        .filter_map(|i| {
            let (ex, wait) = (ex.clone(), wait.clone());
            std::thread::Builder::new()
                .name(format!("smtpd-{i}"))
                .spawn(move || smol::block_on(ex.run(wait.recv())))
                .ok()
        })
        .collect();
    let result = smol::block_on(ex.run(serve(setup, |s| s.executor(ex.clone()))));
    drop(done);
    for w in workers {
        let _ = w.join();
    }
    result
}

#[cfg(not(feature = "smol"))]
fn run(setup: Setup) -> io::Result<()> {
    async_std::task::block_on(serve(setup, |s| s))
}

/// Builds the server from `setup` exactly like smtp-tokio's `smtpd`.
async fn serve(
    setup: Setup,
    tune: impl FnOnce(Server<CliHandler>) -> Server<CliHandler>,
) -> io::Result<()> {
    tune(Server::new(setup.handler))
        .serve_smtpd(setup.options, shutdown_signal())
        .await
}

/// Completes on SIGINT or SIGTERM (SIGINT only where there is no SIGTERM).
pub async fn shutdown_signal() {
    use async_signal::{Signal, Signals};
    #[cfg(unix)]
    let which = [Signal::Int, Signal::Term];
    #[cfg(not(unix))]
    let which = [Signal::Int];
    match Signals::new(which) {
        Ok(mut signals) => {
            let _ = signals.next().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for signals");
            future::pending::<()>().await;
        }
    }
}
