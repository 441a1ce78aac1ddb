//! The published blacklist (notice N5): the versioned log of blacklisted cards, the list
//! terminals load (in full, or the increments since a version they hold), and its check.
//!
//! Every blacklisting is one entry of table `blacklist`, keyed by its version (1, 2, …, in the
//! blacklisting's own write); `meta` keeps the last version. A list is this text (UTF-8, `\n`
//! line ends, README "Blacklist for terminals"):
//!
//! ```text
//! sscard-blacklist 2
//! algorithm sm2-sm3    (or: ecdsa-p256-sha256)
//! issuer 440000
//! kind full            (or: kind delta)
//! from 0               (full: 0; delta: the version the terminal holds)
//! to 17                (the list's version: the last entry's)
//! entries 2
//! 3 440100D156000005000000000000E001
//! 17 440300D1560000050000000000001234
//! signature 3045…      (r ‖ s in 128 hex, over every byte above it)
//! ```
//!
//! Entries are `version card_identifier`, versions strictly increasing within `(from, to]`. The
//! signature is the HSM's ([`hsm_api::Hsm::sign`], key usage `ListSigning`) in the scheme the
//! `algorithm` line names, the signing key's: SM2DSA with SM3 (GB/T 32918.2, user id
//! `1234567812345678`) or ECDSA P-256 with SHA-256. A list of format 1 (`sscard-blacklist 1`,
//! no `algorithm` line, as published before SM2) is ECDSA P-256. Anyone holding the public key
//! (SEC1, from `kms-ceremony registry blacklist-export --public-key-out`) checks it with
//! [`verify`].

use hsm_api::ListSignature;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::{Snapshot, Table, Tx};

/// The `meta` key of the last blacklist version.
pub const VERSION_KEY: &str = "blacklist_version";
/// The `meta` key of the list-signing key's token.
pub const SIGNING_KEY: &str = "blacklist_signing_key_token";
/// The `meta` key of the list-signing key's scheme ([`ListSignature::name`]); absent for a key
/// made before SM2, which is P-256.
pub const SIGNING_SCHEME: &str = "blacklist_signing_scheme";
/// The first line of every list this version writes.
pub const MAGIC: &str = "sscard-blacklist 2";
/// The first line of a list of format 1 (P-256, no `algorithm` line), still accepted.
pub const MAGIC_V1: &str = "sscard-blacklist 1";

/// One blacklisting, as stored (table `blacklist`, by [`entry_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    pub card_identifier: String,
    pub time_ms: u64,
}

/// The table key of version `v`: zero-padded, so the table iterates in version order.
pub fn entry_key(version: u64) -> String {
    format!("{version:020}")
}

/// Inside a blacklisting's write: appends the card as the next version; answers it.
pub fn append(tx: &mut Tx<'_>, card_identifier: &str) -> Result<u64> {
    let version = tx.get::<u64>(Table::Meta, VERSION_KEY)?.unwrap_or(0) + 1;
    let entry = Entry {
        version,
        card_identifier: card_identifier.to_owned(),
        time_ms: tx.now_ms(),
    };
    tx.put(Table::Blacklist, &entry_key(version), &entry)?;
    tx.put(Table::Meta, VERSION_KEY, &version)?;
    Ok(version)
}

/// The text to sign in `scheme`: every entry after version `since` (0: the full list), from one
/// snapshot.
pub fn document(
    snap: &Snapshot,
    issuer: &str,
    since: u64,
    scheme: ListSignature,
) -> Result<String> {
    let to = snap.get::<u64>(Table::Meta, VERSION_KEY)?.unwrap_or(0);
    let since = since.min(to);
    let entries: Vec<Entry> = increments(snap, since)?;
    let kind = if since == 0 { "full" } else { "delta" };
    let mut text = format!(
        "{MAGIC}\nalgorithm {}\nissuer {issuer}\nkind {kind}\nfrom {since}\nto {to}\nentries {}\n",
        scheme.name(),
        entries.len()
    );
    for e in &entries {
        text.push_str(&format!("{} {}\n", e.version, e.card_identifier));
    }
    Ok(text)
}

/// A signed list: the document and its `signature` line.
pub fn signed(document: &str, signature: &[u8]) -> String {
    format!("{document}signature {}\n", hex::encode_upper(signature))
}

