//! The ceremony jobs run against the service: each officer from their own certificate (mutual
//! TLS), each secret read from the terminal without echo or from standard input, never from
//! the command line or the environment. The output is fit for the ceremony record: ids, KCVs,
//! times and officer identities, never a key.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::ceremony::input::SecretLines;
use crate::error::{Error, Result};
use crate::proto::kms::v1 as pb;
use crate::proto::kms::v1::admin_service_client::AdminServiceClient;

/// How to reach the service, as whom.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The service, e.g. `https://kms.internal:50051`.
    #[arg(long)]
    pub server: String,
    /// The CA of the service's certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Your own officer (or auditor) certificate and key (PEM): you act as its identity.
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// The name the service's certificate is for (default `localhost`).
    #[arg(long)]
    pub domain: Option<String>,
}

/// A hierarchy level of a root, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RootLevel {
    /// A national root from the Ministry.
    National,
    /// A provincial key received directly.
    Provincial,
}

/// Every job that talks to the service.
#[derive(Debug, Clone, Subcommand)]
pub enum Job {
    /// The service's and the HSM's status.
    Status,
    /// Submit your LMK share towards unsealing the HSM (read without echo, or from stdin). Each
    /// custodian submits one share, from their own certificate.
    Unseal,
    /// Seal the HSM now (its LMK zeroized): the custodians must unseal it again.
    Seal,
    /// Run the HSM's known-answer self-test now.
    SelfTest,
    /// Ask to rotate the LMK (another officer approves): the approval re-wraps every stored
    /// key under a new LMK split THRESHOLD-of-SHARES, prepared in the HSM and kept in the
    /// store; the old LMK serves until the commit.
    LmkRotate {
        #[arg(long)]
        threshold: u32,
        #[arg(long)]
        shares: u32,
    },
    /// Take your one share of the prepared LMK, from your own certificate: printed here once
    /// (the HSM forgets it as it answers); write it down with its check value.
    LmkTakeShare,
    /// Once every custodian has taken their share: make the new LMK current (HSM, then every
    /// stored key). Irreversible.
    LmkCommit,
    /// Auditors: verify the whole audit trail through the service's own HSM (every seal's
    /// MAC checked with the production audit key). Prints the report; last line INTACT,
    /// UNSEALED or BROKEN; a non-zero exit code unless INTACT.
    AuditVerify,
    /// Auditors: the records FROM..=TO (at most 10000) as JSON lines, for a SIEM.
    AuditExport {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// The officer registry: certificates by fingerprint, revoked or not.
    OfficersList,
    /// Ask to register an officer's or auditor's certificate (another officer approves).
    OfficersRegister {
        /// The certificate (PEM) to register.
        #[arg(long)]
        certificate: PathBuf,
    },
    /// Ask to revoke a certificate by fingerprint (another officer approves).
    OfficersRevoke {
        #[arg(long)]
        fingerprint: String,
    },
    /// Dual-control requests and their states.
    RequestsList,
    /// Approve another officer's request: the act happens now, once.
    RequestsApprove { id: String },
    /// Reject (or withdraw your own) pending request.
    RequestsReject { id: String },
    /// Start a component ceremony for a root: then each custodian runs `component-submit`.
    RootsImport {
        #[arg(long)]
        template: String,
        #[arg(long)]
        key: String,
        #[arg(long, value_enum)]
        level: RootLevel,
        /// How many custodians bring a component (2..=9).
        #[arg(long)]
        components: u32,
        /// The Ministry permitted this national root's keys in PSAMs (DOMAIN.md §11); recorded
        /// with the key. Only for `--level national`.
        #[arg(long)]
        ministry_psam_permission: bool,
    },
    /// Ask to generate a provincial root in the HSM (a new version of an existing one is its
    /// rotation); another officer approves.
    RootsGenerate {
        #[arg(long)]
        template: String,
        #[arg(long)]
        key: String,
    },
    /// Ask to register a new station from components its custodians bring (another officer
    /// approves; the approval opens the component ceremony, then each custodian runs
    /// `component-submit`). For a key the HSM generates, see `transport-issue`.
    StationsRegister {
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        /// `tdes` or `aes`.
        #[arg(long)]
        algorithm: String,
        #[arg(long)]
        components: u32,
    },
    /// Ask to register a new PSAM line from components its custodians bring (as
    /// `stations-register`).
    PsamLinesRegister {
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        algorithm: String,
        #[arg(long)]
        components: u32,
    },
    /// Ask to replace a station's transport key (another officer approves; the approval opens
    /// the component ceremony).
    StationsReplace {
        #[arg(long)]
        name: String,
        #[arg(long)]
        algorithm: String,
        #[arg(long)]
        components: u32,
    },
    /// Submit your one component of a ceremony: the component and then its KCV from your
    /// paper (both without echo, or from stdin). The KCV is checked here before anything is
    /// sent, and again in the HSM.
    ComponentSubmit { id: String },
    /// A ceremony's record: custodians, their KCVs, the final KCV.
    CeremonyShow { id: String },
    /// Load a card template (or a newer revision) from its TOML file.
    TemplateLoad {
        #[arg(long)]
        file: PathBuf,
    },
    /// Derive the provincial and city keys of a template from its active roots.
    HierarchyDerive {
        #[arg(long)]
        template: String,
    },
    /// Key records of a template: versions, state and KCVs (never a key).
    KeysList {
        #[arg(long)]
        template: String,
    },
    /// Ask to take a card off the blacklist (another officer approves).
    CardsUnblacklist {
        #[arg(long)]
        card_identifier: String,
    },
    /// Ask to retire a key version (`template/key/level/region/version`).
    KeysRetire {
        #[arg(long)]
        key_id: String,
    },
    /// Step 1 of a transport key the HSM generates: ask for it (another officer approves with
    /// `requests-approve`, which registers the station or line, or replaces its key). Give
    /// `--components N` to hand it out as N components, one for each of the station's own
    /// custodians (`transport-take-component`), or `--under-current-key` for a TR-31 block
    /// under the station's current key (`transport-show`).
    TransportIssue {
        #[arg(long, value_enum)]
        kind: super::transport::EndpointKindArg,
        #[arg(long)]
        name: String,
        /// The station's region code (the registered one, for a registered station).
        #[arg(long)]
        region: String,
        /// `tdes` or `aes` (for `--under-current-key`: the current key's family).
        #[arg(long)]
        algorithm: String,
        /// How many custodians take a component (2..=9).
        #[arg(long, conflicts_with = "under_current_key")]
        components: Option<u32>,
        /// Deliver the new key as a TR-31 block under the station's current transport key.
        #[arg(long)]
        under_current_key: bool,
    },
    /// Step 2: take your one component of the transport key REQUEST issued, from your own
    /// certificate: printed here once (the HSM forgets it as it answers); write it down with
    /// its KCV and load it into the station's own HSM. One component per custodian.
    TransportTakeComponent { request: String },
    /// The record of the transport key REQUEST issued (KCVs, custodians) and, for a TR-31
    /// delivery, the block for the station's operator.
    TransportShow { request: String },
    /// Ask to revoke a station or PSAM line (another officer approves): its record and
    /// transport key are deleted, it gets no key from then on.
    EndpointsRevoke {
        #[arg(long, value_enum)]
        kind: super::transport::EndpointKindArg,
        #[arg(long)]
        name: String,
    },
    /// Root backup and restore (`roots-backup`, `backup-take-share`, `roots-restore`,
    /// `backup-submit-share`).
    #[command(flatten)]
    Backup(crate::ceremony::backup::BackupJob),
}

/// Runs `job` as the certificate of `conn`, reading secrets from `input`.
pub fn run(conn: &Connection, job: &Job, input: &mut dyn SecretLines) -> Result<String> {
    let tls = crate::access::tls::ClientTls::from_files(&conn.ca, &conn.cert, &conn.key)?;
    let tls = match &conn.domain {
        Some(d) => tls.with_domain(d.clone()),
        None => tls,
    };
    if matches!(
        job,
        Job::RequestsApprove { .. } | Job::Seal | Job::LmkCommit
    ) && !confirmed(job)?
    {
        return Err(Error::MissingInput("the confirmation \"yes\""));
    }
    // Secrets are read before connecting: a refused KCV sends nothing.
    let secret = match job {
        Job::Unseal => Some(Secret::Share(input.next_secret("your LMK share")?)),
        Job::Backup(b) if b.reads_share() => {
            Some(Secret::Share(input.next_secret("your root backup share")?))
        }
        Job::ComponentSubmit { .. } => {
            let hex = input.next_secret("your component (hex)")?;
            let kcv = input.next_secret("its KCV from your paper (hex)")?;
            Some(Secret::Component(hex, kcv))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| Error::Store)?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(conn.server.clone())
            .map_err(|_| unreachable())?
            .tls_config(tls.config())
            .map_err(|_| unreachable())?
            .connect()
            .await
            .map_err(|_| unreachable())?;
        call(AdminServiceClient::new(channel), job, secret).await
    })
}

