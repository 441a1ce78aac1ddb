//! Root backup and restore as m-of-n shares (issue 10, DOMAIN.md §12), over real mTLS with
//! separate officer certificates and the store on disk: the seeded service backs up the
//! province's master-key root (`MK_SSSE`) and the national root of `STK_SSSE` 2-of-3 to three
//! custodians, each taking one share from their own certificate; a FRESH service — a new data
//! directory, a new HSM under another LMK — restores both from two custodians' shares each,
//! with their versions and KCVs (an open restore surviving a restart of the service); its station then injects a card's `STK_SSSE`, which unwraps to
//! the independently computed chain (`tests/common/chain.rs`). On the way the refusals: the same
//! custodian twice (take and submit), a mistyped share, a share of another backup, too few
//! shares, a forged share (KCV), the requester approving its own act, a non-officer; and every
//! README code marked `mTLS (backup)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hsm_api::Algorithm;
use hsm_sim::crypto::{SecretKey, kcv, tr31};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sha2::{Digest, Sha256};
use sscard_kms::card::template::KeyLevel;
use sscard_kms::proto::kms::v1 as pb;
use tonic::Code;

use crate::ceremonies::{Cli, Files, ceremony, id_after};
use crate::common::chain::{atr, expected, published, station_kbpk, template};
use crate::common::harness::{
    OFFICER, OFFICER_2, PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms, card_identity,
    error_info, tr31_request,
};

const OFFICER_3: &str = "sscard://officer/officer-3";
const TEMPLATE_TOML: &str = include_str!("../templates/ssc-2.0.toml");
const PROVINCE_ROOT: &str = "ssc-2.0/MK_SSSE/province/440000/00000001";
const NATIONAL_ROOT: &str = "ssc-2.0/STK_SSSE/national/000000/00000001";

type Kms = TestKms<LocalHsm>;

/// A share as `backup-take-share` printed it: the share alone on the line after its banner,
/// and the record line's backup name, KCV and check value.
struct CliShare {
    share: String,
    backup: String,
    kcv: String,
    check_value: String,
}

impl CliShare {
    fn read(out: &str) -> CliShare {
        let mut lines = out.lines();
        lines.find(|l| l.starts_with("YOUR SHARE")).unwrap();
        let share = lines.next().unwrap().to_owned();
        let record = lines.find(|l| l.contains("check value")).unwrap();
        let word_after = |w: &str| id_after(record, w);
        CliShare {
            share,
            backup: word_after("backup"),
            kcv: word_after("(KCV").trim_end_matches(");").to_owned(),
            check_value: word_after("value:"),
        }
    }
}

/// The reason code of a refused call.
fn reason<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    let status = r.unwrap_err();
    error_info(&status)
        .map(|i| i.reason)
        .unwrap_or_else(|| format!("no ErrorInfo: {status:?}"))
}

fn act(act: pb::request_act_request::Act) -> pb::RequestActRequest {
    pb::RequestActRequest { act: Some(act) }
}

fn backup_act(key_id: &str, threshold: u32, shares: u32) -> pb::RequestActRequest {
    act(pb::request_act_request::Act::BackupRoot(
        pb::BackupRootAct {
            key_id: key_id.to_owned(),
            threshold,
            shares,
        },
    ))
}

/// Officer 1 asks, officer 2 approves; the approval.
async fn dual_control(kms: &Kms, request: pb::RequestActRequest) -> pb::ApproveRequestResponse {
    let r = kms
        .client(OFFICER)
        .admin
        .request_act(request)
        .await
        .unwrap()
        .into_inner();
    kms.client(OFFICER_2)
        .admin
        .approve_request(pb::RequestRef { id: r.id })
        .await
        .unwrap()
        .into_inner()
}

