//! The tamper-evident audit trail (notice N10).
//!
//! Every key release, refusal and administrative act is an [`AuditRecord`], written in the same
//! store transaction as the state change it describes. Records form a hash chain:
//! `hash = SHA-256("sscard-kms audit v1" ‖ canonical JSON of the record without its hash)`, and
//! each record names the hash of the one before. After each group commit the chain head is
//! sealed: the HSM's audit key MACs `seq ‖ head hash` ([`AuditSeal`]), so rewriting the chain
//! needs the HSM, not only write access to the data directory.
//!
//! No record holds key bytes; card identifiers are masked where policy says.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash a chain starts from.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What happened, as a caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: the caller's certificate URI, or `system`.
    pub actor: String,
    /// The operation, e.g. `inject-card-keys`.
    pub action: String,
    /// What it was about (masked identifiers, key names, KCVs — never key bytes).
    pub subject: String,
    /// `ok`, or `denied: <reason>`, or `failed: <reason>`.
    pub outcome: String,
}

impl AuditEvent {
    /// A successful act.
    pub fn ok(actor: impl Into<String>, action: &str, subject: impl Into<String>) -> AuditEvent {
        AuditEvent {
            actor: actor.into(),
            action: action.to_owned(),
            subject: subject.into(),
            outcome: "ok".to_owned(),
        }
    }

    /// A refusal, with the reason given to the caller. The subject and the reason are bounded
    /// to [`MAX_REFUSAL_TEXT`] bytes each ([`bounded`]): any caller can be refused, and what it
    /// sent must not choose the size of an fsync'd, hashed record.
    pub fn denied(
        actor: impl Into<String>,
        action: &str,
        subject: impl AsRef<str>,
        reason: impl std::fmt::Display,
    ) -> AuditEvent {
        AuditEvent {
            actor: bounded(&actor.into()),
            action: action.to_owned(),
            subject: bounded(subject.as_ref()),
            outcome: bounded(&format!("denied: {reason}")),
        }
    }
}

/// The most bytes of a refusal's subject (and of its reason) an audit record keeps.
pub const MAX_REFUSAL_TEXT: usize = 256;

/// `text` as a refusal record keeps it: control characters as `?`, and past
/// [`MAX_REFUSAL_TEXT`] bytes cut at a character boundary and marked with the length refused.
pub fn bounded(text: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    if text.len() <= MAX_REFUSAL_TEXT {
        return clean(text);
    }
    let mut end = MAX_REFUSAL_TEXT - 32;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes]", clean(&text[..end]), text.len())
}

/// One link of the chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    /// Hex of the previous record's hash (of [`GENESIS`] for the first).
    pub prev: String,
    /// Hex of this record's hash.
    pub hash: String,
}

/// The HSM's MAC over the chain head after a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSeal {
    /// The last record covered.
    pub seq: u64,
    /// Hex of that record's hash.
    pub head: String,
    /// Hex of the HSM's CMAC over [`seal_message`].
    pub mac: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time_ms: u64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    outcome: &'a str,
    prev: &'a str,
}

/// The hash of a record's content (everything but `hash`).
pub fn record_hash(record: &AuditRecord) -> [u8; 32] {
    let canonical = Canonical {
        seq: record.seq,
        time_ms: record.time_ms,
        actor: &record.actor,
        action: &record.action,
        subject: &record.subject,
        outcome: &record.outcome,
        prev: &record.prev,
    };
    // Serialising a struct of strings and integers cannot fail.
    let json = serde_json::to_vec(&canonical).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"sscard-kms audit v1\0");
    h.update(&json);
    h.finalize().into()
}

/// The bytes the HSM MACs to seal the chain at `seq` with head `head`.
pub fn seal_message(seq: u64, head: &[u8; 32]) -> Vec<u8> {
    let mut m = b"sscard-kms audit seal v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m
}

/// An auditor's anchor of the chain outside the store: the head at a moment, MACed by the HSM's
/// audit key over [`checkpoint_message`]. Kept by the auditor (a JSON file); `kms-ceremony audit
/// verify --checkpoint FILE` then refuses a chain that no longer holds that record with that
/// hash — a trail cut short, even at a seal, and its head rewritten to match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// The last record covered.
    pub seq: u64,
    /// Hex of that record's hash.
    pub head: String,
    /// When the checkpoint was taken (Unix milliseconds).
    pub time_ms: u64,
    /// Hex of the HSM's CMAC over [`checkpoint_message`].
    pub mac: String,
}

/// The bytes the HSM MACs for a checkpoint (a different domain from [`seal_message`]: a seal
/// cannot be passed off as a checkpoint, nor the reverse).
pub fn checkpoint_message(seq: u64, head: &[u8; 32], time_ms: u64) -> Vec<u8> {
    let mut m = b"sscard-kms audit checkpoint v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

/// The chain's head: the next sequence number and the last hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    pub last_hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            next_seq: 1,
            last_hash: GENESIS,
        }
    }
}