/// On a terminal, asks for `yes` before an irreversible step (a script's stdin is not asked:
/// its author has decided).
fn confirmed(job: &Job) -> Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    let what = match job {
        Job::RequestsApprove { id } => format!("approve request {id}: the act happens now"),
        Job::LmkCommit => "make the new LMK current: the old one is gone".to_owned(),
        _ => "seal the HSM: the custodians must unseal it again".to_owned(),
    };
    let mut err = std::io::stderr();
    let _ = write!(err, "{what}. Type yes to go on: ");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(Error::Stdin)?;
    Ok(line.trim() == "yes")
}

enum Secret {
    Share(Zeroizing<String>),
    Component(Zeroizing<String>, Zeroizing<String>),
}

fn unreachable() -> Error {
    Error::Tls {
        what: "service",
        reason: "the service could not be reached",
    }
}

/// A refusal, printed with its reason code for the record.
pub(super) fn refused(s: &tonic::Status) -> Error {
    use tonic_types::StatusExt as _;
    let code = s
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_else(|| format!("{:?}", s.code()));
    eprintln!("kms-ceremony: refused: {code}: {}", s.message());
    Error::Tls {
        what: "service",
        reason: "the service refused the call",
    }
}

async fn call(
    mut admin: AdminServiceClient<Channel>,
    job: &Job,
    secret: Option<Secret>,
) -> Result<String> {
    let mut out = String::new();
    match job {
        Job::Status => {
            let s = admin
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(
                out,
                "service {}\nHSM {}{}\naudit records {}\ntemplates {}",
                s.version,
                s.hsm_state,
                if s.hsm_dangerous_test_lmk {
                    " (DANGEROUS: the published test LMK)"
                } else {
                    ""
                },
                s.audit_records,
                s.templates.join(", ")
            );
        }
        Job::Unseal
        | Job::Seal
        | Job::SelfTest
        | Job::LmkRotate { .. }
        | Job::LmkTakeShare
        | Job::LmkCommit => {
            let share = match secret {
                Some(Secret::Share(share)) => Some(share),
                _ => None,
            };
            super::lmk::call(&mut admin, job, share, &mut out).await?;
        }
        Job::AuditVerify => {
            let r = admin
                .verify_audit_trail(pb::VerifyAuditTrailRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            out.push_str(&r.report);
            if r.verdict != "INTACT" {
                print!("{out}");
                return Err(Error::AuditBroken);
            }
        }
        Job::AuditExport { from, to } => {
            let r = admin
                .export_audit_trail(pb::ExportAuditTrailRequest {
                    from_seq: *from,
                    to_seq: *to,
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            for rec in r.records {
                let line = serde_json::json!({
                    "seq": rec.seq,
                    "time_ms": rec.time_ms,
                    "actor": rec.actor,
                    "action": rec.action,
                    "subject": rec.subject,
                    "outcome": rec.outcome,
                    "prev": rec.prev,
                    "hash": rec.hash,
                });
                let _ = writeln!(out, "{line}");
            }
        }
        Job::OfficersList => {
            let list = admin
                .list_officers(pb::ListOfficersRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            for o in list.officers {
                let _ = writeln!(
                    out,
                    "{} {} registered {} by {}{}",
                    o.fingerprint,
                    o.identity,
                    o.registered_ms,
                    o.registered_by.join(" + "),
                    if o.revoked {
                        format!(" REVOKED {} by {}", o.revoked_ms, o.revoked_by.join(" + "))
                    } else {
                        String::new()
                    }
                );
            }
        }
        Job::OfficersRegister { certificate } => {
            let pem = std::fs::read_to_string(certificate).map_err(|source| Error::File {
                path: certificate.clone(),
                source,
            })?;
            let act = pb::request_act_request::Act::RegisterOfficer(pb::RegisterOfficerAct {
                certificate_pem: pem,
            });
            request(&mut admin, act, &mut out).await?;
        }
        Job::OfficersRevoke { fingerprint } => {
            let act = pb::request_act_request::Act::RevokeOfficer(pb::RevokeOfficerAct {
                fingerprint: fingerprint.clone(),
            });
            request(&mut admin, act, &mut out).await?;
        }
        Job::TransportIssue { .. }
        | Job::TransportTakeComponent { .. }
        | Job::TransportShow { .. }
        | Job::EndpointsRevoke { .. } => {
            super::transport::call(&mut admin, job, &mut out).await?;
        }
        Job::RequestsList => {
            let list = admin
                .list_requests(pb::ListRequestsRequest {})
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            for r in list.requests {
                print_request(&mut out, &r);
            }
        }
        Job::RequestsApprove { id } => {
            let a = admin
                .approve_request(pb::RequestRef { id: id.clone() })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            if let Some(r) = &a.request {
                print_request(&mut out, r);
            }
            if let Some(c) = a.ceremony {
                print_ceremony(&mut out, &c);
            }
            if let Some(t) = a.transport_issue {
                super::transport::print_issue(&mut out, &t);
            }
        }
        Job::RequestsReject { id } => {
            let r = admin
                .reject_request(pb::RequestRef { id: id.clone() })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_request(&mut out, &r);
        }
        Job::RootsImport {
            template,
            key,
            level,
            components,
            ministry_psam_permission,
        } => {
            let level = match level {
                RootLevel::National => pb::KeyLevel::National,
                RootLevel::Provincial => pb::KeyLevel::Provincial,
            };
            let target = pb::start_key_ceremony_request::Target::Root(pb::RootTarget {
                template_id: template.clone(),
                key_name: key.clone(),
                level: level.into(),
                ministry_psam_permission: *ministry_psam_permission,
            });
            start(&mut admin, target, *components, &mut out).await?;
        }
        Job::RootsGenerate { template, key } => {
            let act = pb::request_act_request::Act::GenerateRoot(pb::GenerateRootAct {
                template_id: template.clone(),
                key_name: key.clone(),
            });
            request(&mut admin, act, &mut out).await?;
        }
        Job::StationsRegister {
            name,
            region,
            algorithm,
            components,
        }
        | Job::PsamLinesRegister {
            name,
            region,
            algorithm,
            components,
        } => {
            let kind = match job {
                Job::StationsRegister { .. } => pb::EndpointKind::Station,
                _ => pb::EndpointKind::PsamLine,
            };
            let act = pb::request_act_request::Act::RegisterEndpoint(pb::RegisterEndpointAct {
                kind: kind.into(),
                name: name.clone(),
                region: region.clone(),
                transport_algorithm: algorithm.clone(),
                components: *components,
            });
            request(&mut admin, act, &mut out).await?;
        }
        Job::StationsReplace {
            name,
            algorithm,
            components,
        } => {
            let act =
                pb::request_act_request::Act::ReplaceTransportKey(pb::ReplaceTransportKeyAct {
                    kind: pb::EndpointKind::Station.into(),
                    name: name.clone(),
                    transport_algorithm: algorithm.clone(),
                    components: *components,
                });
            request(&mut admin, act, &mut out).await?;
        }
        Job::ComponentSubmit { id } => {
            let Some(Secret::Component(hex, kcv)) = secret else {
                return Err(Error::MissingInput("your component"));
            };
            let c = admin
                .get_key_ceremony(pb::KeyCeremonyRef { id: id.clone() })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            check_kcv(&c.key_family, &hex, &kcv)?;
            let c = admin
                .submit_component(pb::SubmitComponentRequest {
                    ceremony_id: id.clone(),
                    component: Some(pb::Component {
                        hex: hex.to_string(),
                        kcv_hex: kcv.to_string(),
                    }),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_ceremony(&mut out, &c);
        }
        Job::Backup(b) => {
            let share = match secret {
                Some(Secret::Share(share)) => Some(share),
                _ => None,
            };
            crate::ceremony::backup::call(&mut admin, b, share, &mut out).await?;
        }
        Job::CeremonyShow { id } => {
            let c = admin
                .get_key_ceremony(pb::KeyCeremonyRef { id: id.clone() })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            print_ceremony(&mut out, &c);
        }
        Job::KeysList { template } => {
            let keys = admin
                .list_keys(pb::ListKeysRequest {
                    template_id: template.clone(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            for k in keys.keys {
                let level = pb::KeyLevel::try_from(k.level)
                    .map(|l| l.as_str_name())
                    .unwrap_or("?");
                let _ = writeln!(
                    out,
                    "{}/{} {level} {} v{} {} KCV {}",
                    k.template_id,
                    k.key_name,
                    k.region,
                    k.version,
                    if k.active { "active" } else { "inactive" },
                    k.kcv
                        .map(|c| hex::encode_upper(c.value))
                        .unwrap_or_default()
                );
            }
        }
        Job::TemplateLoad { file } => {
            let toml = std::fs::read_to_string(file).map_err(|source| Error::File {
                path: file.clone(),
                source,
            })?;
            let t = admin
                .load_template(pb::LoadTemplateRequest { toml })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(
                out,
                "template {} revision {}: {} keys",
                t.id, t.version, t.keys
            );
        }
        Job::HierarchyDerive { template } => {
            let d = admin
                .derive_hierarchy(pb::DeriveHierarchyRequest {
                    template_id: template.clone(),
                })
                .await
                .map_err(|s| refused(&s))?
                .into_inner();
            let _ = writeln!(out, "{} keys derived", d.keys.len());
        }
        Job::CardsUnblacklist { card_identifier } => {
            let act = pb::request_act_request::Act::UnblacklistCard(pb::UnblacklistCardAct {
                card_identifier: card_identifier.clone(),
            });
            request(&mut admin, act, &mut out).await?;
        }
        Job::KeysRetire { key_id } => {
            let act = pb::request_act_request::Act::RetireKey(pb::RetireKeyAct {
                key_id: key_id.clone(),
            });
            request(&mut admin, act, &mut out).await?;
        }
    }
    Ok(out)
}

/// Checks a custodian's component against the KCV from their paper, before it is sent.
fn check_kcv(family: &str, hex: &str, kcv: &str) -> Result<()> {
    let key = hsm_sim::crypto::SecretKey::from_hex_family(family, hex)?;
    let computed = hsm_sim::crypto::kcv::compute_default(&key)?;
    let given = kcv.trim();
    let matches = given.len() >= 6
        && computed
            .to_hex()
            .get(..given.len())
            .is_some_and(|c| c.eq_ignore_ascii_case(given));
    if matches {
        Ok(())
    } else {
        Err(Error::Hsm(hsm_api::Error::ComponentKcv { index: 1 }))
    }
}

pub(super) async fn request(
    admin: &mut AdminServiceClient<Channel>,
    act: pb::request_act_request::Act,
    out: &mut String,
) -> Result<()> {
    let r = admin
        .request_act(pb::RequestActRequest { act: Some(act) })
        .await
        .map_err(|s| refused(&s))?
        .into_inner();
    print_request(out, &r);
    let _ = writeln!(
        out,
        "another officer approves with: kms-ceremony service … requests-approve {}",
        r.id
    );
    Ok(())
}

async fn start(
    admin: &mut AdminServiceClient<Channel>,
    target: pb::start_key_ceremony_request::Target,
    components: u32,
    out: &mut String,
) -> Result<()> {
    let c = admin
        .start_key_ceremony(pb::StartKeyCeremonyRequest {
            components,
            target: Some(target),
        })
        .await
        .map_err(|s| refused(&s))?
        .into_inner();
    print_ceremony(out, &c);
    let _ = writeln!(
        out,
        "each custodian submits with: kms-ceremony service … component-submit {}",
        c.id
    );
    Ok(())
}

fn print_request(out: &mut String, r: &pb::DualControlRequest) {
    let _ = writeln!(
        out,
        "request {} [{}] {}\n  requested by {} at {} (expires {})",
        r.id, r.state, r.description, r.requested_by, r.requested_ms, r.expires_ms
    );
    if !r.decided_by.is_empty() {
        let _ = writeln!(out, "  {} by {} at {}", r.state, r.decided_by, r.decided_ms);
    }
    if !r.result.is_empty() {
        let _ = writeln!(out, "  result: {}", r.result);
    }
}

pub(super) fn print_ceremony(out: &mut String, c: &pb::KeyCeremony) {
    let _ = writeln!(
        out,
        "ceremony {} [{}] {}: {} of {} components",
        c.id,
        c.state,
        c.description,
        c.custodians.len(),
        c.components
    );
    // A restore ceremony's custodians are recorded with their backup shares' check values.
    let part = if c.description.starts_with("restore ") {
        "backup share check value"
    } else {
        "component KCV"
    };
    for p in &c.custodians {
        let _ = writeln!(
            out,
            "  {} {part} {} at {}",
            p.identity, p.component_kcv, p.at_ms
        );
    }
    if let Some(kcv) = &c.kcv {
        let _ = writeln!(out, "final KCV {}", hex::encode_upper(&kcv.value));
    }
    if !c.failure.is_empty() {
        let _ = writeln!(out, "FAILED: {}", c.failure);
    }
}
