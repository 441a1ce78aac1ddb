//! `LocalHsm` through the public `Hsm` trait: LMK life cycle, usage enforcement, the SSC
//! derivation chain, export, rotation, refusal in every non-operational state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hsm_api::{
    Accumulated, Accumulation, Algorithm, Component, Dispersion, Error, Exportability, Factor,
    HierarchyLevel, Hsm, HsmState, Kcv, KcvMethod, KeyBlockVersion, KeySpec, KeyToken, KeyUsage,
    LmkShare, MacFold, WrappedKey, WriteKeyRequest,
};
use hsm_sim::crypto::tr31::{self, ModeOfUse};
use hsm_sim::crypto::{SecretKey, kcv};
use hsm_sim::local::{DANGEROUS_TEST_LMK_HEX, LocalHsm, LocalHsmConfig, STATE_FILE};
use zeroize::Zeroizing;

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).unwrap();
        let dir = std::env::temp_dir().join(format!("hsm-sim-{name}-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memory_hsm() -> LocalHsm {
    LocalHsm::open(LocalHsmConfig::default()).unwrap()
}

fn test_lmk_hsm() -> LocalHsm {
    LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap()
}

fn dir_hsm(dir: &Path) -> LocalHsm {
    LocalHsm::open(LocalHsmConfig {
        state_dir: Some(dir.to_owned()),
        ..LocalHsmConfig::default()
    })
    .unwrap()
}

fn spec(algorithm: Algorithm, usage: KeyUsage, exportability: Exportability) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportability,
    }
}

fn component(alg: Algorithm, hex: &str) -> Component {
    let key = SecretKey::from_hex(alg, hex).unwrap();
    Component::new(
        Zeroizing::new(hex.to_owned()),
        kcv::compute_default(&key).unwrap(),
    )
}

fn share(text: &str) -> LmkShare {
    LmkShare::new(Zeroizing::new(text.to_owned()))
}

/// `token` with the character at `index` replaced by another of the same class.
fn flipped(token: &KeyToken, index: usize) -> KeyToken {
    let mut chars: Vec<char> = token.as_str().chars().collect();
    // Past the 16-character fixed header the block is hex: stay hex, so the change reaches the MAC.
    if index >= 16 {
        chars[index] = if chars[index] == '0' { '1' } else { '0' };
        return KeyToken::from_stored(chars.into_iter().collect());
    }
    chars[index] = match chars[index] {
        '0' => '1',
        'N' => 'E',
        'E' => 'N',
        '5' => '6',
        '6' => '5',
        _ => '0',
    };
    KeyToken::from_stored(chars.into_iter().collect())
}

/// One key of each usage, and a TR-31 block under the KEK, made while operational.
struct Fixture {
    kek: WrappedKey,
    kek_clear: SecretKey,
    parent: WrappedKey,
    card: WrappedKey,
    secret_card: WrappedKey,
    /// A card master key, derived from a national master-key root: a protector of card writes.
    master: WrappedKey,
    audit: WrappedKey,
    block: String,
}

const KEK_HEX: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

async fn fixture(hsm: &LocalHsm) -> Fixture {
    let kek = hsm
        .form_key(
            spec(
                Algorithm::Aes256,
                KeyUsage::KeyBlockProtection,
                Exportability::NonExportable,
            ),
            vec![
                component(Algorithm::Aes256, &"00".repeat(32)),
                component(Algorithm::Aes256, KEK_HEX),
            ],
        )
        .await
        .unwrap();
    let kek_clear = SecretKey::from_hex(Algorithm::Aes256, KEK_HEX).unwrap();
    let parent = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::National),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let card = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardKey,
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    let secret_card = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardKey,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let master_root = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::MasterKeyDerivation(HierarchyLevel::National),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let master = hsm
        .derive_key(
            &master_root.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardMasterKey,
        )
        .await
        .unwrap();
    let audit = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::AuditMac,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let block = hsm
        .export_key(&kek.token, &card.token, KeyBlockVersion::D)
        .await
        .unwrap()
        .block;
    Fixture {
        kek,
        kek_clear,
        parent,
        card,
        secret_card,
        master,
        audit,
        block,
    }
}

fn write_request(key: &KeyToken, protect: &KeyToken) -> WriteKeyRequest {
    WriteKeyRequest {
        key: key.clone(),
        protect: protect.clone(),
        cla: 0x84,
        ins: 0xD4,
        p1: 0x01,
        p2: 0x00,
        key_header: vec![0xF0, 0x01, 0x01, 0xEF, 0x0F, 0x00, 0x00, 0x10],
        challenge: vec![0x11; 8],
        fold: MacFold::Xor4,
    }
}

fn factors() -> [Factor; 3] {
    [
        Factor::province("440000").unwrap(),
        Factor::city("440100").unwrap(),
        Factor::from_hex("86843202AD932A48").unwrap(),
    ]
}

/// Every key operation of the trait, each with valid arguments, and what it returned.
async fn every_key_operation(
    hsm: &LocalHsm,
    f: &Fixture,
) -> Vec<(&'static str, Result<(), Error>)> {
    let cmac_kcv = Kcv::from_parts(KcvMethod::Cmac, vec![0; 5]);
    vec![
        (
            "generate_key",
            hsm.generate_key(spec(
                Algorithm::Sm4,
                KeyUsage::CardKey,
                Exportability::Exportable,
            ))
            .await
            .map(drop),
        ),
        (
            "form_key",
            hsm.form_key(
                spec(
                    Algorithm::Tdes2,
                    KeyUsage::CardDerivation(HierarchyLevel::National),
                    Exportability::NonExportable,
                ),
                vec![
                    component(Algorithm::Tdes2, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
                    component(Algorithm::Tdes2, "1E1E1E1E1E1E1E1E2D2D2D2D2D2D2D2D"),
                ],
            )
            .await
            .map(drop),
        ),
        (
            "import_key",
            hsm.import_key(&f.kek.token, &f.block, KeyUsage::CardKey)
                .await
                .map(drop),
        ),
        (
            "export_key",
            hsm.export_key(&f.kek.token, &f.card.token, KeyBlockVersion::D)
                .await
                .map(drop),
        ),
        (
            "derive_key",
            hsm.derive_key(
                &f.parent.token,
                Dispersion::PbocTdes,
                &factors(),
                KeyUsage::CardKey,
            )
            .await
            .map(drop),
        ),
        (
            "write_key_command",
            hsm.write_key_command(write_request(&f.card.token, &f.master.token))
                .await
                .map(drop),
        ),
        ("kcv", hsm.kcv(&f.card.token).await.map(drop)),
        ("random", hsm.random(16).await.map(drop)),
        ("mac", hsm.mac(&f.audit.token, b"record").await.map(drop)),
        (
            "verify_mac",
            hsm.verify_mac(&f.audit.token, b"record", &[0; 16]).await,
        ),
        (
            "prepare_lmk_rotation",
            hsm.prepare_lmk_rotation(vec![f.card.token.clone()], 2, 3)
                .await
                .map(drop),
        ),
        (
            "commit_lmk_rotation",
            hsm.commit_lmk_rotation(&cmac_kcv).await,
        ),
    ]
}

/// Asserts that every key operation fails with `expected`.
async fn all_refused(hsm: &LocalHsm, f: &Fixture, expected: &Error) {
    let results = every_key_operation(hsm, f).await;
    assert_eq!(results.len(), 12);
    for (op, result) in results {
        assert_eq!(result.as_ref().err(), Some(expected), "{op}");
    }
}

#[tokio::test]
async fn every_key_operation_works_when_operational() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    for (op, result) in every_key_operation(&hsm, &f).await {
        match op {
            // A MAC of zeros does not verify; no rotation was prepared for that KCV.
            "verify_mac" => assert_eq!(result, Err(Error::Verification)),
            "commit_lmk_rotation" => assert_eq!(result, Err(Error::RotationNotPrepared)),
            _ => assert_eq!(result, Ok(()), "{op}"),
        }
    }
}

