//! What runs where: the capability table of the PKCS#11 backend, by [`Mode`].
//!
//! | operation | in the token (both modes) | `release` mode | `strict` mode |
//! |---|---|---|---|
//! | LMK, key tokens (wrap, unwrap, CMAC) | yes | — | — |
//! | random numbers, key generation (DES, TDES, AES) | yes | — | — |
//! | SSC dispersion chain for DES/TDES (`CKM_DES3_ECB_ENCRYPT_DATA` over F‖~F) | yes | — | — |
//! | KCVs (encrypt zeros for DES/TDES, CMAC for AES) | yes | — | — |
//! | audit MAC (AES-CMAC) | yes | — | — |
//! | registry index hashes (`CKM_SHA256_HMAC`, the key as a sign-only generic secret) | yes | — | — |
//! | registry sealed fields (`CKM_AES_GCM`, the simulator's `nonce ‖ ciphertext ‖ tag`) | yes | — | — |
//! | forming a key from components | XOR in the HSM process (the components are clear anyway), then the key enters the token | — | — |
//! | forming a key one component at a time (`add_component`) | the sum so far wrapped by the LMK between two custodians (a partial key, module `token`); each XOR in the HSM process, as above | — | — |
//! | TR-31 import and export | no | released for that one operation | refused |
//! | the card's WRITE KEY command (encrypted key field, PBOC retail MAC) | no | released for that one operation | refused |
//! | anything SM4 (keys, dispersion, KCVs, card MACs) | no | released for that one operation | refused |
//! | list signing, ECDSA P-256 (a blacklist key from its seed) | no | released for that one operation | refused |
//! | list signing, SM2DSA / SM3 (a new key, or a signature) | no | refused (PKCS#11 defines no SM2 mechanism; SoftHSM has none) | refused |
//! | LMK creation (and the user PIN split m-of-n among custodians) | yes | — | — |
//! | LMK rotation (roots re-wrapped under a new LMK pair) | yes | — | — |
//! | root backup in custodians' shares, restore from them (`backup_key`, `restore_share`) | no | refused (the split and the rebuild would hold the root in clear in this process; back up on the simulator, or with the token vendor's own key-backup tools) | refused |
//!
//! "Released for that one operation" means: the token derives (or unwraps) the key as an
//! extractable, non-sensitive session object, the backend reads its value, runs the simulator's
//! own code on it (`hsm_sim::policy`, the same code as `LocalHsm`), and drops it (zeroized) and
//! the session object at once. A vendor mechanism (a payment HSM's TR-31 or SSC commands) would
//! move a row to "in the token": that is an extension point of this table, not another backend.

/// How the backend treats what a standard PKCS#11 token cannot do (the operator chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refuse it, with a clear reason: no key is ever outside the token in clear.
    #[default]
    Strict,
    /// Run it in the HSM process with the key the token released for that one operation.
    Release,
}

impl Mode {
    /// `strict` or `release`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Release => "release",
        }
    }

    /// The mode named `name`.
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "strict" => Some(Mode::Strict),
            "release" => Some(Mode::Release),
            _ => None,
        }
    }
}

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// Inside the token, with standard mechanisms.
    InToken,
    /// In the HSM process, with a key the token released for that one operation.
    Released,
    /// Refused, with a reason.
    Refused,
}

/// What a standard token cannot do, each with the reason strict mode gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outside {
    /// Assembling or opening a TR-31 key block.
    Tr31,
    /// The card's encrypted key field and its secure-messaging MAC.
    CardKeyField,
    /// SM4 (PKCS#11 defines no SM4 mechanism; no software token has one).
    Sm4,
    /// Signing a published list (the blacklist): ECDSA P-256 from a seed the HSM keeps.
    ListSigning,
    /// SM2 list signing: no PKCS#11 mechanism, so refused in every mode (the service's
    /// `blacklist_signature = "ecdsa-p256-sha256"` makes P-256 list keys instead).
    Sm2,
}

impl Outside {
    /// Every row, for tables and tests.
    pub const ALL: [Outside; 5] = [
        Outside::Tr31,
        Outside::CardKeyField,
        Outside::Sm4,
        Outside::ListSigning,
        Outside::Sm2,
    ];

    /// Where it runs in `mode`.
    pub const fn runs(self, mode: Mode) -> Where {
        match (self, mode) {
            (Outside::Sm2, _) | (_, Mode::Strict) => Where::Refused,
            (_, Mode::Release) => Where::Released,
        }
    }

    /// The reason strict mode refuses it (it names the mode that would run it).
    pub const fn reason(self) -> &'static str {
        match self {
            Outside::Tr31 => {
                "TR-31 key-block assembly in a standard PKCS#11 token (strict mode; mode \"release\" runs it with the key the token releases for that one operation)"
            }
            Outside::CardKeyField => {
                "the card's encrypted key field in a standard PKCS#11 token (strict mode; mode \"release\" runs it with the keys the token releases for that one operation)"
            }
            Outside::Sm4 => {
                "SM4 in a standard PKCS#11 token, which has no SM4 mechanism (strict mode; mode \"release\" runs it with the key the token releases for that one operation)"
            }
            Outside::ListSigning => {
                "signing a published list from an HSM-held P-256 seed in a standard PKCS#11 token (strict mode; mode \"release\" runs it with the seed the token releases for that one operation)"
            }
            Outside::Sm2 => {
                "SM2 list signing in a PKCS#11 token, which has no SM2 mechanism (refused in every mode; set blacklist_signature = \"ecdsa-p256-sha256\" for a P-256 list-signing key)"
            }
        }
    }
}
