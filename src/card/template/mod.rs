//! Card templates: every key a card carries, as versioned data (notice N8, N9, N11; DOMAIN.md §3).
//!
//! A template is a TOML file. The shipped ones are [`SSC_2_0`] (`templates/ssc-2.0.toml`, 3DES)
//! and [`SSC_3_0`] (`templates/ssc-3.0.toml`, SM4), both on the T514 chip, and
//! [`SSC_2_0_FMCOS`] (`templates/ssc-2.0-fmcos.toml`), the 2.0 card on the FMCOS chip; a city's
//! local extension (N9) is a file that names its base with `extends` and is merged with
//! [`Template::extend`].
//!
//! A template says which keys a card carries and what each is for (its **role**); its card-OS
//! profile ([`crate::card::profile::CosProfile`], named by `cos`) decides the bytes the chip
//! expects: the WRITE KEY's CLA INS P1 P2 Lc, the key header, the type byte of each role, the
//! master key's id, version and follow-up level, the other keys' follow-up levels, and which ATR
//! bytes form the card factor (DOMAIN.md §10).
//!
//! # Schema
//!
//! ```toml
//! id = "ssc-2.0"            # template id: a-z, 0-9, '.', '-'
//! version = 1               # template revision, >= 1
//! generation = "2.0"        # card specification generation
//! cos = "t514"              # the COS profile: t514 | fmcos
//! algorithm = "tdes"        # default key algorithm: tdes | des | sm4
//! dispersion = "pboc-tdes"  # hsm_api::Dispersion name (sm4-f-notf-v1 for 3.0)
//! description = "…"         # optional
//! # extends = "ssc-2.0"     # only in a city's extension: id of the base template
//! # region = "440300"       # with `extends` only: the city that owns the extension
//!
//! [[key]]
//! name = "RK_DF03"          # unique: A-Z, 0-9, _
//! directory = "DF03"        # MF, SSSE, DF01..DF05, … (A-Z, 0-9)
//! role = "external-auth"    # master | maintenance | internal-auth | external-auth | update |
//!                           # pin | pin-unblock | pin-reload | load | purchase | tac | block | lock
//! key_id = 0x02             # card key id; not for a master key (the COS profile's)
//! key_version = 0x01        # card key version; not for a master key (the COS profile's)
//! # version_of = "RK_DF03"  # optional: a later version of that earlier key (DLK/DPK groups)
//! algorithm = "tdes"        # optional, defaults to the template's
//! length = 16               # bytes; des 8, tdes 16, sm4 16
//! error_counter = 0x55
//! protected_by = "MK_DF03"  # a key of the template, or "vendor-transport"
//! root = "national"         # "national", "provincial", or (an extension's) "city"
//! dispersion = "pboc-des"   # optional: the key's own dispersion method
//! description = "…"         # optional
//! ```
//!
//! # Validation
//!
//! [`Template::parse`] refuses, naming the line (1-based) and a typed [`TemplateFault`]:
//! TOML syntax and type errors and missing fields ([`TemplateFault::Toml`]); unknown fields;
//! values out of their set (ids, names, roles, COS profiles, algorithms, dispersion methods,
//! roots); a template without keys; duplicate key names; a master key with its own `key_id` or
//! `key_version`, another key without them; a master key whose root is national; two keys in one
//! card slot — `(directory, type byte, key_id, key_version)`, the type byte being the COS
//! profile's for the role; a directory with more keys than the follow-up level can number; a
//! key of an algorithm the COS profile does not write; a length that does not match the
//! algorithm; a key algorithm that its dispersion method cannot produce (an SM4 key in a
//! `pboc-tdes` template, or a 3DES key in an `sm4-f-notf-v1` one, unless the key names its own
//! `dispersion`); `protected_by` naming no key of the template; a cycle of `protected_by`; more
//! than one vendor-transport key; `extends` without `region`, `region` without `extends`, a
//! region that is not a known city, or `root = "city"` outside an extension; `version_of`
//! naming no earlier key, a master key, or a later version, or a version whose directory, role,
//! algorithm or root differs from the first's, or whose key version or key id another version
//! of the key has.
//!
//! An extension may name keys of its base in `protected_by`: those are resolved, and everything
//! checked again, by [`Template::extend`], which also refuses an extension that redefines a base
//! key (by name or by slot), names another base, differs from it in generation, COS profile,
//! algorithm or dispersion, or protects a key by the vendor transport key (an extension's keys
//! go onto initialised cards). Its keys are numbered after the base's in each directory.
//!
//! # Card key header
//!
//! [`Template::card_key_header`] gives the header of a WRITE KEY in the COS profile's layout;
//! under `t514` (DOMAIN.md §10) it is 8 bytes: type ‖ key id ‖ version ‖ `EF` ‖ error counter ‖
//! algorithm ‖ follow-up level ‖ length. [`Template::write_key_params`] gives CLA, INS, P1, P2
//! and Lc.
//!
//! ```
//! use sscard_kms::card::template::{KeyLevel, Template};
//!
//! let t = Template::builtin("ssc-2.0")?;
//! let mk = t.key("MK_DF03").expect("in the template");
//! // T514: a master key is type 00, id 00, version 00, follow-up level FF; P1 01.
//! assert_eq!(t.card_key_header(mk), [0x00, 0x00, 0x00, 0xEF, 0x33, 0x00, 0xFF, 0x10]);
//! assert_eq!(t.write_key_params(mk).p1, 0x01);
//! // Which keys a PSAM holds, and at which level, is a PSAM profile's decision.
//! let city = sscard_kms::card::profile::PsamProfile::builtin("city").expect("shipped")?;
//! let (keys, _) = city.key_set(&t);
//! let rk = keys.iter().find(|p| p.key.name == "RK_DF03").expect("a PSAM key");
//! assert_eq!(rk.level(), KeyLevel::City);
//! # Ok::<(), sscard_kms::Error>(())
//! ```