#[tokio::test]
async fn tokens_do_not_unwrap_without_their_lmk() {
    let a = memory_hsm();
    a.init_lmk(2, 3).await.unwrap();
    let b = memory_hsm();
    b.init_lmk(2, 3).await.unwrap();
    let t = test_lmk_hsm();
    let key = a
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::National),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    assert_eq!(a.kcv(&key.token).await.unwrap(), key.kcv);
    assert_eq!(b.kcv(&key.token).await, Err(Error::KeyBlockMac));
    assert_eq!(t.kcv(&key.token).await, Err(Error::KeyBlockMac));
    assert_eq!(
        b.derive_key(
            &key.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(Error::KeyBlockMac)
    );
    // The test LMK is published: another HSM on it reads the token, which is why it is dangerous.
    let on_test = t
        .generate_key(spec(
            Algorithm::Aes128,
            KeyUsage::CardKey,
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    assert_eq!(
        test_lmk_hsm().kcv(&on_test.token).await.unwrap(),
        on_test.kcv
    );
}

#[tokio::test]
async fn a_changed_token_is_refused() {
    let hsm = test_lmk_hsm();
    let key = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardKey,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let text = key.token.as_str();
    assert!(text.starts_with("D"), "{text}");
    assert_eq!(&text[5..7], "E5");
    assert_eq!(&text[11..12], "N");
    let len = text.len();
    // Usage E5 → E6, exportability N → E, a ciphertext character, a MAC character.
    for index in [6, 11, 20, len - 40, len - 1] {
        let changed = flipped(&key.token, index);
        assert_ne!(changed, key.token);
        assert_eq!(hsm.kcv(&changed).await, Err(Error::KeyBlockMac), "{index}");
    }
    // Truncated or garbage: a structural error, never a panic.
    for bad in [&text[..len - 2], "", "not a key block"] {
        let err = hsm.kcv(&KeyToken::from_stored(bad.to_owned())).await;
        assert!(err.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn keys_are_refused_outside_their_usage() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let wrong = |usage: &'static str, operation: &'static str| Error::WrongUsage {
        usage: usage.into(),
        operation: operation.into(),
    };
    let kbp = "key-block protection";

    // A KEK as a derivation parent, as a key to write, as the protection of a card write.
    assert_eq!(
        hsm.derive_key(
            &f.kek.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(wrong(kbp, "derive a key"))
    );
    assert_eq!(
        hsm.write_key_command(write_request(&f.kek.token, &f.master.token))
            .await,
        Err(wrong(kbp, "be written to a card"))
    );
    assert_eq!(
        hsm.write_key_command(write_request(&f.card.token, &f.kek.token))
            .await,
        Err(wrong(kbp, "protect a key written to a card"))
    );
    // A card key as the KEK of an export or an import.
    assert_eq!(
        hsm.export_key(&f.card.token, &f.secret_card.token, KeyBlockVersion::B)
            .await,
        Err(wrong("card", "wrap a key block"))
    );
    assert_eq!(
        hsm.import_key(&f.card.token, &f.block, KeyUsage::CardKey)
            .await,
        Err(wrong("card", "unwrap a key block"))
    );
    // A non-exportable key, and a KEK, exported.
    assert_eq!(
        hsm.export_key(&f.kek.token, &f.secret_card.token, KeyBlockVersion::D)
            .await,
        Err(Error::NotExportable)
    );
    assert_eq!(
        hsm.export_key(&f.kek.token, &f.kek.token, KeyBlockVersion::D)
            .await,
        Err(wrong(kbp, "be exported"))
    );
    // An audit key used to derive; a card key used for the audit MAC.
    assert_eq!(
        hsm.derive_key(
            &f.audit.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(wrong("audit MAC", "derive a key"))
    );
    assert_eq!(
        hsm.mac(&f.card.token, b"x").await,
        Err(wrong("card", "compute or verify an audit MAC"))
    );
    assert_eq!(
        hsm.verify_mac(&f.parent.token, b"x", &[0; 16]).await,
        Err(wrong(
            "national card derivation",
            "compute or verify an audit MAC"
        ))
    );
    // A card key as a derivation parent (only card derivation keys derive).
    assert_eq!(
        hsm.derive_key(
            &f.card.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(wrong("card", "derive a key"))
    );
    // A derived key is a card key or a card derivation key, nothing else.
    for child in [
        KeyUsage::KeyBlockProtection,
        KeyUsage::AuditMac,
        KeyUsage::VendorTransport,
        KeyUsage::CardMasterKey,
        KeyUsage::MasterKeyDerivation(HierarchyLevel::City),
    ] {
        assert_eq!(
            hsm.derive_key(&f.parent.token, Dispersion::PbocTdes, &factors(), child,)
                .await,
            Err(wrong(
                "national card derivation",
                "derive anything but card keys and card derivation keys below it"
            )),
            "{child:?}"
        );
    }
    // A card derivation key may not protect a card write.
    assert_eq!(
        hsm.write_key_command(write_request(&f.card.token, &f.parent.token))
            .await,
        Err(wrong(
            "national card derivation",
            "protect a key written to a card"
        ))
    );
    // An import whose block says another usage than asked.
    assert_eq!(
        hsm.import_key(
            &f.kek.token,
            &f.block,
            KeyUsage::CardDerivation(HierarchyLevel::National)
        )
        .await,
        Err(wrong("TR-31 E5", "become a card derivation key"))
    );
    // Algorithms a usage cannot have.
    assert_eq!(
        hsm.generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::AuditMac,
            Exportability::NonExportable
        ))
        .await,
        Err(Error::Unsupported {
            op: "the audit MAC".into(),
            alg: Algorithm::Tdes2
        })
    );
    assert_eq!(
        hsm.generate_key(spec(
            Algorithm::Sm4,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable
        ))
        .await,
        Err(Error::Unsupported {
            op: "key-block protection".into(),
            alg: Algorithm::Sm4
        })
    );
    // No derivation without a factor; an SM4 method on a TDES parent.
    assert!(matches!(
        hsm.derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &[],
            KeyUsage::CardKey,
        )
        .await,
        Err(Error::Count { field, .. }) if field == "factors"
    ));
    assert!(matches!(
        hsm.derive_key(
            &f.parent.token,
            Dispersion::Sm4Complement,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(Error::Unsupported { .. })
    ));
    // The parent used above was cached: the cache does not bypass the usage check.
    assert!(hsm.status().await.unwrap().cached_keys > 0);
    assert_eq!(
        hsm.write_key_command(write_request(&f.card.token, &f.parent.token))
            .await,
        Err(wrong(
            "national card derivation",
            "protect a key written to a card"
        ))
    );
}

/// Issue 12: whoever holds the service certificate could extract a non-exportable city key in
/// three calls — form a card key from chosen components, write the hierarchy key to a "card"
/// under it, decrypt the encrypted field with the known components. Each step is refused now,
/// as are its variants through a vendor transport key or a formed master key.
#[tokio::test]
async fn a_hierarchy_key_cannot_be_extracted_through_a_card_write() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let wrong = |usage: &'static str, operation: &'static str| Error::WrongUsage {
        usage: usage.into(),
        operation: operation.into(),
    };
    let city = hsm
        .derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &factors()[..2],
            KeyUsage::CardDerivation(HierarchyLevel::City),
        )
        .await
        .unwrap();
    // Call 1: a "card key" whose value the caller chose.
    let chosen = [
        component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
        component(Algorithm::Tdes2, "1111111111111111222222222222222F"),
    ];
    let [a, b] = chosen;
    let known = hsm
        .form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::CardKey,
                Exportability::Exportable,
            ),
            vec![a, b],
        )
        .await
        .unwrap();
    // Call 2: the city key written under it — refused: only card-level keys are written...
    assert_eq!(
        hsm.write_key_command(write_request(&city.token, &known.token))
            .await
            .map(|c| c.apdu),
        Err(wrong("city card derivation", "be written to a card"))
    );
    // ... and a card key never protects a slot, whatever is written under it.
    assert_eq!(
        hsm.write_key_command(write_request(&f.card.token, &known.token))
            .await
            .map(|c| c.apdu),
        Err(wrong("card", "protect a key written to a card"))
    );
    // The protectors a caller can choose the value of: a vendor transport key (formed from a
    // vendor's components) protects only a master key's write; a master key is never formed.
    let vendor = hsm
        .form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::VendorTransport,
                Exportability::NonExportable,
            ),
            vec![
                component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
                component(Algorithm::Tdes2, "1111111111111111222222222222222F"),
            ],
        )
        .await
        .unwrap();
    for key in [&city.token, &f.parent.token, &f.card.token] {
        assert!(
            matches!(
                hsm.write_key_command(write_request(key, &vendor.token))
                    .await,
                Err(Error::WrongUsage { .. })
            ),
            "{key:?}"
        );
    }
    assert_eq!(
        hsm.write_key_command(write_request(&f.card.token, &vendor.token))
            .await
            .map(|c| c.apdu),
        Err(wrong(
            "vendor transport",
            "protect the write of anything but a card master key"
        ))
    );
    let only_derived = wrong(
        "card master",
        "be generated, formed or imported (it is only ever derived)",
    );
    assert_eq!(
        hsm.form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::CardMasterKey,
                Exportability::NonExportable,
            ),
            vec![
                component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
                component(Algorithm::Tdes2, "1111111111111111222222222222222F"),
            ],
        )
        .await,
        Err(only_derived.clone())
    );
    assert_eq!(
        hsm.generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardMasterKey,
            Exportability::NonExportable,
        ))
        .await,
        Err(only_derived.clone())
    );
    assert_eq!(
        hsm.import_key(&f.kek.token, &f.block, KeyUsage::CardMasterKey)
            .await,
        Err(only_derived)
    );
    // What is allowed: a card key under a master key, a master key under the vendor key.
    assert!(
        hsm.write_key_command(write_request(&f.card.token, &f.master.token))
            .await
            .is_ok()
    );
    assert!(
        hsm.write_key_command(write_request(&f.master.token, &vendor.token))
            .await
            .is_ok()
    );
}

