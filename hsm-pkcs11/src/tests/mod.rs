//! The backend on throwaway SoftHSM2 tokens (one token directory per test process, one token per
//! test, found by label): the dispersion chain in the token against the simulator, what strict
//! mode refuses and release mode runs, a derived key that stays non-extractable, seal and unseal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use hsm_api::{
    Algorithm, Component, Dispersion, Error, Exportability, Factor, HierarchyLevel, Hsm, HsmState,
    KeyBlockVersion, KeySpec, KeyToken, KeyUsage, LmkShare, MacFold, WrappedKey, WriteKeyRequest,
};
use hsm_sim::crypto::{SecretKey, diversify, kcv, tr31};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use zeroize::Zeroizing;

use crate::softhsm::{DangerousToken, dangerous_token};
use crate::token;
use crate::{Mode, Outside, Pkcs11Hsm};

mod registry;

/// DOMAIN.md §2's national test root.
const ROOT: &str = "11111111111111112222222222222222";
/// A station's key-block protection key (AES-128).
const KBPK: &str = "000102030405060708090A0B0C0D0E0F";
const MASK: &str = "0123456789ABCDEFFEDCBA98765432100123456789ABCDEF";

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn token(label: &str) -> DangerousToken {
    dangerous_token(dir(), label).unwrap()
}

fn hsm(label: &str, mode: Mode) -> Pkcs11Hsm {
    let t = token(label);
    let config = crate::Pkcs11Config {
        mode,
        dangerous_test_lmk: true,
        ..t.config()
    };
    Pkcs11Hsm::open(config, Some(t.pin())).unwrap()
}

fn local() -> LocalHsm {
    LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..Default::default()
    })
    .unwrap()
}

/// Two components of `hex` (`hex ⊕ mask`, `mask`), each with its KCV.
fn components(alg: Algorithm, hex_key: &str) -> Vec<Component> {
    let key = hex::decode(hex_key).unwrap();
    let mask = hex::decode(MASK).unwrap()[..key.len()].to_vec();
    let first: Vec<u8> = key.iter().zip(&mask).map(|(k, m)| k ^ m).collect();
    [first, mask]
        .into_iter()
        .map(|bytes| {
            let text = hex::encode_upper(&bytes);
            let kcv = kcv::compute_default(&SecretKey::from_hex(alg, &text).unwrap()).unwrap();
            Component::new(Zeroizing::new(text), kcv)
        })
        .collect()
}

fn spec(algorithm: Algorithm, usage: KeyUsage, exportability: Exportability) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportability,
    }
}

fn factors() -> Vec<Factor> {
    vec![
        Factor::province("440000").unwrap(),
        Factor::city("440100").unwrap(),
        Factor::from_hex("86843202AD932A48").unwrap(),
    ]
}

