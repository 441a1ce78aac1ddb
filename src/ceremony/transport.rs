//! The `service transport-…` jobs: a station's or PSAM line's transport key issued by the HSM
//! under dual control, and each of the station's custodians taking their one component.
//!
//! 1. `transport-issue` (one officer) asks for the key, as components or as a TR-31 block
//!    under the station's current key; another officer's `requests-approve` has the HSM make it.
//! 2. `transport-take-component REQUEST` (each custodian, from their own certificate): the
//!    component is printed once, straight to the custodian's terminal from a zeroizing buffer;
//!    the job's output (the ceremony record) carries its KCV only.
//! 3. `transport-show REQUEST`: the record (KCVs, custodians) and, for a TR-31 delivery, the
//!    block for the station's operator to load.

use std::fmt::Write as _;

use clap::ValueEnum;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::proto::kms::v1 as pb;
use crate::proto::kms::v1::admin_service_client::AdminServiceClient;

use super::remote::{Job, refused, request};

/// A station or a PSAM line, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointKindArg {
    /// A card personalisation station.
    Station,
    /// A PSAM production line.
    PsamLine,
}

impl EndpointKindArg {
    fn wire(self) -> pb::EndpointKind {
        match self {
            EndpointKindArg::Station => pb::EndpointKind::Station,
            EndpointKindArg::PsamLine => pb::EndpointKind::PsamLine,
        }
    }
}

/// Runs one of the `transport-…` jobs.
pub(super) async fn call(
    admin: &mut AdminServiceClient<Channel>,
    job: &Job,
    out: &mut String,
) -> Result<()> {
    match job {
        Job::TransportIssue {
            kind,
            name,
            region,
            algorithm,
            components,
            under_current_key,
        } => {
            use pb::issue_transport_key_act::Delivery;
            let delivery = match (components, under_current_key) {
                (Some(n), false) => Delivery::Components(*n),
                _ => Delivery::UnderCurrentKey(*under_current_key),
            };
            let act = pb::request_act_request::Act::IssueTransportKey(pb::IssueTransportKeyAct {
                kind: kind.wire().into(),
                name: name.clone(),
                region: region.clone(),
                transport_algorithm: algorithm.clone(),
                delivery: Some(delivery),
            });
            request(admin, act, out).await
        }
        Job::TransportTakeComponent { request } => {
            let mut r = admin
                .take_transport_component(pb::TransportIssueRef {
                    request_id: request.clone(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let component = Zeroizing::new(std::mem::take(&mut r.component));
            // Straight to the custodian's terminal: the component never enters the job's output
            // text (a plain String that is not wiped); only the record lines do.
            println!(
                "YOUR COMPONENT of the new transport key, shown once — write it down with its \
                 KCV and load it yourself into the station's HSM:\n{}",
                component.as_str()
            );
            let _ = writeln!(
                out,
                "component {} of {} taken; its KCV {}",
                r.index, r.components, r.component_kcv
            );
            if let Some(issue) = &r.issue {
                print_issue(out, issue);
            }
            Ok(())
        }
        Job::TransportShow { request } => {
            let issue = admin
                .get_transport_issue(pb::TransportIssueRef {
                    request_id: request.clone(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_issue(out, &issue);
            if !issue.tr31_block.is_empty() {
                let _ = writeln!(
                    out,
                    "TR-31 block for the station (under its previous key, KCV {}):\n{}",
                    issue.under_kcv, issue.tr31_block
                );
            }
            Ok(())
        }
        Job::EndpointsRevoke { kind, name } => {
            let act = pb::request_act_request::Act::RevokeEndpoint(pb::RevokeEndpointAct {
                kind: kind.wire().into(),
                name: name.clone(),
            });
            request(admin, act, out).await
        }
        _ => Ok(()),
    }
}

/// An issued transport key for the ceremony record: KCVs and custodians only.
pub(super) fn print_issue(out: &mut String, t: &pb::TransportIssue) {
    let kcv = t
        .kcv
        .as_ref()
        .map(|k| hex::encode_upper(&k.value))
        .unwrap_or_default();
    let how = if t.components > 0 {
        format!("{} components, {} taken", t.components, t.custodians.len())
    } else {
        format!("a TR-31 block under the key of KCV {}", t.under_kcv)
    };
    let _ = writeln!(
        out,
        "transport key of {} in {} (request {}): {} key KCV {kcv}, as {how}",
        t.name, t.region, t.request_id, t.algorithm
    );
    for p in &t.custodians {
        let _ = writeln!(
            out,
            "  {} took a component, KCV {} at {}",
            p.identity, p.component_kcv, p.at_ms
        );
    }
}
