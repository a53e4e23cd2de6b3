//! Rate limits across sessions (issue 15, part 3): `--max-connection-rate`,
//! `--max-message-rate`, `--max-recipient-rate`.

use crate::hardening_net::proxied;
use crate::support::Ctx;
use crate::support::cases;

cases!(
    rate_connections_per_minute_421,
    rate_messages_450_and_recipients_452,
    rate_counts_the_proxy_source,
);

/// The third connection in a minute from one address gets `421 4.7.0`
/// and is closed; the first two were served.
async fn rate_connections_per_minute_421(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--max-connection-rate", "2"]);
    for _ in 0..2 {
        let mut c = d.greeted().await;
        c.expect("QUIT\r\n", "221").await;
    }
    let mut c = crate::Client::connect(d.addr()).await;
    let rest = c.read_to_end().await;
    assert!(rest.starts_with("421 4.7.0"), "{rest:?}");
}

/// MAIL beyond the message rate gets `450 4.7.1`, RCPT beyond the
/// recipient rate `452 4.5.3`; refusals do not count, other sessions of the
/// same client share the counts.
async fn rate_messages_450_and_recipients_452(ctx: Ctx) {
    let d = ctx.spawn([
        "--sink",
        "--max-message-rate",
        "2",
        "--max-recipient-rate",
        "3",
    ]);
    let mut c = d.greeted().await;
    c.expect("EHLO x\r\n", "250").await;
    c.expect("MAIL FROM:<a@x>\r\n", "250").await;
    for r in ["b", "c", "d"] {
        c.expect(&format!("RCPT TO:<{r}@y>\r\n"), "250").await;
    }
    c.expect("RCPT TO:<e@y>\r\n", "452 4.5.3").await;
    c.expect("DATA\r\n", "354").await;
    c.expect("hi\r\n.\r\n", "250").await;
    // The second message from another session of the same client.
    let mut other = d.greeted().await;
    other.expect("EHLO x\r\n", "250").await;
    other.expect("MAIL FROM:<a@x>\r\n", "250").await;
    other.expect("RCPT TO:<f@y>\r\n", "452 4.5.3").await;
    other.expect("RSET\r\n", "250").await;
    other.expect("MAIL FROM:<a@x>\r\n", "450 4.7.1").await;
    other.expect("MAIL FROM:<a@x>\r\n", "450 4.7.1").await;
    other.expect("QUIT\r\n", "221").await;
    c.expect("QUIT\r\n", "221").await;
}

/// Behind `--proxy-protocol` the header's source counts, not the balancer.
async fn rate_counts_the_proxy_source(ctx: Ctx) {
    let d = ctx.spawn(["--sink", "--proxy-protocol", "--max-connection-rate", "1"]);
    let addr = d.addr();
    let proxied = |src: &'static str| proxied(addr, src);
    let (mut a, r) = proxied("198.51.100.7").await;
    assert!(r.starts_with("220 "), "first from .7: {r:?}");
    a.expect("QUIT\r\n", "221").await;
    let (mut b, r) = proxied("198.51.100.8").await;
    assert!(r.starts_with("220 "), "first from .8: {r:?}");
    b.expect("QUIT\r\n", "221").await;
    let (mut c, r) = proxied("198.51.100.7").await;
    assert!(r.starts_with("421 4.7.0"), "second from .7: {r:?}");
    assert_eq!(c.read_to_end().await, "", "closed after the 421");
}