/// A hierarchy key cannot come out of a derivation relabelled: the factors must reach the
/// child's level exactly, and the child stays in its parent's hierarchy. Otherwise a provincial
/// key derived as a "card key" with the city factor would be the city key, exportable.
#[tokio::test]
async fn a_derivation_reaches_exactly_its_level_in_its_hierarchy() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let [f1, f2, f3] = factors();
    let level = |usage: &'static str| Error::WrongUsage {
        usage: usage.into(),
        operation: "derive a key of that level with this number of factors".into(),
    };
    let province = hsm
        .derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &[f1],
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    // The city key as a "card key" (one factor short), or under a wrong level.
    for (factors, child) in [
        (vec![f2], KeyUsage::CardKey),
        (vec![f2], KeyUsage::CardDerivation(HierarchyLevel::Province)),
        (vec![f2, f3], KeyUsage::CardDerivation(HierarchyLevel::City)),
        (vec![f2, f3, f3], KeyUsage::CardKey),
    ] {
        assert_eq!(
            hsm.derive_key(&province.token, Dispersion::PbocTdes, &factors, child)
                .await,
            Err(level("provincial card derivation")),
            "{child:?} with {} factors",
            factors.len()
        );
    }
    assert!(
        hsm.derive_key(
            &province.token,
            Dispersion::PbocTdes,
            &[f2, f3],
            KeyUsage::CardKey
        )
        .await
        .is_ok()
    );
    // A master-key hierarchy derives master keys only, at their level.
    let masters = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::MasterKeyDerivation(HierarchyLevel::Province),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    assert_eq!(
        hsm.derive_key(
            &masters.token,
            Dispersion::PbocTdes,
            &[f2, f3],
            KeyUsage::CardKey
        )
        .await,
        Err(Error::WrongUsage {
            usage: "provincial master-key derivation".into(),
            operation:
                "derive anything but card master keys and master-key derivation keys below it"
                    .into(),
        })
    );
    assert_eq!(
        hsm.derive_key(
            &masters.token,
            Dispersion::PbocTdes,
            &[f2],
            KeyUsage::CardMasterKey
        )
        .await,
        Err(level("provincial master-key derivation"))
    );
    let master = hsm
        .derive_key(
            &masters.token,
            Dispersion::PbocTdes,
            &[f2, f3],
            KeyUsage::CardMasterKey,
        )
        .await
        .unwrap();
    // A card-derivation parent does not make master keys either.
    assert!(matches!(
        hsm.derive_key(
            &province.token,
            Dispersion::PbocTdes,
            &[f2, f3],
            KeyUsage::CardMasterKey
        )
        .await,
        Err(Error::WrongUsage { .. })
    ));
    assert!(
        hsm.write_key_command(write_request(&f.card.token, &master.token))
            .await
            .is_ok()
    );
}

