//! The `smtpd` server on tokio (feature `cli`): the flags are
//! [`smtp_proto::cli`]'s, shared with the other adapters.

use std::process::ExitCode;
use std::sync::Arc;

use smtp_proto::cli::{Setup, log_listening};

use crate::Server;

/// Runs the server `setup` describes on a multi-threaded tokio runtime
/// until SIGINT or SIGTERM, then shuts down gracefully. Logs one
/// `listening addr=…` line per bound address.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     match smtp_proto::cli::Setup::from_env() {
///         Ok(setup) => smtp_tokio::cli::smtpd(setup),
///         Err(code) => code,
///     }
/// }
/// ```
pub fn smtpd(setup: Setup) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("smtpd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut server = Server::new(setup.handler)
            .config(Arc::new(setup.config))
            .grace_period(setup.grace_period)
            .shutdown_signal(shutdown_signal());
        for a in setup.listen {
            server = server.listen(a);
        }
        for a in setup.listen_tls {
            server = server.listen_tls(a);
        }
        #[cfg(unix)]
        for p in setup.listen_unix {
            server = server.listen_unix(p);
        }
        if let Some(t) = setup.tls {
            server = server.tls(t);
        }
        if let Some(n) = setup.max_connections {
            server = server.max_connections(n);
        }
        if let Some(n) = setup.max_connections_per_ip {
            server = server.max_connections_per_ip(n);
        }
        let server = server.bind().await?;
        log_listening(server.local_addrs());
        server.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("smtpd: {e}");
            ExitCode::FAILURE
        }
    }
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
