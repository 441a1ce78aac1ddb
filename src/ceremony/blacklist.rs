//! `kms-ceremony registry blacklist-export` and `blacklist-verify`: the signed blacklist for
//! terminals (notice N5; the format is `crate::registry::blacklist`'s and README's).
//!
//! - `blacklist-export [--since N] --out FILE [--public-key-out KEY]`: the list (in full, or
//!   the increments after version N) as the service signs it in its HSM; with
//!   `--public-key-out`, the signing key's public key as hex (SEC1), the key terminals hold.
//!   The list names its signature scheme (SM2DSA / SM3 or ECDSA P-256), the signing key's.
//! - `blacklist-verify FILE --public-key KEY`: exit 0 and the list's scheme, version and size
//!   when the signature (in the scheme the list names) verifies and the entries are in order; exit 2 with the reason otherwise
//!   (tampered, another key, out of order).

use std::path::Path;

use crate::error::{Error, Result};
use crate::proto::kms::v1 as pb;
use crate::registry::blacklist;

use super::registry::{Connection, connect, file_error, remote};

/// `blacklist-export`: writes the list, and the public key if asked; the text to print.
pub async fn export(
    since: u64,
    out: &Path,
    public_key_out: Option<&Path>,
    connection: &Connection,
) -> Result<String> {
    let mut client = connect(connection, false).await?;
    let signed = client
        .export_blacklist(pb::ExportBlacklistRequest {
            since_version: since,
        })
        .await
        .map_err(remote)?
        .into_inner();
    // Checked before it is written: a list this command writes is one it would accept.
    let verified = blacklist::verify(&signed.list, &signed.public_key)?;
    std::fs::write(out, &signed.list).map_err(file_error(out))?;
    let mut text = describe(&verified);
    text.push_str(&format!("list {}\n", out.display()));
    if let Some(path) = public_key_out {
        std::fs::write(path, format!("{}\n", hex::encode_upper(&signed.public_key)))
            .map_err(file_error(path))?;
        text.push_str(&format!("public key {}\n", path.display()));
    }
    Ok(text)
}

/// `blacklist-verify`: the list's summary when genuine.
pub fn verify(list: &Path, public_key: &Path) -> Result<String> {
    let bytes = std::fs::read(list).map_err(file_error(list))?;
    let key_text = std::fs::read_to_string(public_key).map_err(file_error(public_key))?;
    let key = hex::decode(key_text.trim())
        .map_err(|_| Error::ListNotGenuine(blacklist::Fault::PublicKey))?;
    let verified = blacklist::verify(&bytes, &key)?;
    Ok(format!("genuine\n{}", describe(&verified)))
}

fn describe(v: &blacklist::Verified) -> String {
    format!(
        "algorithm {}\nissuer {}\nkind {}\nfrom {}\nto {}\nentries {}\n",
        v.scheme.name(),
        v.issuer,
        if v.full { "full" } else { "delta" },
        v.from,
        v.to,
        v.entries.len()
    )
}