/// DOMAIN.md §2's test root formed as a city card-derivation key, and its card key for the
/// worked card factor.
async fn city_and_card<H: Hsm>(hsm: &H) -> (WrappedKey, WrappedKey) {
    let city = hsm
        .form_key(
            spec(
                Algorithm::Tdes2,
                KeyUsage::CardDerivation(HierarchyLevel::City),
                Exportability::NonExportable,
            ),
            components(Algorithm::Tdes2, ROOT),
        )
        .await
        .unwrap();
    let card = hsm
        .derive_key(
            &city.token,
            Dispersion::PbocTdes,
            &factors()[2..],
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    (city, card)
}

/// The same key formed, derived and checked on the token and on the simulator: same KCVs at
/// every level (the token forces odd parity on the DES keys it derives; encryption ignores it).
#[tokio::test]
async fn the_dispersion_chain_runs_in_the_token_with_the_simulators_kcvs() {
    let p11 = hsm("chain", Mode::Strict);
    let sim = local();
    let national = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let a = p11
        .form_key(national, components(Algorithm::Tdes2, ROOT))
        .await
        .unwrap();
    let b = sim
        .form_key(national, components(Algorithm::Tdes2, ROOT))
        .await
        .unwrap();
    assert_eq!(a.kcv, b.kcv);
    assert_eq!(
        a.kcv.to_hex(),
        "D2B91C",
        "DOMAIN.md §2's KCV of the test root"
    );
    assert!(a.token.as_str().starts_with("P11.1.D3.T2.N.T2.-."));
    let city = KeyUsage::CardDerivation(HierarchyLevel::City);
    let (pa, pb) = (
        p11.derive_key(&a.token, Dispersion::PbocTdes, &factors()[..2], city)
            .await
            .unwrap(),
        sim.derive_key(&b.token, Dispersion::PbocTdes, &factors()[..2], city)
            .await
            .unwrap(),
    );
    assert_eq!(pa.kcv, pb.kcv);
    let (ca, cb) = (
        p11.derive_key(
            &pa.token,
            Dispersion::PbocTdes,
            &factors()[2..],
            KeyUsage::CardKey,
        )
        .await
        .unwrap(),
        sim.derive_key(
            &pb.token,
            Dispersion::PbocTdes,
            &factors()[2..],
            KeyUsage::CardKey,
        )
        .await
        .unwrap(),
    );
    assert_eq!(ca.kcv, cb.kcv);
    assert_eq!(p11.kcv(&ca.token).await.unwrap(), cb.kcv);
    // The usage rules are the simulator's: a city key does not derive a national-level child.
    assert!(matches!(
        p11.derive_key(
            &pa.token,
            Dispersion::PbocTdes,
            &factors(),
            KeyUsage::CardKey
        )
        .await,
        Err(Error::WrongUsage { .. })
    ));
    // A changed character of a token is refused by its MAC.
    let text = ca.token.as_str();
    let flipped = format!("{}{}", &text[..20], text[20..].replacen('0', "1", 1));
    assert_ne!(flipped, text);
    assert!(matches!(
        p11.kcv(&KeyToken::from_stored(flipped)).await,
        Err(Error::KeyBlockMac | Error::KeyBlockHeader { .. })
    ));
}

/// A key derived in the token is a sensitive, non-extractable object: its value cannot be read
/// and no key can wrap it out.
#[tokio::test]
async fn a_derived_key_stays_non_extractable_in_the_token() {
    let p11 = hsm("non-extractable", Mode::Strict);
    let (_, child) = city_and_card(&p11).await;
    let state = p11.read().unwrap();
    let lmk = state.lmk.as_ref().unwrap();
    let session = p11.session().unwrap();
    let stored = p11.verified(&session, lmk, &child.token).unwrap();
    let handle = p11.in_token(&session, lmk, &stored).unwrap();
    let attributes = session
        .get_attributes(
            handle,
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )
        .unwrap();
    assert!(attributes.contains(&Attribute::Sensitive(true)));
    assert!(attributes.contains(&Attribute::Extractable(false)));
    // Its value is not readable …
    let value = session.get_attributes(handle, &[AttributeType::Value]);
    assert!(
        !matches!(value.as_deref(), Ok([Attribute::Value(_)])),
        "the value of a derived key was readable"
    );
    // … and no key, not even one made to wrap, takes it out.
    let wrapper = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(16.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    assert!(
        session
            .wrap_key(&Mechanism::AesKeyWrapPad, wrapper, handle)
            .is_err()
    );
    assert!(
        session
            .wrap_key(&Mechanism::AesKeyWrapPad, lmk.wrap, handle)
            .is_err()
    );
    // And the KCV read in the token is the simulator's.
    assert_eq!(
        p11.kcv_in_token(&session, handle, Algorithm::Tdes2)
            .unwrap(),
        child.kcv
    );
}

/// Strict mode refuses what a standard token cannot do, with its reason; release mode runs it on
/// the key the token released, and the key inside the block is the simulator's, byte for byte
/// (parity bits included).
#[tokio::test]
async fn strict_refuses_tr31_the_key_field_and_sm4_and_release_runs_them() {
    for mode in [Mode::Strict, Mode::Release] {
        let p11 = hsm(&format!("modes-{}", mode.name()), mode);
        let (_, card) = city_and_card(&p11).await;
        let kbpk = p11
            .form_key(
                spec(
                    Algorithm::Aes128,
                    KeyUsage::KeyBlockProtection,
                    Exportability::NonExportable,
                ),
                components(Algorithm::Aes128, KBPK),
            )
            .await
            .unwrap();
        let exported = p11
            .export_key(&kbpk.token, &card.token, KeyBlockVersion::D)
            .await;
        let mk = p11
            .derive_key(
                &p11.form_key(
                    spec(
                        Algorithm::Tdes2,
                        KeyUsage::MasterKeyDerivation(HierarchyLevel::City),
                        Exportability::NonExportable,
                    ),
                    components(Algorithm::Tdes2, "3333333333333333444444444444444F"),
                )
                .await
                .unwrap()
                .token,
                Dispersion::PbocTdes,
                &factors()[2..],
                KeyUsage::CardMasterKey,
            )
            .await
            .unwrap();
        let write = p11
            .write_key_command(WriteKeyRequest {
                key: card.token.clone(),
                protect: mk.token.clone(),
                cla: 0x84,
                ins: 0xD4,
                p1: 0x01,
                p2: 0x00,
                key_header: vec![0x01, 0x02],
                challenge: vec![0x11; 8],
                fold: MacFold::Xor4,
            })
            .await;
        let sm4 = p11
            .form_key(
                spec(
                    Algorithm::Sm4,
                    KeyUsage::CardDerivation(HierarchyLevel::City),
                    Exportability::NonExportable,
                ),
                components(Algorithm::Sm4, "0123456789ABCDEFFEDCBA9876543210"),
            )
            .await;
        match mode {
            Mode::Strict => {
                for (result, outside) in [
                    (exported.map(|_| ()), Outside::Tr31),
                    (write.map(|_| ()), Outside::CardKeyField),
                    (sm4.map(|_| ()), Outside::Sm4),
                ] {
                    let Err(Error::Unsupported { op, .. }) = result else {
                        panic!("strict mode ran {outside:?}");
                    };
                    assert_eq!(op, outside.reason());
                }
            }
            Mode::Release => {
                let exported = exported.unwrap();
                let clear_kbpk = SecretKey::from_hex(Algorithm::Aes128, KBPK).unwrap();
                let (_, key) = tr31::unwrap(&clear_kbpk, &exported.block).unwrap();
                let root = SecretKey::from_hex(Algorithm::Tdes2, ROOT).unwrap();
                let want = diversify::diversify_chain(&root, Dispersion::PbocTdes, &factors()[2..])
                    .unwrap();
                assert!(
                    key == want,
                    "the exported key is the simulator's, parity bits too"
                );
                assert_eq!(exported.kcv, card.kcv);
                let sim = local();
                let (_, sim_card) = city_and_card(&sim).await;
                let sim_mk = sim
                    .derive_key(
                        &sim.form_key(
                            spec(
                                Algorithm::Tdes2,
                                KeyUsage::MasterKeyDerivation(HierarchyLevel::City),
                                Exportability::NonExportable,
                            ),
                            components(Algorithm::Tdes2, "3333333333333333444444444444444F"),
                        )
                        .await
                        .unwrap()
                        .token,
                        Dispersion::PbocTdes,
                        &factors()[2..],
                        KeyUsage::CardMasterKey,
                    )
                    .await
                    .unwrap();
                let sim_write = sim
                    .write_key_command(WriteKeyRequest {
                        key: sim_card.token,
                        protect: sim_mk.token,
                        cla: 0x84,
                        ins: 0xD4,
                        p1: 0x01,
                        p2: 0x00,
                        key_header: vec![0x01, 0x02],
                        challenge: vec![0x11; 8],
                        fold: MacFold::Xor4,
                    })
                    .await
                    .unwrap();
                assert_eq!(write.unwrap(), sim_write, "the same WRITE KEY command");
                let sm4 = sm4.unwrap();
                let sm4_card = p11
                    .derive_key(
                        &sm4.token,
                        Dispersion::Sm4Complement,
                        &factors()[2..],
                        KeyUsage::CardKey,
                    )
                    .await
                    .unwrap();
                assert_eq!(p11.kcv(&sm4_card.token).await.unwrap(), sm4_card.kcv);
            }
        }
    }
}

/// Sealed is logged out: key operations refused, the status says sealed; a wrong PIN is a
/// refused share; the right one unseals, and the tokens made before still work.
#[tokio::test]
async fn seal_logs_out_and_the_pin_unseals() {
    let t = token("seal");
    let config = crate::Pkcs11Config {
        dangerous_test_lmk: true,
        ..t.config()
    };
    let p11 = Pkcs11Hsm::open(config.clone(), Some(t.pin())).unwrap();
    let key = p11
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::AuditMac,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let mac = p11.mac(&key.token, b"record").await.unwrap();
    assert_eq!(p11.status().await.unwrap().state, HsmState::Operational);
    p11.seal().await.unwrap();
    assert_eq!(p11.status().await.unwrap().state, HsmState::Sealed);
    assert_eq!(p11.mac(&key.token, b"record").await, Err(Error::Sealed));
    assert!(matches!(
        p11.unseal(LmkShare::new(Zeroizing::new("not the PIN".into())))
            .await,
        Err(Error::Share(_))
    ));
    assert!(p11.unseal(t.pin()).await.unwrap().unsealed);
    p11.verify_mac(&key.token, b"record", &mac).await.unwrap();
    assert_eq!(
        p11.verify_mac(&key.token, b"recorD", &mac).await,
        Err(Error::Verification)
    );
    assert_eq!(p11.kcv(&key.token).await.unwrap(), key.kcv);
    assert_eq!(p11.random(32).await.unwrap().len(), 32);
    // Another instance on the same token (a restart) starts sealed and knows the LMK.
    let restarted = Pkcs11Hsm::open(config, None).unwrap();
    let status = restarted.status().await.unwrap();
    assert_eq!(status.state, HsmState::Sealed);
    assert!(status.lmk_kcv.is_some());
    assert!(token::parse(key.token.as_str()).is_ok());
}

/// A ceremony on a fresh token: `init_lmk(2, 3)` makes the LMK inside the token and replaces the
/// token's initial PIN by a random one split 2-of-3 among the custodians; after a seal the old
/// PIN is refused, one share is progress, a repeated share is refused, a second one unseals.
#[tokio::test]
async fn init_splits_the_pin_among_custodians_and_two_shares_unseal() {
    let t = token("ceremony");
    let p11 = Pkcs11Hsm::open(t.config(), Some(t.pin())).unwrap();
    assert_eq!(p11.status().await.unwrap().state, HsmState::Uninitialised);
    assert!(matches!(p11.init_lmk(1, 3).await, Err(Error::Count { .. })));
    let init = p11.init_lmk(2, 3).await.unwrap();
    let parts = init.parts.clone().unwrap();
    assert_eq!((parts.count, parts.threshold), (3, 2));
    let issued = hsm_sim::handout::dangerous_take_every_part(&p11, Some(&parts))
        .await
        .unwrap();
    // Each share leaves once: a second take is refused.
    assert_eq!(
        p11.take_secret_part(&parts.set, 2).await.unwrap_err(),
        Error::PartNotAvailable
    );
    assert_eq!(
        p11.status().await.unwrap().lmk_kcv,
        Some(init.lmk_kcv.clone())
    );
    assert_eq!(
        p11.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );
    let key = p11
        .generate_key(spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::City),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    p11.seal().await.unwrap();
    assert!(matches!(p11.unseal(t.pin()).await, Err(Error::Share(_))));
    let mut shares = issued.into_iter().map(|s| s.share);
    let (first, _, third) = (
        shares.next().unwrap(),
        shares.next().unwrap(),
        shares.next().unwrap(),
    );
    let copy = LmkShare::new(Zeroizing::new(first.secret_text().to_owned()));
    let progress = p11.unseal(first).await.unwrap();
    assert_eq!(
        (progress.submitted, progress.threshold, progress.unsealed),
        (1, 2, false)
    );
    assert_eq!(p11.status().await.unwrap().state, HsmState::Sealed);
    assert!(matches!(p11.unseal(copy).await, Err(Error::Share(_))));
    assert!(p11.unseal(third).await.unwrap().unsealed);
    assert_eq!(p11.kcv(&key.token).await.unwrap(), key.kcv);
    assert_eq!(p11.status().await.unwrap().lmk_kcv, Some(init.lmk_kcv));
}

/// An LMK rotation in the token: tokens re-wrapped under a new LMK keep their keys (same KCVs);
/// until the commit the old LMK serves, after it only the new one, and the status names it.
#[tokio::test]
async fn an_lmk_rotation_rewraps_tokens_inside_the_token() {
    let p11 = hsm("rotation", Mode::Strict);
    let (root, child) = city_and_card(&p11).await;
    let old_kcv = p11.status().await.unwrap().lmk_kcv.unwrap();
    // The root with the prepare, the child in a second call under the prepared LMK.
    let mut rotation = p11
        .prepare_lmk_rotation(vec![root.token.clone()], 2, 3)
        .await
        .unwrap();
    assert_eq!(
        p11.rewrap_for_rotation(&old_kcv, vec![child.token.clone()])
            .await,
        Err(Error::RotationNotPrepared)
    );
    let more = p11
        .rewrap_for_rotation(&rotation.lmk_kcv, vec![child.token.clone()])
        .await
        .unwrap();
    rotation.tokens.extend(more);
    assert_ne!(rotation.lmk_kcv, old_kcv);
    assert_eq!(
        p11.kcv(&child.token).await.unwrap(),
        child.kcv,
        "the old LMK serves"
    );
    assert_eq!(
        p11.commit_lmk_rotation(&old_kcv).await,
        Err(Error::RotationNotPrepared)
    );
    p11.commit_lmk_rotation(&rotation.lmk_kcv).await.unwrap();
    assert_eq!(p11.status().await.unwrap().lmk_kcv, Some(rotation.lmk_kcv));
    assert_eq!(p11.kcv(&rotation.tokens[0]).await.unwrap(), root.kcv);
    assert_eq!(p11.kcv(&rotation.tokens[1]).await.unwrap(), child.kcv);
    assert_eq!(p11.kcv(&child.token).await, Err(Error::KeyBlockMac));
}

/// A key formed one component at a time in the token's backend: each component checked as it
/// arrives, the partial key between them wrapped by the LMK and refused as a key token (and a
/// key token refused as a partial key), the result the one `form_key` gives.
#[tokio::test]
async fn components_one_at_a_time_form_the_same_key() {
    let p11 = hsm("accumulate", Mode::Strict);
    let national = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let [first, second] = <[Component; 2]>::try_from(components(Algorithm::Tdes2, ROOT)).unwrap();
    let mut wrong = components(Algorithm::Tdes2, ROOT).remove(0);
    wrong.expected_kcv = second.expected_kcv.clone();
    assert_eq!(
        p11.add_component(
            hsm_api::Accumulation::Begin {
                spec: national,
                components: 2
            },
            wrong
        )
        .await,
        Err(Error::ComponentKcv { index: 1 })
    );
    let hsm_api::Accumulated::Partial(partial) = p11
        .add_component(
            hsm_api::Accumulation::Begin {
                spec: national,
                components: 2,
            },
            first,
        )
        .await
        .unwrap()
    else {
        panic!("one of two is a partial key")
    };
    assert!(p11.kcv(&partial.token).await.is_err(), "no key token");
    let (city, _) = city_and_card(&p11).await;
    assert!(
        p11.add_component(
            hsm_api::Accumulation::Continue(city.token),
            components(Algorithm::Tdes2, ROOT).remove(1)
        )
        .await
        .is_err(),
        "a key token is no partial key"
    );
    let hsm_api::Accumulated::Formed(root) = p11
        .add_component(hsm_api::Accumulation::Continue(partial.token), second)
        .await
        .unwrap()
    else {
        panic!("the second of two forms the key")
    };
    assert_eq!(root.kcv.to_hex(), "D2B91C");
    let child = p11
        .derive_key(
            &root.token,
            Dispersion::PbocTdes,
            &factors()[..1],
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    let at_once = p11
        .form_key(national, components(Algorithm::Tdes2, ROOT))
        .await
        .unwrap();
    let expected = p11
        .derive_key(
            &at_once.token,
            Dispersion::PbocTdes,
            &factors()[..1],
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    assert_eq!(child.kcv, expected.kcv, "a usable root, the same key");
}

#[tokio::test]
async fn sm2_list_signing_is_refused_in_every_mode_and_p256_runs_in_release() {
    use hsm_api::ListSignature;
    for mode in [Mode::Strict, Mode::Release] {
        let p11 = hsm(&format!("sm2-{}", mode.name()), mode);
        let refused = p11
            .generate_key(spec(
                Algorithm::Aes256,
                KeyUsage::ListSigning(ListSignature::Sm2),
                Exportability::NonExportable,
            ))
            .await;
        assert!(
            matches!(&refused, Err(Error::Unsupported { op, .. }) if op.contains("no SM2 mechanism")),
            "{mode:?}: {refused:?}"
        );
        assert_eq!(Outside::Sm2.runs(mode), crate::Where::Refused);
        let p256 = p11
            .generate_key(spec(
                Algorithm::Aes256,
                KeyUsage::ListSigning(ListSignature::EcdsaP256),
                Exportability::NonExportable,
            ))
            .await
            .unwrap();
        let signed = p11.sign(&p256.token, b"list").await;
        match mode {
            Mode::Strict => assert!(matches!(signed, Err(Error::Unsupported { .. }))),
            Mode::Release => assert_eq!(signed.unwrap().len(), 64),
        }
    }
}

/// A transport key issued by the token as components (taken once each; their XOR, formed in a
/// simulator standing for the station's HSM, has the token's KCV) in either mode; at birth
/// under the current key only in release mode (a TR-31 block: strict refuses it), imported at
/// the station with the same KCV; a stored KBPK still never leaves.
#[tokio::test]
async fn a_transport_key_is_issued_as_components_and_under_the_current_key() {
    let station = local();
    for mode in [Mode::Strict, Mode::Release] {
        let p11 = hsm(&format!("issue-{}", mode.name()), mode);
        let issued = p11
            .issue_transport_key_components(Algorithm::Aes128, 2)
            .await
            .unwrap();
        assert_eq!(p11.kcv(&issued.key.token).await.unwrap(), issued.key.kcv);
        let mut parts = Vec::new();
        for index in 1..=2 {
            let part = p11
                .take_secret_part(&issued.parts.set, index)
                .await
                .unwrap();
            parts.push(Component::new(
                Zeroizing::new(part.share.secret_text().to_owned()),
                hsm_api::Kcv::from_parts(
                    hsm_api::KcvMethod::default_for(Algorithm::Aes128),
                    hex::decode(&part.check_value).unwrap(),
                ),
            ));
        }
        assert_eq!(
            p11.take_secret_part(&issued.parts.set, 1)
                .await
                .unwrap_err(),
            Error::PartNotAvailable
        );
        let kbpk = spec(
            Algorithm::Aes128,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        );
        let at_station = station.form_key(kbpk, parts).await.unwrap();
        assert_eq!(at_station.kcv, issued.key.kcv);

        let next = p11
            .issue_transport_key_under(&issued.key.token, Algorithm::Aes128)
            .await;
        match mode {
            Mode::Strict => assert!(matches!(next, Err(Error::Unsupported { .. })), "{next:?}"),
            Mode::Release => {
                let next = next.unwrap();
                let imported = station
                    .import_key(&at_station.token, &next.block, KeyUsage::KeyBlockProtection)
                    .await
                    .unwrap();
                assert_eq!(imported.kcv, next.key.kcv);
                assert_eq!(p11.kcv(&next.key.token).await.unwrap(), next.key.kcv);
                assert!(
                    p11.export_key(&issued.key.token, &next.key.token, KeyBlockVersion::D)
                        .await
                        .is_err()
                );
            }
        }
    }
}

/// A root backup and its restore are refused in both modes, with the reason.
#[tokio::test]
async fn root_backup_and_restore_are_refused() {
    for (label, mode) in [
        ("backup-strict", Mode::Strict),
        ("backup-release", Mode::Release),
    ] {
        let p11 = hsm(label, mode);
        let national = spec(
            Algorithm::Tdes2,
            KeyUsage::CardDerivation(HierarchyLevel::National),
            Exportability::NonExportable,
        );
        let root = p11.generate_key(national).await.unwrap();
        let refused = p11.backup_key(&root.token, 2, 3).await.unwrap_err();
        assert!(
            matches!(&refused, Error::Unsupported { op, alg: Algorithm::Tdes2 } if op.contains("PKCS#11")),
            "{refused:?}"
        );
        let begin = hsm_api::Restoration::Begin {
            spec: national,
            kcv: root.kcv.clone(),
            backup: "00".repeat(8),
        };
        let share = || LmkShare::new(Zeroizing::new("rb1-x".to_owned()));
        assert!(matches!(
            p11.restore_share(begin, share()).await,
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            p11.restore_share(hsm_api::Restoration::Continue(root.token), share())
                .await,
            Err(Error::WrongUsage { .. })
        ));
    }
}
