//! A minimal server (the README's): plain threads, hooks without futures.

use smtp_blocking::{Server, SyncAdapter, SyncHandler};
use smtp_proto::server::Decision;
use smtp_server::handler::{Envelope, Message, MessageDecision, SessionInfo};

struct Print;
impl SyncHandler for Print {
    fn message(
        &self,
        _: &SessionInfo,
        e: &Envelope,
        m: &std::sync::Arc<Message>,
    ) -> MessageDecision {
        println!(
            "{} bytes from <{}> to {:?}",
            m.data.len(),
            e.from,
            e.recipient_addresses().collect::<Vec<_>>()
        );
        MessageDecision::All(Decision::Accept)
    }
}

fn main() -> std::io::Result<()> {
    let server = Server::new(SyncAdapter(Print))
        .listen(([127, 0, 0, 1], 2525).into())
        .bind()?;
    let _stop = server.shutdown_handle(); // _stop.shutdown() from any thread stops it gracefully
    server.run()
}
