//! The `smtpd` server on threads (feature `cli`): the flags are
//! [`smtp_server::cli`]'s, shared with the other adapters.

use std::process::ExitCode;

use smtp_server::cli::{Setup, exit_code, log_listening};

use crate::{Server, ShutdownHandle};

/// Runs the server `setup` describes until SIGINT or SIGTERM, then shuts
/// down gracefully (`setup.options.grace_period`). Logs one `listening addr=…` line
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
        let signals = on_signal(server.shutdown_handle())?;
        let res = server.run();
        signals.stop();
        res
    });
    exit_code(result)
}

/// A thread that calls [`ShutdownHandle::shutdown`] on SIGINT or SIGTERM.
struct SignalWatch {
    #[cfg(unix)]
    handle: signal_hook::iterator::Handle,
    #[cfg(unix)]
    thread: std::thread::JoinHandle<()>,
}

impl SignalWatch {
    /// Stops watching (the signals' actions are unregistered).
    fn stop(self) {
        #[cfg(unix)]
        {
            self.handle.close();
            let _ = self.thread.join();
        }
    }
}

#[cfg(unix)]
fn on_signal(stop: ShutdownHandle) -> std::io::Result<SignalWatch> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("smtpd-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping");
                stop.shutdown();
            }
        })?;
    Ok(SignalWatch { handle, thread })
}

#[cfg(not(unix))]
fn on_signal(_stop: ShutdownHandle) -> std::io::Result<SignalWatch> {
    Ok(SignalWatch {})
}
