//! The `smtpd` entry (`cli::smtpd`) in a re-executed copy of this test
//! binary: flags, the `addr=` log line, Maildir delivery, SIGTERM.
//!
//! A `harness = false` test: run with `SMTPD_CHILD=1` it is the server.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

fn main() -> ExitCode {
    if std::env::var_os("SMTPD_CHILD").is_some() {
        return match smtp_server::cli::Setup::from_env() {
            Ok(setup) => smtp_blocking::cli::smtpd(setup),
            Err(code) => code,
        };
    }
    // libtest-style arguments (`--list`, filters) are not ours: ignore them.
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    smtpd_maildir_and_sigterm();
    println!("test smtpd_maildir_and_sigterm ... ok");
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
    ExitCode::SUCCESS
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

fn smtpd_maildir_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("SMTPD_CHILD", "1")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "cli.test",
            "--maildir",
        ])
        .arg(dir.path())
        .args(["--grace-period", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "smtpd exited before listening"
        );
        if let Some(i) = line.find("addr=") {
            break line[i + 5..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    assert!(reply(&mut r).starts_with("220 cli.test"));
    w.write_all(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        .unwrap();
    for _ in 0..4 {
        reply(&mut r);
    }
    w.write_all(b"Subject: cli\r\n\r\nhello\r\n.\r\n").unwrap();
    assert!(reply(&mut r).starts_with("250 2.0.0"));
    // SIGTERM: the idle session gets 421 4.3.2 and the process exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(reply(&mut r).starts_with("421 4.3.2"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = drain.join().unwrap();
    assert!(log.contains("shutting down"), "{log}");
    let new = dir.path().join("b@y").join("new");
    assert_eq!(std::fs::read_dir(new).unwrap().count(), 1);
}
