//! A command that awaits a decision, kept as offsets into its line.
//!
//! The session parses a line once to check it and act on it, and the
//! decision event it then hands out borrows the same text. Events borrow
//! the session's input buffer, so the parsed command cannot be stored as
//! is; without this module the line was parsed a second time for the event
//! (about a tenth of a small pipelined message's instructions). Here the
//! parsed command's text pieces become offsets, and the event is rebuilt
//! from them and the line.

use crate::command::{Command, ForwardPath, MailParams, Mailbox, RcptParams, ReversePath};
use crate::server::{Event, HeloKind, Ticket};

/// A piece of the line: offset and length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At(usize, usize);

/// A mailbox's three pieces (`raw`, `local_part`, `domain`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MailboxAt([At; 3]);

/// The commands that become decision events, with offsets for text.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Decided {
    Helo(HeloKind, At),
    Mail {
        /// `None`: the null path.
        from: Option<MailboxAt>,
        params: MailParams<'static>,
        envid: Option<At>,
        auth: Option<At>,
    },
    Rcpt {
        /// `None`: `<Postmaster>`.
        to: Option<MailboxAt>,
        params: RcptParams<'static>,
        orcpt: Option<At>,
    },
    Verify(At, bool),
}

/// Where `piece` lies in `line`; `None` if it is not part of it (the caller
/// then parses the line again, as before this module).
fn at(line: &[u8], piece: &str) -> Option<At> {
    if piece.is_empty() {
        return Some(At(0, 0));
    }
    let offset = (piece.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
    (offset.checked_add(piece.len())? <= line.len()).then_some(At(offset, piece.len()))
}

fn text(line: &[u8], at: At) -> Option<&str> {
    std::str::from_utf8(line.get(at.0..at.0.checked_add(at.1)?)?).ok()
}

fn opt_at(line: &[u8], piece: Option<&str>) -> Option<Option<At>> {
    match piece {
        None => Some(None),
        Some(p) => at(line, p).map(Some),
    }
}

fn opt_text(line: &[u8], at: Option<At>) -> Option<Option<&str>> {
    match at {
        None => Some(None),
        Some(a) => text(line, a).map(Some),
    }
}

impl MailboxAt {
    fn of(line: &[u8], m: &Mailbox<'_>) -> Option<MailboxAt> {
        Some(MailboxAt([
            at(line, m.raw)?,
            at(line, m.local_part)?,
            at(line, m.domain)?,
        ]))
    }

    fn mailbox(self, line: &[u8]) -> Option<Mailbox<'_>> {
        let [raw, local_part, domain] = self.0;
        let raw_text = text(line, raw)?;
        // The local part and the domain lie inside the raw address: sliced
        // from its text, they need no UTF-8 check of their own (two of a
        // message's costlier calls each).
        let inner = |a: At| {
            let start = a.0.checked_sub(raw.0)?;
            raw_text.get(start..start.checked_add(a.1)?)
        };
        Some(Mailbox {
            raw: raw_text,
            local_part: inner(local_part).or_else(|| text(line, local_part))?,
            domain: inner(domain).or_else(|| text(line, domain))?,
        })
    }
}

impl Decided {
    /// The offsets of `cmd`, parsed from `line`; `None` for commands that
    /// are not decided by the caller, or pieces outside the line.
    pub(crate) fn of(cmd: &Command<'_>, line: &[u8]) -> Option<Decided> {
        Some(match cmd {
            Command::Helo { domain } => Decided::Helo(HeloKind::Helo, at(line, domain)?),
            Command::Ehlo { domain } => Decided::Helo(HeloKind::Ehlo, at(line, domain)?),
            Command::Lhlo { domain } => Decided::Helo(HeloKind::Lhlo, at(line, domain)?),
            Command::Mail { from, params } => Decided::Mail {
                from: match from {
                    ReversePath::Null => None,
                    ReversePath::Mailbox(m) => Some(MailboxAt::of(line, m)?),
                },
                params: MailParams {
                    envid: None,
                    auth: None,
                    ..*params
                },
                envid: opt_at(line, params.envid)?,
                auth: opt_at(line, params.auth)?,
            },
            Command::Rcpt { to, params } => Decided::Rcpt {
                to: match to {
                    ForwardPath::Postmaster => None,
                    ForwardPath::Mailbox(m) => Some(MailboxAt::of(line, m)?),
                },
                params: RcptParams {
                    orcpt: None,
                    ..*params
                },
                orcpt: opt_at(line, params.orcpt)?,
            },
            Command::Vrfy { arg } => Decided::Verify(at(line, arg)?, false),
            Command::Expn { arg } => Decided::Verify(at(line, arg)?, true),
            _ => return None,
        })
    }

