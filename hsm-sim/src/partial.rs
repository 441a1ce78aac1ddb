//! Partial keys: a key formed one component at a time ([`hsm_api::Hsm::add_component`]), the XOR
//! of the components received so far kept under the LMK between two custodians.
//!
//! A partial key is a TR-31 version D block under the LMK's token key (as a token is: its MAC
//! checked before anything is read), with a header no token has:
//!
//! | field | value |
//! |---|---|
//! | key usage | `0P` (proprietary: X9.143 leaves codes that begin with a digit to it) |
//! | algorithm | the algorithm of the key it will become |
//! | mode of use | `N`; exportability `N` |
//! | optional block `0F` | the spec and the count: TR-31 usage and role of the key (`--` for none, as in [`crate::lmk`]), `E`/`N`, components received, components in all — e.g. `E6D2N13` |
//!
//! So the LMK's token unwrap refuses it (usage `0P` is no token's), every key operation
//! refuses it, and `add_component` refuses every token: a partial key is good only for the next
//! component, and it becomes only the key of the spec it carries, after the count it carries.

use hsm_api::{
    Accumulated, Accumulation, Component, Error, Exportability, KeyBlockVersion, KeySpec, KeyToken,
    KeyUsage, PartialKey, Result, WrappedKey,
};
use zeroize::Zeroizing;

use crate::crypto::tr31::{self, KeyBlockAlgorithm, KeyBlockHeader, ModeOfUse, OptionalBlock};
use crate::crypto::{SecretKey, kcv};
use crate::lmk::{self, Lmk};
use crate::policy;

/// The key usage of a partial key's header.
const PARTIAL_USAGE: &str = "0P";
/// The optional block that carries the spec and the count.
const FORM_BLOCK: &str = "0F";

/// One component into `into` under `lmk` ([`hsm_api::Hsm::add_component`]): the next partial
/// key, or at the last component the key, a token under `lmk`.
pub(crate) fn add(lmk: &Lmk, into: Accumulation, component: &Component) -> Result<Accumulated> {
    let (spec, components, received, mut sum) = match into {
        Accumulation::Begin { spec, components } => {
            policy::check_new_key(spec)?;
            policy::check_component_count(usize::from(components))?;
            let sum = Zeroizing::new(vec![0u8; spec.algorithm.key_len()]);
            (spec, components, 0u8, sum)
        }
        Accumulation::Continue(token) => {
            let (header, key) = lmk.unwrap_block(token.as_str())?;
            let (spec, components, received) = form_of(&header, key.algorithm())?;
            let sum = Zeroizing::new(key.secret_bytes().to_vec());
            (spec, components, received, sum)
        }
    };
    let received = received + 1;
    policy::xor_component(spec.algorithm, &mut sum, component, usize::from(received))?;
    if received < components {
        let header = header_of(spec, components, received)?;
        let partial = SecretKey::new(spec.algorithm, &sum)?;
        return Ok(Accumulated::Partial(PartialKey {
            token: KeyToken::from_stored(lmk.wrap_block(&header, &partial)?),
            received,
            components,
        }));
    }
    let key = policy::finish_key(spec.algorithm, &sum)?;
    Ok(Accumulated::Formed(WrappedKey {
        token: lmk.wrap(&key, spec.usage, spec.exportability)?,
        kcv: kcv::compute_default(&key)?,
    }))
}

/// The header of a partial key of `spec` with `received` of `components` components.
fn header_of(spec: KeySpec, components: u8, received: u8) -> Result<KeyBlockHeader> {
    let (code, _) = lmk::tr31_usage(spec.usage);
    let role = lmk::role(spec.usage).unwrap_or("--");
    let exportability = match spec.exportability {
        Exportability::Exportable => 'E',
        Exportability::NonExportable => 'N',
    };
    Ok(KeyBlockHeader::new(
        KeyBlockVersion::D,
        PARTIAL_USAGE,
        KeyBlockAlgorithm::of(spec.algorithm),
        ModeOfUse::NoRestriction,
        tr31::Exportability::NonExportable,
    )?
    .with_optional_block(OptionalBlock::new(
        FORM_BLOCK,
        &format!("{code}{role}{exportability}{received}{components}"),
    )?))
}

/// The spec, the component count and the components received of a partial key's `header`
/// (its MAC verified), whose key is of `alg`; anything but a header [`header_of`] writes is
/// refused.
fn form_of(header: &KeyBlockHeader, alg: hsm_api::Algorithm) -> Result<(KeySpec, u8, u8)> {
    let not_partial = || Error::WrongUsage {
        usage: format!("TR-31 {}", header.key_usage).into(),
        operation: "take a component (only a partial key does)".into(),
    };
    if header.key_usage != PARTIAL_USAGE
        || header.version != KeyBlockVersion::D
        || header.mode_of_use != ModeOfUse::NoRestriction
        || header.exportability != tr31::Exportability::NonExportable
        || header.optional_blocks.len() != 1
    {
        return Err(not_partial());
    }
    let malformed = || Error::KeyBlockOptionalBlock {
        id: FORM_BLOCK.to_owned(),
    };
    let data = header
        .optional_block(FORM_BLOCK)
        .map(|b| b.data.as_bytes())
        .ok_or_else(malformed)?;
    let [c0, c1, r0, r1, exportability, received, components] = *data else {
        return Err(malformed());
    };
    let code = [c0, c1];
    let role = [r0, r1];
    let usage = KeyUsage::ALL
        .into_iter()
        .find(|&u| {
            lmk::tr31_usage(u).0.as_bytes() == code
                && lmk::role(u).unwrap_or("--").as_bytes() == role
        })
        .ok_or_else(malformed)?;
    let exportability = match exportability {
        b'E' => Exportability::Exportable,
        b'N' => Exportability::NonExportable,
        _ => return Err(malformed()),
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| b - b'0').ok_or_else(malformed);
    let (received, components) = (digit(received)?, digit(components)?);
    if received == 0 || received >= components {
        return Err(malformed());
    }
    let spec = KeySpec {
        algorithm: alg,
        usage,
        exportability,
    };
    // Written only for a spec that passed, so this fails only on a foreign block.
    policy::check_new_key(spec)?;
    policy::check_component_count(usize::from(components))?;
    Ok((spec, components, received))
}
