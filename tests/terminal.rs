//! `kms-ceremony hsm init`'s hand-over on a real terminal (a pseudo-terminal): each custodian
//! is asked to make sure nobody else sees the screen, sees their own share once, must type its
//! check value back (a wrong one is asked again), and the screen and its scroll-back are
//! cleared before the next custodian. No share is on the ceremony record (stdout, a pipe), no
//! share is on the screen twice or in another custodian's turn, and the shares handed over
//! unseal the HSM (two of three).

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hsm_api::{Hsm as _, LmkShare};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use zeroize::Zeroizing;

/// How long a step may take before the test fails (never a pace: every wait ends on output).
const PATIENCE: Duration = Duration::from_secs(60);
const CLEAR: &str = "\x1b[2J\x1b[3J\x1b[H";

/// The controlling side of a pseudo-terminal, read by a thread.
struct Screen {
    input: std::fs::File,
    output: Receiver<Vec<u8>>,
    /// Everything shown so far.
    seen: String,
    /// Where the next wait starts looking.
    cursor: usize,
}

impl Screen {
    /// Waits until `needle` appears after the cursor; returns what came before it and moves
    /// the cursor past it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self.seen[self.cursor..].find(needle) {
                let before = self.seen[self.cursor..self.cursor + at].to_owned();
                self.cursor += at + needle.len();
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => panic!(
                    "no {needle:?} on the terminal ({e}); it shows:\n{}",
                    self.seen
                ),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        self.input.write_all(line.as_bytes()).unwrap();
        self.input.write_all(b"\n").unwrap();
        self.input.flush().unwrap();
    }
}

/// The text after `label` up to the end of its line, trimmed.
fn after<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
        + label.len();
    text[start..]
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim()
}

#[test]
fn hsm_init_hands_each_share_to_its_custodian_alone_on_a_terminal() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("hsm");
    let custodians = ["officer-1", "officer-2", "officer-3"];
    let mut args = vec![
        "hsm".to_owned(),
        "init".to_owned(),
        "--state-dir".to_owned(),
        state.display().to_string(),
        "--threshold".to_owned(),
        "2".to_owned(),
    ];
    for c in custodians {
        args.extend(["--custodian".to_owned(), c.to_owned()]);
    }
    // stdin and stderr are the terminal; stdout (the ceremony record) is a pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kms-ceremony"))
        .args(&args)
        .stdin(terminal.try_clone().unwrap())
        .stderr(terminal)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut record = child.stdout.take().unwrap();
    let record = std::thread::spawn(move || {
        let mut text = String::new();
        record.read_to_string(&mut text).unwrap();
        text
    });

    let master = std::fs::File::from(master);
    let (tx, rx) = mpsc::channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends at EIO once the child has exited and closed the terminal.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Screen {
        input: master,
        output: rx,
        seen: String::new(),
        cursor: 0,
    };

    let mut handed = Vec::new();
    for (i, custodian) in custodians.iter().enumerate() {
        let before = screen.wait_for(&format!(
            "Custodian {custodian}: make sure nobody else can see this screen, then press Enter."
        ));
        assert!(
            !before.contains("lmk1-"),
            "a share before {custodian}'s turn: {before:?}"
        );
        screen.type_line("");
        let shown = screen.wait_for("Type the check value back to confirm: ");
        let share = after(&shown, "your LMK share (write it down; it is shown once):").to_owned();
        let check = after(&shown, "check value ").to_owned();
        assert!(share.starts_with(&format!("lmk1-0{}-", i + 1)), "{shown:?}");
        if i == 0 {
            // A wrong check value is asked again; the share is not shown again.
            screen.type_line("not-the-check-value");
            let again = screen.wait_for("That is not the check value shown; try again.");
            assert!(!again.contains(&share));
            let again = screen.wait_for("Type the check value back to confirm: ");
            assert!(!again.contains(&share));
        }
        screen.type_line(&check.to_ascii_lowercase());
        let rest = screen.wait_for(CLEAR);
        assert!(!rest.contains(&share), "{rest:?}");
        handed.push((share, check));
    }
    assert!(child.wait().unwrap().success());
    let record = record.join().unwrap();

    for (i, (share, check)) in handed.iter().enumerate() {
        assert_eq!(
            screen.seen.matches(share.as_str()).count(),
            1,
            "share {i} on the screen once"
        );
        assert!(
            !record.contains(share.as_str()),
            "a share on the record: {record}"
        );
        assert!(
            record.contains(&format!(
                "{}: share handed over (check value {check})",
                custodians[i]
            )),
            "{record}"
        );
    }

    // The shares handed over are the LMK's: two of three unseal it.
    let hsm = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(state),
        ..Default::default()
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let first = runtime
        .block_on(hsm.unseal(LmkShare::new(Zeroizing::new(handed[2].0.clone()))))
        .unwrap();
    assert!(!first.unsealed);
    let second = runtime
        .block_on(hsm.unseal(LmkShare::new(Zeroizing::new(handed[0].0.clone()))))
        .unwrap();
    assert!(second.unsealed);
    let kcv = runtime.block_on(hsm.status()).unwrap().lmk_kcv.unwrap();
    assert_eq!(
        record.lines().last(),
        Some(kcv.to_hex().as_str()),
        "{record}"
    );
}
