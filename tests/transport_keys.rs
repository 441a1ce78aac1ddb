//! A station's transport key issued by the HSM under dual control, through the real
//! `kms-ceremony` binary over real mTLS, each officer from their own certificate, on the seeded
//! store on disk: one officer asks for a new station's key as two components, another approves
//! (the station is registered in the same write), each custodian takes their one component
//! (printed once; the record and the audit trail carry its KCV only); "at the station" the two
//! components form the key in a second simulator standing for the station's HSM (same KCV), and
//! the station's injected card key, unwrapped with that key, is the chain's. Then a replacement
//! as a TR-31 block under the current key: the block opens under the old key to the new one,
//! and the next card's blocks are under the new key. On the way the refusals: the requester
//! approving, the same custodian twice, a non-officer taking a component, a first registration
//! without approval; the station revoked under dual control gets nothing; and every README code marked `mTLS (transport keys)`. A second test
//! issues a PSAM line's key as TDES components over the API (all taken: `PART_NOT_AVAILABLE`)
//! and checks the line's PSAM key set under it.

use std::collections::BTreeMap;

use hsm_api::{Algorithm, Component, Exportability, Hsm as _, Kcv, KcvMethod, KeySpec, KeyUsage};
use hsm_sim::crypto::{SecretKey, kcv, tr31};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sscard_kms::card::template::KeyLevel;
use sscard_kms::proto::kms::v1 as pb;
use tonic::Code;
use zeroize::Zeroizing;

use crate::ceremonies::{Cli, Files, id_after};
use crate::common::chain::{atr, expected, published, template};
use crate::common::harness::{
    AUDITOR, OFFICER, OFFICER_2, STATION, TestKms, card_identity, error_info, tr31_request,
};

const NEW_STATION: &str = "sscard://station/440100/GZ-09";

/// The component a `transport-take-component` printed to its custodian's terminal.
fn component_shown(stdout: &str) -> String {
    let mut lines = stdout.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with("YOUR COMPONENT"))
        .expect("the component shown");
    lines.next().unwrap().trim().to_owned()
}