/// Issue 12 (policy hook): issuer-only keys leave only inside secure-messaging commands. A card
/// master key, its hierarchy and a vendor transport key are refused as TR-31 by their usage,
/// under any KEK and in either version; the same master key is written to a card.
#[tokio::test]
async fn master_keys_never_leave_as_tr31() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let masters = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::MasterKeyDerivation(HierarchyLevel::Province),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let vendor = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::VendorTransport,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let tdes_kek = hsm
        .generate_key(spec(
            Algorithm::Tdes3,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    for key in [&f.master, &masters, &vendor] {
        for (kek, version) in [
            (&f.kek, KeyBlockVersion::D),
            (&tdes_kek, KeyBlockVersion::B),
        ] {
            assert_eq!(
                hsm.export_key(&kek.token, &key.token, version).await,
                Err(Error::NotExportable),
                "{:?} under {version:?}",
                key.token
            );
        }
    }
    assert!(
        hsm.write_key_command(write_request(&f.master.token, &vendor.token))
            .await
            .is_ok()
    );
}

/// Issue 12: exportability is the HSM's decision from the key's usage, never the caller's.
#[tokio::test]
async fn exportability_is_decided_by_the_hsm() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let [f1, f2, f3] = factors();
    // A non-exportable root's provincial child is non-exportable (the caller used to choose).
    let province = hsm
        .derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &[f1],
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    assert_eq!(
        hsm.export_key(&f.kek.token, &province.token, KeyBlockVersion::D)
            .await,
        Err(Error::NotExportable)
    );
    // An exportable root (one PSAMs hold) gives exportable children; card keys leave as TR-31.
    let psam_root = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::National),
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    let psam_province = hsm
        .derive_key(
            &psam_root.token,
            Dispersion::PbocTdes,
            &[f1],
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    assert!(
        hsm.export_key(&f.kek.token, &psam_province.token, KeyBlockVersion::D)
            .await
            .is_ok()
    );
    let card = hsm
        .derive_key(
            &province.token,
            Dispersion::PbocTdes,
            &[f2, f3],
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    assert!(
        hsm.export_key(&f.kek.token, &card.token, KeyBlockVersion::D)
            .await
            .is_ok()
    );
    // A new key of a usage that never leaves cannot be made exportable.
    for (alg, usage) in [
        (Algorithm::Aes256, KeyUsage::KeyBlockProtection),
        (Algorithm::Aes256, KeyUsage::AuditMac),
        (Algorithm::Tdes2, KeyUsage::VendorTransport),
        (
            Algorithm::Tdes2,
            KeyUsage::MasterKeyDerivation(HierarchyLevel::Province),
        ),
    ] {
        assert_eq!(
            hsm.generate_key(spec(alg, usage, Exportability::Exportable))
                .await,
            Err(Error::NotExportable),
            "{usage:?}"
        );
    }
}

#[tokio::test]
async fn components_are_checked() {
    let hsm = test_lmk_hsm();
    let card_spec = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    // Component 2's KCV is that of another key.
    let mut second = component(Algorithm::Tdes2, "1E1E1E1E1E1E1E1E2D2D2D2D2D2D2D2D");
    second.expected_kcv = Kcv::from_parts(KcvMethod::EncryptZeros, vec![0xD2, 0xB9, 0x1C]);
    assert_eq!(
        hsm.form_key(
            card_spec,
            vec![
                component(Algorithm::Tdes2, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
                second,
                component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
            ],
        )
        .await,
        Err(Error::ComponentKcv { index: 2 })
    );
    // Too few, too many, too short.
    for n in [1, 10] {
        let parts = (0..n)
            .map(|_| component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"))
            .collect();
        assert!(
            matches!(
                hsm.form_key(card_spec, parts).await,
                Err(Error::Count { field, .. }) if field == "components"
            ),
            "{n}"
        );
    }
    let short = Component::new(
        Zeroizing::new("0123456789ABCDEF".to_owned()),
        Kcv::from_parts(KcvMethod::EncryptZeros, vec![0; 3]),
    );
    assert!(matches!(
        hsm.form_key(
            card_spec,
            vec![
                component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
                short
            ]
        )
        .await,
        Err(Error::KeyLength { .. })
    ));
    // Components whose XOR is weak: equal halves, or a weak DES key in each half.
    for (a, b) in [
        (
            "0123456789ABCDEFFEDCBA9876543210",
            "0123456789ABCDEFFEDCBA9876543210",
        ),
        (
            "0123456789ABCDEFFEDCBA9876543210",
            "0022446688AACCEE0022446688AACCEE",
        ),
    ] {
        assert_eq!(
            hsm.form_key(
                card_spec,
                vec![
                    component(Algorithm::Tdes2, a),
                    component(Algorithm::Tdes2, b)
                ]
            )
            .await,
            Err(Error::WeakKey),
            "{a} {b}"
        );
    }
    // Issue 12: equal components (an all-zero key), for every algorithm, and halves equal
    // modulo parity are weak; a component KCV shorter than 3 bytes is refused.
    for (alg, hex) in [
        (Algorithm::Aes128, "000102030405060708090A0B0C0D0E0F"),
        (Algorithm::Sm4, "0123456789ABCDEFFEDCBA9876543210"),
        (Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
    ] {
        assert_eq!(
            hsm.form_key(
                spec(alg, KeyUsage::CardKey, Exportability::Exportable),
                vec![component(alg, hex), component(alg, hex)]
            )
            .await,
            Err(Error::WeakKey),
            "{alg}"
        );
    }
    assert_eq!(
        hsm.form_key(
            card_spec,
            vec![
                component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210"),
                component(Algorithm::Tdes2, "0000000000000000FEFEFEFEFEFEFEFE"),
            ]
        )
        .await,
        Err(Error::WeakKey)
    );
    let mut short_kcv = component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210");
    short_kcv.expected_kcv = Kcv::from_parts(
        KcvMethod::EncryptZeros,
        short_kcv.expected_kcv.value()[..2].to_vec(),
    );
    assert_eq!(
        hsm.form_key(
            card_spec,
            vec![
                short_kcv,
                component(Algorithm::Tdes2, "1E1E1E1E1E1E1E1E2D2D2D2D2D2D2D2D"),
            ]
        )
        .await,
        Err(Error::DataLength {
            field: "component KCV".into(),
            expected: "at least 3 bytes".into(),
            actual: 2
        })
    );
    // Nine components are fine.
    let nine = (0..9)
        .map(|i| component(Algorithm::Aes128, &format!("{:02X}", i + 1).repeat(16)))
        .collect();
    assert!(
        hsm.form_key(
            spec(
                Algorithm::Aes128,
                KeyUsage::CardKey,
                Exportability::Exportable
            ),
            nine
        )
        .await
        .is_ok()
    );
}

/// A key formed one component at a time: each component checked when it arrives, the partial
/// key good for nothing else, bound to its spec and count; the result is `form_key`'s.
#[tokio::test]
async fn components_one_at_a_time() {
    let hsm = test_lmk_hsm();
    let root_spec = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let parts = [
        "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F",
        "1E1E1E1E1E1E1E1E2D2D2D2D2D2D2D2D",
        "0123456789ABCDEFFEDCBA9876543210",
    ];
    let begin = |spec, components| Accumulation::Begin { spec, components };
    let partial = |step: Accumulated| match step {
        Accumulated::Partial(p) => p,
        Accumulated::Formed(_) => panic!("formed too early"),
    };
    // The spec and the count are checked at the first component.
    assert_eq!(
        hsm.add_component(
            begin(
                spec(
                    Algorithm::Tdes2,
                    KeyUsage::CardMasterKey,
                    Exportability::NonExportable
                ),
                2
            ),
            component(Algorithm::Tdes2, parts[0])
        )
        .await,
        Err(Error::WrongUsage {
            usage: "card master".into(),
            operation: "be generated, formed or imported (it is only ever derived)".into(),
        })
    );
    for n in [0, 1, 10] {
        assert!(
            matches!(
                hsm.add_component(begin(root_spec, n), component(Algorithm::Tdes2, parts[0]))
                    .await,
                Err(Error::Count { .. })
            ),
            "{n}"
        );
    }
    // A wrong KCV is refused at once, naming its place; the partial key stays usable.
    let first = partial(
        hsm.add_component(begin(root_spec, 3), component(Algorithm::Tdes2, parts[0]))
            .await
            .unwrap(),
    );
    assert_eq!((first.received, first.components), (1, 3));
    let mut wrong = component(Algorithm::Tdes2, parts[1]);
    wrong.expected_kcv = Kcv::from_parts(KcvMethod::EncryptZeros, vec![0xD2, 0xB9, 0x1C]);
    assert_eq!(
        hsm.add_component(Accumulation::Continue(first.token.clone()), wrong)
            .await,
        Err(Error::ComponentKcv { index: 2 })
    );
    // A component of another length does not fit the partial key.
    assert!(matches!(
        hsm.add_component(
            Accumulation::Continue(first.token.clone()),
            component(Algorithm::Aes256, &"5A".repeat(32))
        )
        .await,
        Err(Error::KeyLength { .. })
    ));
    // The partial key is no key, and no token is a partial key.
    let kek = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    assert!(hsm.kcv(&first.token).await.is_err());
    assert!(
        hsm.export_key(&kek.token, &first.token, KeyBlockVersion::D)
            .await
            .is_err()
    );
    assert!(matches!(
        hsm.add_component(
            Accumulation::Continue(kek.token.clone()),
            component(Algorithm::Tdes2, parts[1])
        )
        .await,
        Err(Error::WrongUsage { .. })
    ));
    // Altered (a header character, a MAC character): refused.
    for index in [6, first.token.as_str().len() - 3] {
        assert!(
            hsm.add_component(
                Accumulation::Continue(flipped(&first.token, index)),
                component(Algorithm::Tdes2, parts[1])
            )
            .await
            .is_err(),
            "{index}"
        );
    }
    // Continue to the end: the same key as form_key, with the spec the first call gave.
    let second = partial(
        hsm.add_component(
            Accumulation::Continue(first.token),
            component(Algorithm::Tdes2, parts[1]),
        )
        .await
        .unwrap(),
    );
    assert_eq!((second.received, second.components), (2, 3));
    let Accumulated::Formed(formed) = hsm
        .add_component(
            Accumulation::Continue(second.token.clone()),
            component(Algorithm::Tdes2, parts[2]),
        )
        .await
        .unwrap()
    else {
        panic!("the third of three forms the key");
    };
    let at_once = hsm
        .form_key(
            root_spec,
            parts
                .iter()
                .map(|p| component(Algorithm::Tdes2, p))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(formed.kcv, at_once.kcv);
    assert_eq!(
        formed.token.as_str()[..16],
        at_once.token.as_str()[..16],
        "the same header: the usage the first call gave"
    );
    // Weak results are refused at the last component.
    let p = partial(
        hsm.add_component(begin(root_spec, 2), component(Algorithm::Tdes2, parts[2]))
            .await
            .unwrap(),
    );
    assert_eq!(
        hsm.add_component(
            Accumulation::Continue(p.token),
            component(Algorithm::Tdes2, parts[2])
        )
        .await,
        Err(Error::WeakKey)
    );
}

/// DOMAIN.md §2: the national test root, formed from two components, and its chain.
#[tokio::test]
async fn derivation_follows_the_domain_chain() {
    let hsm = test_lmk_hsm();
    let root = hsm
        .form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::CardDerivation(HierarchyLevel::National),
                Exportability::NonExportable,
            ),
            vec![
                component(Algorithm::Tdes2, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
                component(Algorithm::Tdes2, "1E1E1E1E1E1E1E1E2D2D2D2D2D2D2D2D"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(root.kcv.to_hex(), "D2B91C");
    let [f1, f2, f3] = factors();
    let derive = |parent: KeyToken, factor: Factor, usage: KeyUsage| {
        let hsm = &hsm;
        async move {
            hsm.derive_key(&parent, Dispersion::PbocTdes, &[factor], usage)
                .await
                .unwrap()
        }
    };
    let province = derive(
        root.token.clone(),
        f1,
        KeyUsage::CardDerivation(HierarchyLevel::Province),
    )
    .await;
    assert_eq!(province.kcv.to_hex(), "E47B1C");
    let city = derive(
        province.token,
        f2,
        KeyUsage::CardDerivation(HierarchyLevel::City),
    )
    .await;
    assert_eq!(city.kcv.to_hex(), "AEA797");
    let card = derive(city.token, f3, KeyUsage::CardKey).await;
    assert_eq!(card.kcv.to_hex(), "32CD7C");
    // All three factors at once, from the root.
    let direct = hsm
        .derive_key(
            &root.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    assert_eq!(direct.kcv.to_hex(), "32CD7C");
    assert_eq!(hsm.kcv(&direct.token).await.unwrap(), direct.kcv);
}

#[tokio::test]
async fn exported_blocks_unwrap_to_the_same_key() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let exported = hsm
        .export_key(&f.kek.token, &f.card.token, KeyBlockVersion::D)
        .await
        .unwrap();
    assert_eq!(exported.kcv, f.card.kcv);
    let (header, key) = tr31::unwrap(&f.kek_clear, &exported.block).unwrap();
    assert_eq!(kcv::compute_default(&key).unwrap(), f.card.kcv);
    assert_eq!(header.version, KeyBlockVersion::D);
    assert_eq!(header.key_usage, "E5");
    assert_eq!(header.mode_of_use, ModeOfUse::NoRestriction);
    assert_eq!(header.exportability, tr31::Exportability::NonExportable);
    let kc = header.optional_block("KC").unwrap().check_value().unwrap();
    assert_eq!(kc.value(), f.card.kcv.value());

    // Version B under a TDES KBPK, for an exportable card derivation key (a PSAM's city key).
    let tdes_kek_hex = "0123456789ABCDEFFEDCBA9876543210";
    let tdes_kek = hsm
        .form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::KeyBlockProtection,
                Exportability::NonExportable,
            ),
            vec![
                component(Algorithm::Tdes2, "11111111111111111111111111111111"),
                component(Algorithm::Tdes2, "1032547698BADCFEEFCDAB8967452301"),
            ],
        )
        .await
        .unwrap();
    let city = hsm
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::National),
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    let b = hsm
        .export_key(&tdes_kek.token, &city.token, KeyBlockVersion::B)
        .await
        .unwrap();
    let kbpk = SecretKey::from_hex(Algorithm::Tdes2, tdes_kek_hex).unwrap();
    let (header, key) = tr31::unwrap(&kbpk, &b.block).unwrap();
    assert_eq!(
        (header.key_usage.as_str(), header.mode_of_use),
        ("E6", ModeOfUse::DeriveKeys)
    );
    assert_eq!(kcv::compute_default(&key).unwrap(), city.kcv);

    // The strength and version rules of TR-31 apply: no AES-256 key under a TDES KBPK, no
    // SM4 key in version B, no version B under an AES KBPK.
    let aes = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::CardKey,
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    assert!(matches!(
        hsm.export_key(&tdes_kek.token, &aes.token, KeyBlockVersion::B)
            .await,
        Err(Error::KeyBlockHeader { .. } | Error::KeyBlockKbpkStrength { .. })
    ));
    let sm4 = hsm
        .generate_key(spec(
            Algorithm::Sm4,
            KeyUsage::CardKey,
            Exportability::Exportable,
        ))
        .await
        .unwrap();
    assert_eq!(
        hsm.export_key(&tdes_kek.token, &sm4.token, KeyBlockVersion::B)
            .await,
        Err(Error::KeyBlockHeader {
            field: "algorithm".into()
        })
    );
    assert!(matches!(
        hsm.export_key(&f.kek.token, &f.card.token, KeyBlockVersion::B)
            .await,
        Err(Error::KeyBlockKbpk { version: 'B', .. })
    ));

    // Import is the inverse: the same key, under the LMK again, as asked.
    let imported = hsm
        .import_key(&f.kek.token, &exported.block, KeyUsage::CardKey)
        .await
        .unwrap();
    assert_eq!(imported.kcv, f.card.kcv);
    // The exported block said N: the imported key does not leave again.
    assert_eq!(
        hsm.export_key(&f.kek.token, &imported.token, KeyBlockVersion::D)
            .await,
        Err(Error::NotExportable)
    );
    // A block under another KBPK.
    assert_eq!(
        hsm.import_key(
            &tdes_kek.token,
            &b.block,
            KeyUsage::CardDerivation(HierarchyLevel::National)
        )
        .await
        .map(|k| k.kcv),
        Ok(city.kcv.clone())
    );
    assert_eq!(
        hsm.import_key(
            &f.kek.token,
            &b.block,
            KeyUsage::CardDerivation(HierarchyLevel::National)
        )
        .await,
        Err(Error::KeyBlockKbpk {
            version: 'B',
            expected: "2- or 3-key TDES".into()
        })
    );
}

#[tokio::test]
async fn audit_macs_verify_and_refuse_changes() {
    let hsm = test_lmk_hsm();
    let f = fixture(&hsm).await;
    let tag = hsm.mac(&f.audit.token, b"entry 1").await.unwrap();
    assert_eq!(tag.len(), 16);
    assert_eq!(
        hsm.verify_mac(&f.audit.token, b"entry 1", &tag).await,
        Ok(())
    );
    assert_eq!(
        hsm.verify_mac(&f.audit.token, b"entry 2", &tag).await,
        Err(Error::Verification)
    );
    let mut changed = tag.clone();
    changed[15] ^= 1;
    assert_eq!(
        hsm.verify_mac(&f.audit.token, b"entry 1", &changed).await,
        Err(Error::Verification)
    );
    assert_eq!(
        hsm.verify_mac(&f.audit.token, b"entry 1", &tag[..8]).await,
        Err(Error::Verification)
    );
}

#[tokio::test]
async fn random_lengths_are_bounded() {
    let hsm = test_lmk_hsm();
    for len in [0, 4097] {
        assert!(
            matches!(hsm.random(len).await, Err(Error::Count { .. })),
            "{len}"
        );
    }
    let a = hsm.random(4096).await.unwrap();
    let b = hsm.random(32).await.unwrap();
    assert_eq!(a.len(), 4096);
    assert_ne!(&a[..32], &b[..]);
}

#[tokio::test]
async fn sealed_and_tampered_hsms_refuse_every_key_operation() {
    let hsm = memory_hsm();
    let init = hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    let f = fixture(&hsm).await;
    hsm.seal().await.unwrap();
    assert_eq!(hsm.status().await.unwrap().state, HsmState::Sealed);
    all_refused(&hsm, &f, &Error::Sealed).await;

    for issued in init.shares {
        hsm.unseal(issued.share).await.unwrap();
    }
    assert_eq!(hsm.kcv(&f.card.token).await.unwrap(), f.card.kcv);
    hsm.tamper().await.unwrap();
    let status = hsm.status().await.unwrap();
    assert!(status.tampered);
    assert_eq!(status.state, HsmState::Sealed);
    assert_eq!(status.cached_keys, 0);
    all_refused(&hsm, &f, &Error::Sealed).await;

    let fresh = memory_hsm();
    assert_eq!(fresh.status().await.unwrap().state, HsmState::Uninitialised);
    all_refused(&fresh, &f, &Error::Uninitialised).await;
}

static SELF_TEST_FAILS: AtomicBool = AtomicBool::new(true);

fn injected_self_test() -> hsm_api::Result<()> {
    if SELF_TEST_FAILS.load(Ordering::SeqCst) {
        Err(Error::SelfTest("injected failure".into()))
    } else {
        Ok(())
    }
}

fn failing_self_test() -> hsm_api::Result<()> {
    Err(Error::SelfTest("always fails".into()))
}

#[tokio::test]
async fn a_failed_self_test_refuses_every_key_operation_until_one_passes() {
    // Tokens made by a healthy HSM on the same (test) LMK.
    let healthy = test_lmk_hsm();
    let f = fixture(&healthy).await;

    let hsm = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        self_test: injected_self_test,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::SelfTestFailed);
    assert_eq!(
        status.self_test_failure.as_deref(),
        Some("injected failure")
    );
    assert!(!status.self_test_passed);
    let failed = Error::SelfTestFailed("injected failure".to_owned());
    all_refused(&hsm, &f, &failed).await;
    assert_eq!(
        hsm.self_test().await,
        Err(Error::SelfTest("injected failure".into()))
    );
    all_refused(&hsm, &f, &failed).await;

    SELF_TEST_FAILS.store(false, Ordering::SeqCst);
    assert_eq!(hsm.self_test().await, Ok(()));
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Operational);
    assert!(status.self_test_passed);
    assert_eq!(hsm.kcv(&f.card.token).await.unwrap(), f.card.kcv);

    // An HSM whose self-test fails at unseal has its LMK but serves nothing.
    let dir = TempDir::new("selftest");
    let init = hsm_sim::handout::dangerous_init(&dir_hsm(dir.path()), 2, 3)
        .await
        .unwrap();
    let broken = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(dir.path().to_owned()),
        self_test: failing_self_test,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    assert_eq!(
        broken.status().await.unwrap().state,
        HsmState::SelfTestFailed
    );
    assert_eq!(
        broken.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );
    let mut shares = init.shares.into_iter();
    broken.unseal(shares.next().unwrap().share).await.unwrap();
    assert_eq!(
        broken.unseal(shares.next().unwrap().share).await,
        Err(Error::SelfTest("always fails".into()))
    );
    let status = broken.status().await.unwrap();
    assert_eq!(status.state, HsmState::SelfTestFailed);
    assert_eq!(status.unseal, None);
    all_refused(
        &broken,
        &f,
        &Error::SelfTestFailed("always fails".to_owned()),
    )
    .await;
}

#[tokio::test]
async fn init_then_reopen_is_sealed_until_m_shares() {
    let dir = TempDir::new("reopen");
    let hsm = dir_hsm(dir.path());
    assert_eq!(hsm.status().await.unwrap().state, HsmState::Uninitialised);
    let init = hsm_sim::handout::dangerous_init(&hsm, 3, 5).await.unwrap();
    assert_eq!(init.shares.len(), 5);
    assert_eq!(init.lmk_kcv.method(), KcvMethod::Cmac);
    assert_eq!(init.lmk_kcv.value().len(), 5);
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Operational);
    assert_eq!(status.lmk_kcv.as_ref(), Some(&init.lmk_kcv));
    assert!(!status.secure && !hsm.is_secure());
    assert_eq!(
        hsm.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );
    let f = fixture(&hsm).await;
    drop(hsm);

    // The state file: the KCV, the counts and the check values; no share, no LMK.
    let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    assert!(text.contains(&init.lmk_kcv.to_hex()), "{text}");
    for issued in &init.shares {
        assert!(text.contains(&issued.check_value), "{text}");
        let value = &issued.share.secret_text()[8..];
        assert!(!text.contains(&value[..16]), "{text}");
    }
    assert!(!dir.path().join(format!("{STATE_FILE}.tmp")).exists());

    let hsm = dir_hsm(dir.path());
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Sealed);
    assert_eq!(status.lmk_kcv.as_ref(), Some(&init.lmk_kcv));
    assert_eq!(
        status.unseal.map(|p| (p.submitted, p.threshold)),
        Some((0, 3))
    );
    assert_eq!(
        hsm.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );

    let mut shares = init.shares.into_iter().rev();
    for expected in 1..=2 {
        let progress = hsm.unseal(shares.next().unwrap().share).await.unwrap();
        assert_eq!((progress.submitted, progress.threshold), (expected, 3));
        assert!(!progress.unsealed);
        // m−1 shares: still sealed.
        assert_eq!(hsm.kcv(&f.card.token).await, Err(Error::Sealed));
    }
    let progress = hsm.unseal(shares.next().unwrap().share).await.unwrap();
    assert!(progress.unsealed);
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Operational);
    assert_eq!(status.unseal, None);
    for key in [&f.kek, &f.parent, &f.card, &f.secret_card, &f.audit] {
        assert_eq!(hsm.kcv(&key.token).await.as_ref(), Ok(&key.kcv));
    }
}

