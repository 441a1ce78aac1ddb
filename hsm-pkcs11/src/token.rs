//! The key tokens of this backend at rest: a root key wrapped by the LMK inside the token, and
//! the derivation steps that lead from it to the key, bound together by a CMAC the token computes
//! under the LMK's MAC key.
//!
//! ```text
//! P11.1.<usage>.<alg>.<exportability>.<root alg>.<steps>.<wrapped root>.<mac>
//! P11.1.D2.T2.N.T2.P4400000000000000.<hex>.<hex>
//! ```
//!
//! - `usage`: `K1` key-block protection, `D3`/`D2`/`D1` card derivation (national, province,
//!   city), `M3`/`M2`/`M1` master-key derivation, `CK` card key, `MK` card master key, `VT`
//!   vendor transport, `AM` audit MAC. `alg` and `root alg`: `DS`, `T2`, `T3`, `A1`, `A2`, `A3`,
//!   `S4` (DES, 2- and 3-key TDES, AES-128/192/256, SM4). `exportability`: `E` or `N`.
//! - `steps`: `-` for a key that was generated, formed or imported; otherwise the dispersions
//!   from the root, top first, comma-separated, each a method letter (`P` pboc-tdes, `S`
//!   pboc-des, `4` sm4-f-notf-v1, `A` emv-option-a) and the 8-byte factor in hex.
//! - `wrapped root`: `C_WrapKey(CKM_AES_KEY_WRAP_PAD, LMK wrapping key, root)` (RFC 5649), hex.
//! - `mac`: `C_Sign(CKM_AES_CMAC, LMK MAC key, everything before ".<mac>")`, 16 bytes, hex;
//!   checked with `C_Verify` before anything else is read.
//!
//! A partial key of `add_component` (the XOR of the components so far) has a format of its own,
//! `P11P.1.<usage>.<alg>.<exportability>.<received>.<components>.<wrapped sum>.<mac>`, under the
//! same two LMK keys: neither format parses as the other.
//!
//! A derived key is never stored wrapped: it is derived again inside the token from its root at
//! each use, as a sensitive, non-extractable session object gone when the operation ends.

use hsm_api::{
    Algorithm, Dispersion, Error, Exportability, Factor, HierarchyLevel, KeySpec, KeyUsage,
    ListSignature,
};

/// The format marker and version of a token.
const PREFIX: &str = "P11.1.";
/// The most dispersions a token may record (a national root to a card is three).
pub(crate) const MAX_STEPS: usize = 8;

/// A decoded key token (its MAC already checked, or about to be made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) usage: KeyUsage,
    pub(crate) alg: Algorithm,
    pub(crate) exportability: Exportability,
    pub(crate) root_alg: Algorithm,
    pub(crate) steps: Vec<(Dispersion, Factor)>,
    /// The root key wrapped by the LMK (opaque outside the token).
    pub(crate) wrapped: Vec<u8>,
}

impl StoredKey {
    /// The text the MAC covers.
    pub(crate) fn body(&self) -> String {
        let steps = if self.steps.is_empty() {
            "-".to_owned()
        } else {
            self.steps
                .iter()
                .map(|(m, f)| format!("{}{}", method_code(*m), f.to_hex()))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{PREFIX}{}.{}.{}.{}.{steps}.{}",
            usage_code(self.usage),
            alg_code(self.alg),
            match self.exportability {
                Exportability::Exportable => 'E',
                Exportability::NonExportable => 'N',
            },
            alg_code(self.root_alg),
            hex::encode_upper(&self.wrapped),
        )
    }

    /// Whether any part of this key needs SM4 (which no standard token has).
    pub(crate) fn needs_sm4(&self) -> bool {
        self.root_alg == Algorithm::Sm4
            || self.alg == Algorithm::Sm4
            || self
                .steps
                .iter()
                .any(|(m, _)| *m == Dispersion::Sm4Complement)
    }
}

