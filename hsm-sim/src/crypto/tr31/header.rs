//! The header of a key block: its fields, its optional blocks, and its text.

use hsm_api::{Algorithm, Error, Kcv, KcvMethod, KeyBlockVersion, Result, push_upper_hex};

use super::parse::{decode_upper_hex, is_printable, is_two_alphanumerics, is_upper_hex};
use super::{
    FIXED_HEADER_LEN, MAX_BLOCK_LEN, MAX_CMAC_KCV, MAX_LEGACY_KCV, MAX_LEGACY_KCV_SM4,
    MAX_OPTIONAL_BLOCKS, MAX_SHORT_OPTIONAL_BLOCK,
};
use crate::crypto::SecretKey;
use crate::crypto::kcv;

/// The algorithm field of the header: what the wrapped key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyBlockAlgorithm {
    /// `A`: AES, 16, 24 or 32 bytes.
    Aes,
    /// `D`: single DES, 8 bytes.
    Des,
    /// `T`: TDES, 16 (2-key) or 24 (3-key) bytes.
    Tdes,
    /// `4`: SM4, 16 bytes. Not defined by X9.143: our proprietary (numeric) code.
    Sm4,
}

impl KeyBlockAlgorithm {
    /// The header character.
    pub const fn code(self) -> char {
        match self {
            KeyBlockAlgorithm::Aes => 'A',
            KeyBlockAlgorithm::Des => 'D',
            KeyBlockAlgorithm::Tdes => 'T',
            KeyBlockAlgorithm::Sm4 => '4',
        }
    }

    /// Parses a header character.
    pub const fn from_code(c: char) -> Option<KeyBlockAlgorithm> {
        match c {
            'A' => Some(KeyBlockAlgorithm::Aes),
            'D' => Some(KeyBlockAlgorithm::Des),
            'T' => Some(KeyBlockAlgorithm::Tdes),
            '4' => Some(KeyBlockAlgorithm::Sm4),
            _ => None,
        }
    }

    /// The header algorithm of a key of `alg`.
    pub const fn of(alg: Algorithm) -> KeyBlockAlgorithm {
        match alg {
            Algorithm::Des => KeyBlockAlgorithm::Des,
            Algorithm::Tdes2 | Algorithm::Tdes3 => KeyBlockAlgorithm::Tdes,
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => KeyBlockAlgorithm::Aes,
            Algorithm::Sm4 => KeyBlockAlgorithm::Sm4,
        }
    }

    /// The key algorithm of a key of `len` bytes under this header algorithm, if it has one.
    pub const fn key_algorithm(self, len: usize) -> Option<Algorithm> {
        match (self, len) {
            (KeyBlockAlgorithm::Des, 8) => Some(Algorithm::Des),
            (KeyBlockAlgorithm::Tdes, 16) => Some(Algorithm::Tdes2),
            (KeyBlockAlgorithm::Tdes, 24) => Some(Algorithm::Tdes3),
            (KeyBlockAlgorithm::Aes, 16) => Some(Algorithm::Aes128),
            (KeyBlockAlgorithm::Aes, 24) => Some(Algorithm::Aes192),
            (KeyBlockAlgorithm::Aes, 32) => Some(Algorithm::Aes256),
            (KeyBlockAlgorithm::Sm4, 16) => Some(Algorithm::Sm4),
            _ => None,
        }
    }

    /// The key algorithm of a key of `len` bytes found in a block **being unwrapped** under this
    /// header algorithm: as [`KeyBlockAlgorithm::key_algorithm`], and also a single-length
    /// (8-byte) DES key under `T`. Blocks from other implementations (psec's known values, for
    /// one) carry single DES under `T`, reading TDES keying option 3 (K1 = K2 = K3) into it; we
    /// accept them on unwrap and never write one ([`wrap`](super::wrap) names DES `D`).
    pub const fn unwrap_key_algorithm(self, len: usize) -> Option<Algorithm> {
        match (self, len) {
            (KeyBlockAlgorithm::Tdes, 8) => Some(Algorithm::Des),
            _ => self.key_algorithm(len),
        }
    }

