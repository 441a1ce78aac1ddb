//! The blacklist for terminals (notice N5): every blacklisting a new version, the list exported
//! in full and as increments, signed in the HSM (SM2DSA / SM3 by default, ECDSA P-256 where
//! configured), checked by anyone with the public key — over mTLS, and through the real
//! `kms-ceremony registry blacklist-export|verify`; SM2 verification against the standard's
//! published example; an increment read as a range, not the whole table.

use hsm_api::ListSignature;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::registry::blacklist::{self, Fault};

use crate::common::chain::{card_number, ssn};
use crate::common::harness::{PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms};
use crate::registry_cli::{registrar_files, run, s};

fn card(serial: &str, number_body: &str, ssn17: &str) -> pb::CardIdentity {
    pb::CardIdentity {
        card_identifier: format!("440100D156000005{serial}"),
        card_number: card_number(number_body),
        social_security_number: ssn(ssn17),
        atr: Vec::new(),
    }
}

async fn blacklisted(kms: &TestKms<hsm_sim::local::LocalHsm>, card: &pb::CardIdentity) {
    let mut registrar = kms.client(REGISTRAR);
    registrar
        .registry
        .register_card(pb::RegisterCardRequest {
            card: Some(card.clone()),
            template_id: "ssc-2.0".to_owned(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: card.card_identifier.clone(),
            reason: "stolen".to_owned(),
        })
        .await
        .unwrap();
}

/// `kms-ceremony registry blacklist-verify LIST --public-key KEY`.
async fn verify_cli(list: &std::path::Path, public: &std::path::Path) -> crate::common::Output {
    run(vec![
        "registry".into(),
        "blacklist-verify".into(),
        s(list),
        "--public-key".into(),
        s(public),
    ])
    .await
}

async fn export(kms: &TestKms<hsm_sim::local::LocalHsm>, since: u64) -> pb::SignedBlacklist {
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .export_blacklist(pb::ExportBlacklistRequest {
            since_version: since,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blacklist_is_versioned_signed_and_checked() {
    let kms = TestKms::seeded().await;
    let a = card("00000000000B1001", "GZ600001", "44010319800101123");
    let b = card("00000000000B1002", "GZ600002", "44010319800202123");
    // Nothing blacklisted yet: an empty list at version 0, genuine.
    let empty = export(&kms, 0).await;
    let v = blacklist::verify(&empty.list, &empty.public_key).unwrap();
    assert_eq!((v.full, v.from, v.to, v.entries.len()), (true, 0, 0, 0));

    blacklisted(&kms, &a).await;
    blacklisted(&kms, &b).await;
    // Blacklisting a card again changes its reason, not the list.
    kms.client(REGISTRAR)
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: a.card_identifier.clone(),
            reason: "stolen, reported again".to_owned(),
        })
        .await
        .unwrap();

    let full = export(&kms, 0).await;
    assert_eq!(full.public_key, empty.public_key, "one signing key");
    let v = blacklist::verify(&full.list, &full.public_key).unwrap();
    // A new deployment signs with SM2, and the list says so under the signature.
    assert_eq!(v.scheme, ListSignature::Sm2);
    assert!(
        full.list
            .starts_with(b"sscard-blacklist 2\nalgorithm sm2-sm3\n")
    );
    assert_eq!(v.issuer, "440000");
    assert_eq!((v.full, v.from, v.to), (true, 0, 2));
    assert_eq!(
        v.entries,
        [
            (1, a.card_identifier.clone()),
            (2, b.card_identifier.clone())
        ]
    );
    // A terminal holding version 1 takes the increments.
    let delta = export(&kms, 1).await;
    let v = blacklist::verify(&delta.list, &delta.public_key).unwrap();
    assert_eq!((v.full, v.from, v.to), (false, 1, 2));
    assert_eq!(v.entries, [(2, b.card_identifier.clone())]);

    // Tampered: one card removed, one identifier changed, the signature changed — refused.
    let text = String::from_utf8(full.list.clone()).unwrap();
    let dropped = text.replace(&format!("1 {}\n", a.card_identifier), "");
    assert_eq!(
        blacklist::verify(dropped.as_bytes(), &full.public_key),
        Err(Fault::Signature)
    );
    let mut flipped = full.list.clone();
    let at = text.find(&b.card_identifier).unwrap() + 20;
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        blacklist::verify(&flipped, &full.public_key),
        Err(Fault::Signature)
    );
    // The algorithm line changed to the other scheme: the signature covers it.
    let relabelled = text.replace("algorithm sm2-sm3", "algorithm ecdsa-p256-sha256");
    assert!(blacklist::verify(relabelled.as_bytes(), &full.public_key).is_err());
    // Another key (a forger's SM2 key): refused.
    let sm2_forger =
        sm2::dsa::SigningKey::from_slice(ListSignature::SM2_USER_ID, &[0x11; 32]).unwrap();
    let sm2_forged_key = sm2_forger.verifying_key().to_sec1_bytes().to_vec();
    assert_eq!(
        blacklist::verify(&full.list, &sm2_forged_key),
        Err(Fault::Signature)
    );
    // Out of order, though signed (by the forger, to show the order check on its own).
    let body = "sscard-blacklist 2\nalgorithm sm2-sm3\nissuer 440000\nkind full\nfrom 0\nto 2\n\
                entries 2\n2 440100D156000005000000000000B1002\n\
                1 440100D156000005000000000000B1001\n";
    let signature: sm2::dsa::Signature =
        sm2::dsa::signature::Signer::sign(&sm2_forger, body.as_bytes());
    let list = blacklist::signed(body, &signature.to_bytes());
    assert_eq!(
        blacklist::verify(list.as_bytes(), &sm2_forged_key),
        Err(Fault::Order(1))
    );
    // A list of format 1 (P-256, before SM2) is still read, and still order-checked.
    let forger = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let forged_key = forger
        .verifying_key()
        .to_sec1_point(false)
        .as_bytes()
        .to_vec();
    let body = "sscard-blacklist 1\nissuer 440000\nkind full\nfrom 0\nto 2\nentries 2\n\
                2 440100D156000005000000000000B1002\n1 440100D156000005000000000000B1001\n";
    let signature: p256::ecdsa::Signature =
        p256::ecdsa::signature::Signer::sign(&forger, body.as_bytes());
    let list = blacklist::signed(body, &signature.to_bytes());
    assert_eq!(
        blacklist::verify(list.as_bytes(), &forged_key),
        Err(Fault::Order(1))
    );

    // Each export is audited; the signing key was made once.
    let trail = kms.audit_trail();
    assert_eq!(
        trail
            .iter()
            .filter(|r| r.action == "create-list-signing-key")
            .count(),
        1
    );
    assert_eq!(
        trail
            .iter()
            .filter(|r| r.action == "export-blacklist")
            .count(),
        3
    );
    // A station may not export it.
    let status = kms
        .client(STATION)
        .registry
        .export_blacklist(pb::ExportBlacklistRequest { since_version: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_ceremony_exports_and_verifies_the_blacklist() {
    let kms = TestKms::seeded().await;
    blacklisted(
        &kms,
        &card("00000000000B2001", "GZ610001", "44010319810101123"),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = registrar_files(&kms, tmp.path());
    let list = tmp.path().join("blacklist.txt");
    let public = tmp.path().join("blacklist.pub");

    let out = run(vec![
        "registry".into(),
        "blacklist-export".into(),
        "--out".into(),
        s(&list),
        "--public-key-out".into(),
        s(&public),
        "--endpoint".into(),
        kms.url(),
        "--ca".into(),
        s(&ca),
        "--cert".into(),
        s(&cert),
        "--key".into(),
        s(&key),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("to 1\nentries 1\n"), "{out:?}");

    let verify = || verify_cli(&list, &public);
    let out = verify().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("genuine\n"), "{out:?}");

    // One byte changed: exit 2, and why.
    let mut bytes = std::fs::read(&list).unwrap();
    // A byte of the blacklisted card's identifier (not of the signature line).
    let entry = b"440100D156000005";
    let at = bytes
        .windows(entry.len())
        .position(|w| w == entry)
        .expect("the entry is in the list")
        + entry.len()
        + 3;
    bytes[at] ^= 0x01;
    std::fs::write(&list, &bytes).unwrap();
    let out = verify().await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not genuine"), "{out:?}");
}

/// GB/T 32918.2-2016 (GM/T 0003.2) annex A.2's example on the recommended curve: the signer's
/// public key, message "message digest", user id `1234567812345678`, signature (r, s).
#[test]
fn sm2_verification_matches_the_published_example() {
    let public_key = hex::decode(
        "04\
         09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020\
         CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13",
    )
    .unwrap();
    let signature = hex::decode(
        "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3\
         B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA",
    )
    .unwrap();
    let verify = |data: &[u8], signature: &[u8]| {
        blacklist::verify_signature(ListSignature::Sm2, &public_key, data, signature)
    };
    assert_eq!(verify(b"message digest", &signature), Ok(()));
    // One bit of the message, of r or of s: refused.
    assert_eq!(verify(b"message digesu", &signature), Err(Fault::Signature));
    for at in [0, 63] {
        let mut bad = signature.clone();
        bad[at] ^= 0x01;
        assert_eq!(verify(b"message digest", &bad), Err(Fault::Signature));
    }
    // The same bytes as a P-256 key and signature: not a P-256 signature of it.
    assert!(
        blacklist::verify_signature(
            ListSignature::EcdsaP256,
            &public_key,
            b"message digest",
            &signature
        )
        .is_err()
    );
    // And the private key of the example is the one behind that public key, in the library
    // the HSM signs with.
    let private =
        hex::decode("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8").unwrap();
    let key = sm2::dsa::SigningKey::from_slice(ListSignature::SM2_USER_ID, &private).unwrap();
    assert_eq!(key.verifying_key().to_sec1_bytes().to_vec(), public_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p256_deployment_signs_p256_and_its_key_keeps_its_scheme() {
    let kms = TestKms::seeded().await;
    kms.kms().set_list_signature(ListSignature::EcdsaP256);
    blacklisted(
        &kms,
        &card("00000000000B3001", "GZ620001", "44010319820101123"),
    )
    .await;
    let first = export(&kms, 0).await;
    assert!(
        first
            .list
            .starts_with(b"sscard-blacklist 2\nalgorithm ecdsa-p256-sha256\n")
    );
    let v = blacklist::verify(&first.list, &first.public_key).unwrap();
    assert_eq!((v.scheme, v.to), (ListSignature::EcdsaP256, 1));
    assert!(p256::ecdsa::VerifyingKey::from_sec1_bytes(&first.public_key).is_ok());
    // The deployment switched to SM2 later: the key made stays P-256 (a new scheme is a new
    // key, not a relabelled one).
    kms.kms().set_list_signature(ListSignature::Sm2);
    let again = export(&kms, 0).await;
    assert_eq!(again.public_key, first.public_key);
    assert_eq!(
        blacklist::verify(&again.list, &again.public_key)
            .unwrap()
            .scheme,
        ListSignature::EcdsaP256
    );

    // `kms-ceremony registry blacklist-verify` checks a P-256 list too: 0 genuine, 2 tampered.
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("blacklist.txt");
    let public = tmp.path().join("blacklist.pub");
    std::fs::write(&list, &again.list).unwrap();
    std::fs::write(&public, hex::encode_upper(&again.public_key)).unwrap();
    let verify = || verify_cli(&list, &public);
    let out = verify().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("algorithm ecdsa-p256-sha256\n"),
        "{out:?}"
    );
    let tampered = String::from_utf8(again.list.clone())
        .unwrap()
        .replace("B3001", "B3002");
    std::fs::write(&list, tampered).unwrap();
    let out = verify().await;
    assert_eq!(out.code, 2, "{out:?}");
}

/// "Increments since version N" is a range read from N + 1 in the store engine (redb, or
/// PostgreSQL with `SSCARD_TEST_STORE=postgres`): the rows the engine returns are the
/// increment's, not the list's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_reads_only_the_increment() {
    let kms = TestKms::seeded().await;
    let store = kms.kms().store();
    // A long list, through the store's write path (one transaction).
    store
        .write(|tx| {
            for n in 0..2_000u32 {
                blacklist::append(tx, &format!("440100D156000005{n:016X}"))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let snap = store.snapshot().unwrap();
    let increment = blacklist::increments(&snap, 1_997).unwrap();
    assert_eq!(
        increment
            .iter()
            .map(|e| (e.version, e.card_identifier.clone()))
            .collect::<Vec<_>>(),
        (1_998..=2_000u64)
            .map(|v| (v, format!("440100D156000005{:016X}", v - 1)))
            .collect::<Vec<_>>()
    );
    assert_eq!(snap.rows_scanned(), 3, "only the increment is read");
    // Past the end: nothing read; from 0: the whole list.
    let snap = store.snapshot().unwrap();
    assert!(blacklist::increments(&snap, 2_000).unwrap().is_empty());
    assert_eq!(snap.rows_scanned(), 0);
    assert_eq!(blacklist::increments(&snap, 0).unwrap().len(), 2_000);
    assert_eq!(snap.rows_scanned(), 2_000);
    // The signed increment says the same.
    let delta = export(&kms, 1_997).await;
    let v = blacklist::verify(&delta.list, &delta.public_key).unwrap();
    assert_eq!((v.from, v.to, v.entries.len()), (1_997, 2_000, 3));
}