/// The KCV after `taken; its KCV ` in a take's record line.
fn component_kcv(stdout: &str) -> String {
    stdout
        .split("taken; its KCV ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// The card's `STK_SSSE` TR-31 block as `station` receives it.
async fn stk_block(kms: &TestKms<LocalHsm>, station: &str) -> String {
    let mut request = tr31_request(card_identity(&published().card[0], &atr()), "ssc-2.0");
    request.key_names = vec!["STK_SSSE".to_owned()];
    let delivered = kms
        .client(station)
        .card
        .inject_card_keys(request)
        .await
        .unwrap()
        .into_inner();
    match &delivered.keys[0].form {
        Some(pb::delivered_key::Form::Tr31Block(b)) => b.clone(),
        other => panic!("not a TR-31 block: {other:?}"),
    }
}

/// The reason GZ-09's injection of a card's keys is refused with.
async fn injection_refused(kms: &TestKms<LocalHsm>) -> String {
    let status = kms
        .client(NEW_STATION)
        .card
        .inject_card_keys(tr31_request(
            card_identity(&published().card[0], &atr()),
            "ssc-2.0",
        ))
        .await
        .unwrap_err();
    error_info(&status).unwrap().reason
}

fn issue_act(
    name: &str,
    region: &str,
    family: &str,
    delivery: pb::issue_transport_key_act::Delivery,
) -> pb::RequestActRequest {
    pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::IssueTransportKey(
            pb::IssueTransportKeyAct {
                kind: pb::EndpointKind::Station.into(),
                name: name.to_owned(),
                region: region.to_owned(),
                transport_algorithm: family.to_owned(),
                delivery: Some(delivery),
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_key_issued_as_components_then_replaced_under_tr31() {
    let kms = TestKms::seeded().await;
    let url = kms.url();
    let files = Files::new(&kms, &[OFFICER, OFFICER_2, AUDITOR, STATION, NEW_STATION]);
    let cli = Cli {
        url: &url,
        files: &files,
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut note = |status: tonic::Status| {
        let code = match status.code() {
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            other => panic!("{other:?}"),
        };
        let info = error_info(&status).unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
        seen.insert(info.reason, code.to_owned());
    };
    let spec = template("ssc-2.0").key("STK_SSSE").unwrap().clone();
    let want = expected(&spec, KeyLevel::Card, "440100", &atr());

    // ---- a first registration without approval is refused; an unregistered station gets
    // nothing.
    let mut a = kms.client(OFFICER).admin;
    let refused = a
        .start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(pb::start_key_ceremony_request::Target::Endpoint(
                pb::EndpointTarget {
                    kind: pb::EndpointKind::Station.into(),
                    name: "GZ-09".to_owned(),
                    region: "440100".to_owned(),
                    transport_algorithm: "aes".to_owned(),
                },
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&refused).unwrap().reason,
        "DUAL_CONTROL_REQUIRED"
    );

    // ---- step 1: officer-1 asks for GZ-09's key as two components.
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &[
                "transport-issue",
                "--kind",
                "station",
                "--name",
                "GZ-09",
                "--region",
                "440100",
                "--algorithm",
                "aes",
                "--components",
                "2",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let issue = id_after(&out, "request");
    let issue = issue.as_str();
    // Nothing is issued before the approval.
    let (ok, _, err) = cli
        .run(OFFICER, &["transport-take-component", issue], "")
        .await;
    assert!(
        !ok && err.contains("TRANSPORT_COMPONENTS_NOT_ISSUED"),
        "{err}"
    );
    let (ok, _, err) = cli.run(OFFICER, &["requests-approve", issue], "").await;
    assert!(!ok && err.contains("REQUESTER_CANNOT_APPROVE"), "{err}");
    assert_eq!(injection_refused(&kms).await, "CALLER_NOT_REGISTERED");

    // ---- step 2: officer-2 approves: the HSM makes the key, the station is registered.
    let (ok, out, err) = cli.run(OFFICER_2, &["requests-approve", issue], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("transport key of GZ-09"), "{out}");
    let record = kms
        .client(OFFICER)
        .admin
        .get_transport_issue(pb::TransportIssueRef {
            request_id: issue.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let key_kcv = hex::encode_upper(&record.kcv.as_ref().unwrap().value);
    assert!(out.contains(&format!("KCV {key_kcv}")), "{out}");
    assert_eq!((record.components, record.tr31_block.as_str()), (2, ""));

    // ---- step 3: each custodian takes one component, shown once, recorded by its KCV.
    let (ok, first, err) = cli
        .run(OFFICER, &["transport-take-component", issue], "")
        .await;
    assert!(ok, "{err}");
    let (c1, k1) = (component_shown(&first), component_kcv(&first));
    let (ok, _, err) = cli
        .run(OFFICER, &["transport-take-component", issue], "")
        .await;
    assert!(!ok && err.contains("SAME_CUSTODIAN_TWICE"), "{err}");
    let (ok, _, err) = cli
        .run(STATION, &["transport-take-component", issue], "")
        .await;
    assert!(
        !ok && err.contains("ROLE_NOT_ALLOWED"),
        "a non-officer: {err}"
    );
    let (ok, second, err) = cli
        .run(OFFICER_2, &["transport-take-component", issue], "")
        .await;
    assert!(ok, "{err}");
    let (c2, k2) = (component_shown(&second), component_kcv(&second));
    assert_ne!(c1, c2);
    for (shown, other) in [(&first, &c2), (&second, &c1)] {
        assert!(!shown.contains(other.as_str()), "another's component shown");
    }
    let (ok, shown, err) = cli.run(OFFICER, &["transport-show", issue], "").await;
    assert!(ok, "{err}");
    assert!(
        shown.contains(OFFICER) && shown.contains(OFFICER_2) && shown.contains(&k1),
        "{shown}"
    );
    assert!(!shown.contains(&c1) && !shown.contains(&c2), "{shown}");

    // ---- at the station: the components form the key in the station's own HSM.
    let station_hsm = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let at_station = station_hsm
        .form_key(
            KeySpec {
                algorithm: Algorithm::Aes128,
                usage: KeyUsage::KeyBlockProtection,
                exportability: Exportability::NonExportable,
            },
            [(&c1, &k1), (&c2, &k2)]
                .into_iter()
                .map(|(c, k)| {
                    Component::new(
                        Zeroizing::new(c.clone()),
                        Kcv::from_parts(KcvMethod::default_for(Algorithm::Aes128), {
                            hex::decode(k).unwrap()
                        }),
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        at_station.kcv.to_hex(),
        key_kcv,
        "the station's key is the issued one"
    );
    // The station's custodians' XOR, to open the blocks here.
    let xor: Vec<u8> = hex::decode(&c1)
        .unwrap()
        .iter()
        .zip(hex::decode(&c2).unwrap())
        .map(|(a, b)| a ^ b)
        .collect();
    let kbpk = SecretKey::new(Algorithm::Aes128, &xor).unwrap();
    assert_eq!(kcv::compute_default(&kbpk).unwrap().to_hex(), key_kcv);

    // ---- the station injects a card's key: it unwraps to the chain's.
    let block = stk_block(&kms, NEW_STATION).await;
    let (_, key) = tr31::unwrap(&kbpk, &block).unwrap();
    assert!(key == want.key, "the card key is not the chain's");
    // Also inside the station's HSM, under its own token of the key.
    let imported = station_hsm
        .import_key(&at_station.token, &block, KeyUsage::CardKey)
        .await
        .unwrap();
    assert_eq!(imported.kcv, kcv::compute_default(&want.key).unwrap());

    // ---- a replacement as a TR-31 block under the current key (dual control again).
    let r = a
        .request_act(issue_act(
            "GZ-09",
            "440100",
            "aes",
            pb::issue_transport_key_act::Delivery::UnderCurrentKey(true),
        ))
        .await
        .unwrap()
        .into_inner();
    let (ok, out, err) = cli
        .run(OFFICER_2, &["requests-approve", r.id.as_str()], "")
        .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("under the key of KCV {key_kcv}")),
        "{out}"
    );
    let (ok, shown, err) = cli
        .run(OFFICER, &["transport-show", r.id.as_str()], "")
        .await;
    assert!(ok, "{err}");
    let next_block = shown.lines().last().unwrap().trim().to_owned();
    let (header, next) = tr31::unwrap(&kbpk, &next_block).unwrap();
    assert_eq!(header.key_usage, "K1");
    let replaced = kms
        .client(OFFICER)
        .admin
        .get_transport_issue(pb::TransportIssueRef {
            request_id: r.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let next_kcv = hex::encode_upper(&replaced.kcv.as_ref().unwrap().value);
    assert_eq!(kcv::compute_default(&next).unwrap().to_hex(), next_kcv);
    assert_ne!(next_kcv, key_kcv);
    // The station's HSM takes the new key under its current one: the same KCV.
    let loaded = station_hsm
        .import_key(&at_station.token, &next_block, KeyUsage::KeyBlockProtection)
        .await
        .unwrap();
    assert_eq!(loaded.kcv.to_hex(), next_kcv);
    // The next card's blocks are under the new key, no longer under the old one.
    let block = stk_block(&kms, NEW_STATION).await;
    assert!(
        tr31::unwrap(&kbpk, &block).is_err(),
        "still under the old key"
    );
    let (_, key) = tr31::unwrap(&next, &block).unwrap();
    assert!(key == want.key);
    // A TR-31 delivery issues no components.
    note(
        a.take_transport_component(pb::TransportIssueRef {
            request_id: r.id.clone(),
        })
        .await
        .unwrap_err(),
    );

    // ---- the refusals of the transport-key codes.
    use pb::issue_transport_key_act::Delivery;
    note(
        a.request_act(issue_act("GZ-09", "440300", "aes", Delivery::Components(2)))
            .await
            .unwrap_err(),
    );
    note(
        a.request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RegisterEndpoint(
                pb::RegisterEndpointAct {
                    kind: pb::EndpointKind::Station.into(),
                    name: "GZ-09".to_owned(),
                    region: "440100".to_owned(),
                    transport_algorithm: "aes".to_owned(),
                    components: 2,
                },
            )),
        })
        .await
        .unwrap_err(),
    );
    let status = a
        .request_act(issue_act(
            "GZ-09",
            "440100",
            "tdes",
            Delivery::UnderCurrentKey(true),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&status).unwrap().reason,
        "TRANSPORT_ALGORITHM_INVALID",
        "a TR-31 delivery is of the current key's family"
    );
    let status = a
        .request_act(issue_act(
            "GZ-77",
            "440100",
            "aes",
            Delivery::UnderCurrentKey(true),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).unwrap().reason, "CALLER_NOT_REGISTERED");

    // ---- the trail: both officers on each approval, each custodian with their KCV, never a
    // component.
    let trail = kms.audit_trail();
    let taken: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "take-transport-component")
        .collect();
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert!(taken[0].actor == OFFICER && taken[0].subject.contains(&k1));
    assert!(taken[1].actor == OFFICER_2 && taken[1].subject.contains(&k2));
    assert!(
        trail
            .iter()
            .all(|r| !r.subject.contains(&c1) && !r.subject.contains(&c2)),
        "a component in the trail"
    );
    let approvals: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "approve-request" && r.subject.contains("GZ-09"))
        .collect();
    assert_eq!(approvals.len(), 2);
    assert!(approvals.iter().all(|r| r.subject.contains(OFFICER)
        && r.subject.contains(OFFICER_2)
        && !r.subject.contains(&next_block)));
    // ---- revocation (dual control): the station gets no key from then on.
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &["endpoints-revoke", "--kind", "station", "--name", "GZ-09"],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let revoke = id_after(&out, "request");
    let (ok, out, err) = cli
        .run(OFFICER_2, &["requests-approve", revoke.as_str()], "")
        .await;
    assert!(ok && out.contains(&next_kcv), "{out} {err}");
    assert_eq!(injection_refused(&kms).await, "CALLER_NOT_REGISTERED");

    let (ok, out, err) = cli.run(AUDITOR, &["audit-verify"], "").await;
    assert!(ok, "{out} {err}");

    // No component in a response's Debug.
    let response = pb::TakeTransportComponentResponse {
        component: c1.clone(),
        component_kcv: k1.clone(),
        ..Default::default()
    };
    let shown = format!("{response:?}");
    assert!(!shown.contains(&c1) && shown.contains(&k1), "{shown}");

    let readme = crate::common::readme::codes_marked("mTLS (transport keys)");
    assert_eq!(
        seen, readme,
        "README's transport-key codes and what the API sent"
    );
}

/// A PSAM line's first transport key issued as two TDES components over the API (a third
/// officer approves; the requester is no custodian here): once both are out a third take is
/// `PART_NOT_AVAILABLE`; the line's PSAM key set is under the key the components form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psam_line_key_issued_as_tdes_components_serves_its_key_set() {
    const OFFICER_3: &str = "sscard://officer/officer-3";
    const LINE: &str = "sscard://psam-line/440000/PSAM-LINE-09";
    let kms = TestKms::seeded().await;
    let mut a = kms.client(OFFICER).admin;
    let r = a
        .request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RegisterOfficer(
                pb::RegisterOfficerAct {
                    certificate_pem: kms.cert(OFFICER_3).cert_pem,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    kms.client(OFFICER_2)
        .admin
        .approve_request(pb::RequestRef { id: r.id })
        .await
        .unwrap();

    let mut act = issue_act(
        "PSAM-LINE-09",
        "440000",
        "tdes",
        pb::issue_transport_key_act::Delivery::Components(2),
    );
    if let Some(pb::request_act_request::Act::IssueTransportKey(i)) = &mut act.act {
        i.kind = pb::EndpointKind::PsamLine.into();
    }
    let r = a.request_act(act).await.unwrap().into_inner();
    let approved = kms
        .client(OFFICER_3)
        .admin
        .approve_request(pb::RequestRef { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let issue = approved.transport_issue.unwrap();
    assert_eq!(
        (issue.kind, issue.algorithm.as_str(), issue.components),
        (pb::EndpointKind::PsamLine as i32, "tdes", 2)
    );
    let take = |who: &str| {
        let mut admin = kms.client(who).admin;
        let id = r.id.clone();
        async move {
            admin
                .take_transport_component(pb::TransportIssueRef { request_id: id })
                .await
        }
    };
    let one = take(OFFICER_2).await.unwrap().into_inner();
    let two = take(OFFICER_3).await.unwrap().into_inner();
    assert_eq!((one.index, two.index), (1, 2));
    let refused = take(OFFICER).await.unwrap_err();
    assert_eq!(error_info(&refused).unwrap().reason, "PART_NOT_AVAILABLE");
    assert_eq!(
        two.issue.as_ref().unwrap().custodians.len(),
        2,
        "both custodians on record"
    );

    let xor: Vec<u8> = hex::decode(&one.component)
        .unwrap()
        .iter()
        .zip(hex::decode(&two.component).unwrap())
        .map(|(a, b)| a ^ b)
        .collect();
    let kbpk = SecretKey::new(Algorithm::Tdes2, &xor).unwrap();
    assert_eq!(
        kcv::compute_default(&kbpk).unwrap().value(),
        issue.kcv.as_ref().unwrap().value.as_slice()
    );
    let mut line = kms.client(LINE);
    line.psam
        .register_psams(pb::RegisterPsamsRequest {
            serials: vec!["GZPSAM29999".to_owned()],
            region: "440100".to_owned(),
            template_id: "ssc-2.0".to_owned(),
            psam_profile: String::new(),
        })
        .await
        .unwrap();
    let set = line
        .psam
        .get_psam_key_set(pb::GetPsamKeySetRequest {
            serial: "GZPSAM29999".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!set.keys.is_empty());
    for k in &set.keys {
        let Some(pb::delivered_key::Form::Tr31Block(block)) = &k.form else {
            panic!("{}: not a TR-31 block", k.key_name);
        };
        assert!(block.starts_with('B'), "TDES line key: version B");
        let (_, key) = tr31::unwrap(&kbpk, block).unwrap();
        assert_eq!(
            kcv::compute_default(&key).unwrap().value(),
            k.kcv.as_ref().unwrap().value.as_slice(),
            "{}",
            k.key_name
        );
    }
}
