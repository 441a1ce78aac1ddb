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

    /// A refusal, with the reason given to the caller.
    pub fn denied(
        actor: impl Into<String>,
        action: &str,
        subject: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> AuditEvent {
        AuditEvent {
            actor: actor.into(),
            action: action.to_owned(),
            subject: subject.into(),
            outcome: format!("denied: {reason}"),
        }
    }
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
