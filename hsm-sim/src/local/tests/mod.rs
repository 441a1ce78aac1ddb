//! The secure-messaging trace, import headers and shares below the threshold, from inside.

use hsm_api::{Algorithm, HierarchyLevel, HsmState, KcvMethod, KeyBlockVersion, MacFold};
use zeroize::Zeroizing;

use super::*;
use crate::crypto::tr31::{self, KeyBlockHeader, ModeOfUse};
use crate::crypto::{SecretKey, kcv, mac};
use crate::lmk::{self, ParsedShare};
use crate::policy::{check_import_header, secure_messaging_apdu};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn block_on<F: core::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn component(alg: Algorithm, hex: &str) -> Component {
    let key = SecretKey::from_hex(alg, hex).unwrap();
    Component::new(
        Zeroizing::new(hex.to_owned()),
        kcv::compute_default(&key).unwrap(),
    )
}

fn spec(algorithm: Algorithm, usage: KeyUsage) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportability: if usage.may_be_exported() {
            hsm_api::Exportability::Exportable
        } else {
            hsm_api::Exportability::NonExportable
        },
    }
}

/// A card master key derived in `hsm` from a city master-key root formed from `components`
/// (whose XOR is `root_hex`) with `factor`, and the same key computed outside the HSM.
fn master_key(
    hsm: &LocalHsm,
    alg: Algorithm,
    method: Dispersion,
    components: [&str; 2],
    root_hex: &str,
    factor: &str,
) -> (WrappedKey, SecretKey) {
    let root = block_on(hsm.form_key(
        spec(alg, KeyUsage::MasterKeyDerivation(HierarchyLevel::City)),
        components.iter().map(|c| component(alg, c)).collect(),
    ))
    .unwrap();
    let factor = Factor::from_hex(factor).unwrap();
    let key =
        block_on(hsm.derive_key(&root.token, method, &[factor], KeyUsage::CardMasterKey)).unwrap();
    let root = SecretKey::from_hex(alg, root_hex).unwrap();
    let expected = crate::crypto::diversify::diversify_chain(&root, method, &[factor]).unwrap();
    (key, expected)
}

/// DOMAIN.md §5, the SSC 3.0 trace: the command built from the trace's key, challenge and
/// data is byte for byte the one the card received.
#[test]
fn secure_messaging_reproduces_the_published_trace() {
    let key = SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap();
    let apdu = secure_messaging_apdu(
        &key,
        [0x84, 0x5E, 0x01, 0x00],
        &h("72923074"),
        &h("84B7B9199A29A245B2ADE3E80BE4EAF3"),
        MacFold::Xor4,
    )
    .unwrap();
    assert_eq!(
        hex::encode_upper(apdu),
        "845E01001491A41964F0736EB6F6003DD1934FFE11E48CEFB3"
    );
}

/// The whole path through tokens: an SM4 vendor transport key formed from two components whose
/// XOR is the trace key protects a card master key; the card decrypts the field to
/// `Ld ‖ header ‖ key`; the MAC is the SM4 card MAC of the command's first bytes.
#[test]
fn write_key_command_for_an_sm4_card() {
    let hsm = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let protect = block_on(hsm.form_key(
        spec(Algorithm::Sm4, KeyUsage::VendorTransport),
        vec![
            component(Algorithm::Sm4, "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F"),
            component(Algorithm::Sm4, "42563F637C98EF62ECC28DAE459D60B5"),
        ],
    ))
    .unwrap();
    assert_eq!(
        protect.kcv,
        kcv::compute_default(
            &SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap()
        )
        .unwrap()
    );
    let (key, expected) = master_key(
        &hsm,
        Algorithm::Sm4,
        Dispersion::Sm4Complement,
        [
            "0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F",
            "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
        ],
        "00112233445566778899AABBCCDDEEFF",
        "86843202AD932A48",
    );
    let card_key_hex = hex::encode_upper(expected.secret_bytes());
    let challenge = h("84B7B9199A29A245B2ADE3E80BE4EAF3");
    let header = h("F001EF0F0110");
    let command = block_on(hsm.write_key_command(WriteKeyRequest {
        key: key.token.clone(),
        protect: protect.token.clone(),
        cla: 0x84,
        ins: 0xD4,
        p1: 0x01,
        p2: 0x00,
        key_header: header.clone(),
        challenge: challenge.clone(),
        fold: MacFold::Xor4,
    }))
    .unwrap();
    let apdu = command.apdu;
    let protect_key =
        SecretKey::from_hex(Algorithm::Sm4, "4D59306C7397E06DE3CD82A14A926FBA").unwrap();
    // 1 + 6 + 16 bytes, padded to two blocks: Lc = 32 + 4.
    assert_eq!(&apdu[..5], &[0x84, 0xD4, 0x01, 0x00, 36]);
    assert_eq!(apdu.len(), 5 + 36);
    let field = &apdu[5..37];
    let clear = mac::decrypt_key_field(&protect_key, field).unwrap();
    assert_eq!(
        hex::encode_upper(&*clear),
        format!("F001EF0F0110{card_key_hex}")
    );
    let tag = mac::card_mac(&protect_key, &challenge, &apdu[..37], MacFold::Xor4).unwrap();
    assert_eq!(&apdu[37..], &tag);
    assert_eq!(command.kcv, key.kcv);
}