impl ChainHead {
    /// Links `event` to the chain and advances the head.
    pub fn append(&mut self, event: AuditEvent, time_ms: u64) -> AuditRecord {
        let mut record = AuditRecord {
            seq: self.next_seq,
            time_ms,
            actor: event.actor,
            action: event.action,
            subject: event.subject,
            outcome: event.outcome,
            prev: hex::encode_upper(self.last_hash),
            hash: String::new(),
        };
        let hash = record_hash(&record);
        record.hash = hex::encode_upper(hash);
        self.next_seq += 1;
        self.last_hash = hash;
        record
    }
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A record whose sequence number is not the next one (a record removed or inserted).
    #[error("record {found}: expected sequence number {expected}")]
    Gap { expected: u64, found: u64 },
    /// A record that does not name its predecessor's hash.
    #[error("record {seq}: does not link to record {}", seq - 1)]
    Link { seq: u64 },
    /// A record whose content does not match its hash: it was edited.
    #[error("record {seq}: content does not match its hash (edited)")]
    Content { seq: u64 },
    /// A seal whose head is not the hash of the record it names.
    #[error("seal at record {seq}: head does not match the chain")]
    SealHead { seq: u64 },
    /// A seal whose MAC does not verify under the HSM's audit key.
    #[error("seal at record {seq}: MAC does not verify")]
    SealMac { seq: u64 },
    /// The store's head (`meta/audit_head`) names another last record than the chain's: records
    /// were removed (or the head rewritten).
    #[error(
        "the store's head is not the chain's last record (head: record {head}; chain: {chain_end} records)"
    )]
    Head { head: u64, chain_end: u64 },
    /// The chain does not reach a checkpoint the auditor kept: it was cut short.
    #[error("truncated: the checkpoint names record {seq}, the chain ends at record {chain_end}")]
    Truncated { seq: u64, chain_end: u64 },
    /// The record a checkpoint names has another hash: the chain was rewritten.
    #[error("record {seq} is not the one the checkpoint names (rewritten)")]
    CheckpointHead { seq: u64 },
    /// The checkpoint's own MAC does not verify under the HSM's audit key.
    #[error("the checkpoint of record {seq}: MAC does not verify")]
    CheckpointMac { seq: u64 },
}

/// Walks `records` (in sequence order) and returns the hashes by sequence number, or the first break.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<Vec<[u8; 32]>, ChainBreak> {
    let mut head = ChainHead::default();
    let mut hashes = Vec::new();
    for record in records {
        if record.seq != head.next_seq {
            return Err(ChainBreak::Gap {
                expected: head.next_seq,
                found: record.seq,
            });
        }
        if record.prev != hex::encode_upper(head.last_hash) {
            return Err(ChainBreak::Link { seq: record.seq });
        }
        let hash = record_hash(record);
        if record.hash != hex::encode_upper(hash) {
            return Err(ChainBreak::Content { seq: record.seq });
        }
        head.next_seq += 1;
        head.last_hash = hash;
        hashes.push(hash);
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                head.append(
                    AuditEvent::ok("sscard://officer/o1", "test", format!("#{i}")),
                    i as u64,
                )
            })
            .collect()
    }

    #[test]
    fn refusals_keep_a_bounded_subject() {
        let huge = "界".repeat(1 << 20);
        let e = AuditEvent::denied("a", "x", &huge, "r\nforged: ok");
        assert!(e.subject.len() <= MAX_REFUSAL_TEXT, "{}", e.subject.len());
        assert!(e.subject.ends_with(&format!("[{} bytes]", huge.len())));
        assert_eq!(e.outcome, "denied: r?forged: ok");
        let short = AuditEvent::denied("a", "x", "PSAM A1", "no");
        assert_eq!(short.subject, "PSAM A1");
    }

    #[test]
    fn an_intact_chain_verifies() {
        let records = chain(5);
        assert_eq!(verify_chain(&records).unwrap().len(), 5);
    }

    #[test]
    fn edits_removals_and_relinks_are_found() {
        let mut edited = chain(5);
        edited[2].subject = "#99".into();
        assert_eq!(verify_chain(&edited), Err(ChainBreak::Content { seq: 3 }));

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(
            verify_chain(&removed),
            Err(ChainBreak::Gap {
                expected: 2,
                found: 3
            })
        );

        // An edit with its own hash recomputed still breaks the next link.
        let mut rehashed = chain(5);
        rehashed[2].subject = "#99".into();
        rehashed[2].hash = hex::encode_upper(record_hash(&rehashed[2]));
        assert_eq!(verify_chain(&rehashed), Err(ChainBreak::Link { seq: 4 }));
    }
}
