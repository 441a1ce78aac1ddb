//! `kms-ceremony calc …`: offline calculators for key custodians.
//!
//! Every command prints labelled lines first and its result **last, alone, in upper-case hex**,
//! so that scripts take the last line. No command prints a key: derived keys and unwrapped keys
//! are shown by their KCV only. Keys and KBPKs are read from standard input.

use std::fmt::Write as _;

use clap::{Args, Subcommand, ValueEnum};
use hsm_api::Algorithm;
use hsm_api::Dispersion;
use hsm_api::Factor;
use hsm_api::KcvMethod;
use hsm_api::MacFold;
use hsm_sim::crypto::SecretKey;
use hsm_sim::crypto::diversify;
use hsm_sim::crypto::kcv;
use hsm_sim::crypto::mac;
use hsm_sim::crypto::tr31;

use crate::ceremony::input::SecretLines;
use crate::error::{Error, Refusal, Result};

/// The `calc` commands.
#[derive(Debug, Subcommand)]
pub enum Calc {
    /// Key check value of a key read from standard input.
    Kcv(KcvArgs),
    /// Derive a key from a root read from standard input; prints each level's KCV, never a key.
    Derive(DeriveArgs),
    /// Card secure-messaging MAC (PBOC retail MAC or SM4 MAC) under a key read from standard input.
    Mac(MacArgs),
    /// Unwrap a TR-31 key block: the KBPK, then the block, one per line on standard input.
    /// Prints the header and the key's KCV, never the key.
    Tr31Unwrap,
    /// The SSC province (F1) and city (F2) factors of a region code.
    Factor(FactorArgs),
    /// The SSC card factor (F3) of an ATR: its last 8 bytes.
    AtrFactor(AtrFactorArgs),
}

/// Key families as custodians name them; the key's length picks the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Family {
    /// Triple DES, 16 (2-key) or 24 (3-key) bytes.
    Tdes,
    /// Single DES, 8 bytes.
    Des,
    /// AES, 16, 24 or 32 bytes.
    Aes,
    /// SM4, 16 bytes.
    Sm4,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Tdes => "tdes",
            Family::Des => "des",
            Family::Aes => "aes",
            Family::Sm4 => "sm4",
        }
    }

    /// Reads a key of this family from `input`.
    fn read_key(self, input: &mut dyn SecretLines, what: &'static str) -> Result<SecretKey> {
        let line = input.next_secret(what)?;
        Ok(SecretKey::from_hex_family(self.name(), &line)?)
    }
}

/// KCV method on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Encrypt a block of zeros (ANSI X9.24-1 legacy).
    Legacy,
    /// CMAC of a block of zeros (X9.24-1:2017).
    Cmac,
}

#[derive(Debug, Args)]
pub struct KcvArgs {
    /// Key algorithm.
    #[arg(long, value_enum)]
    pub alg: Family,
    /// KCV method; default: cmac for AES, legacy otherwise.
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// KCV length in bytes; default: 5 for cmac, 4 for SM4, 3 otherwise.
    #[arg(long)]
    pub len: Option<usize>,
}

#[derive(Debug, Args)]
pub struct DeriveArgs {
    /// Root key algorithm (tdes or sm4; des for single-length dispersion).
    #[arg(long, value_enum)]
    pub alg: Family,
    /// An 8-byte factor in hex; repeat for each level, top level first.
    #[arg(long = "factor", required = true, value_name = "HEX")]
    pub factors: Vec<String>,
    /// Dispersion method: pboc-tdes, pboc-des, sm4-f-notf-v1, emv-option-a; default by algorithm.
    #[arg(long)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fold {
    /// XOR of the four 4-byte words of the last SM4 block.
    Xor4,
    /// First 4 bytes of the last block.
    First4,
}

#[derive(Debug, Args)]
pub struct MacArgs {
    /// Card key algorithm: tdes (PBOC retail MAC) or sm4.
    #[arg(long, value_enum)]
    pub alg: Family,
    /// The card's challenge: 8 bytes for tdes, 16 for sm4.
    #[arg(long, value_name = "HEX")]
    pub iv: String,
    /// The data to MAC (command header and data), before padding.
    #[arg(long, value_name = "HEX")]
    pub data: String,
    /// How an SM4 MAC is cut to 4 bytes.
    #[arg(long, value_enum, default_value = "xor4")]
    pub fold: Fold,
}

#[derive(Debug, Args)]
pub struct FactorArgs {
    /// A 6-digit GB/T 2260 region code: a province (440000) or a city (440100).
    #[arg(long)]
    pub region: String,
}

#[derive(Debug, Args)]
pub struct AtrFactorArgs {
    /// The card's answer-to-reset in hex (at least 8 bytes).
    pub atr: String,
}

/// Runs a `calc` command; returns what to print on stdout.
pub fn run(cmd: &Calc, input: &mut dyn SecretLines) -> Result<String> {
    match cmd {
        Calc::Kcv(args) => kcv_cmd(args, input),
        Calc::Derive(args) => derive_cmd(args, input),
        Calc::Mac(args) => mac_cmd(args, input),
        Calc::Tr31Unwrap => tr31_unwrap_cmd(input),
        Calc::Factor(args) => factor_cmd(args),
        Calc::AtrFactor(args) => atr_factor_cmd(args),
    }
}

fn kcv_cmd(args: &KcvArgs, input: &mut dyn SecretLines) -> Result<String> {
    let key = args.alg.read_key(input, "key (hex)")?;
    let alg = key.algorithm();
    let method = match args.method {
        Some(Method::Legacy) => KcvMethod::EncryptZeros,
        Some(Method::Cmac) => KcvMethod::Cmac,
        None => KcvMethod::default_for(alg),
    };
    let len = args.len.unwrap_or_else(|| method.default_len(alg));
    let kcv = kcv::compute(&key, method, len)?;
    Ok(format!(
        "key {alg}, KCV method {}, {len} bytes\n{}\n",
        method.name(),
        kcv.to_hex()
    ))
}

