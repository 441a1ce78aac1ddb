//! The blacklist for terminals (notice N5): every blacklisting a new version, the list exported
//! in full and as increments, signed in the HSM (ECDSA P-256), checked by anyone with the public
//! key — over mTLS, and through the real `kms-ceremony registry blacklist-export|verify`.

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
    // Another key (a forger's): refused.
    let forger = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let forged_key = forger
        .verifying_key()
        .to_sec1_point(false)
        .as_bytes()
        .to_vec();
    assert_eq!(
        blacklist::verify(&full.list, &forged_key),
        Err(Fault::Signature)
    );
    // Out of order, though signed (by the forger, to show the order check on its own).
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

    let verify = || {
        run(vec![
            "registry".into(),
            "blacklist-verify".into(),
            s(&list),
            "--public-key".into(),
            s(&public),
        ])
    };
    let out = verify().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("genuine\n"), "{out:?}");

    // One byte changed: exit 2, and why.
    let mut bytes = std::fs::read(&list).unwrap();
    // In the signed document, before the signature line (whose hex may end in a `D`).
    let signature = bytes.windows(10).position(|w| w == b"signature ").unwrap();
    let at = bytes[..signature].iter().rposition(|&c| c == b'D').unwrap() + 3;
    bytes[at] ^= 0x01;
    std::fs::write(&list, &bytes).unwrap();
    let out = verify().await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not genuine"), "{out:?}");
}