use std::sync::Arc;

use hsm_api::Dispersion;
use hsm_api::Factor;

use crate::card::identifiers::Atr;
use crate::card::profile::{CosProfile, WriteKeyParams};
use crate::card::region::Region;
use crate::card::source::{At, DataFile};
use crate::error::{Error, Result};
mod key;
mod order;
mod psam;
mod schema;
#[cfg(test)]
mod tests;

pub use key::{CardAlgorithm, KeyLevel, KeyOwner, KeyRole, KeyRoot, KeySpec};
pub use order::Protector;
use order::link;
pub use psam::{PsamKeyType, PsamUsage};
pub use schema::TemplateFault;
use schema::{RawTemplate, TEMPLATE_FIELDS, apply_cos, build, template_err};

/// The shipped 3DES template of card generation 2.0.
pub const SSC_2_0: &str = include_str!("../../../templates/ssc-2.0.toml");
/// The shipped SM4 template of card generation 3.0.
pub const SSC_3_0: &str = include_str!("../../../templates/ssc-3.0.toml");
/// The 2.0 card of [`SSC_2_0`], key for key, on the Fudan FMCOS chip (its COS profile `fmcos`).
pub const SSC_2_0_FMCOS: &str = include_str!("../../../templates/ssc-2.0-fmcos.toml");
/// The shipped templates by id.
pub const BUILTIN: [(&str, &str); 3] = [
    ("ssc-2.0", SSC_2_0),
    ("ssc-3.0", SSC_3_0),
    ("ssc-2.0-fmcos", SSC_2_0_FMCOS),
];

/// The `protected_by` value of the first key written to a blank card.
pub const VENDOR_TRANSPORT: &str = "vendor-transport";

/// Lines of the header fields, for errors found by [`Template::extend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HeaderLines {
    extends: usize,
    generation: usize,
    cos: usize,
    algorithm: usize,
    dispersion: usize,
}

/// A validated card template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    id: String,
    version: u32,
    generation: String,
    cos: Arc<CosProfile>,
    algorithm: CardAlgorithm,
    dispersion: Dispersion,
    description: Option<String>,
    extends: Option<String>,
    region: Option<&'static Region>,
    base_version: Option<u32>,
    /// `issuer_only_delivery = "secure-messaging"`: issuer-only keys never leave as TR-31.
    issuer_only_secure_messaging: bool,
    keys: Vec<KeySpec>,
    order: Vec<usize>,
    lines: HeaderLines,
}

impl Template {
    /// Parses and validates a template (a base, or a city extension on its own: see
    /// [`Template::extend`]).
    pub fn parse(src: &str) -> Result<Template> {
        let at = At::new(DataFile::Template, src);
        let raw: RawTemplate = at.parse(TEMPLATE_FIELDS)?;
        build(&at, raw)
    }

    /// A shipped template by id ([`BUILTIN`]).
    pub fn builtin(id: &str) -> Result<Template> {
        let (_, src) = BUILTIN
            .iter()
            .find(|(name, _)| *name == id)
            .ok_or_else(|| Error::UnknownTemplate(id.to_owned()))?;
        Template::parse(src)
    }