    /// Whether a key of this algorithm may travel in a block of `version`.
    pub const fn allowed_in(self, version: KeyBlockVersion) -> bool {
        match version {
            KeyBlockVersion::B => matches!(self, KeyBlockAlgorithm::Des | KeyBlockAlgorithm::Tdes),
            KeyBlockVersion::D => true,
        }
    }

    /// The key length a key of this algorithm is padded to at least, so that the block does not
    /// tell which length of the family it carries: the family's longest key.
    pub(super) const fn hidden_key_len(self) -> usize {
        match self {
            KeyBlockAlgorithm::Des | KeyBlockAlgorithm::Tdes => 24,
            KeyBlockAlgorithm::Aes => 32,
            KeyBlockAlgorithm::Sm4 => 16,
        }
    }
}

/// The mode of use field: which operations the wrapped key may perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModeOfUse {
    /// `B`: encrypt and decrypt, wrap and unwrap.
    EncryptDecrypt,
    /// `C`: generate and verify (MACs, PIN verification values).
    GenerateVerify,
    /// `D`: decrypt or unwrap only.
    DecryptOnly,
    /// `E`: encrypt or wrap only.
    EncryptOnly,
    /// `G`: generate only.
    GenerateOnly,
    /// `N`: no restriction beyond those of the key usage.
    NoRestriction,
    /// `S`: sign only.
    SignOnly,
    /// `T`: sign and decrypt.
    SignDecrypt,
    /// `V`: verify only.
    VerifyOnly,
    /// `X`: derive other keys.
    DeriveKeys,
    /// `Y`: create key variants.
    CreateVariants,
}

impl ModeOfUse {
    /// The header character.
    pub const fn code(self) -> char {
        match self {
            ModeOfUse::EncryptDecrypt => 'B',
            ModeOfUse::GenerateVerify => 'C',
            ModeOfUse::DecryptOnly => 'D',
            ModeOfUse::EncryptOnly => 'E',
            ModeOfUse::GenerateOnly => 'G',
            ModeOfUse::NoRestriction => 'N',
            ModeOfUse::SignOnly => 'S',
            ModeOfUse::SignDecrypt => 'T',
            ModeOfUse::VerifyOnly => 'V',
            ModeOfUse::DeriveKeys => 'X',
            ModeOfUse::CreateVariants => 'Y',
        }
    }

    /// Parses a header character.
    pub const fn from_code(c: char) -> Option<ModeOfUse> {
        Some(match c {
            'B' => ModeOfUse::EncryptDecrypt,
            'C' => ModeOfUse::GenerateVerify,
            'D' => ModeOfUse::DecryptOnly,
            'E' => ModeOfUse::EncryptOnly,
            'G' => ModeOfUse::GenerateOnly,
            'N' => ModeOfUse::NoRestriction,
            'S' => ModeOfUse::SignOnly,
            'T' => ModeOfUse::SignDecrypt,
            'V' => ModeOfUse::VerifyOnly,
            'X' => ModeOfUse::DeriveKeys,
            'Y' => ModeOfUse::CreateVariants,
            _ => return None,
        })
    }
}

/// The exportability field: whether the wrapped key may leave its cryptographic domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exportability {
    /// `E`: exportable under a trusted key.
    Trusted,
    /// `N`: not exportable.
    NonExportable,
    /// `S`: sensitive; exportable under an untrusted key.
    Sensitive,
}

impl Exportability {
    /// The header character.
    pub const fn code(self) -> char {
        match self {
            Exportability::Trusted => 'E',
            Exportability::NonExportable => 'N',
            Exportability::Sensitive => 'S',
        }
    }

    /// Parses a header character.
    pub const fn from_code(c: char) -> Option<Exportability> {
        match c {
            'E' => Some(Exportability::Trusted),
            'N' => Some(Exportability::NonExportable),
            'S' => Some(Exportability::Sensitive),
            _ => None,
        }
    }
}

/// One optional block of the header: a two-character ID and printable ASCII data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OptionalBlock {
    /// Two ASCII letters or digits, e.g. `KS`.
    pub id: String,
    /// Printable ASCII.
    pub data: String,
}

impl OptionalBlock {
    /// An optional block, checked as [`wrap`](super::wrap) would check it.
    pub fn new(id: &str, data: &str) -> Result<OptionalBlock> {
        let block = OptionalBlock {
            id: id.to_owned(),
            data: data.to_owned(),
        };
        block.validate()?;
        Ok(block)
    }

