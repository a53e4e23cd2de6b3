//! XCLIENT and XFORWARD (Postfix's XCLIENT_README and XFORWARD_README):
//! a trusted front proxy or content filter hands over the real client's facts.
//!
//! Who is trusted is [`crate::config::Forwarding`]: the networks are matched
//! against the address the connection came from (after a PROXY header),
//! never against one an XCLIENT set, so a client cannot trust itself.

use super::*;
use std::net::IpAddr;

impl Session {
    /// The address trust is decided on: the front proxy's when XCLIENT
    /// replaced the client's, the connection's otherwise.
    fn forwarder(&self) -> Option<IpAddr> {
        self.peer.proxied_by.or(self.peer.remote).map(|a| a.ip())
    }

    /// Whether the client is a trusted front proxy that has not named its
    /// own client yet (XCLIENT is allowed and was not sent): its connection
    /// stands for someone else's, so per-client limits wait for XCLIENT.
    pub fn is_front_proxy(&self) -> bool {
        self.peer.proxied_by.is_none() && self.may_xclient()
    }

    /// Whether this client may send XCLIENT.
    pub(super) fn may_xclient(&self) -> bool {
        self.trusted(&self.config.forwarding.xclient_from)
    }

    /// Whether this client may send XFORWARD.
    pub(super) fn may_xforward(&self) -> bool {
        self.trusted(&self.config.forwarding.xforward_from)
    }

    /// Whether the forwarder is in one of `nets`.
    fn trusted(&self, nets: &[crate::config::Cidr]) -> bool {
        !nets.is_empty()
            && self
                .forwarder()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip)))
    }

    /// XCLIENT: checks every attribute, then replaces the session's facts
    /// and starts over at the connect decision (whose answer sends the new
    /// `220` greeting). Attributes not sent keep their values.
    pub(super) fn xclient(&mut self, attrs: Vec<(ForwardAttr, ForwardValue)>) -> Outcome {
        if !self.may_xclient() {
            return Outcome::Error(Reply::FORWARD_DENIED);
        }
        if self.txn.mail {
            return Outcome::Error(Reply::FORWARD_IN_TRANSACTION);
        }
        let mut peer = self.peer.clone();
        let (mut remote_ip, mut remote_port) = split(peer.remote);
        let (mut local_ip, mut local_port) = split(peer.local);
        let mut helo = Some(self.helo_name.clone());
        let mut login = self.authenticated.clone();
        for (attr, value) in attrs {
            let ok = match attr {
                ForwardAttr::Name => set(&mut peer.name, &value, text),
                ForwardAttr::Addr => set(&mut remote_ip, &value, parse_addr),
                ForwardAttr::Port => set(&mut remote_port, &value, parse_port),
                ForwardAttr::DestAddr => set(&mut local_ip, &value, parse_addr),
                ForwardAttr::DestPort => set(&mut local_port, &value, parse_port),
                ForwardAttr::Proto => set(&mut peer.proto, &value, parse_proto),
                ForwardAttr::Helo => set(&mut helo, &value, text),
                ForwardAttr::Login => set(&mut login, &value, text),
                // Not XCLIENT attributes: the grammar already refused them.
                ForwardAttr::Ident | ForwardAttr::Source => false,
            };
            if !ok {
                return Outcome::Error(Reply::FORWARD_BAD_VALUE);
            }
        }
        if peer.proxied_by.is_none() {
            peer.proxied_by = self.peer.remote;
        }
        peer.remote = join(remote_ip, remote_port);
        peer.local = join(local_ip, local_port);
        self.peer = peer;
        // Start over as a new connection: no greeting, no transaction.
        self.reset_transaction();
        self.helo = None;
        self.helo_name = helo.unwrap_or_default();
        self.authenticated = login;
        self.phase = Phase::Connect;
        Outcome::Done
    }

    /// XFORWARD: records the attributes for the next transaction (several
    /// commands add up) and answers `250 2.0.0`.
    pub(super) fn xforward(&mut self, attrs: Vec<(ForwardAttr, ForwardValue)>) -> Outcome {
        if !self.may_xforward() {
            return Outcome::Error(Reply::FORWARD_DENIED);
        }
        if self.txn.mail {
            return Outcome::Error(Reply::FORWARD_IN_TRANSACTION);
        }
        let mut f = self.txn.forwarded.as_deref().cloned().unwrap_or_default();
        for (attr, value) in attrs {
            let ok = match attr {
                ForwardAttr::Name => set(&mut f.name, &value, text),
                ForwardAttr::Addr => set(&mut f.addr, &value, parse_addr),
                ForwardAttr::Port => set(&mut f.port, &value, parse_port),
                ForwardAttr::Proto => set(&mut f.proto, &value, |p| Some(p.to_ascii_uppercase())),
                ForwardAttr::Helo => set(&mut f.helo, &value, text),
                ForwardAttr::Ident => set(&mut f.ident, &value, text),
                ForwardAttr::Source => set(&mut f.source, &value, parse_source),
                ForwardAttr::Login | ForwardAttr::DestAddr | ForwardAttr::DestPort => false,
            };
            if !ok {
                return Outcome::Error(Reply::FORWARD_BAD_VALUE);
            }
        }
        self.txn.forwarded = Some(Box::new(f));
        Outcome::Reply(Reply::FORWARD_OK)
    }
}

/// Sets `slot` from `value`: parsed text, or `None` for the two
/// "unavailable" markers; `false` if the text does not parse.
fn set<T>(slot: &mut Option<T>, value: &ForwardValue, parse: fn(&str) -> Option<T>) -> bool {
    match value {
        ForwardValue::Value(v) => match parse(v) {
            Some(x) => {
                *slot = Some(x);
                true
            }
            None => false,
        },
        ForwardValue::Unavailable | ForwardValue::TempUnavail => {
            *slot = None;
            true
        }
    }
}

/// An address as Postfix writes it: IPv4, or `IPV6:` and an IPv6 address
/// (a bare IPv6 address is taken too).
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = match s.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => s.get(5..)?,
        _ => s,
    };
    s.parse().ok()
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Any text, as it is.
fn text(s: &str) -> Option<String> {
    Some(s.to_owned())
}

/// XCLIENT's `PROTO`: `SMTP` or `ESMTP`, upper-cased.
fn parse_proto(p: &str) -> Option<String> {
    (p.eq_ignore_ascii_case("SMTP") || p.eq_ignore_ascii_case("ESMTP"))
        .then(|| p.to_ascii_uppercase())
}

/// XFORWARD's `SOURCE`: `LOCAL` or `REMOTE`, upper-cased.
fn parse_source(s: &str) -> Option<String> {
    (s.eq_ignore_ascii_case("LOCAL") || s.eq_ignore_ascii_case("REMOTE"))
        .then(|| s.to_ascii_uppercase())
}

fn split(a: Option<SocketAddr>) -> (Option<IpAddr>, Option<u16>) {
    (a.map(|a| a.ip()), a.map(|a| a.port()))
}

/// An address with its port (0 when the port is not known); `None`
/// without an address.
fn join(ip: Option<IpAddr>, port: Option<u16>) -> Option<SocketAddr> {
    ip.map(|ip| SocketAddr::new(ip, port.unwrap_or(0)))
}
