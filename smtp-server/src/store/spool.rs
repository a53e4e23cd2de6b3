//! A body on its way to a file, for the streaming stores: CRLF line ends
//! turned into LF as chunks arrive (a CRLF or a line's start may be split
//! between chunks), kept in memory up to [`RUN`] bytes and then written to
//! the file in runs on the `blocking` pool, so a session holds at most one
//! run whatever the message's size, and a small message costs no file
//! write before its end.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

/// Bytes kept in memory before they go to the file.
pub(super) const RUN: usize = 64 * 1024;

/// CRLF → LF for a stream of chunks; a lone CR stays. With `quote`
/// (mboxrd), lines matching `^>*From ` get one more `>`.
#[derive(Debug, Default)]
pub(super) struct LfLines {
    quote: bool,
    /// The last chunk ended with a CR, not written yet (an LF may follow).
    cr: bool,
    /// The current line has bytes written (it needs an end when closed).
    open: bool,
    /// `quote`: whether the current line's start is decided (its `>` run
    /// and what follows it).
    decided: bool,
    /// `quote`: bytes after the line's `>` run that may begin `From `.
    held: Vec<u8>,
}

const FROM: &[u8] = b"From ";

impl LfLines {
    /// A converter; with `quote`, mboxrd `From ` quoting.
    pub(super) fn new(quote: bool) -> Self {
        LfLines {
            quote,
            ..LfLines::default()
        }
    }

    /// Converts the next chunk into `out`.
    pub(super) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        if self.cr && !data.is_empty() {
            self.cr = false;
            if data[0] == b'\n' {
                data = &data[1..];
                self.end_line(out);
            } else {
                out.push(b'\r');
            }
        }
        while !data.is_empty() {
            if self.quote && !self.decided {
                if self.held.is_empty() {
                    // A `>` run goes out as it comes: the added `>` may
                    // go anywhere in it.
                    let n = data.iter().take_while(|&&b| b == b'>').count();
                    out.extend_from_slice(&data[..n]);
                    self.open |= n > 0;
                    data = &data[n..];
                    if data.is_empty() {
                        return;
                    }
                }
                let have = self.held.len();
                let take = (FROM.len() - have).min(data.len());
                if data[..take] == FROM[have..have + take] {
                    self.held.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.held.len() < FROM.len() {
                        return;
                    }
                    out.push(b'>');
                }
                out.append(&mut self.held);
                self.decided = true;
                self.open = true;
                continue;
            }
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let line = &data[..i];
                    out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                    data = &data[i + 1..];
                    self.end_line(out);
                }
                None => {
                    match data.strip_suffix(b"\r") {
                        Some(head) => {
                            out.extend_from_slice(head);
                            self.cr = true;
                        }
                        None => out.extend_from_slice(data),
                    }
                    self.open = true;
                    self.decided = true;
                    return;
                }
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.push(b'\n');
        self.open = false;
        self.decided = false;
    }

    /// The end of the stream: what is held goes out; with `close`, a last
    /// line without a line end gets one (its trailing CR dropped), else
    /// it stays as it was.
    pub(super) fn finish(&mut self, close: bool, out: &mut Vec<u8>) {
        let open = self.open || !self.held.is_empty() || self.cr;
        out.append(&mut self.held);
        if std::mem::take(&mut self.cr) && !close {
            out.push(b'\r');
        }
        if close && open {
            out.push(b'\n');
        }
        self.open = false;
        self.decided = false;
    }

    /// `data` converted whole, every line closed.
    pub(super) fn convert(data: &[u8], quote: bool, out: &mut Vec<u8>) {
        let mut lines = LfLines::new(quote);
        lines.push(data, out);
        lines.finish(true, out);
    }
}

/// What a spool writes into: a file, or a store's file with what it knows
/// about it.
pub(super) trait SpoolFile: Send + 'static {
    /// The file the runs go to.
    fn file(&self) -> &File;
}

impl SpoolFile for File {
    fn file(&self) -> &File {
        self
    }
}

/// Opens a spool's file when its first run is written (on the blocking pool).
pub(super) type Opener<T> = Box<dyn FnOnce() -> io::Result<T> + Send>;

/// A body being spooled: converted bytes in memory, runs of them in a file.
pub(super) struct Spool<T> {
    lines: LfLines,
    buf: Vec<u8>,
    file: Option<T>,
    opener: Option<Opener<T>>,
}