/// A TDES protector (a card master key) writing a card key: the MAC is the PBOC retail MAC of
/// the same bytes.
#[test]
fn write_key_command_for_a_tdes_card() {
    let hsm = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let (protect, protect_key) = master_key(
        &hsm,
        Algorithm::Tdes2,
        Dispersion::PbocTdes,
        [
            "11111111111111111111111111111111",
            "1032547698BADCFEEFCDAB8967452301",
        ],
        "0123456789ABCDEFFEDCBA9876543210",
        "86843202AD932A48",
    );
    let key = block_on(hsm.generate_key(spec(Algorithm::Tdes2, KeyUsage::CardKey))).unwrap();
    let challenge = h("1122334455667788");
    let command = block_on(hsm.write_key_command(WriteKeyRequest {
        key: key.token.clone(),
        protect: protect.token,
        cla: 0x84,
        ins: 0xD4,
        p1: 0x01,
        p2: 0x00,
        key_header: h("F0020101FF000010"),
        challenge: challenge.clone(),
        fold: MacFold::Xor4,
    }))
    .unwrap();
    let apdu = command.apdu;
    let n = apdu.len();
    // Ld ‖ 8-byte header ‖ 16-byte key ‖ 80 00.. = 32 bytes; Lc = 36.
    assert_eq!(apdu[4], 36);
    assert_eq!(n, 5 + 36);
    let clear = mac::decrypt_key_field(&protect_key, &apdu[5..n - 4]).unwrap();
    assert_eq!(&clear[..8], &h("F0020101FF000010")[..]);
    let written = SecretKey::new(Algorithm::Tdes2, &clear[8..]).unwrap();
    assert_eq!(kcv::compute_default(&written).unwrap(), key.kcv);
    let tag = mac::card_mac(&protect_key, &challenge, &apdu[..n - 4], MacFold::Xor4).unwrap();
    assert_eq!(&apdu[n - 4..], &tag);
}

#[test]
fn a_command_too_long_for_lc_is_refused() {
    let key = SecretKey::new(Algorithm::Tdes2, &[0x5A; 16]).unwrap();
    assert!(matches!(
        secure_messaging_apdu(&key, [0x84, 0xD4, 0, 0], &[0; 250], &[0; 8], MacFold::Xor4),
        Err(Error::DataLength { .. })
    ));
}

#[test]
fn import_headers_map_to_usages() {
    let header = |usage: &str, mode: ModeOfUse, exp: tr31::Exportability| KeyBlockHeader {
        version: KeyBlockVersion::D,
        key_usage: usage.to_owned(),
        algorithm: tr31::KeyBlockAlgorithm::Tdes,
        mode_of_use: mode,
        key_version: "00".to_owned(),
        exportability: exp,
        optional_blocks: Vec::new(),
    };
    use tr31::Exportability as X;
    assert_eq!(
        check_import_header(
            &header("E6", ModeOfUse::DeriveKeys, X::Trusted),
            KeyUsage::CardDerivation(HierarchyLevel::National)
        ),
        Ok(hsm_api::Exportability::Exportable)
    );
    // `E` is narrowed where the usage never leaves; a master key is never imported.
    assert_eq!(
        check_import_header(
            &header("E6", ModeOfUse::DeriveKeys, X::Trusted),
            KeyUsage::MasterKeyDerivation(HierarchyLevel::Province)
        ),
        Ok(hsm_api::Exportability::NonExportable)
    );
    assert!(matches!(
        check_import_header(
            &header("E5", ModeOfUse::NoRestriction, X::NonExportable),
            KeyUsage::CardMasterKey
        ),
        Err(Error::WrongUsage { .. })
    ));
    assert_eq!(
        check_import_header(
            &header("K0", ModeOfUse::NoRestriction, X::Sensitive),
            KeyUsage::KeyBlockProtection
        ),
        Ok(hsm_api::Exportability::NonExportable)
    );
    assert_eq!(
        check_import_header(
            &header("E5", ModeOfUse::NoRestriction, X::Trusted),
            KeyUsage::CardDerivation(HierarchyLevel::City)
        ),
        Err(Error::WrongUsage {
            usage: "TR-31 E5".into(),
            operation: "become a card derivation key".into()
        })
    );
    assert_eq!(
        check_import_header(
            &header("K1", ModeOfUse::EncryptOnly, X::Trusted),
            KeyUsage::KeyBlockProtection
        ),
        Err(Error::KeyBlockHeader {
            field: "mode of use".into()
        })
    );
    assert_eq!(
        check_import_header(
            &header("P0", ModeOfUse::EncryptDecrypt, X::Trusted),
            KeyUsage::CardKey
        ),
        Err(Error::KeyBlockHeader {
            field: "key usage".into()
        })
    );
}

/// Shamir below the threshold, through the HSM: m−1 shares leave it sealed; interpolating
/// them anyway gives a key with another KCV (see `lmk::tests` for what Shamir guarantees).
#[test]
fn fewer_than_m_shares_rebuild_nothing() {
    let hsm = LocalHsm::open(LocalHsmConfig::default()).unwrap();
    let init = block_on(crate::handout::dangerous_init(&hsm, 3, 4)).unwrap();
    block_on(hsm.seal()).unwrap();
    let record = hsm.read().unwrap().record.clone().unwrap();
    let parsed: Vec<ParsedShare> = init.shares[..2]
        .iter()
        .map(|s| record.accept(&s.share).unwrap())
        .collect();
    let partial = lmk::combine(2, &parsed).unwrap();
    assert!(!partial.has_kcv(&init.lmk_kcv));
    assert_eq!(init.lmk_kcv.method(), KcvMethod::Cmac);
    for issued in init.shares.into_iter().take(2) {
        let progress = block_on(hsm.unseal(issued.share)).unwrap();
        assert!(!progress.unsealed);
    }
    assert_eq!(block_on(hsm.status()).unwrap().state, HsmState::Sealed);
}
