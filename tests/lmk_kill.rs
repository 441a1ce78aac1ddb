//! An LMK rotation across SIGKILL of a real `serve` process on a local HSM state directory
//! (no handler runs, nothing is flushed): killed between the prepare and the commit, the
//! restarted service is on the old LMK, unsealed by the old shares, and drops the prepared
//! rotation on record; killed right after a commit was acknowledged, the restart is on the new
//! LMK, the old shares no longer unseal it and the new ones do. Both times the trail verifies
//! through the HSM (its audit key is one of the re-wrapped tokens).

use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::admin_service_client::AdminServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::binaries::{Deployment, hsm_init, issued_shares, service_status, unseal};
use crate::common::harness::{OFFICER, OFFICER_2, error_info};

fn rotate() -> pb::RequestActRequest {
    pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::RotateLmk(pb::RotateLmkAct {
            threshold: 2,
            shares: 2,
        })),
    }
}

/// Requested by `asker`, approved by `approver`: the rotation is prepared.
async fn prepare(
    asker: &mut AdminServiceClient<Channel>,
    approver: &mut AdminServiceClient<Channel>,
) {
    let request = asker.request_act(rotate()).await.unwrap().into_inner();
    let approved = approver
        .approve_request(pb::RequestRef { id: request.id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        approved.request.unwrap().result.contains("prepared"),
        "the approval prepares the rotation"
    );
}

async fn take(admin: &mut AdminServiceClient<Channel>) -> Result<String, tonic::Status> {
    admin
        .take_lmk_share(pb::TakeLmkShareRequest {})
        .await
        .map(|r| r.into_inner().share)
}

async fn verdict(admin: &mut AdminServiceClient<Channel>) -> String {
    admin
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .unwrap()
        .into_inner()
        .verdict
}

/// Whether the trail holds a record of `action` (among its last 200 records).
async fn on_record(admin: &mut AdminServiceClient<Channel>, action: &str) -> bool {
    let head = admin
        .get_audit_checkpoint(pb::GetAuditCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .seq;
    admin
        .export_audit_trail(pb::ExportAuditTrailRequest {
            from_seq: head.saturating_sub(200).max(1),
            to_seq: head,
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .iter()
        .any(|r| r.action == action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_prepare_and_commit_and_after_a_commit_leaves_one_consistent_lmk() {
    let deployment = Deployment::new();
    let old = issued_shares(&hsm_init(&deployment.state_dir(), "2", "3"));

    // ---- unsealed by two custodians, a rotation prepared and one share taken, then SIGKILL.
    let mut kms = deployment.serve();
    let addr = kms.listening_on();
    let (mut officer, mut officer_2) = (
        deployment.admin(addr, OFFICER),
        deployment.admin(addr, OFFICER_2),
    );
    unseal(&mut officer, &old[0]).await.unwrap();
    assert!(unseal(&mut officer_2, &old[1]).await.unwrap().unsealed);
    prepare(&mut officer, &mut officer_2).await;
    take(&mut officer).await.unwrap();
    drop((officer, officer_2));
    assert!(!kms.kill().success());

    // ---- restarted: sealed, still the old LMK's; the prepared rotation is gone, on record.
    let mut kms = deployment.serve();
    let addr = kms.listening_on();
    let (mut officer, mut officer_2) = (
        deployment.admin(addr, OFFICER),
        deployment.admin(addr, OFFICER_2),
    );
    assert_eq!(service_status(&mut officer).await.hsm_state, "sealed");
    unseal(&mut officer, &old[2]).await.unwrap();
    assert!(unseal(&mut officer_2, &old[0]).await.unwrap().unsealed);
    let refused = take(&mut officer_2).await.unwrap_err();
    assert_eq!(
        error_info(&refused).unwrap().reason,
        "LMK_ROTATION_NOT_PREPARED",
        "{refused:?}"
    );
    assert!(on_record(&mut officer, "lmk-rotation-dropped").await);
    assert_eq!(verdict(&mut officer).await, "INTACT");

    // ---- a whole rotation, SIGKILL as soon as the commit is acknowledged.
    prepare(&mut officer_2, &mut officer).await;
    let new = [
        take(&mut officer).await.unwrap(),
        take(&mut officer_2).await.unwrap(),
    ];
    officer
        .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
        .await
        .unwrap();
    drop((officer, officer_2));
    assert!(!kms.kill().success());

    // ---- restarted: the old shares are another LMK's; the new ones unseal; the trail holds.
    let mut kms = deployment.serve();
    let addr = kms.listening_on();
    let (mut officer, mut officer_2) = (
        deployment.admin(addr, OFFICER),
        deployment.admin(addr, OFFICER_2),
    );
    assert_eq!(service_status(&mut officer).await.hsm_state, "sealed");
    let foreign = unseal(&mut officer, &old[0]).await.unwrap_err();
    assert_eq!(foreign.code(), Code::InvalidArgument, "{foreign:?}");
    unseal(&mut officer, &new[0]).await.unwrap();
    assert!(unseal(&mut officer_2, &new[1]).await.unwrap().unsealed);
    assert_eq!(service_status(&mut officer).await.hsm_state, "operational");
    assert_eq!(verdict(&mut officer).await, "INTACT");
    assert!(on_record(&mut officer, "commit-lmk-rotation").await);
    drop((officer, officer_2));
    let exited = kms.terminate();
    assert!(exited.status.success(), "{exited:?}");
}
