//! Rate limits across sessions (Postfix's anvil, maddy's `limits`): new
//! connections, messages and recipients per client address per minute.
//!
//! [`RateLimit`] is a [`Layer`] in front of any handler. It asks a
//! [`RateLimiter`] whether the client may have one more of a [`RateKind`];
//! the built-in [`RateTable`] counts in memory, shared by every session of
//! a server (on every adapter: put one `Arc<RateTable>` in the layer), and
//! bounded: a fixed number of entries, the least recently seen evicted, so a
//! million distinct source addresses cost no more memory than the table's
//! size. Implement [`RateLimiter`] to take the decision elsewhere (a shared
//! store when many instances run behind one balancer).
//!
//! The client is the address the session knows: the PROXY header's source
//! when the PROXY protocol is on, never the balancer's. IPv6 clients count
//! by their /64 (one host usually owns a whole /64). Over a limit:
//!
//! | limit | counted | over it |
//! |---|---|---|
//! | connections | each new session | `421 4.7.0`, and the connection closes |
//! | messages | each accepted `MAIL` (a delivery request, as Postfix's anvil counts) | `450 4.7.1` to the `MAIL` |
//! | recipients | each `RCPT` the inner handler accepted | `452 4.5.3` to the `RCPT` |
//!
//! A refused attempt does not count. The window slides: the count of the
//! previous minute weighs by how much of it is still within the last 60
//! seconds.
//!
//! ```
//! use std::sync::Arc;
//! use smtp_server::rate::{RateLimit, RateLimits, RateTable};
//! use smtp_server::store::SinkHandler;
//!
//! let limits = RateLimits { connections: Some(60), messages: Some(100), recipients: None };
//! let handler = RateLimit::new(SinkHandler, limits, Arc::new(RateTable::default()));
//! # let _ = handler;
//! ```

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::handler::{Envelope, Handler, Layer, MailOptions, Recipient, SessionInfo};
use futures_util::future::Either;
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::server::Decision;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateKind {
    /// New connections (sessions).
    Connection,
    /// Messages (accepted `MAIL` commands).
    Message,
    /// Recipients (accepted `RCPT` commands).
    Recipient,
    /// Failed AUTH attempts (counted by the session dispatcher, see
    /// [`crate::handler::AuthFailures`]).
    AuthFailure,
}

impl RateKind {
    fn index(self) -> usize {
        match self {
            RateKind::Connection => 0,
            RateKind::Message => 1,
            RateKind::Recipient => 2,
            RateKind::AuthFailure => 3,
        }
    }
}

/// The limits per client address per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// New connections per minute (`--max-connection-rate`).
    pub connections: Option<u32>,
    /// Messages per minute (`--max-message-rate`).
    pub messages: Option<u32>,
    /// Recipients per minute (`--max-recipient-rate`).
    pub recipients: Option<u32>,
}

impl RateLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.connections.is_some() || self.messages.is_some() || self.recipients.is_some()
    }
}

/// Decides whether a client may have one more of something: the hook for
/// a rate store of your own. [`RateTable`] is the built-in one.
pub trait RateLimiter: Send + Sync + 'static {
    /// Whether `client` may have one more `kind` within `limit` per minute;
    /// when it may, the attempt counts.
    fn admit(
        &self,
        client: IpAddr,
        kind: RateKind,
        limit: u32,
    ) -> impl Future<Output = bool> + Send;
}

/// `421 4.7.0`: too many connections from the client lately.
pub const CONNECTION_RATE: Reply = Reply::constant(
    421,
    EnhancedCode::new(4, 7, 0),
    "Too many connections from your address, try again later",
);

/// `450 4.7.1`: too many messages from the client lately.
pub const MESSAGE_RATE: Reply = Reply::constant(
    450,
    EnhancedCode::new(4, 7, 1),
    "Too many messages from your address, try again later",
);

/// `452 4.5.3`: too many recipients from the client lately.
pub const RECIPIENT_RATE: Reply = Reply::constant(
    452,
    EnhancedCode::new(4, 5, 3),
    "Too many recipients from your address, try again later",
);

/// Applies [`RateLimits`] in front of `inner` (see the [module docs](self)).
#[derive(Debug)]
pub struct RateLimit<H, R = RateTable> {
    inner: H,
    limits: RateLimits,
    limiter: Arc<R>,
}

impl<H, R> RateLimit<H, R> {
    /// `inner` behind `limits`, counted by `limiter` (share one limiter
    /// between the servers that should count together).
    pub fn new(inner: H, limits: RateLimits, limiter: Arc<R>) -> Self {
        RateLimit {
            inner,
            limits,
            limiter,
        }
    }