#[tokio::test]
async fn bad_shares_are_refused_and_reset_forgets() {
    let hsm = memory_hsm();
    let init = hsm_sim::handout::dangerous_init(&hsm, 3, 3).await.unwrap();
    let other = hsm_sim::handout::dangerous_init(&memory_hsm(), 3, 3)
        .await
        .unwrap();
    hsm.seal().await.unwrap();
    let texts: Vec<String> = init
        .shares
        .iter()
        .map(|s| s.share.secret_text().to_owned())
        .collect();

    hsm.unseal(share(&texts[0])).await.unwrap();
    // The same share again, a share of another LMK, garbage, an index this LMK does not have.
    let same = hsm.unseal(share(&texts[0])).await;
    assert!(matches!(same, Err(Error::Share(_))), "{same:?}");
    let foreign = hsm.unseal(share(other.shares[1].share.secret_text())).await;
    assert!(matches!(foreign, Err(Error::Share(_))), "{foreign:?}");
    for garbage in [
        "",
        "lmk1-02-00",
        "hello",
        &texts[1].replace("lmk1-02", "lmk1-09"),
    ] {
        let refused = hsm.unseal(share(garbage)).await;
        assert!(
            matches!(refused, Err(Error::Share(_))),
            "{garbage}: {refused:?}"
        );
    }
    // None of that counted.
    assert_eq!(hsm.status().await.unwrap().unseal.unwrap().submitted, 1);

    hsm.unseal_reset().await.unwrap();
    assert_eq!(hsm.status().await.unwrap().unseal.unwrap().submitted, 0);
    hsm.unseal(share(&texts[1])).await.unwrap();
    hsm.unseal(share(&texts[2])).await.unwrap();
    assert!(hsm.unseal(share(&texts[1])).await.is_err());
    assert!(hsm.unseal(share(&texts[0])).await.unwrap().unsealed);
    assert_eq!(hsm.status().await.unwrap().state, HsmState::Operational);
}