fn derive_cmd(args: &DeriveArgs, input: &mut dyn SecretLines) -> Result<String> {
    let factors = args
        .factors
        .iter()
        .map(|f| Factor::from_hex(f))
        .collect::<Result<Vec<_>, _>>()?;
    let root = args.alg.read_key(input, "root key (hex)")?;
    let method = match &args.method {
        Some(name) => Dispersion::from_name(name).ok_or(Error::InvalidArgument {
            field: "--method",
            reason: Refusal::DispersionMethod,
        })?,
        None => Dispersion::default_for(root.algorithm()).ok_or(Error::InvalidArgument {
            field: "--alg",
            reason: Refusal::NoDispersionForAlgorithm,
        })?,
    };
    let mut out = String::new();
    let root_kcv = kcv::compute_default(&root)?;
    let _ = writeln!(
        out,
        "root {} KCV ({}) {}",
        root.algorithm(),
        root_kcv.method().name(),
        root_kcv
    );
    let mut key = root;
    for (level, factor) in factors.iter().enumerate() {
        key = diversify::diversify(&key, method, factor)?;
        let kcv = kcv::compute_default(&key)?;
        let _ = writeln!(
            out,
            "level {} factor {factor} {} KCV ({}) {kcv}",
            level + 1,
            method.name(),
            kcv.method().name()
        );
    }
    let _ = writeln!(out, "{}", kcv::compute_default(&key)?);
    Ok(out)
}

fn mac_cmd(args: &MacArgs, input: &mut dyn SecretLines) -> Result<String> {
    let iv = hex::decode(args.iv.trim()).map_err(|_| hsm_api::Error::Hex {
        field: "--iv".into(),
    })?;
    let data = hex::decode(args.data.trim()).map_err(|_| hsm_api::Error::Hex {
        field: "--data".into(),
    })?;
    let key = args.alg.read_key(input, "card key (hex)")?;
    let fold = match args.fold {
        Fold::Xor4 => MacFold::Xor4,
        Fold::First4 => MacFold::First4,
    };
    let tag = mac::card_mac(&key, &iv, &data, fold)?;
    let scheme = match key.algorithm() {
        Algorithm::Sm4 => format!("SM4-CBC MAC, fold {}", fold.name()),
        Algorithm::Des => "DES CBC-MAC".to_owned(),
        _ => "PBOC retail MAC (ISO 9797-1 alg. 3)".to_owned(),
    };
    Ok(format!(
        "{scheme}, padding 80 00.., IV {}\n{}\n",
        hex::encode_upper(&iv),
        hex::encode_upper(tag)
    ))
}

fn tr31_unwrap_cmd(input: &mut dyn SecretLines) -> Result<String> {
    let kbpk_line = input.next_secret("KBPK (hex)")?;
    let block = input.next_secret("key block")?;
    let header = tr31::parse_header(&block)?;
    let family = match header.version {
        hsm_api::KeyBlockVersion::B => "tdes",
        hsm_api::KeyBlockVersion::D => "aes",
    };
    let kbpk = SecretKey::from_hex_family(family, &kbpk_line)?;
    let (header, key) = tr31::unwrap(&kbpk, &block)?;
    let kcv = kcv::compute_default(&key)?;
    let mut out = String::new();
    let _ = writeln!(out, "version        {}", header.version.as_char());
    let _ = writeln!(out, "key usage      {}", header.key_usage);
    let _ = writeln!(
        out,
        "algorithm      {} ({})",
        header.algorithm.code(),
        key.algorithm()
    );
    if header.algorithm == tr31::KeyBlockAlgorithm::Tdes && key.algorithm() == Algorithm::Des {
        // Liberal on unwrap: other implementations put single DES under `T`; we write `D`.
        let _ = writeln!(
            out,
            "note           single-length DES under algorithm T: accepted, written as D"
        );
    }
    let _ = writeln!(out, "mode of use    {}", header.mode_of_use.code());
    let _ = writeln!(out, "key version    {}", header.key_version);
    let _ = writeln!(out, "exportability  {}", header.exportability.code());
    for block in &header.optional_blocks {
        let _ = writeln!(out, "optional {}    {}", block.id, block.data);
    }
    let _ = writeln!(out, "key length     {} bytes", key.len());
    let _ = writeln!(
        out,
        "KCV ({}, {} bytes)",
        kcv.method().name(),
        kcv.value().len()
    );
    let _ = writeln!(out, "{kcv}");
    Ok(out)
}

fn factor_cmd(args: &FactorArgs) -> Result<String> {
    let region = args.region.trim();
    let f1 = Factor::province(region)?;
    let mut out = format!("F1 province {} {f1}\n", ascii(&f1));
    match Factor::city(region) {
        Ok(f2) => {
            let _ = writeln!(out, "F2 city     {} {f2}", ascii(&f2));
            let _ = writeln!(out, "{f2}");
        }
        Err(_) => {
            let _ = writeln!(out, "{f1}");
        }
    }
    Ok(out)
}

fn atr_factor_cmd(args: &AtrFactorArgs) -> Result<String> {
    let atr = hex::decode(args.atr.trim()).map_err(|_| hsm_api::Error::Hex {
        field: "ATR".into(),
    })?;
    let f3 = Factor::from_atr(&atr)?;
    Ok(format!("F3 card (last 8 bytes of the ATR)\n{f3}\n"))
}

fn ascii(f: &Factor) -> String {
    format!("\"{}\"", String::from_utf8_lossy(f.as_bytes()))
}
