//! LMK rotation as a dual-control ceremony, over real mTLS with separate officer certificates:
//! one officer asks, another approves (every stored token re-wrapped, the rotation kept in the
//! store), each custodian takes their one share, the commit swaps the store; a station's card
//! keys then check out (DOMAIN.md's worked chain), and the audit trail verifies through the
//! HSM. A restart between prepare and commit leaves a consistent store either way. Every
//! README code marked `mTLS (lmk rotation)` is provoked here.

use std::collections::BTreeMap;

use hsm_api::{Algorithm, Hsm as _};
use hsm_sim::crypto::{SecretKey, kcv};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::admin_service_client::AdminServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::chain::{atr, published};
use crate::common::harness::{OFFICER, OFFICER_2, STATION, TestKms, card_identity, error_info};

fn rotate(threshold: u32, shares: u32) -> pb::RequestActRequest {
    pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::RotateLmk(pb::RotateLmkAct {
            threshold,
            shares,
        })),
    }
}

/// The card's `STK_SSSE` KCV as the station receives it.
async fn stk_kcv(kms: &TestKms<hsm_sim::local::LocalHsm>) -> String {
    let card = card_identity(&published().card[0], &atr());
    let keys = kms
        .client(STATION)
        .card
        .inject_card_keys(pb::InjectCardKeysRequest {
            card: Some(card),
            template_id: "ssc-2.0".to_owned(),
            delivery: pb::DeliveryForm::Tr31 as i32,
            key_names: vec!["STK_SSSE".to_owned()],
            challenges: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    hex::encode_upper(&keys[0].kcv.as_ref().unwrap().value)
}

async fn lmk_kcv(kms: &TestKms<hsm_sim::local::LocalHsm>) -> String {
    kms.hsm().status().await.unwrap().lmk_kcv.unwrap().to_hex()
}

/// Asks (officer 1) and approves (officer 2) a 2-of-2 rotation; the approval's result text.
async fn approved_rotation(kms: &TestKms<hsm_sim::local::LocalHsm>) -> String {
    let r = kms
        .client(OFFICER)
        .admin
        .request_act(rotate(2, 2))
        .await
        .unwrap()
        .into_inner();
    let approved = kms
        .client(OFFICER_2)
        .admin
        .approve_request(pb::RequestRef { id: r.id })
        .await
        .unwrap()
        .into_inner();
    approved.request.unwrap().result
}

async fn take(kms: &TestKms<hsm_sim::local::LocalHsm>, who: &str) -> pb::TakeLmkShareResponse {
    kms.client(who)
        .admin
        .take_lmk_share(pb::TakeLmkShareRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The reason code of `who`'s refused share.
async fn take_refused(kms: &TestKms<hsm_sim::local::LocalHsm>, who: &str) -> String {
    let s = kms
        .client(who)
        .admin
        .take_lmk_share(pb::TakeLmkShareRequest {})
        .await
        .unwrap_err();
    error_info(&s).unwrap().reason
}

async fn verdict(kms: &TestKms<hsm_sim::local::LocalHsm>) -> String {
    kms.client(OFFICER)
        .admin
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .unwrap()
        .into_inner()
        .verdict
}

/// A component ceremony for the national root of `STK_SSSE` (2 components), opened by
/// `officer`: a submission of component `hex` with its KCV (or `kcv_hex` instead).
async fn national_root_ceremony(
    officer: &mut AdminServiceClient<Channel>,
) -> impl Fn(&str, Option<&str>) -> pb::SubmitComponentRequest + use<> {
    let ceremony = officer
        .start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(pb::start_key_ceremony_request::Target::Root(
                pb::RootTarget {
                    template_id: "ssc-2.0".to_owned(),
                    key_name: "STK_SSSE".to_owned(),
                    level: pb::KeyLevel::National.into(),
                    ministry_psam_permission: false,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    move |hex: &str, kcv_hex: Option<&str>| {
        let key = SecretKey::from_hex(Algorithm::Tdes2, hex).unwrap();
        pb::SubmitComponentRequest {
            ceremony_id: ceremony.id.clone(),
            component: Some(pb::Component {
                hex: hex.to_owned(),
                kcv_hex: kcv_hex.map_or_else(
                    || kcv::compute_default(&key).unwrap().to_hex(),
                    str::to_owned,
                ),
            }),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmk_rotation_under_dual_control_keeps_every_key_and_the_audit_trail() {
    let kms = TestKms::seeded().await;
    let before = stk_kcv(&kms).await;
    assert_eq!(before, "32CD7C", "DOMAIN.md's worked chain");
    let old_lmk = lmk_kcv(&kms).await;

    let result = approved_rotation(&kms).await;
    assert!(result.contains("prepared"), "{result}");
    // Nothing current changed: the old LMK serves on.
    assert_eq!(lmk_kcv(&kms).await, old_lmk);
    assert_eq!(stk_kcv(&kms).await, before);

    // One share per custodian identity, each from their own certificate.
    let first = take(&kms, OFFICER).await;
    assert_eq!(take_refused(&kms, OFFICER).await, "SAME_CUSTODIAN_TWICE");
    let second = take(&kms, OFFICER_2).await;
    assert_eq!((first.index, second.index), (1, 2));
    assert_ne!(first.share, second.share);
    // The share never shows in a Debug of its message (a log line, a panic).
    let shown = format!("{first:?}");
    assert!(!shown.contains(&first.share), "{shown}");
    assert!(shown.contains(&first.check_value), "{shown}");
    assert_eq!(first.new_lmk_kcv, second.new_lmk_kcv);

    let committed = kms
        .client(OFFICER)
        .admin
        .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.old_lmk_kcv, old_lmk);
    assert_eq!(committed.lmk_kcv, first.new_lmk_kcv);
    assert_eq!(lmk_kcv(&kms).await, committed.lmk_kcv);
    // More tokens than one HSM call carries: the prepare and then re-wraps in chunks.
    assert!(
        committed.tokens as usize > 3 * *hsm_api::BATCH_ITEMS.end(),
        "{committed:?}"
    );
    assert_eq!(committed.custodians, [OFFICER, OFFICER_2]);

    // Every key works under the new LMK: the same card keys, the trail sealed and verified.
    assert_eq!(stk_kcv(&kms).await, before);
    assert_eq!(verdict(&kms).await, "INTACT");
    let trail = kms.audit_trail();
    let took: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "take-lmk-share")
        .collect();
    assert_eq!(took.len(), 2);
    for (r, share) in took.iter().zip([&first, &second]) {
        assert!(r.subject.contains(&share.check_value));
        assert!(!r.subject.contains(&share.share));
    }
    assert!(trail.iter().any(|r| r.action == "commit-lmk-rotation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_prepare_and_commit_leaves_a_consistent_store() {
    let mut kms = TestKms::seeded().await;
    let before = stk_kcv(&kms).await;
    let old_lmk = lmk_kcv(&kms).await;

    // Prepared, then restarted with the HSM still on the old LMK: the rotation is dropped.
    approved_rotation(&kms).await;
    take(&kms, OFFICER).await;
    kms.close().await;
    let hsm = std::sync::Arc::clone(kms.hsm());
    kms.reopen(hsm).await;
    assert_eq!(lmk_kcv(&kms).await, old_lmk);
    assert_eq!(stk_kcv(&kms).await, before);
    assert!(
        kms.audit_trail()
            .iter()
            .any(|r| r.action == "lmk-rotation-dropped")
    );
    assert_eq!(
        take_refused(&kms, OFFICER_2).await,
        "LMK_ROTATION_NOT_PREPARED"
    );

    // Prepared again, every share taken, the HSM committed, then the service stopped before
    // its swap: the next open finishes it.
    approved_rotation(&kms).await;
    let share = take(&kms, OFFICER).await;
    take(&kms, OFFICER_2).await;
    kms.close().await;
    let hsm = std::sync::Arc::clone(kms.hsm());
    let method = hsm.status().await.unwrap().lmk_kcv.unwrap().method();
    let new = hsm_api::Kcv::from_parts(method, hex::decode(&share.new_lmk_kcv).unwrap());
    hsm.commit_lmk_rotation(&new).await.unwrap();
    kms.reopen(hsm).await;
    assert_eq!(lmk_kcv(&kms).await, share.new_lmk_kcv);
    assert_eq!(stk_kcv(&kms).await, before);
    assert!(
        kms.audit_trail()
            .iter()
            .any(|r| r.action == "lmk-rotation-finished")
    );
    assert_eq!(verdict(&kms).await, "INTACT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lmk_rotation_reason_code_arrives_over_the_api() {
    let kms = TestKms::seeded().await;
    let mut seen = BTreeMap::new();
    let mut note = |s: tonic::Status| {
        let code = match s.code() {
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            other => panic!("{other:?}"),
        };
        seen.insert(error_info(&s).unwrap().reason, code.to_owned());
    };
    let mut officer = kms.client(OFFICER).admin;
    note(
        officer
            .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
            .await
            .unwrap_err(),
    );
    // A component ceremony holding a partial key in the HSM: no rotation until it ends (a
    // partial key is no token; it would not survive the new LMK).
    let component = national_root_ceremony(&mut officer).await;
    officer
        .submit_component(component(&"1F".repeat(16), None))
        .await
        .unwrap();
    note(officer.request_act(rotate(2, 2)).await.unwrap_err());
    // A wrong KCV fails the ceremony (its partial key forgotten): rotation is possible again.
    kms.client(OFFICER_2)
        .admin
        .submit_component(component(&"2F".repeat(16), Some("ABCDEF")))
        .await
        .unwrap_err();
    approved_rotation(&kms).await;
    note(officer.request_act(rotate(2, 2)).await.unwrap_err());
    let counts = officer.request_act(rotate(3, 2)).await.unwrap_err();
    assert_eq!(
        error_info(&counts).unwrap().reason,
        "COMPONENT_COUNT_OUT_OF_RANGE"
    );
    // A share still in the HSM: the commit is refused.
    take(&kms, OFFICER).await;
    note(
        officer
            .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
            .await
            .unwrap_err(),
    );
    // A key written after the approval (a new root version, under the old LMK): the commit is
    // refused before the HSM commits, the old LMK serves on.
    let generate = officer
        .request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::GenerateRoot(
                pb::GenerateRootAct {
                    template_id: "ssc-2.0".to_owned(),
                    key_name: "MK_MF".to_owned(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    kms.client(OFFICER_2)
        .admin
        .approve_request(pb::RequestRef { id: generate.id })
        .await
        .unwrap();
    take(&kms, OFFICER_2).await;
    let old_lmk = lmk_kcv(&kms).await;
    note(
        officer
            .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
            .await
            .unwrap_err(),
    );
    assert_eq!(lmk_kcv(&kms).await, old_lmk);
    assert_eq!(
        seen,
        crate::common::readme::codes_marked("mTLS (lmk rotation)")
    );
}

/// A component ceremony begun after the approval holds a partial key under the old LMK, which
/// the prepared rotation did not re-wrap: the commit is refused until the ceremony ends, and
/// goes through once it has failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_key_made_after_the_prepare_holds_the_commit_back() {
    let kms = TestKms::seeded().await;
    let before = stk_kcv(&kms).await;
    let old_lmk = lmk_kcv(&kms).await;
    approved_rotation(&kms).await;
    take(&kms, OFFICER).await;
    take(&kms, OFFICER_2).await;
    let mut officer = kms.client(OFFICER).admin;
    let component = national_root_ceremony(&mut officer).await;
    officer
        .submit_component(component(&"1F".repeat(16), None))
        .await
        .unwrap();
    let held = officer
        .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
        .await
        .unwrap_err();
    assert_eq!(error_info(&held).unwrap().reason, "COMPONENT_CEREMONY_OPEN");
    assert_eq!(lmk_kcv(&kms).await, old_lmk, "the HSM did not commit");
    // The ceremony fails (a wrong KCV): its partial key is forgotten, the commit goes through.
    kms.client(OFFICER_2)
        .admin
        .submit_component(component(&"2F".repeat(16), Some("ABCDEF")))
        .await
        .unwrap_err();
    officer
        .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
        .await
        .unwrap();
    assert_ne!(lmk_kcv(&kms).await, old_lmk);
    assert_eq!(stk_kcv(&kms).await, before);
    assert_eq!(verdict(&kms).await, "INTACT");
}

/// The three `kms-ceremony service lmk-*` jobs through the real binary, each officer from their
/// own certificate: a request, another officer's approval, one share printed to each custodian
/// (never on the job's record lines), the commit; then the HSM is sealed and unsealed with the
/// two printed shares through `unseal`, and a station's card keys still check out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lmk_jobs_of_kms_ceremony_rotate_and_the_printed_shares_unseal() {
    use crate::ceremonies::{Cli, Files, id_after};
    let kms = TestKms::seeded().await;
    let before = stk_kcv(&kms).await;
    let old_lmk = lmk_kcv(&kms).await;
    let url = kms.url();
    let files = Files::new(&kms, &[OFFICER, OFFICER_2, STATION]);
    let cli = Cli {
        url: &url,
        files: &files,
    };

    let (ok, out, err) = cli
        .run(
            OFFICER,
            &["lmk-rotate", "--threshold", "2", "--shares", "2"],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let request = id_after(&out, "request");
    let (ok, _, err) = cli.run(OFFICER, &["lmk-take-share"], "").await;
    assert!(!ok && err.contains("LMK_ROTATION_NOT_PREPARED"), "{err}");
    let (ok, out, err) = cli
        .run(OFFICER_2, &["requests-approve", &request], "")
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("prepared"), "{out}");

    // Each custodian's share: printed once, on the line after the banner.
    let mut shares = Vec::new();
    for who in [OFFICER, OFFICER_2] {
        let (ok, out, err) = cli.run(who, &["lmk-take-share"], "").await;
        assert!(ok, "{err}");
        let mut lines = out.lines();
        lines
            .by_ref()
            .find(|l| l.starts_with("YOUR SHARE of the new LMK"))
            .unwrap_or_else(|| panic!("no share banner: {out}"));
        let share = lines.next().unwrap().trim().to_owned();
        assert!(share.starts_with("lmk1-"), "{out}");
        // The record lines name the share's check value and the new LMK, not the share.
        let record: String = lines.collect::<Vec<_>>().join("\n");
        assert!(
            record.contains("check value") && !record.contains(&share),
            "{out}"
        );
        shares.push(share);
    }
    let (ok, _, err) = cli.run(OFFICER, &["lmk-take-share"], "").await;
    assert!(!ok && err.contains("SAME_CUSTODIAN_TWICE"), "{err}");
    assert_eq!(
        lmk_kcv(&kms).await,
        old_lmk,
        "nothing current before the commit"
    );

    let (ok, out, err) = cli.run(OFFICER, &["lmk-commit"], "").await;
    assert!(ok, "{err}");
    let new_lmk = lmk_kcv(&kms).await;
    assert_ne!(new_lmk, old_lmk);
    assert!(
        out.contains(&format!("KCV {new_lmk}")) && out.contains(OFFICER_2),
        "{out}"
    );
    let (ok, _, err) = cli.run(OFFICER, &["lmk-commit"], "").await;
    assert!(!ok && err.contains("LMK_ROTATION_NOT_PREPARED"), "{err}");

    // The printed shares are the new LMK's: sealed, then unsealed by the two custodians.
    let (ok, _, err) = cli.run(OFFICER, &["seal"], "").await;
    assert!(ok, "{err}");
    let (ok, out, err) = cli
        .run(OFFICER, &["unseal"], &format!("{}\n", shares[0]))
        .await;
    assert!(ok && out.contains("1/2"), "{out} {err}");
    let (ok, out, err) = cli
        .run(OFFICER_2, &["unseal"], &format!("{}\n", shares[1]))
        .await;
    assert!(ok && out.contains("HSM operational"), "{out} {err}");
    assert_eq!(lmk_kcv(&kms).await, new_lmk);
    assert_eq!(stk_kcv(&kms).await, before);
    assert_eq!(verdict(&kms).await, "INTACT");
    for share in &shares {
        assert!(
            kms.audit_trail()
                .iter()
                .all(|r| !r.subject.contains(share.as_str())),
            "a share in the trail"
        );
    }
}