#[tokio::test]
async fn a_state_file_with_another_kcv_resets_the_unseal() {
    let dir = TempDir::new("kcv");
    let init = hsm_sim::handout::dangerous_init(&dir_hsm(dir.path()), 2, 2)
        .await
        .unwrap();
    let path = dir.path().join(STATE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let kcv = init.lmk_kcv.to_hex();
    let other = if kcv.starts_with('0') { "1" } else { "0" };
    std::fs::write(&path, text.replace(&kcv, &format!("{other}{}", &kcv[1..]))).unwrap();

    let hsm = dir_hsm(dir.path());
    let mut shares = init.shares.into_iter();
    hsm.unseal(shares.next().unwrap().share).await.unwrap();
    assert_eq!(
        hsm.unseal(shares.next().unwrap().share).await,
        Err(Error::LmkKcvMismatch)
    );
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Sealed);
    assert_eq!(status.unseal.unwrap().submitted, 0);

    // A state file that is not ours stops the HSM from starting.
    std::fs::write(&path, "{\"format\": \"something else\"}").unwrap();
    assert!(matches!(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(dir.path().to_owned()),
            ..LocalHsmConfig::default()
        }),
        Err(Error::Storage(_))
    ));
}

#[tokio::test]
async fn lmk_rotation_keeps_every_kcv_and_retires_old_tokens() {
    let dir = TempDir::new("rotation");
    let hsm = dir_hsm(dir.path());
    let old_init = hsm_sim::handout::dangerous_init(&hsm, 2, 3).await.unwrap();
    let f = fixture(&hsm).await;
    let keys = [&f.kek, &f.parent, &f.card, &f.secret_card, &f.audit];
    let tokens: Vec<KeyToken> = keys.iter().map(|k| k.token.clone()).collect();

    // Nothing to commit yet; a forged token stops the preparation.
    assert_eq!(
        hsm.commit_lmk_rotation(&old_init.lmk_kcv).await,
        Err(Error::RotationNotPrepared)
    );
    let mut with_forgery = tokens.clone();
    with_forgery.push(flipped(&f.card.token, 20));
    assert_eq!(
        hsm.prepare_lmk_rotation(with_forgery, 2, 3)
            .await
            .unwrap_err(),
        Error::KeyBlockMac
    );
    assert!(matches!(
        hsm.prepare_lmk_rotation(tokens.clone(), 1, 3).await,
        Err(Error::Count { .. })
    ));

    // The parent is hot in the cache before the rotation.
    hsm.derive_key(
        &f.parent.token,
        Dispersion::PbocTdes,
        &factors(),
        KeyUsage::CardKey,
    )
    .await
    .unwrap();
    assert!(hsm.status().await.unwrap().cached_keys > 0);

    // Prepared with the first two tokens, the rest re-wrapped in a second call (a store with
    // more tokens than one call carries).
    let mut rotation = hsm
        .prepare_lmk_rotation(tokens[..2].to_vec(), 2, 4)
        .await
        .unwrap();
    assert_eq!(
        hsm.rewrap_for_rotation(&old_init.lmk_kcv, tokens[2..].to_vec())
            .await,
        Err(Error::RotationNotPrepared),
        "only under the prepared LMK"
    );
    assert!(matches!(
        hsm.rewrap_for_rotation(&rotation.lmk_kcv, Vec::new()).await,
        Err(Error::Count { .. })
    ));
    assert!(matches!(
        hsm.rewrap_for_rotation(&rotation.lmk_kcv, vec![tokens[0].clone(); 257])
            .await,
        Err(Error::Count { .. })
    ));
    assert_eq!(
        hsm.rewrap_for_rotation(&rotation.lmk_kcv, vec![flipped(&f.card.token, 20)])
            .await,
        Err(Error::KeyBlockMac)
    );
    let more = hsm
        .rewrap_for_rotation(&rotation.lmk_kcv, tokens[2..].to_vec())
        .await
        .unwrap();
    rotation.tokens.extend(more);
    assert_eq!(rotation.tokens.len(), tokens.len());
    let parts = rotation.parts.clone().unwrap();
    assert_eq!((parts.count, parts.threshold), (4, 2));
    assert_ne!(rotation.lmk_kcv, old_init.lmk_kcv);
    // Until the commit the old LMK is current: new tokens do not unwrap yet.
    assert_eq!(hsm.kcv(&rotation.tokens[0]).await, Err(Error::KeyBlockMac));
    assert_eq!(hsm.kcv(&tokens[0]).await.as_ref(), Ok(&f.kek.kcv));
    assert_eq!(
        hsm.commit_lmk_rotation(&old_init.lmk_kcv).await,
        Err(Error::RotationNotPrepared)
    );

    // Not before every custodian has taken their share of the new LMK (each once).
    let first = hsm.take_secret_part(&parts.set, 1).await.unwrap();
    assert_eq!(
        hsm.take_secret_part(&parts.set, 1).await.unwrap_err(),
        Error::PartNotAvailable
    );
    assert_eq!(
        hsm.commit_lmk_rotation(&rotation.lmk_kcv).await,
        Err(Error::PartNotAvailable)
    );
    let mut new_shares = vec![first];
    for index in 2..=4 {
        new_shares.push(hsm.take_secret_part(&parts.set, index).await.unwrap());
    }
    hsm.commit_lmk_rotation(&rotation.lmk_kcv).await.unwrap();
    let status = hsm.status().await.unwrap();
    assert_eq!(status.lmk_kcv.as_ref(), Some(&rotation.lmk_kcv));
    assert_eq!(status.cached_keys, 0);
    for ((old, new), key) in tokens.iter().zip(&rotation.tokens).zip(keys) {
        assert_eq!(hsm.kcv(new).await.as_ref(), Ok(&key.kcv));
        assert_eq!(hsm.kcv(old).await, Err(Error::KeyBlockMac));
        // Same header: same usage, algorithm and exportability.
        assert_eq!(&new.as_str()[5..12], &old.as_str()[5..12]);
    }
    // The once-cached parent's old token is refused too.
    assert_eq!(
        hsm.derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await,
        Err(Error::KeyBlockMac)
    );
    // The same rotation cannot be committed twice.
    assert_eq!(
        hsm.commit_lmk_rotation(&rotation.lmk_kcv).await,
        Err(Error::RotationNotPrepared)
    );
    drop(hsm);

    // The state file now names the new LMK: its shares unseal it, the old ones are refused.
    let hsm = dir_hsm(dir.path());
    assert_eq!(
        hsm.status().await.unwrap().lmk_kcv.as_ref(),
        Some(&rotation.lmk_kcv)
    );
    let old = hsm
        .unseal(share(old_init.shares[0].share.secret_text()))
        .await;
    assert!(matches!(old, Err(Error::Share(_))), "{old:?}");
    let mut shares = new_shares.into_iter().skip(1);
    hsm.unseal(shares.next().unwrap().share).await.unwrap();
    assert!(
        hsm.unseal(shares.next().unwrap().share)
            .await
            .unwrap()
            .unsealed
    );
    assert_eq!(hsm.kcv(&rotation.tokens[2]).await.as_ref(), Ok(&f.card.kcv));
}

