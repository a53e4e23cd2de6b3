//! A minimal server (the README's): tokio.

use smtp_proto::config::Config;
use smtp_server::store::MaildirHandler;
use std::sync::Arc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    smtp_tokio::Server::new(MaildirHandler::new("./mail"))
        .config(Arc::new(Config::new("mx.example")))
        .listen(([127, 0, 0, 1], 2525).into())
        .shutdown_signal(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .run()
        .await
}