/// Splits a token's text into its body and MAC, and decodes the body. The MAC is the caller's
/// to check (in the token) before it trusts anything decoded here.
pub(crate) fn parse(text: &str) -> Result<(StoredKey, &str, Vec<u8>), Error> {
    let malformed = || Error::KeyBlockHeader {
        field: "PKCS#11 key token".into(),
    };
    let (body, mac_hex) = text.rsplit_once('.').ok_or_else(malformed)?;
    let mac = hex::decode(mac_hex).map_err(|_| malformed())?;
    let rest = body.strip_prefix(PREFIX).ok_or_else(malformed)?;
    let fields: Vec<&str> = rest.split('.').collect();
    let [usage, alg, exportability, root_alg, steps, wrapped] = fields.as_slice() else {
        return Err(malformed());
    };
    let usage = usage_from_code(usage).ok_or_else(malformed)?;
    let alg = alg_from_code(alg).ok_or_else(malformed)?;
    let exportability = match *exportability {
        "E" => Exportability::Exportable,
        "N" => Exportability::NonExportable,
        _ => return Err(malformed()),
    };
    let root_alg = alg_from_code(root_alg).ok_or_else(malformed)?;
    let steps = if *steps == "-" {
        Vec::new()
    } else {
        steps
            .split(',')
            .map(|step| {
                let mut chars = step.chars();
                let method = chars
                    .next()
                    .and_then(method_from_code)
                    .ok_or_else(malformed)?;
                let factor = Factor::from_hex(chars.as_str()).map_err(|_| malformed())?;
                Ok((method, factor))
            })
            .collect::<Result<Vec<_>, Error>>()?
    };
    if steps.len() > MAX_STEPS {
        return Err(malformed());
    }
    let wrapped = hex::decode(wrapped).map_err(|_| malformed())?;
    let key = StoredKey {
        usage,
        alg,
        exportability,
        root_alg,
        steps,
        wrapped,
    };
    Ok((key, body, mac))
}

/// The format marker and version of a partial key (`add_component`): a text no key token
/// parses as, nor the other way round.
const PARTIAL_PREFIX: &str = "P11P.1.";

/// A partial key of `add_component`, decoded: the XOR of the components so far, wrapped by the
/// LMK, with the spec of the key it becomes and the count, under the same CMAC as a token.
///
/// ```text
/// P11P.1.<usage>.<alg>.<exportability>.<received>.<components>.<wrapped sum>.<mac>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartialStored {
    pub(crate) spec: KeySpec,
    pub(crate) received: u8,
    pub(crate) components: u8,
    /// The sum wrapped by the LMK (opaque outside the token).
    pub(crate) wrapped: Vec<u8>,
}

impl PartialStored {
    /// The text the MAC covers.
    pub(crate) fn body(&self) -> String {
        format!(
            "{PARTIAL_PREFIX}{}.{}.{}.{}.{}.{}",
            usage_code(self.spec.usage),
            alg_code(self.spec.algorithm),
            match self.spec.exportability {
                Exportability::Exportable => 'E',
                Exportability::NonExportable => 'N',
            },
            self.received,
            self.components,
            hex::encode_upper(&self.wrapped),
        )
    }
}

/// Splits a partial key's text into its body and MAC, and decodes the body (the MAC is the
/// caller's to check first). A key token is refused.
pub(crate) fn parse_partial(text: &str) -> Result<(PartialStored, &str, Vec<u8>), Error> {
    let malformed = || Error::WrongUsage {
        usage: "PKCS#11 key token".into(),
        operation: "take a component (only a partial key does)".into(),
    };
    let (body, mac_hex) = text.rsplit_once('.').ok_or_else(malformed)?;
    let mac = hex::decode(mac_hex).map_err(|_| malformed())?;
    let rest = body.strip_prefix(PARTIAL_PREFIX).ok_or_else(malformed)?;
    let fields: Vec<&str> = rest.split('.').collect();
    let [usage, alg, exportability, received, components, wrapped] = fields.as_slice() else {
        return Err(malformed());
    };
    let spec = KeySpec {
        usage: usage_from_code(usage).ok_or_else(malformed)?,
        algorithm: alg_from_code(alg).ok_or_else(malformed)?,
        exportability: match *exportability {
            "E" => Exportability::Exportable,
            "N" => Exportability::NonExportable,
            _ => return Err(malformed()),
        },
    };
    let received: u8 = received.parse().map_err(|_| malformed())?;
    let components: u8 = components.parse().map_err(|_| malformed())?;
    if received == 0 || received >= components {
        return Err(malformed());
    }
    let wrapped = hex::decode(wrapped).map_err(|_| malformed())?;
    let partial = PartialStored {
        spec,
        received,
        components,
        wrapped,
    };
    Ok((partial, body, mac))
}