    /// `KS`: the key set identifier (hex), e.g. the KSI of a DUKPT BDK.
    pub fn key_set_id(ksi: &str) -> Result<OptionalBlock> {
        OptionalBlock::new("KS", ksi)
    }

    /// `KC`: the check value of the key to be wrapped (see the module docs for the method).
    pub fn key_check_value(key: &SecretKey) -> Result<OptionalBlock> {
        OptionalBlock::key_check_value_of(&kcv::compute_default(key)?)
    }

    /// `KC` from the key's default check value already computed.
    pub fn key_check_value_of(kcv: &Kcv) -> Result<OptionalBlock> {
        check_value_block("KC", kcv)
    }

    /// `KP`: the check value of the KBPK (see the module docs for the method).
    pub fn kbpk_check_value(kbpk: &SecretKey) -> Result<OptionalBlock> {
        check_value_block("KP", &kcv::compute_default(kbpk)?)
    }

    /// The check value in a `KC` or `KP` block; any other block, or malformed data, is
    /// [`Error::KeyBlockOptionalBlock`].
    pub fn check_value(&self) -> Result<Kcv> {
        let malformed = || Error::KeyBlockOptionalBlock {
            id: self.id.clone(),
        };
        if self.id != "KC" && self.id != "KP" {
            return Err(malformed());
        }
        let data = self.data.as_bytes();
        let method = match data.get(..2) {
            Some(b"00") => KcvMethod::EncryptZeros,
            Some(b"01") => KcvMethod::Cmac,
            _ => return Err(malformed()),
        };
        let max = max_check_value_len(method);
        let value = data
            .get(2..)
            .and_then(|hex| decode_upper_hex(hex).ok())
            .ok_or_else(malformed)?;
        if value.is_empty() || value.len() > max {
            return Err(malformed());
        }
        Ok(Kcv::from_parts(method, value))
    }

    /// For a `KC` or `KP` block of a header whose key is of `algorithm`: refuses a legacy check
    /// value longer than the key's (3 bytes; 4 for an SM4 key in `KC`).
    pub(super) fn check_value_fits(&self, algorithm: KeyBlockAlgorithm) -> Result<()> {
        match self.id.as_str() {
            "KC" | "KP" => self.fits(&self.check_value()?, algorithm),
            _ => Ok(()),
        }
    }

