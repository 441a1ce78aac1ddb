//! Helpers shared by the integration tests.
//!
//! - this module: running the `kms-ceremony` binary;
//! - [`harness`]: the key service over real mutual TLS on 127.0.0.1 (seeded fixture, server
//!   start/stop/reopen, clients per identity, audit and log access);
//! - [`applicants`]: applicant files (real-looking rows, UTF-8 or GBK) and their submission;
//! - [`chain`]: what the service should deliver, computed independently from the published
//!   test keys (key hierarchy, identifiers, WRITE KEY commands);
//! - [`readme`]: the reason-code table of README, as the tests hold it against the service.

pub mod applicants;
pub mod chain;
pub mod harness;
pub mod readme;

use std::io::Write;
use std::process::{Command, Stdio};

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last line of stdout: where every `calc` command puts its result.
    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Runs `kms-ceremony` with `args`, writing `stdin` to its standard input.
pub fn ceremony(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kms-ceremony"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kms-ceremony starts");
    // A command that refuses its arguments exits without reading stdin: the pipe may then be
    // closed before (or while) we write, which is not the test's failure.
    match child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing kms-ceremony's stdin: {e}"),
    }
    let out = child.wait_with_output().expect("kms-ceremony finishes");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