async fn take(kms: &Kms, who: &str, request_id: &str) -> pb::TakeBackupShareResponse {
    kms.client(who)
        .admin
        .take_backup_share(pb::TakeBackupShareRequest {
            request_id: request_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A backup of `key_id` 2-of-3 taken by officers 1, 2 and 3; the request id and the shares.
async fn backed_up(kms: &Kms, key_id: &str) -> (String, Vec<pb::TakeBackupShareResponse>) {
    let approved = dual_control(kms, backup_act(key_id, 2, 3)).await;
    let request = approved.request.unwrap();
    assert!(request.result.contains("2-of-3"), "{request:?}");
    let mut shares = Vec::new();
    for who in [OFFICER, OFFICER_2, OFFICER_3] {
        shares.push(take(kms, who, &request.id).await);
    }
    (request.id, shares)
}

fn restore_act(
    share: &pb::TakeBackupShareResponse,
    key_name: &str,
    level: KeyLevel,
) -> pb::RequestActRequest {
    let level = match level {
        KeyLevel::National => pb::KeyLevel::National,
        _ => pb::KeyLevel::Provincial,
    };
    act(pb::request_act_request::Act::RestoreRoot(
        pb::RestoreRootAct {
            template_id: "ssc-2.0".to_owned(),
            key_name: key_name.to_owned(),
            level: level.into(),
            version: 1,
            kcv: hex::encode_upper(&share.kcv.as_ref().unwrap().value),
            backup: share.backup.clone(),
            threshold: share.threshold,
            ministry_psam_permission: false,
        },
    ))
}

async fn submit(
    kms: &Kms,
    who: &str,
    ceremony: &str,
    share: &str,
) -> Result<tonic::Response<pb::KeyCeremony>, tonic::Status> {
    kms.client(who)
        .admin
        .submit_backup_share(pb::SubmitBackupShareRequest {
            ceremony_id: ceremony.to_owned(),
            share: share.to_owned(),
        })
        .await
}

/// `share` with one digit of its value changed (its check value no longer matches).
fn mistyped(share: &str) -> String {
    let mut s = share.to_owned();
    let at = s.len() - 12;
    let digit = if &s[at..=at] == "0" { "1" } else { "0" };
    s.replace_range(at..=at, digit);
    s
}

/// `share` with its value changed and its check value computed again: well-formed, so only the
/// rebuilt key's KCV can tell (the format of `hsm_sim`'s backup shares, written out here).
fn forged(share: &str) -> String {
    let (body, _) = share.rsplit_once('-').unwrap();
    let (head, value) = body.rsplit_once('-').unwrap();
    let value: String = value.chars().rev().collect();
    let body = format!("{head}-{value}");
    let mut hash = Sha256::new();
    hash.update(b"sscard-kms/root-backup-share/v1");
    hash.update(body.as_bytes());
    format!("{body}-{}", hex::encode_upper(&hash.finalize()[..4]))
}

/// Two components of `key` (a mask and `key ⊕ mask`) with their KCVs.
fn components(key: &SecretKey) -> Vec<pb::Component> {
    let mask = vec![0x5Au8; key.len()];
    let other: Vec<u8> = key
        .secret_bytes()
        .iter()
        .zip(&mask)
        .map(|(a, b)| a ^ b)
        .collect();
    [mask, other]
        .into_iter()
        .map(|c| {
            let part = SecretKey::new(key.algorithm(), &c).unwrap();
            pb::Component {
                hex: hex::encode_upper(&c),
                kcv_hex: kcv::compute_default(&part).unwrap().to_hex(),
            }
        })
        .collect()
}

/// The KCVs of a template's key records, by (key, level, region, version).
async fn kcvs(kms: &Kms) -> BTreeMap<(String, i32, String, u32), Vec<u8>> {
    kms.client(OFFICER)
        .admin
        .list_keys(pb::ListKeysRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| {
            (
                (k.key_name, k.level, k.region, k.version),
                k.kcv.unwrap().value,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_backed_up_to_three_custodians_is_restored_by_two_into_a_fresh_service() {
    let kms = TestKms::seeded().await;
    // A third custodian, registered under dual control.
    dual_control(
        &kms,
        act(pb::request_act_request::Act::RegisterOfficer(
            pb::RegisterOfficerAct {
                certificate_pem: kms.cert(OFFICER_3).cert_pem,
            },
        )),
    )
    .await;

    // ---- the backups: each custodian takes their one share, from their own certificate.
    let (province_request, province) = backed_up(&kms, PROVINCE_ROOT).await;
    assert_eq!(
        reason(
            kms.client(OFFICER)
                .admin
                .take_backup_share(pb::TakeBackupShareRequest {
                    request_id: province_request.clone(),
                })
                .await
        ),
        "SAME_CUSTODIAN_TWICE"
    );
    assert_eq!(
        reason(
            kms.client(STATION)
                .admin
                .take_backup_share(pb::TakeBackupShareRequest {
                    request_id: province_request.clone(),
                })
                .await
        ),
        "ROLE_NOT_ALLOWED"
    );
    // The national root through the real `kms-ceremony`, each officer from their own
    // certificate; each share printed once to its custodian.
    let url = kms.url();
    let files = Files::new(&kms, &[OFFICER, OFFICER_2, OFFICER_3]);
    let cli = Cli {
        url: &url,
        files: &files,
    };
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &[
                "roots-backup",
                "--key-id",
                NATIONAL_ROOT,
                "--threshold",
                "2",
                "--shares",
                "3",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let national_request = id_after(&out, "request");
    let (ok, out, err) = cli
        .run(OFFICER_2, &["requests-approve", &national_request], "")
        .await;
    assert!(ok && out.contains("2-of-3"), "{out} {err}");
    let mut national = Vec::new();
    for who in [OFFICER, OFFICER_2, OFFICER_3] {
        let (ok, out, err) = cli
            .run(who, &["backup-take-share", &national_request], "")
            .await;
        assert!(ok, "{err}");
        national.push(CliShare::read(&out));
    }
    let (ok, _, err) = cli
        .run(OFFICER, &["backup-take-share", &national_request], "")
        .await;
    assert!(!ok && err.contains("SAME_CUSTODIAN_TWICE"), "{err}");

    let before = kcvs(&kms).await;
    for (i, s) in province.iter().enumerate() {
        assert_eq!(s.index as usize, i + 1);
        assert_eq!((s.threshold, s.shares), (2, 3));
        assert_eq!(s.key_id, PROVINCE_ROOT);
        assert!(s.share.ends_with(&s.check_value), "{s:?}");
        assert!(s.share.contains(&s.backup));
        // The share never shows in a Debug of its message.
        assert!(!format!("{s:?}").contains(&s.share));
    }
    let trail = kms.audit_trail();
    let took: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "take-backup-share")
        .collect();
    assert_eq!(took.len(), 6);
    for (r, s) in took.iter().zip(&province) {
        assert!(r.subject.contains(&s.check_value), "{r:?}");
        assert!(
            r.subject
                .contains(&hex::encode_upper(&s.kcv.as_ref().unwrap().value))
        );
        assert!(!r.subject.contains(&s.share));
    }
    for (r, s) in took[3..].iter().zip(&national) {
        assert!(r.subject.contains(&s.check_value), "{r:?}");
        assert!(r.subject.contains(&s.kcv), "{r:?}");
        assert!(!r.subject.contains(&s.share));
    }
    // A key version the store holds is never restored over.
    assert_eq!(
        reason(
            kms.client(OFFICER)
                .admin
                .request_act(restore_act(&province[0], "MK_SSSE", KeyLevel::Province))
                .await
        ),
        "RESTORE_KEY_EXISTS"
    );

    // ---- a fresh service: a new data directory, a new HSM under another LMK.
    let hsm = LocalHsm::open(LocalHsmConfig::default()).unwrap();
    hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    let mut fresh = TestKms::empty(Arc::new(hsm)).await;
    fresh
        .client(OFFICER)
        .admin
        .load_template(pb::LoadTemplateRequest {
            toml: TEMPLATE_TOML.to_owned(),
        })
        .await
        .unwrap();
    // The requester cannot approve their own restore.
    let asked = fresh
        .client(OFFICER)
        .admin
        .request_act(restore_act(&province[0], "MK_SSSE", KeyLevel::Province))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reason(
            fresh
                .client(OFFICER)
                .admin
                .approve_request(pb::RequestRef {
                    id: asked.id.clone()
                })
                .await
        ),
        "REQUESTER_CANNOT_APPROVE"
    );
    let opened = fresh
        .client(OFFICER_2)
        .admin
        .approve_request(pb::RequestRef { id: asked.id })
        .await
        .unwrap()
        .into_inner();
    let ceremony = opened.ceremony.unwrap();
    assert_eq!((ceremony.components, ceremony.state.as_str()), (2, "open"));

    // Refused shares leave the restore as it was: mistyped, of another backup, by a
    // non-officer; the first good share, then the same custodian again.
    for bad in [mistyped(&province[1].share), national[0].share.clone()] {
        assert_eq!(
            reason(submit(&fresh, OFFICER, &ceremony.id, &bad).await),
            "BACKUP_SHARE_REFUSED"
        );
    }
    assert_eq!(
        reason(submit(&fresh, STATION, &ceremony.id, &province[2].share).await),
        "ROLE_NOT_ALLOWED"
    );
    let one = submit(&fresh, OFFICER, &ceremony.id, &province[2].share)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.state.as_str(), one.custodians.len()), ("open", 1));
    assert_eq!(one.custodians[0].component_kcv, province[2].check_value);
    // The open restore survives a restart of the service: its partial restore is in the store.
    fresh.close().await;
    let fresh_hsm = Arc::clone(fresh.hsm());
    fresh.reopen(fresh_hsm).await;
    assert_eq!(
        reason(submit(&fresh, OFFICER, &ceremony.id, &province[0].share).await),
        "SAME_CUSTODIAN_TWICE"
    );
    // Too few shares: nothing is restored yet.
    assert!(kcvs(&fresh).await.is_empty());
    let done = submit(&fresh, OFFICER_2, &ceremony.id, &province[0].share)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, "complete", "{done:?}");
    assert_eq!(
        done.kcv.unwrap().value,
        province[0].kcv.as_ref().unwrap().value
    );

    // The national root from two other custodians' shares, through `kms-ceremony`, each
    // share on stdin.
    let fresh_url = fresh.url();
    let fresh_files = Files::new(&fresh, &[OFFICER, OFFICER_2]);
    let fresh_cli = Cli {
        url: &fresh_url,
        files: &fresh_files,
    };
    let n = &national[0];
    let (ok, out, err) = fresh_cli
        .run(
            OFFICER,
            &[
                "roots-restore",
                "--template",
                "ssc-2.0",
                "--key",
                "STK_SSSE",
                "--level",
                "national",
                "--version",
                "1",
                "--kcv",
                &n.kcv,
                "--backup",
                &n.backup,
                "--threshold",
                "2",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let restore_request = id_after(&out, "request");
    let (ok, out, err) = fresh_cli
        .run(OFFICER_2, &["requests-approve", &restore_request], "")
        .await;
    assert!(ok, "{err}");
    let c = id_after(&out, "ceremony");
    let (ok, out, err) = fresh_cli
        .run(
            OFFICER_2,
            &["backup-submit-share", &c],
            &format!("{}\n", national[1].share),
        )
        .await;
    assert!(ok && out.contains("[open]"), "{out} {err}");
    let (ok, out, err) = fresh_cli
        .run(
            OFFICER,
            &["backup-submit-share", &c],
            &format!("{}\n", national[2].share),
        )
        .await;
    assert!(ok && out.contains("[complete]"), "{out} {err}");
    assert!(out.contains(&format!("final KCV {}", n.kcv)), "{out}");
    assert!(out.contains("backup share check value"), "{out}");
    // No share on the command line, in the record output or the logs.
    assert!(national.iter().all(|s| !out.contains(&s.share)));

    // The restored roots, their versions and KCVs, as in the original store; the hierarchy
    // below them derived again gives the same KCVs.
    fresh
        .client(OFFICER)
        .admin
        .derive_hierarchy(pb::DeriveHierarchyRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap();
    let after = kcvs(&fresh).await;
    assert!(after.len() > 2, "{after:?}");
    for (key, value) in &after {
        assert_eq!(before.get(key), Some(value), "{key:?}");
    }

    // ---- the station of the fresh service: a card's STK_SSSE checks out against the chain.
    let kbpk = station_kbpk();
    fresh
        .ceremony(
            pb::start_key_ceremony_request::Target::Endpoint(pb::EndpointTarget {
                kind: pb::EndpointKind::Station.into(),
                name: "GZ-01".to_owned(),
                region: "440100".to_owned(),
                transport_algorithm: "aes".to_owned(),
            }),
            components(&kbpk),
        )
        .await;
    let keys = published();
    let card = card_identity(&keys.card[0], &atr());
    fresh
        .client(REGISTRAR)
        .registry
        .register_card(pb::RegisterCardRequest {
            card: Some(card.clone()),
            template_id: "ssc-2.0".to_owned(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    fresh
        .client(PROVINCIAL_REGISTRAR)
        .registry
        .accept_card(pb::CardRef {
            card_identifier: card.card_identifier.clone(),
        })
        .await
        .unwrap();
    let mut request = tr31_request(card, "ssc-2.0");
    request.key_names = vec!["STK_SSSE".to_owned()];
    let delivered = fresh
        .client(STATION)
        .card
        .inject_card_keys(request)
        .await
        .unwrap()
        .into_inner();
    let Some(pb::delivered_key::Form::Tr31Block(block)) = &delivered.keys[0].form else {
        panic!("not a TR-31 block");
    };
    let (_, key) = tr31::unwrap(&kbpk, block).unwrap();
    let spec = template("ssc-2.0").key("STK_SSSE").unwrap().clone();
    let want = expected(&spec, KeyLevel::Card, "440100", &atr());
    assert!(key == want.key, "the card key is not the chain's");
    assert_eq!(want.key.algorithm(), Algorithm::Tdes2);

    let trail = fresh.audit_trail();
    assert_eq!(
        trail
            .iter()
            .filter(|r| r.action == "restore-root-key")
            .count(),
        2
    );
    assert!(
        trail
            .iter()
            .all(|r| province.iter().all(|s| !r.subject.contains(&s.share)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backup_reason_code_arrives_over_the_api() {
    let kms = TestKms::seeded().await;
    let mut seen = BTreeMap::new();
    let mut note = |s: tonic::Status| {
        let code = match s.code() {
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            other => panic!("{other:?} {s:?}"),
        };
        seen.insert(error_info(&s).unwrap().reason, code.to_owned());
    };
    let mut admin = kms.client(OFFICER).admin;
    // A city key is derived again, not escrowed; a split out of range.
    note(
        admin
            .request_act(backup_act("ssc-2.0/STK_SSSE/city/440100/00000001", 2, 3))
            .await
            .unwrap_err(),
    );
    note(
        admin
            .request_act(backup_act(NATIONAL_ROOT, 1, 3))
            .await
            .unwrap_err(),
    );
    note(
        admin
            .take_backup_share(pb::TakeBackupShareRequest {
                request_id: "R999999".to_owned(),
            })
            .await
            .unwrap_err(),
    );
    // A 2-of-2 backup, restored into this same store under another version number.
    let approved = dual_control(&kms, backup_act(NATIONAL_ROOT, 2, 2)).await;
    let id = approved.request.unwrap().id;
    let first = take(&kms, OFFICER, &id).await;
    let second = take(&kms, OFFICER_2, &id).await;
    let mut restore = restore_act(&first, "STK_SSSE", KeyLevel::National);
    note(admin.request_act(restore.clone()).await.unwrap_err());
    // The Ministry's PSAM permission is a national root's only.
    let mut provincial = restore_act(&first, "MK_SSSE", KeyLevel::Province);
    if let Some(pb::request_act_request::Act::RestoreRoot(r)) = &mut provincial.act {
        r.ministry_psam_permission = true;
    }
    assert_eq!(
        reason(admin.request_act(provincial).await),
        "PSAM_PERMISSION_ONLY_NATIONAL"
    );
    if let Some(pb::request_act_request::Act::RestoreRoot(r)) = &mut restore.act {
        r.version = 7;
    }
    let opened = dual_control(&kms, restore).await;
    let c = opened.ceremony.unwrap().id;
    // A component to a restore ceremony.
    note(
        admin
            .submit_component(pb::SubmitComponentRequest {
                ceremony_id: c.clone(),
                component: Some(pb::Component {
                    hex: "11".repeat(16),
                    kcv_hex: "000000".to_owned(),
                }),
            })
            .await
            .unwrap_err(),
    );
    note(
        submit(&kms, OFFICER, &c, &mistyped(&first.share))
            .await
            .unwrap_err(),
    );
    submit(&kms, OFFICER, &c, &first.share).await.unwrap();
    // A forged share of the right form: the rebuilt key's KCV fails the restore.
    note(
        submit(&kms, OFFICER_2, &c, &forged(&second.share))
            .await
            .unwrap_err(),
    );
    let failed = kms
        .client(OFFICER)
        .admin
        .get_key_ceremony(pb::KeyCeremonyRef { id: c })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, "failed", "{failed:?}");
    // A backup share to a component ceremony.
    let components = kms
        .client(OFFICER)
        .admin
        .start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(pb::start_key_ceremony_request::Target::VendorTransport(
                pb::VendorTransportTarget {
                    template_id: "ssc-2.0".to_owned(),
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    note(
        submit(&kms, OFFICER, &components.id, &second.share)
            .await
            .unwrap_err(),
    );

    let marked = crate::common::readme::codes_marked("mTLS (backup)");
    assert_eq!(seen, marked);
}

/// Each step of a backup and a restore explains itself in `--help`.
#[test]
fn every_backup_job_has_its_help() {
    for (job, says) in [
        ("roots-backup", "Step 1 of a backup"),
        ("backup-take-share", "Step 2 of a backup"),
        ("roots-restore", "Step 1 of a restore"),
        ("backup-submit-share", "Step 2 of a restore"),
    ] {
        let out = ceremony(&["service", job, "--help"], "");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && text.contains(says), "{job}: {text}");
    }
}
