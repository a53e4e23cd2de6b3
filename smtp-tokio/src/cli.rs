//! The `smtpd` server on tokio (feature `cli`): the flags are
//! [`smtp_server::cli`]'s, shared with the other adapters.

use std::process::ExitCode;

use smtp_server::cli::{Setup, exit_code};

use crate::Server;

/// Runs the server `setup` describes on a tokio runtime with
/// `setup.threads` workers (a current-thread runtime for 1) until SIGINT
/// or SIGTERM, then shuts down gracefully. Logs one `listening addr=…`
/// line per bound address.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     match smtp_server::cli::Setup::from_env() {
///         Ok(setup) => smtp_tokio::cli::smtpd(setup),
///         Err(code) => code,
///     }
/// }
/// ```
pub fn smtpd(setup: Setup) -> ExitCode {
    let mut builder = if setup.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(setup.threads.max(1));
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("smtpd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        runtime.block_on(Server::new(setup.handler).serve_smtpd(setup.options, shutdown_signal()));
    exit_code(result)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