    /// The event for this command, its text taken from `line` (the line it
    /// was parsed from); `None` if a piece no longer fits.
    pub(crate) fn event(self, line: &[u8], ticket: Ticket) -> Option<Event<'_>> {
        Some(match self {
            Decided::Helo(kind, domain) => Event::Helo {
                ticket,
                kind,
                domain: text(line, domain)?,
            },
            Decided::Mail {
                from,
                params,
                envid,
                auth,
            } => Event::Mail {
                ticket,
                from: match from {
                    None => ReversePath::Null,
                    Some(m) => ReversePath::Mailbox(m.mailbox(line)?),
                },
                params: MailParams {
                    envid: opt_text(line, envid)?,
                    auth: opt_text(line, auth)?,
                    ..params
                },
            },
            Decided::Rcpt { to, params, orcpt } => Event::Rcpt {
                ticket,
                to: match to {
                    None => ForwardPath::Postmaster,
                    Some(m) => ForwardPath::Mailbox(m.mailbox(line)?),
                },
                params: RcptParams {
                    orcpt: opt_text(line, orcpt)?,
                    ..params
                },
            },
            Decided::Verify(arg, expand) => Event::Verify {
                ticket,
                arg: text(line, arg)?,
                expand,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ParseOptions;
    use crate::parse::parse_command;
    use crate::server::command_event;
    use proptest::prelude::*;

    /// The event from the offsets is the event from a fresh parse.
    fn same_event(line: &[u8], opts: ParseOptions) {
        let Ok(cmd) = parse_command(line, opts) else {
            return;
        };
        let Some(d) = Decided::of(&cmd, line) else {
            return;
        };
        let again = parse_command(line, opts).map(|c| command_event(c, Ticket::for_test(1)));
        let kept = d.event(line, Ticket::for_test(1));
        assert_eq!(
            format!("{kept:?}"),
            format!("{:?}", again.ok()),
            "{}",
            String::from_utf8_lossy(line)
        );
    }

    const OPTS: [ParseOptions; 3] = [
        ParseOptions {
            utf8_addresses: false,
            lenient: false,
        },
        ParseOptions {
            utf8_addresses: true,
            lenient: false,
        },
        ParseOptions {
            utf8_addresses: true,
            lenient: true,
        },
    ];

    #[test]
    fn every_decided_command_round_trips() {
        let lines: &[&str] = &[
            "HELO client.example",
            "EHLO [192.0.2.1]",
            "LHLO lmtp.example",
            "EHLO",
            "MAIL FROM:<>",
            "MAIL FROM:<alice@example.org> SIZE=123 BODY=8BITMIME",
            "MAIL FROM:<@route.example:alice@example.org> RET=HDRS ENVID=QQ+2Bx AUTH=<>",
            "MAIL FROM:<\"odd local\"@[IPv6:2001:db8::1]> AUTH=alice+40example.org REQUIRETLS",
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8",
            "mail from: <lenient.@example.org>",
            "RCPT TO:<Postmaster>",
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@example.net",
            "RCPT TO:<ünï@example.net>",
            "rcpt to:postmaster",
            "VRFY bob",
            "EXPN list@example.org",
            "NOOP",
        ];
        for line in lines {
            for opts in OPTS {
                same_event(line.as_bytes(), opts);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_arguments_round_trip(
            verb in prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "VRFY ", "mail from: "]),
            arg in "[<>@.a-zA-Z0-9\"\\[\\]:; =+,é-]{0,60}",
            opts in prop::sample::select(OPTS.to_vec()),
        ) {
            same_event(format!("{verb}{arg}").as_bytes(), opts);
        }
    }
}
