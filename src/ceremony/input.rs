//! Reading secrets from standard input.
//!
//! On a terminal the line is read with echo off (a key typed by its custodian is not left on the
//! screen); from a pipe it is read as it comes. Every buffer that held a secret is zeroized.

use std::io::{BufRead, IsTerminal, Write};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A source of secret lines: standard input, or a buffer in tests.
pub trait SecretLines {
    /// The next line, without its line ending; `what` names it in the prompt and the error.
    fn next_secret(&mut self, what: &'static str) -> Result<Zeroizing<String>>;
}

/// Standard input, with echo off on a terminal.
#[derive(Debug, Default)]
pub struct Stdin;

impl SecretLines for Stdin {
    fn next_secret(&mut self, what: &'static str) -> Result<Zeroizing<String>> {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            let mut err = std::io::stderr();
            // A prompt on stderr keeps stdout for the result.
            let _ = write!(err, "{what}: ");
            let _ = err.flush();
            let line = Zeroizing::new(rpassword::read_password().map_err(Error::Stdin)?);
            return non_empty(line, what);
        }
        read_line(&mut stdin.lock(), what)
    }
}

/// Reads one line from `reader`.
pub fn read_line(reader: &mut impl BufRead, what: &'static str) -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    reader.read_line(&mut line).map_err(Error::Stdin)?;
    let trimmed = Zeroizing::new(line.trim().to_owned());
    non_empty(trimmed, what)
}

fn non_empty(line: Zeroizing<String>, what: &'static str) -> Result<Zeroizing<String>> {
    if line.trim().is_empty() {
        return Err(Error::MissingInput(what));
    }
    Ok(line)
}

impl<R: BufRead> SecretLines for R {
    fn next_secret(&mut self, what: &'static str) -> Result<Zeroizing<String>> {
        read_line(self, what)
    }
}