const fn usage_code(usage: KeyUsage) -> &'static str {
    match usage {
        KeyUsage::KeyBlockProtection => "K1",
        KeyUsage::CardDerivation(HierarchyLevel::National) => "D3",
        KeyUsage::CardDerivation(HierarchyLevel::Province) => "D2",
        KeyUsage::CardDerivation(HierarchyLevel::City) => "D1",
        KeyUsage::MasterKeyDerivation(HierarchyLevel::National) => "M3",
        KeyUsage::MasterKeyDerivation(HierarchyLevel::Province) => "M2",
        KeyUsage::MasterKeyDerivation(HierarchyLevel::City) => "M1",
        KeyUsage::CardKey => "CK",
        KeyUsage::CardMasterKey => "MK",
        KeyUsage::VendorTransport => "VT",
        KeyUsage::AuditMac => "AM",
        KeyUsage::ListSigning(ListSignature::EcdsaP256) => "LS",
        KeyUsage::ListSigning(ListSignature::Sm2) => "L2",
        KeyUsage::RegistryIndex => "RI",
        KeyUsage::RegistryData => "RD",
    }
}

fn usage_from_code(code: &str) -> Option<KeyUsage> {
    KeyUsage::ALL.into_iter().find(|u| usage_code(*u) == code)
}

const fn alg_code(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Des => "DS",
        Algorithm::Tdes2 => "T2",
        Algorithm::Tdes3 => "T3",
        Algorithm::Aes128 => "A1",
        Algorithm::Aes192 => "A2",
        Algorithm::Aes256 => "A3",
        Algorithm::Sm4 => "S4",
    }
}

fn alg_from_code(code: &str) -> Option<Algorithm> {
    Algorithm::ALL.into_iter().find(|a| alg_code(*a) == code)
}

const fn method_code(method: Dispersion) -> char {
    match method {
        Dispersion::PbocTdes => 'P',
        Dispersion::PbocDes => 'S',
        Dispersion::Sm4Complement => '4',
        Dispersion::EmvOptionA => 'A',
    }
}

fn method_from_code(c: char) -> Option<Dispersion> {
    [
        Dispersion::PbocTdes,
        Dispersion::PbocDes,
        Dispersion::Sm4Complement,
        Dispersion::EmvOptionA,
    ]
    .into_iter()
    .find(|m| method_code(*m) == c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_token_body_round_trips() {
        let key = StoredKey {
            usage: KeyUsage::CardDerivation(HierarchyLevel::City),
            alg: Algorithm::Tdes2,
            exportability: Exportability::NonExportable,
            root_alg: Algorithm::Tdes2,
            steps: vec![
                (Dispersion::PbocTdes, Factor::province("440000").unwrap()),
                (Dispersion::PbocTdes, Factor::city("440100").unwrap()),
            ],
            wrapped: vec![1, 2, 3],
        };
        let text = format!("{}.{}", key.body(), "00FF");
        let (parsed, body, mac) = parse(&text).unwrap();
        assert_eq!(parsed, key);
        assert_eq!(body, key.body());
        assert_eq!(mac, vec![0, 0xFF]);
        assert!(parse("P11.1.D1.T2.N.T2.-.0102").is_err());
        assert!(parse(&text.replace("D1", "ZZ")).is_err());
    }
}
