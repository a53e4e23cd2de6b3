//! TEMPORARY STUB (replaced by the real grammar).
#![allow(missing_docs, unreachable_pub)]
use crate::command::*;
pub fn parse_command(line: &[u8], _opts: ParseOptions) -> Result<Command<'_>, ParseError> {
    let s = std::str::from_utf8(line).map_err(|_| ParseError::Syntax)?;
    let up = s.to_ascii_uppercase();
    let arg = s.get(5..).unwrap_or("").trim();
    fn mb(a: &str) -> Mailbox<'_> {
        let a = a.trim_start_matches('<').trim_end_matches('>');
        let (l, d) = a.split_once('@').unwrap_or((a, ""));
        Mailbox {
            raw: a,
            local_part: l,
            domain: d,
        }
    }
    Ok(match &up.get(..4).unwrap_or("") {
        &"HELO" => Command::Helo { domain: arg },
        &"EHLO" => Command::Ehlo { domain: arg },
        &"LHLO" => Command::Lhlo { domain: arg },
        &"MAIL" => {
            let a = s.get(10..).unwrap_or("");
            let a = a.split(' ').next().unwrap_or("");
            if a == "<>" {
                Command::Mail {
                    from: ReversePath::Null,
                    params: Default::default(),
                }
            } else {
                Command::Mail {
                    from: ReversePath::Mailbox(mb(a)),
                    params: Default::default(),
                }
            }
        }
        &"RCPT" => Command::Rcpt {
            to: ForwardPath::Mailbox(mb(s.get(8..).unwrap_or(""))),
            params: Default::default(),
        },
        &"DATA" => Command::Data,
        &"RSET" => Command::Rset,
        &"NOOP" => Command::Noop,
        &"QUIT" => Command::Quit,
        &"VRFY" => Command::Vrfy { arg },
        &"STAR" => Command::StartTls,
        &"BDAT" => {
            let mut it = arg.split(' ');
            let size = it
                .next()
                .and_then(|x| x.parse().ok())
                .ok_or(ParseError::Syntax)?;
            Command::Bdat {
                size,
                last: it.next().is_some(),
            }
        }
        &"AUTH" => {
            let mut it = arg.split(' ');
            Command::Auth {
                mechanism: it.next().unwrap_or(""),
                initial: it.next(),
            }
        }
        _ => return Err(ParseError::UnknownCommand),
    })
}