    /// The limits.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }
}

impl<H: Handler, R: RateLimiter> RateLimit<H, R> {
    /// Whether the session's client may have one more `kind` (always
    /// without a limit or for a Unix-socket client). Clients a front
    /// proxy named without an address share the proxy's count.
    async fn admit(&self, session: &SessionInfo, kind: RateKind, limit: Option<u32>) -> bool {
        match (limit, session.peer.remote.or(session.peer.proxied_by)) {
            (Some(limit), Some(addr)) => self.limiter.admit(addr.ip(), kind, limit).await,
            _ => true,
        }
    }
}

impl<H: Handler, R: RateLimiter> RateLimit<H, R> {
    /// The inner handler's decision on a message or a recipient (`inner`),
    /// unless it accepted and the client is over its rate of `kind`.
    /// Without that limit, `inner` as it is: no layer of ours on every
    /// message's path (it cost 0.5 % of a message's instructions).
    fn counted(
        &self,
        session: &SessionInfo,
        inner: impl Future<Output = Decision> + Send,
        kind: RateKind,
    ) -> impl Future<Output = Decision> + Send {
        let (limit, refusal) = match kind {
            RateKind::Message => (self.limits.messages, MESSAGE_RATE),
            _ => (self.limits.recipients, RECIPIENT_RATE),
        };
        if limit.is_none() {
            return Either::Left(inner);
        }
        Either::Right(async move {
            let d = inner.await;
            if !matches!(d, Decision::Accept) || self.admit(session, kind, limit).await {
                return d;
            }
            over(session, kind, refusal)
        })
    }
}

/// The refusal of a client over its rate, logged.
fn over(session: &SessionInfo, kind: RateKind, reply: Reply) -> Decision {
    tracing::info!(session = %session.id, client = ?session.peer.remote, ?kind, "rate exceeded");
    reply.into()
}

impl<H: Handler, R: RateLimiter> Layer for RateLimit<H, R> {
    type Inner = H;

    fn inner(&self) -> &H {
        &self.inner
    }

    /// Checked first: a client over its rate costs the inner handler nothing.
    async fn connect(&self, session: &SessionInfo) -> Decision {
        // A front proxy's connection is counted for the client its XCLIENT
        // names (the connect decision comes again then), not for itself.
        let limit = self.limits.connections.filter(|_| !session.front_proxy);
        if !self.admit(session, RateKind::Connection, limit).await {
            crate::metrics::connection_refused(crate::metrics::Refusal::Rate);
            return over(session, RateKind::Connection, CONNECTION_RATE);
        }
        self.inner.connect(session).await
    }

    fn mail(
        &self,
        session: &SessionInfo,
        from: &str,
        options: &MailOptions,
    ) -> impl Future<Output = Decision> + Send {
        let inner = self.inner.mail(session, from, options);
        self.counted(session, inner, RateKind::Message)
    }

    fn rcpt(
        &self,
        session: &SessionInfo,
        envelope: &Envelope,
        to: &Recipient,
    ) -> impl Future<Output = Decision> + Send {
        let inner = self.inner.rcpt(session, envelope, to);
        self.counted(session, inner, RateKind::Recipient)
    }
}

/// Entries a [`RateTable`] holds by default: 65,536 client addresses
/// (about 3 MiB once full).
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Entries per set: a new address evicts the least recently seen of its set.
const WAYS: usize = 8;

/// How many [`RateKind`]s an entry counts.
const KINDS: usize = 4;

/// Lock shards (sessions of different clients rarely wait for each other).
const SHARDS: usize = 64;

/// One client's counts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The client (an IPv4 address, or an IPv6 /64), as a number.
    key: u128,
    /// The minute (since the table's start) `current` counts.
    minute: u32,
    /// When it was last seen (seconds since the table's start).
    seen: u32,
    /// Per [`RateKind`]: this minute's count and the previous minute's.
    current: [u32; KINDS],
    previous: [u32; KINDS],
}

/// The built-in [`RateLimiter`]: counts in memory, bounded (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct RateTable {
    start: Instant,
    hasher: RandomState,
    /// `sets` sets of at most [`WAYS`] entries, in [`SHARDS`] shards.
    shards: Box<[Mutex<Vec<Vec<Entry>>>]>,
    sets_per_shard: usize,
}

impl Default for RateTable {
    fn default() -> Self {
        RateTable::with_capacity(DEFAULT_CAPACITY)
    }
}

