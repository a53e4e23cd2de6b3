//! `smtpd`: a debugging SMTP server (prints messages), or a Maildir/mbox server.
//!
//! Run `smtpd --help` for the flags (shared with the other adapters'
//! examples: [`smtp_proto::cli`]).

use std::process::ExitCode;
use std::sync::Arc;

use smtp_proto::cli::{Setup, log_listening};
use smtp_tokio::Server;

fn main() -> ExitCode {
    let setup = match Setup::from_env() {
        Ok(s) => s,
        Err(code) => return code,
    };
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
            .shutdown_signal(shutdown_signal());
        for a in setup.listen {
            server = server.listen(a);
        }
        for a in setup.listen_tls {
            server = server.listen_tls(a);
        }
        if let Some(t) = setup.tls {
            server = server.tls(t);
        }
        if let Some(n) = setup.max_connections {
            server = server.max_connections(n);
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
async fn shutdown_signal() {
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