impl<T> std::fmt::Debug for Spool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("buffered", &self.buf.len())
            .field("in_file", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

/// A spool's content at its end: the file (if a run went there) and the
/// bytes still in memory after it.
pub(super) struct Spooled<T> {
    file: Option<T>,
    tail: Vec<u8>,
    opener: Option<Opener<T>>,
}

impl<T: SpoolFile> Spool<T> {
    /// A spool whose file `opener` makes; `head` goes first, unconverted.
    pub(super) fn new(head: Vec<u8>, quote: bool, opener: Opener<T>) -> Self {
        Spool {
            lines: LfLines::new(quote),
            buf: head,
            file: None,
            opener: Some(opener),
        }
    }

    /// Converted `data` into the spool, as a complete part: the trace
    /// header before the body (its lines are closed).
    pub(super) fn push_closed(&mut self, data: &[u8]) {
        LfLines::convert(data, self.lines.quote, &mut self.buf);
    }

    /// Whether its file may exist: a run went (or is going) to it.
    pub(super) fn opened(&self) -> bool {
        self.opener.is_none()
    }

    /// The next chunk; a full run goes to the file (waiting for it).
    pub(super) async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.lines.push(chunk, &mut self.buf);
        if self.buf.len() >= RUN {
            self.flush_run().await?;
        }
        Ok(())
    }

    async fn flush_run(&mut self) -> io::Result<()> {
        let file = self.file.take();
        let opener = self.opener.take();
        let mut buf = std::mem::take(&mut self.buf);
        let (res, file, opener, buf) = blocking::unblock(move || {
            let (file, opener) = match (file, opener) {
                (Some(f), o) => (f, o),
                (None, Some(open)) => match open() {
                    Ok(f) => (f, None),
                    Err(e) => return (Err(e), None, None, buf),
                },
                (None, None) => return (Err(io::Error::other("spool closed")), None, None, buf),
            };
            let res = file.file().write_all(&buf);
            buf.clear();
            (res, Some(file), opener, buf)
        })
        .await;
        self.file = file;
        self.opener = opener;
        self.buf = buf;
        res
    }

    /// The end of the body: what the spool holds, for the store to finish
    /// on the blocking pool. `close`: see [`LfLines::finish`].
    pub(super) fn end(mut self, close: bool, trailer: &[u8]) -> Spooled<T> {
        self.lines.finish(close, &mut self.buf);
        self.buf.extend_from_slice(trailer);
        Spooled {
            file: self.file,
            tail: self.buf,
            opener: self.opener,
        }
    }
}

impl Spooled<File> {
    /// Copies everything into `out` (the file from its start, then the
    /// tail); the file was never opened when all of it is in the tail.
    pub(super) fn copy_to(self, out: &mut impl Write) -> io::Result<()> {
        if let Some(mut f) = self.file.as_ref() {
            f.seek(SeekFrom::Start(0))?;
            io::copy(&mut f, out)?;
        }
        out.write_all(&self.tail)
    }
}

impl<T: SpoolFile> Spooled<T> {
    /// The file with every byte written (opened now if it never was), not
    /// yet synced.
    pub(super) fn into_file(self) -> io::Result<T> {
        let file = match (self.file, self.opener) {
            (Some(f), _) => f,
            (None, Some(open)) => open()?,
            (None, None) => return Err(io::Error::other("spool closed")),
        };
        file.file().write_all(&self.tail)?;
        Ok(file)
    }
}

/// An anonymous temporary file in `dir` (or the system's temporary
/// directory): gone with its last handle, so nothing is ever left behind.
pub(super) fn anonymous_in(dir: Option<Arc<std::path::Path>>) -> Opener<File> {
    Box::new(move || match dir {
        Some(d) => tempfile::tempfile_in(&*d),
        None => tempfile::tempfile(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `data` cut at every pair of positions converts the same as whole.
    fn same_in_pieces(data: &[u8], quote: bool, close: bool) {
        let mut whole = Vec::new();
        let mut l = LfLines::new(quote);
        l.push(data, &mut whole);
        l.finish(close, &mut whole);
        for i in 0..=data.len() {
            for j in i..=data.len() {
                let mut out = Vec::new();
                let mut l = LfLines::new(quote);
                for part in [&data[..i], &data[i..j], &data[j..]] {
                    l.push(part, &mut out);
                }
                l.finish(close, &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&whole),
                    "cut at {i},{j} of {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }

    fn convert(data: &[u8], quote: bool, close: bool) -> String {
        let mut out = Vec::new();
        let mut l = LfLines::new(quote);
        l.push(data, &mut out);
        l.finish(close, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn crlf_becomes_lf_and_a_lone_cr_stays() {
        assert_eq!(convert(b"a\r\nb\rc\r\n\r\n", false, false), "a\nb\rc\n\n");
        assert_eq!(convert(b"a\r\nlast\r", false, false), "a\nlast\r");
        assert_eq!(convert(b"a\r\nlast\r", false, true), "a\nlast\n");
        assert_eq!(convert(b"a\r\nlast", false, true), "a\nlast\n");
        assert_eq!(convert(b"", false, true), "");
    }

    #[test]
    fn mboxrd_quoting() {
        let text = b"From a\r\n>From b\r\n>>From c\r\nFrom\r\nFromage\r\n >From d\r\nx From e\r\n";
        assert_eq!(
            convert(text, true, true),
            ">From a\n>>From b\n>>>From c\nFrom\nFromage\n >From d\nx From e\n"
        );
        assert_eq!(convert(b">>", true, true), ">>\n");
        assert_eq!(convert(b"Fro", true, true), "Fro\n");
        assert_eq!(convert(b"Fro", true, false), "Fro");
    }

    #[test]
    fn chunk_boundaries_change_nothing() {
        let text: &[u8] = b"From x\r\n>From y\r\na\rb\r\n>>Fr\r\n\r\nFrom \r\nend\r";
        for quote in [false, true] {
            for close in [false, true] {
                same_in_pieces(text, quote, close);
            }
        }
    }
}