impl RateTable {
    /// A table for about `capacity` client addresses (at least 512).
    pub fn with_capacity(capacity: usize) -> Self {
        let sets_per_shard = capacity.div_ceil(WAYS * SHARDS).max(1);
        RateTable {
            start: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![Vec::new(); sets_per_shard]))
                .collect(),
            sets_per_shard,
        }
    }

    /// The most entries it can hold.
    pub fn capacity(&self) -> usize {
        SHARDS * self.sets_per_shard * WAYS
    }

    /// Entries it holds now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`RateLimiter::admit`] at `now` (for tests and callers with a clock
    /// of their own).
    pub fn admit_at(&self, client: IpAddr, kind: RateKind, limit: u32, now: Instant) -> bool {
        self.with_entry(client, kind, now, true, |count, estimate| {
            if estimate + 1.0 > f64::from(limit) {
                return false;
            }
            *count += 1;
            true
        })
        .unwrap_or(true)
    }

    /// Counts one `kind` for `client` at `now`, whatever the count was.
    pub fn record_at(&self, client: IpAddr, kind: RateKind, now: Instant) {
        self.with_entry(client, kind, now, true, |count, _| *count += 1);
    }

    /// The client's `kind` count over the last minute (sliding) at `now`,
    /// rounded up; counts nothing, and makes no entry for a client it does
    /// not hold (so reading for every connection evicts no one).
    pub fn recent_at(&self, client: IpAddr, kind: RateKind, now: Instant) -> u32 {
        // The estimate is a sum of counts: it fits a u32.
        self.with_entry(client, kind, now, false, |_, estimate| {
            estimate.ceil() as u32
        })
        .unwrap_or(0)
    }

    /// Runs `f` on the client's current count of `kind` and its sliding
    /// estimate over the last minute, the entry refreshed first, or made
    /// when `make` (else `None` for a client not held).
    fn with_entry<T>(
        &self,
        client: IpAddr,
        kind: RateKind,
        now: Instant,
        make: bool,
        f: impl FnOnce(&mut u32, f64) -> T,
    ) -> Option<T> {
        let key = match client {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            // The /64, marked apart from every IPv4 address.
            IpAddr::V6(a) => (u128::from(a) >> 64) | (1 << 127),
        };
        let since = now.saturating_duration_since(self.start);
        let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
        let minute = secs / 60;
        let h = self.hasher.hash_one(key) as usize;
        let shard = &self.shards[h % SHARDS];
        let mut sets = shard.lock().unwrap_or_else(|e| e.into_inner());
        let set = &mut sets[(h / SHARDS) % self.sets_per_shard];
        let at = match set.iter().position(|e| e.key == key) {
            Some(i) => i,
            None if !make => return None,
            None => {
                let fresh = Entry {
                    key,
                    minute,
                    seen: secs,
                    current: [0; KINDS],
                    previous: [0; KINDS],
                };
                if set.len() < WAYS {
                    set.push(fresh);
                    set.len() - 1
                } else {
                    let oldest = (0..set.len()).min_by_key(|&i| set[i].seen).unwrap_or(0);
                    set[oldest] = fresh;
                    oldest
                }
            }
        };
        let e = &mut set[at];
        e.seen = secs;
        if e.minute != minute {
            e.previous = if e.minute.checked_add(1) == Some(minute) {
                e.current
            } else {
                [0; KINDS]
            };
            e.current = [0; KINDS];
            e.minute = minute;
        }
        let k = kind.index();
        // The previous minute weighs by how much of it is still within the
        // last 60 seconds.
        let into = since.as_secs_f64() - f64::from(minute) * 60.0;
        let weight = (1.0 - into / 60.0).clamp(0.0, 1.0);
        let estimate = f64::from(e.previous[k]) * weight + f64::from(e.current[k]);
        Some(f(&mut e.current[k], estimate))
    }
}

