//! The `smtpd` server on threads (feature `cli`): the flags are
//! [`smtp_server::cli`]'s, shared with the other adapters.

use std::process::ExitCode;

use smtp_server::cli::{Setup, SignalWatch, exit_code, log_listening};

use crate::{Server, ShutdownHandle};

/// Runs the server `setup` describes until SIGINT or SIGTERM, then shuts
/// down gracefully (`setup.options.grace_period`); reloads on SIGHUP. Logs one `listening addr=…` line
/// per bound address. Keeps no global state: it can run again in the same
/// process (e.g. a test binary that re-executes itself).
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     match smtp_server::cli::Setup::from_env() {
///         Ok(setup) => smtp_blocking::cli::smtpd(setup),
///         Err(code) => code,
///     }
/// }
/// ```
pub fn smtpd(setup: Setup) -> ExitCode {
    let server = Server::new(setup.handler).options(setup.options);
    let result = server.bind().and_then(|server| {
        log_listening(server.local_addrs());
        let _signals = on_signal(server.shutdown_handle())?;
        server.run()
    });
    exit_code(result)
}

/// Threads that stop the server on SIGINT or SIGTERM and reload it on
/// SIGHUP ([`ShutdownHandle::reload`], also for a SIGHUP during start-up).
#[cfg(unix)]
fn on_signal(server: ShutdownHandle) -> std::io::Result<(SignalWatch, Option<SignalWatch>)> {
    use smtp_server::cli::{SIGINT, SIGTERM};
    let reloads = {
        let server = server.clone();
        SignalWatch::reload_on_hangup(move || {
            let _ = server.reload();
        })
    };
    let stops = SignalWatch::new(&[SIGINT, SIGTERM], move |sig| {
        tracing::info!(signal = sig, "stopping");
        server.shutdown();
        false
    })?;
    Ok((stops, reloads))
}

#[cfg(not(unix))]
fn on_signal(_server: ShutdownHandle) -> std::io::Result<Option<SignalWatch>> {
    Ok(None)
}
