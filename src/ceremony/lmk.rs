//! The `service` jobs of the HSM's LMK against the running service: a custodian's unseal share,
//! seal, self-test, and the LMK rotation under dual control (`lmk-rotate` asks for it; after
//! the approval each custodian takes their share of the new LMK once, `lmk-take-share`, straight
//! to their terminal; `lmk-commit` makes it current).

use std::fmt::Write as _;

use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::proto::kms::v1 as pb;
use crate::proto::kms::v1::admin_service_client::AdminServiceClient;

use super::remote::{Job, refused, request};

/// Runs an LMK job (`share`: the custodian's, read by the caller, for `Unseal`); what it did,
/// for the ceremony record, into `out`.
pub(super) async fn call(
    admin: &mut AdminServiceClient<Channel>,
    job: &Job,
    share: Option<Zeroizing<String>>,
    out: &mut String,
) -> Result<()> {
    match job {
        Job::Unseal => {
            let Some(share) = share else {
                return Err(Error::MissingInput("your LMK share"));
            };
            let p = admin
                .unseal_hsm(pb::UnsealHsmRequest {
                    share: share.to_string(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(
                out,
                "share accepted: {}/{}{}",
                p.submitted,
                p.threshold,
                if p.unsealed { ", HSM operational" } else { "" }
            );
        }
        Job::Seal => {
            let r = admin
                .seal_hsm(pb::SealHsmRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(out, "HSM {}", r.hsm_state);
        }
        Job::SelfTest => {
            let r = admin
                .run_hsm_self_test(pb::RunHsmSelfTestRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(out, "self-test passed; HSM {}", r.hsm_state);
        }
        Job::LmkRotate { threshold, shares } => {
            let act = pb::request_act_request::Act::RotateLmk(pb::RotateLmkAct {
                threshold: *threshold,
                shares: *shares,
            });
            request(admin, act, out).await?;
        }
        Job::LmkTakeShare => {
            let r = admin
                .take_lmk_share(pb::TakeLmkShareRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let mut r = r;
            let share = Zeroizing::new(std::mem::take(&mut r.share));
            // Straight to the custodian's terminal: the share never enters the job's output
            // text (a plain String that is not wiped); only the record lines do.
            println!(
                "YOUR SHARE of the new LMK, shown once — write it down and keep it alone:\n{}",
                share.as_str()
            );
            let _ = writeln!(
                out,
                "share {} of {} (threshold {}) of the new LMK (KCV {}); its check value: {}",
                r.index, r.shares, r.threshold, r.new_lmk_kcv, r.check_value
            );
        }
        Job::LmkCommit => {
            let r = admin
                .commit_lmk_rotation(pb::CommitLmkRotationRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(
                out,
                "LMK rotated: KCV {} (was {}); {} stored keys re-wrapped; shares held by {}",
                r.lmk_kcv,
                r.old_lmk_kcv,
                r.tokens,
                r.custodians.join(", ")
            );
        }
        // Not an LMK job: the caller sends only those here.
        _ => {}
    }
    Ok(())
}