#[tokio::test]
async fn seal_empties_the_hot_key_cache() {
    let hsm = memory_hsm();
    let init = hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    let f = fixture(&hsm).await;
    for _ in 0..3 {
        hsm.derive_key(
            &f.parent.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    }
    hsm.mac(&f.audit.token, b"x").await.unwrap();
    // The KEK (from the fixture's export), the parent, the master-key root (the fixture's
    // derivation), the audit key; not the exported card key.
    assert_eq!(hsm.status().await.unwrap().cached_keys, 4);
    hsm.seal().await.unwrap();
    assert_eq!(hsm.status().await.unwrap().cached_keys, 0);
    for issued in init.shares {
        hsm.unseal(issued.share).await.unwrap();
    }
    assert_eq!(hsm.status().await.unwrap().cached_keys, 0);

    let uncached = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        cache_capacity: 0,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let g = fixture(&uncached).await;
    uncached.mac(&g.audit.token, b"x").await.unwrap();
    assert_eq!(uncached.status().await.unwrap().cached_keys, 0);
}

#[tokio::test]
async fn the_dangerous_test_lmk_is_reported_and_writes_nothing() {
    let dir = TempDir::new("testlmk");
    let hsm = LocalHsm::open(LocalHsmConfig {
        state_dir: Some(dir.path().to_owned()),
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Operational);
    assert!(status.dangerous_test_lmk);
    let lmk = SecretKey::from_hex(Algorithm::Aes256, DANGEROUS_TEST_LMK_HEX).unwrap();
    assert_eq!(
        status.lmk_kcv,
        Some(kcv::compute(&lmk, KcvMethod::Cmac, 5).unwrap())
    );
    assert_eq!(
        hsm.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );
    // A rotation away from it is held in memory only, and the LMK is no longer the test LMK.
    let f = fixture(&hsm).await;
    let rotation = hsm
        .prepare_lmk_rotation(vec![f.card.token.clone()], 2, 2)
        .await
        .unwrap();
    hsm_sim::handout::dangerous_take_every_part(&hsm, rotation.parts.as_ref())
        .await
        .unwrap();
    hsm.commit_lmk_rotation(&rotation.lmk_kcv).await.unwrap();
    let status = hsm.status().await.unwrap();
    assert!(!status.dangerous_test_lmk);
    assert_eq!(hsm.kcv(&rotation.tokens[0]).await.as_ref(), Ok(&f.card.kcv));
    assert!(!dir.path().join(STATE_FILE).exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Sealed, the test LMK cannot be unsealed: it has no shares. A restart loads it again.
    let sealed = test_lmk_hsm();
    sealed.seal().await.unwrap();
    assert_eq!(sealed.status().await.unwrap().state, HsmState::Sealed);
    assert!(matches!(
        sealed.unseal(share("lmk1-01-00")).await,
        Err(Error::Share(_))
    ));
}

#[tokio::test]
async fn shared_across_tasks() {
    let hsm = Arc::new(test_lmk_hsm());
    let f = fixture(&hsm).await;
    let parent = f.parent.token.clone();
    let tasks: Vec<_> = (0..4u8)
        .map(|i| {
            let hsm = Arc::clone(&hsm);
            let parent = parent.clone();
            tokio::spawn(async move {
                let [f1, f2, _] = factors();
                let card = Factor::from_bytes(&[i; 8]).unwrap();
                hsm.derive_key(
                    &parent,
                    Dispersion::PbocTdes,
                    &[f1, f2, card],
                    KeyUsage::CardKey,
                )
                .await
                .map(|k| k.kcv)
            })
        })
        .collect();
    let mut kcvs = Vec::new();
    for task in tasks {
        kcvs.push(task.await.unwrap().unwrap());
    }
    kcvs.sort_by_key(Kcv::to_hex);
    kcvs.dedup();
    assert_eq!(kcvs.len(), 4);
}

#[tokio::test]
async fn nothing_secret_in_debug() {
    let hsm = memory_hsm();
    let init = hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    let c = component(Algorithm::Tdes2, "0123456789ABCDEFFEDCBA9876543210");
    let s = share(init.shares[0].share.secret_text());
    let shown = format!(
        "{hsm:?} {c:?} {s:?} {init:?} {:?} {:?}",
        hsm.status().await.unwrap(),
        LocalHsmConfig::default()
    );
    let mut secrets = vec!["0123456789".to_owned(), "89ABCDEF".to_owned()];
    for issued in &init.shares {
        let text = issued.share.secret_text();
        secrets.push(text[8..24].to_owned());
        secrets.push(text[40..56].to_lowercase());
    }
    for secret in secrets {
        assert!(!shown.contains(&secret), "{secret} in {shown}");
    }
    assert!(shown.contains("LmkShare { .. }"), "{shown}");
}

/// The LMK's shares leave the HSM one per call, each once: `init_lmk` answers with the KCV and
/// the set's name only; a second take of a share is refused; a seal drops the shares nobody
/// has taken yet (they were nowhere else), and the shares that were taken unseal.
#[tokio::test]
async fn lmk_shares_are_handed_out_once_each_and_a_seal_drops_the_rest() {
    let hsm = memory_hsm();
    let init = hsm.init_lmk(2, 3).await.unwrap();
    let parts = init.parts.clone().unwrap();
    assert_eq!((parts.count, parts.threshold), (3, 2));
    let first = hsm.take_secret_part(&parts.set, 1).await.unwrap();
    assert_eq!(
        hsm.take_secret_part(&parts.set, 1).await.unwrap_err(),
        Error::PartNotAvailable
    );
    for index in [0, 4] {
        assert_eq!(
            hsm.take_secret_part(&parts.set, index).await.unwrap_err(),
            Error::PartNotAvailable
        );
    }
    let second = hsm.take_secret_part(&parts.set, 2).await.unwrap();
    assert_ne!(first.share.secret_text(), second.share.secret_text());
    assert_ne!(first.check_value, second.check_value);
    hsm.seal().await.unwrap();
    assert_eq!(
        hsm.take_secret_part(&parts.set, 3).await.unwrap_err(),
        Error::PartNotAvailable
    );
    hsm.unseal(first.share).await.unwrap();
    assert!(hsm.unseal(second.share).await.unwrap().unsealed);
    assert_eq!(hsm.status().await.unwrap().lmk_kcv, Some(init.lmk_kcv));
}
