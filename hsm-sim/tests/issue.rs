//! Transport keys issued by the HSM: as custodians' components (handed out one at a time, their
//! XOR the key, formed again in a second HSM standing for the station's), and at birth as a
//! TR-31 block under the station's current key (imported there, the same KCV) — while a stored
//! key-block protection key still never leaves. One scenario, run on `LocalHsm` here and over
//! the wire by `remote`.

use hsm_api::{
    Algorithm, Component, Error, Exportability, Hsm, Kcv, KcvMethod, KeyBlockVersion, KeySpec,
    KeyUsage, WrappedKey,
};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use zeroize::Zeroizing;

fn kbpk(algorithm: Algorithm) -> KeySpec {
    KeySpec {
        algorithm,
        usage: KeyUsage::KeyBlockProtection,
        exportability: Exportability::NonExportable,
    }
}

fn station_hsm() -> LocalHsm {
    LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap()
}

/// Issues a key of `alg` as `n` components from `hsm`, takes each once (a second take is
/// refused), and forms the key from them in `station`: the station's token of the same key.
async fn issue_and_form<H: Hsm>(hsm: &H, station: &LocalHsm, alg: Algorithm, n: u8) -> WrappedKey {
    let issued = hsm.issue_transport_key_components(alg, n).await.unwrap();
    assert_eq!((issued.parts.count, issued.parts.threshold), (n, n));
    assert_eq!(hsm.kcv(&issued.key.token).await.unwrap(), issued.key.kcv);
    let mut components = Vec::new();
    let mut texts = Vec::new();
    for index in 1..=n {
        let part = hsm
            .take_secret_part(&issued.parts.set, index)
            .await
            .unwrap();
        let text = part.share.secret_text().to_owned();
        assert_eq!(text.len(), alg.key_len() * 2, "hex of one component");
        assert!(!texts.contains(&text), "each component its own");
        let kcv = Kcv::from_parts(
            KcvMethod::default_for(alg),
            hex::decode(&part.check_value).unwrap(),
        );
        texts.push(text.clone());
        components.push(Component::new(Zeroizing::new(text), kcv));
    }
    assert_eq!(
        hsm.take_secret_part(&issued.parts.set, 1)
            .await
            .unwrap_err(),
        Error::PartNotAvailable
    );
    let formed = station.form_key(kbpk(alg), components).await.unwrap();
    assert_eq!(formed.kcv, issued.key.kcv, "the components XOR to the key");
    issued.key
}

/// The whole scenario on `hsm`.
pub async fn issued_transport_keys<H: Hsm>(hsm: &H) {
    let station = station_hsm();
    // As components, AES and TDES; the key stays in `hsm` as a non-exportable KBPK.
    let current = issue_and_form(hsm, &station, Algorithm::Aes128, 2).await;
    let tdes = issue_and_form(hsm, &station, Algorithm::Tdes2, 3).await;
    // The station's copy of the current key, formed again for the import below.
    let station_current = {
        let issued = hsm
            .issue_transport_key_components(Algorithm::Aes128, 2)
            .await
            .unwrap();
        let mut components = Vec::new();
        for index in 1..=2 {
            let part = hsm
                .take_secret_part(&issued.parts.set, index)
                .await
                .unwrap();
            let kcv = Kcv::from_parts(
                KcvMethod::default_for(Algorithm::Aes128),
                hex::decode(&part.check_value).unwrap(),
            );
            components.push(Component::new(
                Zeroizing::new(part.share.secret_text().to_owned()),
                kcv,
            ));
        }
        let formed = station
            .form_key(kbpk(Algorithm::Aes128), components)
            .await
            .unwrap();
        (issued.key, formed)
    };
    let (kms_side, station_side) = station_current;

    // Under the current key, at birth: version D under AES, imported at the station.
    let next = hsm
        .issue_transport_key_under(&kms_side.token, Algorithm::Aes128)
        .await
        .unwrap();
    assert!(next.block.starts_with('D'), "{}", &next.block[..16]);
    assert_eq!(&next.block[5..7], "K1");
    assert_eq!(hsm.kcv(&next.key.token).await.unwrap(), next.key.kcv);
    let imported = station
        .import_key(
            &station_side.token,
            &next.block,
            KeyUsage::KeyBlockProtection,
        )
        .await
        .unwrap();
    assert_eq!(imported.kcv, next.key.kcv, "the same key at the station");
    // TDES under TDES is version B.
    let next_tdes = hsm
        .issue_transport_key_under(&tdes.token, Algorithm::Tdes2)
        .await
        .unwrap();
    assert!(next_tdes.block.starts_with('B'));

    // A stored KBPK never leaves, the new one included (it may not even be asked for).
    for key in [&next.key, &current] {
        assert!(matches!(
            hsm.export_key(&kms_side.token, &key.token, KeyBlockVersion::D)
                .await
                .unwrap_err(),
            Error::WrongUsage { .. }
        ));
    }
    // The refusals: another family, a KEK that is no KBPK, no algorithm a KBPK can have, a
    // component count outside 2..=9.
    assert!(matches!(
        hsm.issue_transport_key_under(&kms_side.token, Algorithm::Tdes2)
            .await
            .unwrap_err(),
        Error::WrongUsage { .. }
    ));
    let mac = hsm
        .generate_key(KeySpec {
            algorithm: Algorithm::Aes128,
            usage: KeyUsage::AuditMac,
            exportability: Exportability::NonExportable,
        })
        .await
        .unwrap();
    assert!(matches!(
        hsm.issue_transport_key_under(&mac.token, Algorithm::Aes128)
            .await
            .unwrap_err(),
        Error::WrongUsage { .. }
    ));
    for alg in [Algorithm::Sm4, Algorithm::Des] {
        assert!(matches!(
            hsm.issue_transport_key_components(alg, 2)
                .await
                .unwrap_err(),
            Error::Unsupported { .. }
        ));
    }
    for n in [0, 1, 10] {
        assert!(matches!(
            hsm.issue_transport_key_components(Algorithm::Aes128, n)
                .await
                .unwrap_err(),
            Error::Count { .. }
        ));
    }
}

#[tokio::test]
async fn local_hsm_issues_transport_keys_as_components_and_under_the_current_key() {
    issued_transport_keys(&station_hsm()).await;
}

#[tokio::test]
async fn a_seal_drops_components_not_yet_taken() {
    let hsm = LocalHsm::open(LocalHsmConfig::default()).unwrap();
    let init = hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    let issued = hsm
        .issue_transport_key_components(Algorithm::Aes256, 2)
        .await
        .unwrap();
    hsm.take_secret_part(&issued.parts.set, 1).await.unwrap();
    hsm.seal().await.unwrap();
    for issued_share in init.shares {
        hsm.unseal(issued_share.share).await.unwrap();
    }
    assert_eq!(
        hsm.take_secret_part(&issued.parts.set, 2)
            .await
            .unwrap_err(),
        Error::PartNotAvailable
    );
}
