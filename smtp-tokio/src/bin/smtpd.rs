//! `smtpd`: a debugging SMTP server (prints messages), or a Maildir/mbox server.
//!
//! Run `smtpd --help` for the flags.

use std::process::ExitCode;

use clap::Parser;
use smtp_tokio::cli::{Args, Setup, shutdown_signal};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(args.log)
        .init();
    let setup = match Setup::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("smtpd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtpd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = setup
            .into_server()
            .shutdown_signal(shutdown_signal())
            .bind()
            .await?;
        for addr in server.local_addrs() {
            tracing::info!(%addr, "listening");
        }
        server.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpd: {e}");
            ExitCode::FAILURE
        }
    }
}