impl RateLimiter for RateTable {
    fn admit(
        &self,
        client: IpAddr,
        kind: RateKind,
        limit: u32,
    ) -> impl Future<Output = bool> + Send {
        std::future::ready(self.admit_at(client, kind, limit, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn reading_a_count_makes_no_entry() {
        let t = RateTable::default();
        let now = t.start;
        assert_eq!(t.recent_at(v4(9), RateKind::AuthFailure, now), 0);
        assert!(t.is_empty(), "a read for every connection evicts no one");
        t.record_at(v4(9), RateKind::AuthFailure, now);
        t.record_at(v4(9), RateKind::AuthFailure, now);
        assert_eq!(t.recent_at(v4(9), RateKind::AuthFailure, now), 2);
        assert_eq!(t.recent_at(v4(9), RateKind::Message, now), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_limit_per_minute_per_client_and_kind() {
        let t = RateTable::default();
        let now = t.start;
        for _ in 0..3 {
            assert!(t.admit_at(v4(1), RateKind::Message, 3, now));
        }
        assert!(!t.admit_at(v4(1), RateKind::Message, 3, now), "the 4th");
        assert!(
            !t.admit_at(v4(1), RateKind::Message, 3, now),
            "refusals do not count, but do not pass"
        );
        assert!(
            t.admit_at(v4(2), RateKind::Message, 3, now),
            "another client"
        );
        assert!(
            t.admit_at(v4(1), RateKind::Recipient, 3, now),
            "another kind"
        );
        // Half a minute into the next minute, half of the last one still weighs.
        let later = now + Duration::from_secs(90);
        assert!(t.admit_at(v4(1), RateKind::Message, 3, later));
        assert!(
            !t.admit_at(v4(1), RateKind::Message, 3, later),
            "1.5 + 1 + 1 > 3"
        );
        // Two minutes on, nothing weighs.
        let much_later = now + Duration::from_secs(181);
        for _ in 0..3 {
            assert!(t.admit_at(v4(1), RateKind::Message, 3, much_later));
        }
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let t = RateTable::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.admit_at(a, RateKind::Connection, 1, t.start));
        assert!(!t.admit_at(b, RateKind::Connection, 1, t.start), "same /64");
        assert!(t.admit_at(c, RateKind::Connection, 1, t.start));
        let mapped = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        assert!(t.admit_at(mapped, RateKind::Connection, 1, t.start));
        assert!(
            t.admit_at(v4(0), RateKind::Connection, 1, t.start),
            "not the v6 ::/64"
        );
    }

    /// A million distinct sources never grow the table past its capacity.
    #[test]
    fn memory_is_bounded_whatever_the_number_of_clients() {
        let t = RateTable::with_capacity(4096);
        let now = t.start;
        for n in 0..1_000_000u32 {
            t.admit_at(
                v4(n),
                RateKind::Connection,
                10,
                now + Duration::from_millis(u64::from(n)),
            );
        }
        assert!(t.len() <= t.capacity(), "{} > {}", t.len(), t.capacity());
        assert!(t.capacity() <= 4096 + SHARDS * WAYS);
        // A client seen just now survives the flood's evictions of its set
        // better than one long gone: the most recent one still counts.
        let last = v4(999_999);
        let end = now + Duration::from_millis(1_000_000);
        let mut n = 1;
        while t.admit_at(last, RateKind::Connection, 10, end) {
            n += 1;
        }
        assert_eq!(n, 10, "its first connection was remembered");
    }

    /// A limiter of one's own (say, a shared store) takes the decisions;
    /// the layer asks it only for limits that are set, with the client's
    /// address, and after the inner handler accepted.
    #[test]
    fn a_limiter_of_ones_own_decides() {
        use crate::handler::Handler;
        use futures_executor::block_on;

        #[derive(Default)]
        struct Asked(Mutex<Vec<(IpAddr, RateKind, u32)>>);
        impl RateLimiter for Asked {
            fn admit(
                &self,
                client: IpAddr,
                kind: RateKind,
                limit: u32,
            ) -> impl Future<Output = bool> + Send {
                self.0.lock().unwrap().push((client, kind, limit));
                std::future::ready(kind != RateKind::Recipient)
            }
        }
        let asked = Arc::new(Asked::default());
        let limits = RateLimits {
            connections: None,
            messages: Some(5),
            recipients: Some(7),
        };
        let h = RateLimit::new(crate::store::SinkHandler, limits, asked.clone());
        let mut s = SessionInfo::default();
        s.peer.remote = Some("192.0.2.4:2525".parse().unwrap());
        assert_eq!(block_on(Handler::connect(&h, &s)), Decision::Accept);
        let o = MailOptions::default();
        assert_eq!(block_on(Handler::mail(&h, &s, "a@x", &o)), Decision::Accept);
        let to = Recipient {
            address: "b@y".into(),
            notify: None,
            orcpt: None,
        };
        let d = block_on(Handler::rcpt(&h, &s, &Envelope::default(), &to));
        assert_eq!(d, RECIPIENT_RATE.into());
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        assert_eq!(
            *asked.0.lock().unwrap(),
            [(ip, RateKind::Message, 5), (ip, RateKind::Recipient, 7)]
        );
    }
}