/// The entries after version `since`, in version order: a range read from `since + 1`, so a
/// terminal's increment costs the increment, not the list.
pub fn increments(snap: &Snapshot, since: u64) -> Result<Vec<Entry>> {
    Ok(snap
        .scan_from::<Entry>(Table::Blacklist, "", &entry_key(since.saturating_add(1)))?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// What a genuine list says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signature scheme (format 1: ECDSA P-256).
    pub scheme: ListSignature,
    pub issuer: String,
    /// `true` for a full list, `false` for the increments since [`Verified::from`].
    pub full: bool,
    pub from: u64,
    pub to: u64,
    /// `(version, card identifier)`, in version order.
    pub entries: Vec<(u64, String)>,
}

/// Why a list is not genuine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("not a list: {0}")]
    Format(&'static str),
    #[error("the signature does not verify under this public key (tampered, or another key)")]
    Signature,
    #[error("entries out of order at version {0}")]
    Order(u64),
    #[error("the public key is not a SEC1 point of the list's curve")]
    PublicKey,
}

/// Checks `signature` (`r ‖ s`, 64 bytes) over `data` under `public_key` (SEC1) in `scheme`.
pub fn verify_signature(
    scheme: ListSignature,
    public_key: &[u8],
    data: &[u8],
    signature: &[u8],
) -> std::result::Result<(), Fault> {
    match scheme {
        ListSignature::EcdsaP256 => {
            use p256::ecdsa::signature::Verifier;
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
                .map_err(|_| Fault::PublicKey)?;
            let signature =
                p256::ecdsa::Signature::from_slice(signature).map_err(|_| Fault::Signature)?;
            key.verify(data, &signature).map_err(|_| Fault::Signature)
        }
        ListSignature::Sm2 => {
            use sm2::dsa::signature::Verifier;
            let key =
                sm2::dsa::VerifyingKey::from_sec1_bytes(ListSignature::SM2_USER_ID, public_key)
                    .map_err(|_| Fault::PublicKey)?;
            let signature =
                sm2::dsa::Signature::from_slice(signature).map_err(|_| Fault::Signature)?;
            key.verify(data, &signature).map_err(|_| Fault::Signature)
        }
    }
}

/// Checks a signed list under `public_key` (SEC1): the signature, in the scheme its
/// `algorithm` line names, over every byte before the `signature` line, then the order:
/// versions strictly increasing within `(from, to]`, as many as `entries` says, the last one
/// `to` (an empty list has `to` = `from`).
pub fn verify(list: &[u8], public_key: &[u8]) -> std::result::Result<Verified, Fault> {
    let text = std::str::from_utf8(list).map_err(|_| Fault::Format("not UTF-8"))?;
    let body_end = text
        .rfind("signature ")
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .ok_or(Fault::Format("no signature line"))?;
    let (body, signature_line) = text.split_at(body_end);
    let hex_sig = signature_line
        .strip_prefix("signature ")
        .and_then(|s| s.strip_suffix('\n'))
        .ok_or(Fault::Format("bad signature line"))?;
    let raw = hex::decode(hex_sig).map_err(|_| Fault::Format("signature not hex"))?;

    let mut lines = body.lines();
    // The format line and the scheme come first: they are under the signature too.
    let scheme = match lines.next() {
        Some(MAGIC_V1) => ListSignature::EcdsaP256,
        Some(MAGIC) => lines
            .next()
            .and_then(|l| l.strip_prefix("algorithm "))
            .and_then(ListSignature::from_name)
            .ok_or(Fault::Format("algorithm"))?,
        _ => return Err(Fault::Format("sscard-blacklist")),
    };
    verify_signature(scheme, public_key, body.as_bytes(), &raw)?;

    let mut field = |name: &'static str| -> std::result::Result<String, Fault> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .map(str::to_owned)
            .ok_or(Fault::Format(name))
    };
    let issuer = field("issuer")?;
    let full = match field("kind")?.as_str() {
        "full" => true,
        "delta" => false,
        _ => return Err(Fault::Format("kind")),
    };
    let number = |s: String, name| s.parse::<u64>().map_err(|_| Fault::Format(name));
    let from = number(field("from")?, "from")?;
    let to = number(field("to")?, "to")?;
    let count = number(field("entries")?, "entries")?;
    if full != (from == 0) || from > to {
        return Err(Fault::Format("from"));
    }
    let mut entries = Vec::new();
    let mut last = from;
    for line in lines {
        let (v, id) = line.split_once(' ').ok_or(Fault::Format("entry"))?;
        let v: u64 = v.parse().map_err(|_| Fault::Format("entry"))?;
        if v <= last || v > to {
            return Err(Fault::Order(v));
        }
        last = v;
        entries.push((v, id.to_owned()));
    }
    if entries.len() as u64 != count {
        return Err(Fault::Format("entries"));
    }
    if last != to {
        return Err(Fault::Order(to));
    }
    Ok(Verified {
        scheme,
        issuer,
        full,
        from,
        to,
        entries,
    })
}

/// The stored token of the list-signing key and its scheme, if one was made.
pub fn signing_key(snap: &Snapshot) -> Result<Option<(String, ListSignature)>> {
    let Some(token) = snap.get::<String>(Table::Meta, SIGNING_KEY)? else {
        return Ok(None);
    };
    let scheme = scheme_of(snap.get::<String>(Table::Meta, SIGNING_SCHEME)?)?;
    Ok(Some((token, scheme)))
}

/// The scheme a stored name says; none stored: a key made before SM2, P-256.
fn scheme_of(name: Option<String>) -> Result<ListSignature> {
    match name {
        None => Ok(ListSignature::EcdsaP256),
        Some(name) => ListSignature::from_name(&name).ok_or(crate::error::Error::StoreCorrupt(
            "the list-signing key's scheme",
        )),
    }
}

/// Inside a write: stores `token` (a key of `scheme`) as the list-signing key unless one is
/// there; answers the one that is kept, with its scheme.
pub fn keep_signing_key(
    tx: &mut Tx<'_>,
    token: String,
    scheme: ListSignature,
) -> Result<(String, ListSignature)> {
    if let Some(kept) = tx.get::<String>(Table::Meta, SIGNING_KEY)? {
        let kept_scheme = scheme_of(tx.get::<String>(Table::Meta, SIGNING_SCHEME)?)?;
        return Ok((kept, kept_scheme));
    }
    tx.put(Table::Meta, SIGNING_KEY, &token)?;
    tx.put(Table::Meta, SIGNING_SCHEME, &scheme.name().to_owned())?;
    Ok((token, scheme))
}