    /// Merges a city's extension over its base (N9): the result has the base's keys and the
    /// extension's, the extension's id, version and region, and is validated as a whole.
    /// Errors name lines of the extension (or, for [`TemplateFault::BaseIsExtension`], of
    /// the base).
    pub fn extend(base: &Template, ext: &Template) -> Result<Template> {
        let Some(extends) = ext.extends.as_ref().filter(|_| ext.base_version.is_none()) else {
            return Err(template_err(1, TemplateFault::NotAnExtension));
        };
        if base.extends.is_some() {
            return Err(template_err(
                base.lines.extends,
                TemplateFault::BaseIsExtension,
            ));
        }
        if *extends != base.id {
            return Err(template_err(
                ext.lines.extends,
                TemplateFault::ExtendsMismatch {
                    expected: base.id.clone(),
                    found: extends.clone(),
                },
            ));
        }
        for (field, same, line) in [
            (
                "generation",
                ext.generation == base.generation,
                ext.lines.generation,
            ),
            ("cos", ext.cos.id() == base.cos.id(), ext.lines.cos),
            (
                "algorithm",
                ext.algorithm == base.algorithm,
                ext.lines.algorithm,
            ),
            (
                "dispersion",
                ext.dispersion == base.dispersion,
                ext.lines.dispersion,
            ),
        ] {
            if !same {
                return Err(template_err(line, TemplateFault::HeaderMismatch { field }));
            }
        }
        for k in &ext.keys {
            if let Some(b) = base.key(&k.name) {
                return Err(template_err(
                    k.line,
                    TemplateFault::RedefinesBaseKey {
                        name: k.name.clone(),
                        base_line: b.line,
                    },
                ));
            }
        }
        // The extension's keys numbered after the base's in each directory; a slot the base
        // uses is refused.
        let mut keys: Vec<KeySpec> = base.keys.iter().chain(&ext.keys).cloned().collect();
        apply_cos(&base.cos, &mut keys, base.keys.len())?;
        let order = link(&keys, false)?;
        Ok(Template {
            id: ext.id.clone(),
            version: ext.version,
            generation: base.generation.clone(),
            cos: Arc::clone(&base.cos),
            algorithm: base.algorithm,
            dispersion: base.dispersion,
            description: ext.description.clone().or_else(|| base.description.clone()),
            extends: Some(base.id.clone()),
            region: ext.region,
            base_version: Some(base.version),
            // An extension may make the policy stricter, never looser.
            issuer_only_secure_messaging: base.issuer_only_secure_messaging
                || ext.issuer_only_secure_messaging,
            keys,
            order,
            lines: ext.lines,
        })
    }

    /// Template id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Template revision.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Card specification generation.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// The card-OS profile that decides the bytes of the card's WRITE KEY commands.
    pub fn cos(&self) -> &CosProfile {
        &self.cos
    }

    /// Default key algorithm.
    pub fn algorithm(&self) -> CardAlgorithm {
        self.algorithm
    }

    /// Dispersion method of the template's keys (a key may name its own).
    pub fn dispersion(&self) -> Dispersion {
        self.dispersion
    }

    /// Free text.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The base template's id, for an extension.
    pub fn extends(&self) -> Option<&str> {
        self.extends.as_deref()
    }

    /// The city owning an extension.
    pub fn region(&self) -> Option<&'static Region> {
        self.region
    }

    /// For a merged extension, the revision of the base it was merged with.
    pub fn base_version(&self) -> Option<u32> {
        self.base_version
    }

    /// Keys in file order (for a merged extension: the base's, then the extension's).
    pub fn keys(&self) -> &[KeySpec] {
        &self.keys
    }

    /// Whether `spec` is a master key of this card: its role is master, it protects another
    /// key's slot, or it is the key a blank card's vendor transport key protects (the structural
    /// tests catch a template that mislabels a protector). Its hierarchy is a master-key
    /// hierarchy in the HSM and its card key a card master key: it leaves only inside the
    /// secure-messaging command that writes it, never as a TR-31 block.
    pub fn is_master_key(&self, spec: &KeySpec) -> bool {
        spec.role == KeyRole::Master
            || spec.protected_by == Protector::VendorTransport
            || self
                .keys
                .iter()
                .any(|k| matches!(&k.protected_by, Protector::Key(p) if *p == spec.name))
    }

    /// Whether `spec` may leave as a TR-31 block at all (to a station's HSM): not a master key
    /// ([`Template::is_master_key`]: the HSM refuses those in any case), and, in a template whose
    /// `issuer_only_delivery` is `"secure-messaging"`, not a key that stays with the issuer —
    /// an issuer-only key ([`KeySpec::is_issuer_only`]: provincial roots) or a maintenance
    /// (personalisation STK) key — so that "the clear key never reaches the station" is enforced
    /// for them, not merely offered.
    pub fn may_leave_as_tr31(&self, spec: &KeySpec) -> bool {
        let stays_with_issuer = spec.is_issuer_only() || spec.role == KeyRole::Maintenance;
        let kept_by_policy = self.issuer_only_secure_messaging && stays_with_issuer;
        !(self.is_master_key(spec) || kept_by_policy)
    }

    /// The key named `name`.
    pub fn key(&self, name: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// Keys in the order they are written to a card: every key after its protector, otherwise
    /// in file order. (For an extension that is not merged yet, base protectors are absent.)
    pub fn write_order(&self) -> impl Iterator<Item = &KeySpec> + '_ {
        self.order.iter().filter_map(|&i| self.keys.get(i))
    }

    /// The key header of `key` in its WRITE KEY, in the COS profile's layout.
    pub fn card_key_header(&self, key: &KeySpec) -> Vec<u8> {
        self.cos.card_key_header(key)
    }

    /// CLA, INS, P1, P2 and Lc of the WRITE KEY of `key` under the COS profile.
    pub fn write_key_params(&self, key: &KeySpec) -> WriteKeyParams {
        self.cos.write_key_params(key)
    }

    /// The card factor F3 of `atr` under the COS profile.
    pub fn card_factor(&self, atr: &Atr) -> Result<Factor> {
        self.cos.card_factor(atr)
    }
}