    /// [`OptionalBlock::check_value_fits`] with the block's check value already parsed.
    fn fits(&self, kcv: &Kcv, algorithm: KeyBlockAlgorithm) -> Result<()> {
        let max = match (self.id.as_str(), algorithm) {
            ("KC", KeyBlockAlgorithm::Sm4) => MAX_LEGACY_KCV_SM4,
            ("KC" | "KP", _) => MAX_LEGACY_KCV,
            _ => return Ok(()),
        };
        if kcv.method() == KcvMethod::EncryptZeros && kcv.value().len() > max {
            return Err(Error::KeyBlockOptionalBlock {
                id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// Checks the ID, the characters, and the content of the blocks this module understands.
    pub(super) fn validate(&self) -> Result<()> {
        self.validated().map(|_| ())
    }

    /// [`OptionalBlock::validate`], and the check value of a `KC` or `KP` block, parsed once.
    fn validated(&self) -> Result<Option<Kcv>> {
        let malformed = || Error::KeyBlockOptionalBlock {
            id: self.id.clone(),
        };
        if self.id.len() != 2 || !self.id.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(malformed());
        }
        if !self.data.bytes().all(is_printable) {
            return Err(malformed());
        }
        match self.id.as_str() {
            "KS" if self.data.is_empty() || !self.data.bytes().all(is_upper_hex) => {
                Err(malformed())
            }
            "KC" | "KP" => self.check_value().map(Some),
            _ => Ok(None),
        }
    }
}

/// The most check bytes a `KC` or `KP` block of `method` carries, whatever the key (the
/// algorithm's own bound is [`OptionalBlock::check_value_fits`]'s).
const fn max_check_value_len(method: KcvMethod) -> usize {
    match method {
        KcvMethod::EncryptZeros => MAX_LEGACY_KCV_SM4,
        KcvMethod::Cmac => MAX_CMAC_KCV,
    }
}

/// Appends `value` as `digits` decimal digits, leading zeros included (the caller has bounded
/// `value` below `10^digits`).
fn push_decimal(out: &mut String, value: usize, digits: u32) {
    for place in (0..digits).rev() {
        let digit = (value / 10usize.pow(place)) % 10;
        out.push(char::from_digit(u32::try_from(digit).unwrap_or(0), 10).unwrap_or('0'));
    }
}

/// A `KC` or `KP` block for `key`: its KCV by the default method and length of the whole
/// service — `00` + 3-byte legacy KCV (DES, TDES), `00` + 4 bytes (SM4), `01` + 5-byte CMAC KCV
/// (AES).
fn check_value_block(id: &str, kcv: &Kcv) -> Result<OptionalBlock> {
    let code = match kcv.method() {
        KcvMethod::EncryptZeros => "00",
        KcvMethod::Cmac => "01",
    };
    // What `OptionalBlock::check_value` would refuse of this text: no check bytes, or more
    // than the method allows. Anything else is well formed by construction, so the text is not
    // parsed back (`wrap` parses the header's check values once, for its own checks).
    let max = max_check_value_len(kcv.method());
    if kcv.value().is_empty() || kcv.value().len() > max {
        return Err(Error::KeyBlockOptionalBlock { id: id.to_owned() });
    }
    let mut data = String::with_capacity(2 + 2 * kcv.value().len());
    data.push_str(code);
    push_upper_hex(&mut data, kcv.value());
    Ok(OptionalBlock {
        id: id.to_owned(),
        data,
    })
}

/// The check values a header carries, parsed: of the wrapped key (`KC`) and of the KBPK (`KP`),
/// in the header's order.
#[derive(Debug, Default)]
pub(super) struct CheckValues {
    /// `(true, kcv)` for a `KC` block, `(false, kcv)` for a `KP` block.
    pub(super) values: Vec<(bool, Kcv)>,
}

impl CheckValues {
    fn push(&mut self, block: &OptionalBlock, kcv: Kcv) {
        self.values.push((block.id == "KC", kcv));
    }
}

/// The header of a key block. It holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyBlockHeader {
    /// Version: which KBPK and method protect the block.
    pub version: KeyBlockVersion,
    /// Key usage: two ASCII letters or digits (e.g. `K0` key encryption key, `P0` PIN
    /// encryption); not restricted to a list here, the layer above decides what it accepts.
    pub key_usage: String,
    /// Algorithm of the wrapped key.
    pub algorithm: KeyBlockAlgorithm,
    /// Mode of use.
    pub mode_of_use: ModeOfUse,
    /// Key version number: `00` (unused) or two ASCII letters or digits.
    pub key_version: String,
    /// Exportability.
    pub exportability: Exportability,
    /// Optional blocks in order, without the padding block `PB`.
    pub optional_blocks: Vec<OptionalBlock>,
}

impl KeyBlockHeader {
    /// A header with key version `00` and no optional blocks.
    pub fn new(
        version: KeyBlockVersion,
        key_usage: &str,
        algorithm: KeyBlockAlgorithm,
        mode_of_use: ModeOfUse,
        exportability: Exportability,
    ) -> Result<KeyBlockHeader> {
        let header = KeyBlockHeader {
            version,
            key_usage: key_usage.to_owned(),
            algorithm,
            mode_of_use,
            key_version: "00".to_owned(),
            exportability,
            optional_blocks: Vec::new(),
        };
        header.validate()?;
        Ok(header)
    }

    /// The same header with key version number `key_version`.
    pub fn with_key_version(mut self, key_version: &str) -> Result<KeyBlockHeader> {
        key_version.clone_into(&mut self.key_version);
        self.validate()?;
        Ok(self)
    }

    /// The same header with `block` appended to the optional blocks.
    pub fn with_optional_block(mut self, block: OptionalBlock) -> KeyBlockHeader {
        self.optional_blocks.push(block);
        self
    }

    /// The optional block with ID `id`, if any.
    pub fn optional_block(&self, id: &str) -> Option<&OptionalBlock> {
        self.optional_blocks.iter().find(|b| b.id == id)
    }

    /// Checks every field as [`wrap`](super::wrap) needs them.
    pub(super) fn validate(&self) -> Result<()> {
        self.validated().map(|_| ())
    }

    /// [`KeyBlockHeader::validate`], and the check values of its `KC` and `KP` blocks, each
    /// parsed once for both.
    pub(super) fn validated(&self) -> Result<CheckValues> {
        let mut check_values = CheckValues::default();
        if !is_two_alphanumerics(self.key_usage.as_bytes()) {
            return Err(Error::KeyBlockHeader {
                field: "key usage".into(),
            });
        }
        if !self.algorithm.allowed_in(self.version) {
            return Err(Error::KeyBlockHeader {
                field: "algorithm".into(),
            });
        }
        if !is_two_alphanumerics(self.key_version.as_bytes()) {
            return Err(Error::KeyBlockHeader {
                field: "key version".into(),
            });
        }
        let mut seen: Vec<&str> = Vec::with_capacity(self.optional_blocks.len());
        for block in self.optional_blocks.iter().filter(|b| b.id != "PB") {
            if let Some(kcv) = block.validated()? {
                block.fits(&kcv, self.algorithm)?;
                check_values.push(block, kcv);
            }
            if seen.contains(&block.id.as_str()) {
                return Err(Error::KeyBlockOptionalBlock {
                    id: block.id.clone(),
                });
            }
            seen.push(&block.id);
        }
        Ok(check_values)
    }

    /// The check values of the `KC` and `KP` blocks, parsed (malformed data refused).
    pub(super) fn check_values(&self) -> Result<CheckValues> {
        let mut check_values = CheckValues::default();
        for block in self
            .optional_blocks
            .iter()
            .filter(|b| b.id == "KC" || b.id == "KP")
        {
            check_values.push(block, block.check_value()?);
        }
        Ok(check_values)
    }

    /// The header text of a block whose clear key data is `clear_len` bytes: fixed part with the
    /// total length, the optional blocks, and a padding block if the header needs one.
    pub(super) fn encode(&self, clear_len: usize) -> Result<String> {
        let block_len = self.version.block_len();
        let mut blocks = String::new();
        let mut count = 0usize;
        for block in self.optional_blocks.iter().filter(|b| b.id != "PB") {
            let short = 4 + block.data.len();
            blocks.push_str(&block.id);
            if let Ok(short) = u8::try_from(short)
                && usize::from(short) <= MAX_SHORT_OPTIONAL_BLOCK
            {
                push_upper_hex(&mut blocks, &[short]);
            } else {
                let long = 10 + block.data.len();
                let long = u16::try_from(long)
                    .ok()
                    .filter(|&l| usize::from(l) <= MAX_BLOCK_LEN)
                    .ok_or(Error::KeyBlockTooLong(long))?;
                blocks.push_str("0002");
                push_upper_hex(&mut blocks, &long.to_be_bytes());
            }
            blocks.push_str(&block.data);
            count += 1;
        }
        let unpadded = FIXED_HEADER_LEN + blocks.len();
        if !unpadded.is_multiple_of(block_len) {
            let pad = (block_len - (unpadded + 4) % block_len) % block_len;
            blocks.push_str("PB");
            // 4 + pad < 4 + block_len: one byte.
            push_upper_hex(&mut blocks, &[u8::try_from(4 + pad).unwrap_or(u8::MAX)]);
            blocks.extend(core::iter::repeat_n('0', pad));
            count += 1;
        }
        if count > MAX_OPTIONAL_BLOCKS {
            return Err(Error::KeyBlockHeader {
                field: "number of optional blocks".into(),
            });
        }
        let total = FIXED_HEADER_LEN + blocks.len() + 2 * clear_len + 2 * self.version.mac_len();
        if total > MAX_BLOCK_LEN {
            return Err(Error::KeyBlockTooLong(total));
        }
        let mut text = String::with_capacity(FIXED_HEADER_LEN + blocks.len());
        text.push(self.version.as_char());
        push_decimal(&mut text, total, 4);
        text.push_str(&self.key_usage);
        text.push(self.algorithm.code());
        text.push(self.mode_of_use.code());
        text.push_str(&self.key_version);
        text.push(self.exportability.code());
        push_decimal(&mut text, count, 2);
        text.push_str("00");
        text.push_str(&blocks);
        Ok(text)
    }
}
