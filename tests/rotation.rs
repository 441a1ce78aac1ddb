//! Key versions and rotation: a new root gives new keys to new cards and never silently replaces
//! the keys of cards already issued.

use hsm_api::Algorithm;
use hsm_api::Dispersion;
use hsm_api::Factor;
use hsm_sim::crypto::SecretKey;
use hsm_sim::crypto::diversify::diversify_chain;
use sscard_kms::proto::kms::v1 as pb;

use crate::common::chain::{atr, card_number, published, ssn};
use crate::common::harness::{
    OFFICER, PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms, card_identity,
};

/// A new national root for `STK_SSSE`, as two components with their KCVs.
pub(crate) const NEW_ROOT: &str = "5555555555555555AAAAAAAAAAAAAAAA";
const MASK: &str = "F0E1D2C3B4A5968778695A4B3C2D1E0F";

pub(crate) fn components(key_hex: &str) -> Vec<pb::Component> {
    let key = hex::decode(key_hex).unwrap();
    let mask = hex::decode(MASK).unwrap();
    let first: Vec<u8> = key.iter().zip(&mask).map(|(k, m)| k ^ m).collect();
    [first, mask]
        .iter()
        .map(|bytes| {
            let hex = hex::encode_upper(bytes);
            let kcv = hsm_sim::crypto::kcv::compute_default(
                &SecretKey::from_hex(Algorithm::Tdes2, &hex).unwrap(),
            )
            .unwrap()
            .to_hex();
            pb::Component { hex, kcv_hex: kcv }
        })
        .collect()
}

fn stk_request(card: pb::CardIdentity) -> pb::InjectCardKeysRequest {
    pb::InjectCardKeysRequest {
        card: Some(card),
        template_id: "ssc-2.0".to_owned(),
        delivery: pb::DeliveryForm::Tr31 as i32,
        key_names: vec!["STK_SSSE".to_owned()],
        challenges: Vec::new(),
    }
}

fn only_key(response: pb::InjectCardKeysResponse) -> pb::DeliveredKey {
    let mut keys = response.keys;
    assert_eq!(keys.len(), 1);
    keys.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_serves_new_cards_and_leaves_issued_cards_alone() {
    let kms = TestKms::seeded().await;
    let mut station = kms.client(STATION);
    let mut officer = kms.client(OFFICER);
    let mut registrar = kms.client(REGISTRAR);
    let atr = atr();
    let issued = card_identity(&published().card[0], &atr);

    // Issued under root version 1 (DOMAIN.md's worked chain: KCV 32CD7C).
    let before = only_key(
        station
            .card
            .inject_card_keys(stk_request(issued.clone()))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(before.root_version, 1);
    assert_eq!(
        hex::encode_upper(&before.kcv.as_ref().unwrap().value),
        "32CD7C"
    );

    // The Ministry sends a new root: version 2, derived down to every city.
    let record = officer
        .admin
        .import_root_key(pb::ImportRootKeyRequest {
            template_id: "ssc-2.0".to_owned(),
            key_name: "STK_SSSE".to_owned(),
            level: pb::KeyLevel::National as i32,
            components: components(NEW_ROOT),
            ministry_psam_permission: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((record.version, record.active), (2, true));
    officer
        .admin
        .derive_hierarchy(pb::DeriveHierarchyRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap();
    let listed = officer
        .admin
        .list_keys(pb::ListKeysRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let stk_gz: Vec<_> = listed
        .iter()
        .filter(|k| k.key_name == "STK_SSSE" && k.region == "440100")
        .map(|k| (k.version, k.active))
        .collect();
    assert_eq!(
        stk_gz,
        [(1, false), (2, true)],
        "city keys of both versions are held"
    );

    // The issued card still gets version 1: the same key.
    let again = only_key(
        station
            .card
            .inject_card_keys(stk_request(issued))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(again.root_version, 1);
    assert_eq!(again.kcv, before.kcv);

    // A new card gets version 2: the chain from the new root. Its own chip (a card factor
    // belongs to one card).
    let mut fresh_atr = atr.clone();
    *fresh_atr.last_mut().unwrap() ^= 0x5A;
    let fresh = pb::CardIdentity {
        card_identifier: "440100D156000005000000000000B001".to_owned(),
        card_number: card_number("GZ200001"),
        social_security_number: ssn("44010319950505123"),
        atr: fresh_atr.clone(),
    };
    registrar
        .registry
        .register_card(pb::RegisterCardRequest {
            card: Some(fresh.clone()),
            template_id: "ssc-2.0".to_owned(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .accept_card(pb::CardRef {
            card_identifier: fresh.card_identifier.clone(),
        })
        .await
        .unwrap();
    let new = only_key(
        station
            .card
            .inject_card_keys(stk_request(fresh))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(new.root_version, 2);
    let expected = diversify_chain(
        &SecretKey::from_hex(Algorithm::Tdes2, NEW_ROOT).unwrap(),
        Dispersion::PbocTdes,
        &[
            Factor::province("440000").unwrap(),
            Factor::city("440100").unwrap(),
            Factor::from_atr(&fresh_atr).unwrap(),
        ],
    )
    .unwrap();
    let expected_kcv = hsm_sim::crypto::kcv::compute_default(&expected).unwrap();
    assert_eq!(new.kcv.unwrap().value, expected_kcv.value());
    assert_ne!(new.root_version, before.root_version);
}
