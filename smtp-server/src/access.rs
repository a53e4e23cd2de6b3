//! An access list by client address: Tcl smtpd's `validate_host` as
//! networks to allow and deny (`smtpd --allow CIDR --deny CIDR`).
//!
//! [`AccessList`] is a [`Layer`]: a client it refuses gets
//! `554 5.7.1 Access denied` as its greeting (then `503 5.5.1` to every
//! command but QUIT, RFC 5321 §3.1), and costs the handlers inside
//! nothing. The most specific network that contains the client decides
//! (`--allow 10.1.0.0/16 --deny 10.0.0.0/8` lets 10.1.x.x in); on a tie,
//! deny wins. A client in no listed network is let in when no `allow`
//! network is given, and refused otherwise. The address judged is the
//! client's: the PROXY header's source, or the client an XCLIENT names
//! (a trusted front proxy's own connection is not judged). Unix-socket
//! clients have no address and are always let in; a client an XCLIENT
//! names without an address (`ADDR=[UNAVAILABLE]`) is in no listed
//! network (refused when any `allow` network is given). The rules can be
//! replaced while the server runs ([`AccessList::set`]).
//!
//! ```
//! use smtp_server::access::{AccessList, AccessRules};
//!
//! struct Open;
//! impl smtp_server::handler::Handler for Open {}
//!
//! let rules = AccessRules::new(vec![], vec!["192.0.2.0/24".parse().unwrap()]);
//! assert!(!rules.admits("192.0.2.7".parse().unwrap()));
//! assert!(rules.admits("198.51.100.1".parse().unwrap()));
//! let handler = AccessList::new(rules, Open);
//! # let _ = handler;
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use smtp_proto::config::Cidr;
use smtp_proto::reply::Reply;
use smtp_proto::server::Decision;

use crate::handler::{Handler, Layer, SessionInfo};
use crate::reload::Swap;

/// The networks to allow and to deny.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessRules {
    /// Rules from the `allow` and `deny` networks.
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        AccessRules { allow, deny }
    }

    /// Whether there is no rule at all (everyone is let in).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` is let in: the longest network containing it decides
    /// (deny on a tie); in none, only if no `allow` network is given.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let longest = |nets: &[Cidr]| {
            (nets.iter())
                .filter(|n| n.contains(ip))
                .map(|n| n.prefix())
                .max()
        };
        match (longest(&self.allow), longest(&self.deny)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.allow.is_empty(),
        }
    }
}

/// Refuses clients by address at connect ([module docs](self)), in front
/// of `inner`.
#[derive(Debug)]
pub struct AccessList<H> {
    rules: Arc<Swap<AccessRules>>,
    /// The handler for every client let in.
    pub inner: H,
}

impl<H> AccessList<H> {
    /// `rules` in front of `inner`.
    pub fn new(rules: AccessRules, inner: H) -> Self {
        AccessList {
            rules: Swap::shared(rules),
            inner,
        }
    }

    /// Replaces the rules; sessions already greeted are not judged again.
    pub fn set(&self, rules: AccessRules) {
        self.rules.set(rules);
    }

    /// Whether the session's client is let in.
    pub fn admits(&self, session: &SessionInfo) -> bool {
        match session.peer.remote {
            _ if session.front_proxy => true,
            Some(addr) => self.rules.get().admits(addr.ip()),
            None if session.is_unix_client() => true,
            // A client a front proxy could not name: in no listed network.
            None => self.rules.get().allow.is_empty(),
        }
    }
}

impl<H: Handler> Layer for AccessList<H> {
    type Inner = H;

    fn inner(&self) -> &H {
        &self.inner
    }

    async fn connect(&self, session: &SessionInfo) -> Decision {
        if !self.admits(session) {
            tracing::info!(session = %session.id, peer = ?session.peer.remote, "access denied");
            crate::metrics::connection_refused(crate::metrics::Refusal::Access);
            return Reply::ACCESS_DENIED.into();
        }
        self.inner.connect(session).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nets(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_network_decides() {
        let r = AccessRules::new(nets(&["10.1.0.0/16"]), nets(&["10.0.0.0/8", "10.1.2.3"]));
        assert!(r.admits(ip("10.1.9.9")));
        assert!(!r.admits(ip("10.1.2.3")), "a /32 deny inside the allow");
        assert!(!r.admits(ip("10.2.0.1")));
        assert!(!r.admits(ip("192.0.2.1")), "an allow list refuses the rest");
        assert!(r.admits(ip("::ffff:10.1.9.9")), "IPv4-mapped");
        let tie = AccessRules::new(nets(&["192.0.2.0/24"]), nets(&["192.0.2.0/24"]));
        assert!(!tie.admits(ip("192.0.2.1")));
        let deny_only = AccessRules::new(vec![], nets(&["2001:db8::/32"]));
        assert!(!deny_only.admits(ip("2001:db8::1")));
        assert!(deny_only.admits(ip("2001:db9::1")));
        assert!(AccessRules::default().admits(ip("192.0.2.1")));
    }

    #[test]
    fn refuses_at_connect_with_554_5_7_1() {
        struct Open;
        impl Handler for Open {}
        let h = AccessList::new(AccessRules::new(vec![], nets(&["192.0.2.0/24"])), Open);
        let mut s = SessionInfo::default();
        let connect = |s: &SessionInfo| futures_executor::block_on(Handler::connect(&h, s));
        assert_eq!(connect(&s), Decision::Accept, "a Unix-socket client");
        s.peer.remote = Some("192.0.2.9:25".parse().unwrap());
        assert_eq!(connect(&s), Reply::ACCESS_DENIED.into());
        s.front_proxy = true;
        assert_eq!(connect(&s), Decision::Accept, "the proxy's own connection");
        s.front_proxy = false;
        h.set(AccessRules::default());
        assert_eq!(connect(&s), Decision::Accept, "rules replaced");
        // A client an XCLIENT named without an address is not a local one.
        h.set(AccessRules::new(nets(&["192.0.2.0/24"]), vec![]));
        s.peer.remote = None;
        s.peer.proxied_by = Some("192.0.2.1:40000".parse().unwrap());
        assert_eq!(connect(&s), Reply::ACCESS_DENIED.into(), "unknown address");
        s.peer.proxied_by = None;
        assert_eq!(connect(&s), Decision::Accept, "a Unix-socket client");
    }
}
