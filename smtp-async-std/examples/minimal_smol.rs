//! A minimal server (the README's): smol (or async-std with `default-features = false, features = ["async-std"]`).

fn main() -> std::io::Result<()> {
    smol::block_on(
        smtp_async_std::Server::new(smtp_server::store::SinkHandler)
            .config(std::sync::Arc::new(smtp_proto::config::Config::new(
                "mx.example",
            )))
            .listen(([127, 0, 0, 1], 2525).into())
            .run(),
    )
}
