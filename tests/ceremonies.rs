//! A full key ceremony against a running service, driven through the real `kms-ceremony`
//! binary with every secret on stdin, each officer from their own certificate: `hsm init` hands
//! three custodians one share file each; two unseal; two custodians bring the national root's
//! components; the province's master-key root is generated under dual control; a station's
//! transport key is formed from two custodians' components; the station then injects a card's
//! key, which unwraps to the independently computed chain. On the way every refusal of the
//! issue: the same officer twice (component, share, approval), a wrong component KCV (at the
//! custodian's terminal, and in the HSM), an expired and a reused approval, too few shares, a
//! revoked officer, a non-officer and an unregistered certificate. A second test provokes every
//! reason code README marks `mTLS (ceremonies)` over the API and holds the table to it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hsm_api::{Algorithm, Hsm as _};
use hsm_sim::crypto::SecretKey;
use hsm_sim::crypto::kcv;
use hsm_sim::crypto::tr31;
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sscard_kms::card::template::KeyLevel;
use sscard_kms::proto::kms::v1 as pb;

use crate::common::chain::{atr, expected, published, template};
use crate::common::harness::{
    AUDITOR, OFFICER, OFFICER_2, PROVINCIAL_REGISTRAR, REGISTRAR, STATION, TestKms, card_identity,
    error_info, tr31_request,
};

const OFFICER_3: &str = "sscard://officer/officer-3";
const TEMPLATE_TOML: &str = include_str!("../templates/ssc-2.0.toml");

/// Certificates and keys of the test PKI written out for the command line, per identity.
pub(crate) struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub(crate) fn new<H: hsm_api::Hsm>(kms: &TestKms<H>, identities: &[&str]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), kms.pki().ca_pem()).unwrap();
        for uri in identities {
            let pair = kms.cert(uri);
            let name = file_name(uri);
            std::fs::write(dir.path().join(format!("{name}.pem")), &pair.cert_pem).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.key")),
                pair.key_pem.as_bytes(),
            )
            .unwrap();
        }
        Files { dir }
    }

    fn cert(&self, uri: &str) -> PathBuf {
        self.dir.path().join(format!("{}.pem", file_name(uri)))
    }
}

fn file_name(uri: &str) -> String {
    uri.trim_start_matches("sscard://").replace('/', "_")
}

/// Runs `kms-ceremony` with `args`, writing `stdin` to it.
pub(crate) fn ceremony(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kms-ceremony"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kms-ceremony service <connection as uri> <job…>`, off the test's runtime.
async fn service(
    url: &str,
    files: &Files,
    uri: &str,
    job: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    let name = file_name(uri);
    let dir = files.dir.path().to_owned();
    let mut args: Vec<String> = vec![
        "service".into(),
        "--server".into(),
        url.to_owned(),
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
    ];
    args.extend(job.iter().map(|s| (*s).to_owned()));
    let stdin = stdin.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ceremony(&args, &stdin)
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `kms-ceremony service …` against one running service.
pub(crate) struct Cli<'a> {
    pub(crate) url: &'a str,
    pub(crate) files: &'a Files,
}

impl Cli<'_> {
    pub(crate) async fn run(&self, uri: &str, job: &[&str], stdin: &str) -> (bool, String, String) {
        service(self.url, self.files, uri, job, stdin).await
    }
}

/// The id after `word ` in the first line that has it (`ceremony C000001 …`, `request R…`).
pub(crate) fn id_after(text: &str, word: &str) -> String {
    text.split_whitespace()
        .skip_while(|w| *w != word)
        .nth(1)
        .unwrap_or_else(|| panic!("no {word} id in {text}"))
        .to_owned()
}

/// Two components of the key `key_hex` with their KCVs (3 bytes, hex).
fn split(key_hex: &str, family: &str) -> [(String, String); 2] {
    let key = hex::decode(key_hex).unwrap();
    let c1 = vec![0x5Au8; key.len()];
    let c2: Vec<u8> = key.iter().zip(&c1).map(|(a, b)| a ^ b).collect();
    let kcv3 = |c: &[u8]| {
        let k = SecretKey::from_hex_family(family, &hex::encode_upper(c)).unwrap();
        kcv::compute_default(&k).unwrap().to_hex()[..6].to_owned()
    };
    [
        (hex::encode_upper(&c1), kcv3(&c1)),
        (hex::encode_upper(&c2), kcv3(&c2)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ceremony_on_stdin_with_every_refusal() {
    // ---- hsm init: one share file per custodian; the record shows check values only.
    let hsm_dir = tempfile::tempdir().unwrap();
    let shares_dir = tempfile::tempdir().unwrap();
    let state = hsm_dir.path().join("hsm");
    let init = ceremony(
        &[
            "hsm",
            "init",
            "--state-dir",
            state.to_str().unwrap(),
            "--threshold",
            "2",
            "--custodian",
            "officer-1",
            "--custodian",
            "officer-2",
            "--custodian",
            "officer-3",
            "--share-dir",
            shares_dir.path().to_str().unwrap(),
        ],
        "",
    );
    assert!(init.status.success(), "{init:?}");
    let record = String::from_utf8(init.stdout).unwrap();
    let share = |name: &str| {
        std::fs::read_to_string(shares_dir.path().join(format!("{name}.share")))
            .unwrap()
            .trim()
            .to_owned()
    };
    for name in ["officer-1", "officer-2", "officer-3"] {
        assert!(
            !record.contains(&share(name)),
            "a share on the record: {record}"
        );
        assert!(record.contains(name), "{record}");
    }
    // Without a terminal and without --share-dir, nothing is created.
    let refused = ceremony(
        &[
            "hsm",
            "init",
            "--state-dir",
            hsm_dir.path().join("other").to_str().unwrap(),
            "--threshold",
            "2",
            "--custodian",
            "a",
            "--custodian",
            "b",
        ],
        "",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--share-dir"));

    // ---- the service on that HSM, sealed; officer-1, officer-2 and the auditor registered.
    let hsm = Arc::new(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(state.clone()),
            ..Default::default()
        })
        .unwrap(),
    );
    let kms = TestKms::empty(Arc::clone(&hsm)).await;
    let url = kms.url();
    let files = Files::new(
        &kms,
        &[
            OFFICER,
            OFFICER_2,
            OFFICER_3,
            AUDITOR,
            STATION,
            "sscard://officer/officer-9",
        ],
    );
    let cli = Cli {
        url: &url,
        files: &files,
    };

    // ---- officer-3 registered under dual control: requested by 1, approved by 2.
    let cert3 = files.cert(OFFICER_3).display().to_string();
    let cert3 = cert3.as_str();
    let (ok, out, err) = cli
        .run(OFFICER, &["officers-register", "--certificate", cert3], "")
        .await;
    assert!(ok, "{err}");
    let request = id_after(&out, "request");
    let request = request.as_str();
    let (ok, _, err) = cli.run(OFFICER, &["requests-approve", request], "").await;
    assert!(!ok && err.contains("REQUESTER_CANNOT_APPROVE"), "{err}");
    let (ok, out, err) = cli.run(OFFICER_2, &["requests-approve", request], "").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("approved by sscard://officer/officer-2"),
        "{out}"
    );
    let (ok, _, err) = cli.run(OFFICER_2, &["requests-approve", request], "").await;
    assert!(
        !ok && err.contains("REQUEST_NOT_PENDING"),
        "a reused approval: {err}"
    );

    // ---- unseal: one share is too few; the same custodian twice is refused; two unseal.
    let (ok, out, err) = cli
        .run(OFFICER_3, &["unseal"], &(share("officer-3") + "\n"))
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("1/2") && !out.contains("operational"), "{out}");
    let (_, out, _) = cli.run(OFFICER_3, &["status"], "").await;
    assert!(out.contains("HSM sealed"), "too few shares: {out}");
    let (ok, _, err) = cli
        .run(OFFICER_3, &["unseal"], &(share("officer-1") + "\n"))
        .await;
    assert!(!ok && err.contains("SAME_CUSTODIAN_TWICE"), "{err}");
    let (ok, out, err) = cli
        .run(OFFICER, &["unseal"], &(share("officer-1") + "\n"))
        .await;
    assert!(ok && out.contains("HSM operational"), "{out} {err}");

    // The template is loaded (not a key ceremony).
    let mut admin = kms.client(OFFICER).admin;
    admin
        .load_template(pb::LoadTemplateRequest {
            toml: TEMPLATE_TOML.to_owned(),
        })
        .await
        .unwrap();

    // ---- the national root of STK_SSSE from two custodians' components.
    let t = template("ssc-2.0");
    let spec = t.key("STK_SSSE").unwrap().clone();
    let keys = published();
    let root_hex = keys
        .national_root
        .root(spec.hsm_algorithm(), "STK_SSSE")
        .unwrap()
        .to_owned();
    let root = SecretKey::from_hex(spec.hsm_algorithm(), &root_hex).unwrap();
    let [(c1, k1), (c2, k2)] = split(&root_hex, "tdes");
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &[
                "roots-import",
                "--template",
                "ssc-2.0",
                "--key",
                "STK_SSSE",
                "--level",
                "national",
                "--components",
                "2",
            ],
            "",
        )
        .await;
    assert!(ok, "{err}");
    let root_ceremony = id_after(&out, "ceremony");
    let root_ceremony = root_ceremony.as_str();
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &["component-submit", root_ceremony],
            &format!("{c1}\n{k1}\n"),
        )
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("1 of 2"), "{out}");
    assert!(!out.contains(&c1), "a component on the record");
    // The same officer twice.
    let (ok, _, err) = cli
        .run(
            OFFICER,
            &["component-submit", root_ceremony],
            &format!("{c2}\n{k2}\n"),
        )
        .await;
    assert!(!ok && err.contains("SAME_CUSTODIAN_TWICE"), "{err}");
    // A wrong KCV from paper: refused at the custodian's terminal, nothing sent.
    let (ok, _, err) = cli
        .run(
            OFFICER_2,
            &["component-submit", root_ceremony],
            &format!("{c2}\n{k1}\n"),
        )
        .await;
    assert!(!ok && err.contains("KCV"), "{err}");
    let (ok, out, err) = cli
        .run(
            OFFICER_2,
            &["component-submit", root_ceremony],
            &format!("{c2}\n{k2}\n"),
        )
        .await;
    assert!(ok, "{err}");
    let root_kcv = kcv::compute_default(&root).unwrap().to_hex();
    assert!(out.contains(&format!("final KCV {root_kcv}")), "{out}");
    // Every custodian reads the same final KCV.
    let (_, shown, _) = cli
        .run(OFFICER, &["ceremony-show", root_ceremony], "")
        .await;
    assert!(shown.contains(&format!("final KCV {root_kcv}")), "{shown}");
    assert!(
        shown.contains(OFFICER) && shown.contains(OFFICER_2),
        "{shown}"
    );

    // ---- the province's master-key root, generated under dual control; an expired request
    // dies first.
    kms.kms().set_approval_ttl(Duration::ZERO);
    let (ok, out, _) = cli
        .run(
            OFFICER,
            &[
                "roots-generate",
                "--template",
                "ssc-2.0",
                "--key",
                "MK_SSSE",
            ],
            "",
        )
        .await;
    assert!(ok);
    let expired = id_after(&out, "request");
    let expired = expired.as_str();
    let (ok, _, err) = cli.run(OFFICER_2, &["requests-approve", expired], "").await;
    assert!(!ok && err.contains("REQUEST_EXPIRED"), "{err}");
    let (ok, _, err) = cli.run(OFFICER_2, &["requests-approve", expired], "").await;
    assert!(
        !ok && err.contains("REQUEST_NOT_PENDING"),
        "an expired request is dead: {err}"
    );
    kms.kms().set_approval_ttl(Duration::from_secs(900));
    let (_, out, _) = cli
        .run(
            OFFICER,
            &[
                "roots-generate",
                "--template",
                "ssc-2.0",
                "--key",
                "MK_SSSE",
            ],
            "",
        )
        .await;
    let generate = id_after(&out, "request");
    let generate = generate.as_str();
    let (ok, out, err) = cli
        .run(OFFICER_3, &["requests-approve", generate], "")
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("MK_SSSE") && out.contains("KCV"), "{out}");

    admin
        .derive_hierarchy(pb::DeriveHierarchyRequest {
            template_id: "ssc-2.0".to_owned(),
        })
        .await
        .unwrap();

    // ---- the Guangzhou station's transport key from two custodians' components.
    let kbpk = SecretKey::from_hex(Algorithm::Aes128, &"3C".repeat(16)).unwrap();
    let [(t1, tk1), (t2, tk2)] = split(&"3C".repeat(16), "aes");
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &[
                "stations-register",
                "--name",
                "GZ-01",
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
    // A station's first transport key needs a second officer's approval.
    let register = id_after(&out, "request");
    let (ok, out, err) = cli
        .run(OFFICER_2, &["requests-approve", register.as_str()], "")
        .await;
    assert!(ok, "{err}");
    let station_ceremony = id_after(&out, "ceremony");
    let station_ceremony = station_ceremony.as_str();
    let (ok, _, err) = cli
        .run(
            OFFICER_3,
            &["component-submit", station_ceremony],
            &format!("{t1}\n{tk1}\n"),
        )
        .await;
    assert!(ok, "{err}");
    let (ok, out, err) = cli
        .run(
            OFFICER,
            &["component-submit", station_ceremony],
            &format!("{t2}\n{tk2}\n"),
        )
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("[complete]"), "{out}");

    // ---- a card registered and accepted; the station's key for it checks out.
    let card = card_identity(&keys.card[0], &atr());
    let mut registrar = kms.client(REGISTRAR).registry;
    registrar
        .register_card(pb::RegisterCardRequest {
            card: Some(card.clone()),
            template_id: "ssc-2.0".to_owned(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    // Acceptance is the province's.
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .accept_card(pb::CardRef {
            card_identifier: card.card_identifier.clone(),
        })
        .await
        .unwrap();
    let mut request = tr31_request(card, "ssc-2.0");
    request.key_names = vec!["STK_SSSE".to_owned()];
    let delivered = kms
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
    let want = expected(&spec, KeyLevel::Card, "440100", &atr());
    assert!(key == want.key, "the card key is not the chain's");

    // ---- revocation, a non-officer and an unregistered certificate.
    let (_, list, _) = cli.run(AUDITOR, &["officers-list"], "").await;
    let fp3 = list
        .lines()
        .find(|l| l.contains(OFFICER_3))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let fp3 = fp3.as_str();
    let (_, out, _) = cli
        .run(OFFICER, &["officers-revoke", "--fingerprint", fp3], "")
        .await;
    let revoke = id_after(&out, "request");
    let revoke = revoke.as_str();
    let (ok, _, err) = cli.run(OFFICER_2, &["requests-approve", revoke], "").await;
    assert!(ok, "{err}");
    let (ok, _, err) = cli.run(OFFICER_3, &["status"], "").await;
    assert!(!ok && err.contains("OFFICER_REVOKED"), "{err}");
    let (ok, _, err) = cli.run(STATION, &["status"], "").await;
    assert!(!ok && err.contains("ROLE_NOT_ALLOWED"), "{err}");
    let (ok, _, err) = cli.run("sscard://officer/officer-9", &["status"], "").await;
    assert!(!ok && err.contains("OFFICER_NOT_REGISTERED"), "{err}");

    // ---- the auditor verifies the trail through the service's HSM and exports it.
    let (ok, out, err) = cli.run(OFFICER, &["self-test"], "").await;
    assert!(
        ok && out.contains("self-test passed; HSM operational"),
        "{out} {err}"
    );
    let (ok, out, err) = cli.run(AUDITOR, &["audit-verify"], "").await;
    assert!(ok, "{out} {err}");
    assert_eq!(out.lines().last(), Some("INTACT"), "{out}");
    let macs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("seals "))
        .and_then(|l| l.split_once(" (")?.1.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(macs > 0, "seals checked by the HSM: {out}");
    let (ok, out, err) = cli
        .run(AUDITOR, &["audit-export", "--from", "1", "--to", "5"], "")
        .await;
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["seq"], 1);
    // The first records are the start's: the factor binding of existing cards, then the
    // officers' enrolment.
    assert!(
        lines.iter().any(|l| l["action"] == "bootstrap-officers"),
        "{out}"
    );

    // ---- the trail names both officers of each dual-control act and every custodian.
    let trail = kms.audit_trail();
    let approvals: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "approve-request")
        .collect();
    assert_eq!(approvals.len(), 4, "{approvals:?}");
    for a in &approvals {
        assert!(
            a.subject.contains("requested by sscard://officer/")
                && a.subject.contains("approved by sscard://officer/"),
            "{a:?}"
        );
    }
    let complete: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "complete-key-ceremony")
        .collect();
    assert_eq!(complete.len(), 2);
    assert!(complete[0].subject.contains(OFFICER) && complete[0].subject.contains(OFFICER_2));
    for name in ["officer-1", "officer-2", "officer-3"] {
        let s = share(name);
        assert!(
            trail.iter().all(|r| !r.subject.contains(&s)),
            "a share in the trail"
        );
    }
    // Sealed by one officer: every key operation stops until two custodians unseal again.
    let (ok, out, err) = cli.run(OFFICER, &["seal"], "").await;
    assert!(ok && out.contains("HSM sealed"), "{out} {err}");
    drop(hsm);
}

/// The codes README marks `mTLS (ceremonies)`, with their gRPC status.
fn readme_ceremony_codes() -> BTreeMap<String, String> {
    crate::common::readme::codes_marked("mTLS (ceremonies)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ceremony_reason_code_arrives_over_the_api() {
    let kms = TestKms::seeded().await;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut note = |status: tonic::Status| {
        let info = error_info(&status).unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
        let code = format!("{:?}", status.code());
        let mut name = String::new();
        for (i, c) in code.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        seen.insert(info.reason, name);
    };
    let mut a = kms.client(OFFICER).admin;
    let mut b = kms.client(OFFICER_2).admin;
    let generate = || pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::GenerateRoot(
            pb::GenerateRootAct {
                template_id: "ssc-2.0".to_owned(),
                key_name: "MK_MF".to_owned(),
            },
        )),
    };
    // Dual control and split knowledge: the one-call forms are refused.
    note(
        a.generate_root_key(pb::GenerateRootKeyRequest {
            template_id: "ssc-2.0".to_owned(),
            key_name: "MK_MF".to_owned(),
        })
        .await
        .unwrap_err(),
    );
    note(
        a.import_vendor_transport_key(pb::ImportVendorTransportKeyRequest {
            template_id: "ssc-2.0".to_owned(),
            components: vec![],
        })
        .await
        .unwrap_err(),
    );
    let r = a.request_act(generate()).await.unwrap().into_inner();
    note(
        a.approve_request(pb::RequestRef { id: r.id.clone() })
            .await
            .unwrap_err(),
    );
    let approved = b
        .approve_request(pb::RequestRef { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        approved.key.is_some_and(|k| k.version == 2),
        "a rotation: version 2"
    );
    note(
        b.approve_request(pb::RequestRef { id: r.id.clone() })
            .await
            .unwrap_err(),
    );
    note(
        b.approve_request(pb::RequestRef {
            id: "R999999".to_owned(),
        })
        .await
        .unwrap_err(),
    );
    kms.kms().set_approval_ttl(Duration::ZERO);
    let r = a.request_act(generate()).await.unwrap().into_inner();
    note(
        b.approve_request(pb::RequestRef { id: r.id })
            .await
            .unwrap_err(),
    );
    kms.kms().set_approval_ttl(Duration::from_secs(900));
    // The registry.
    let station_pem = kms.cert(STATION).cert_pem;
    note(
        a.request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RegisterOfficer(
                pb::RegisterOfficerAct {
                    certificate_pem: station_pem,
                },
            )),
        })
        .await
        .unwrap_err(),
    );
    note(
        a.request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RegisterOfficer(
                pb::RegisterOfficerAct {
                    certificate_pem: kms.cert(OFFICER_2).cert_pem,
                },
            )),
        })
        .await
        .unwrap_err(),
    );
    note(
        a.request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RevokeOfficer(
                pb::RevokeOfficerAct {
                    fingerprint: "00".repeat(32),
                },
            )),
        })
        .await
        .unwrap_err(),
    );
    note(
        kms.client("sscard://officer/officer-9")
            .admin
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err(),
    );
    // A revoked certificate.
    let list = a
        .list_officers(pb::ListOfficersRequest {})
        .await
        .unwrap()
        .into_inner();
    let auditor = list
        .officers
        .iter()
        .find(|o| o.identity == AUDITOR)
        .unwrap()
        .fingerprint
        .clone();
    let r = a
        .request_act(pb::RequestActRequest {
            act: Some(pb::request_act_request::Act::RevokeOfficer(
                pb::RevokeOfficerAct {
                    fingerprint: auditor,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    b.approve_request(pb::RequestRef { id: r.id })
        .await
        .unwrap();
    note(
        kms.client(AUDITOR)
            .admin
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err(),
    );
    // Component ceremonies.
    let root = || {
        pb::start_key_ceremony_request::Target::Root(pb::RootTarget {
            template_id: "ssc-2.0".to_owned(),
            key_name: "STK_SSSE".to_owned(),
            level: pb::KeyLevel::National.into(),
            ministry_psam_permission: false,
        })
    };
    note(
        a.start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 1,
            target: Some(root()),
        })
        .await
        .unwrap_err(),
    );
    note(
        a.start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(pb::start_key_ceremony_request::Target::Endpoint(
                pb::EndpointTarget {
                    kind: pb::EndpointKind::Station.into(),
                    name: "GZ-01".to_owned(),
                    region: "440100".to_owned(),
                    transport_algorithm: "aes".to_owned(),
                },
            )),
        })
        .await
        .unwrap_err(),
    );
    note(
        a.submit_component(pb::SubmitComponentRequest {
            ceremony_id: "C999999".to_owned(),
            component: Some(pb::Component {
                hex: "11".repeat(16),
                kcv_hex: "000000".to_owned(),
            }),
        })
        .await
        .unwrap_err(),
    );
    let c = a
        .start_key_ceremony(pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(root()),
        })
        .await
        .unwrap()
        .into_inner();
    let part = |hex: &str| {
        let key = SecretKey::from_hex(Algorithm::Tdes2, hex).unwrap();
        pb::Component {
            hex: hex.to_owned(),
            kcv_hex: kcv::compute_default(&key).unwrap().to_hex(),
        }
    };
    let submit = |component| pb::SubmitComponentRequest {
        ceremony_id: c.id.clone(),
        component: Some(component),
    };
    a.submit_component(submit(part(&"1F".repeat(16))))
        .await
        .unwrap();
    note(
        a.submit_component(submit(part(&"2F".repeat(16))))
            .await
            .unwrap_err(),
    );
    // A wrong KCV is refused by the HSM when its component arrives (here the last one): the
    // ceremony fails, naming the custodian and nobody's component value.
    let mut wrong = part(&"2F".repeat(16));
    wrong.kcv_hex = "ABCDEF".to_owned();
    let status = b.submit_component(submit(wrong)).await.unwrap_err();
    assert_eq!(
        error_info(&status).unwrap().reason,
        "COMPONENT_KCV_MISMATCH"
    );
    let failed = a
        .get_key_ceremony(pb::KeyCeremonyRef { id: c.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, "failed");
    assert!(failed.failure.contains(OFFICER_2), "{}", failed.failure);
    note(
        a.submit_component(submit(part(&"3F".repeat(16))))
            .await
            .unwrap_err(),
    );
    note(
        kms.client(OFFICER)
            .admin
            .export_audit_trail(pb::ExportAuditTrailRequest {
                from_seq: 0,
                to_seq: 10,
            })
            .await
            .unwrap_err(),
    );
    // Un-blacklisting under dual control: refused for a card not on the list; a blacklisted
    // card goes back to `registered`.
    let demo = published().card[0].card_identifier.clone();
    let unblacklist = || pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::UnblacklistCard(
            pb::UnblacklistCardAct {
                card_identifier: demo.clone(),
            },
        )),
    };
    note(a.request_act(unblacklist()).await.unwrap_err());
    let mut registrar = kms.client(REGISTRAR).registry;
    registrar
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: demo.clone(),
            reason: "lost".to_owned(),
        })
        .await
        .unwrap();
    let r = a.request_act(unblacklist()).await.unwrap().into_inner();
    b.approve_request(pb::RequestRef { id: r.id })
        .await
        .unwrap();
    let card = registrar
        .get_card(pb::CardRef {
            card_identifier: demo.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(card.status, pb::CardStatus::Registered as i32, "{card:?}");

    let readme = readme_ceremony_codes();
    assert_eq!(
        seen, readme,
        "README's ceremony codes and what the API sent differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_hsm_on_the_published_test_lmk_unless_told_dangerous() {
    let kms = TestKms::seeded().await;
    let ceremony = sscard_kms::server::config::CeremonyConfig::default();
    let refused = sscard_kms::server::prepare_ceremonies(kms.kms(), &ceremony, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            sscard_kms::Error::FailedPrecondition {
                reason: sscard_kms::error::Refusal::PublishedTestLmk
            }
        ),
        "{refused:?}"
    );
    sscard_kms::server::prepare_ceremonies(kms.kms(), &ceremony, true)
        .await
        .unwrap();
    // An HSM with its own LMK passes without the option.
    let state = tempfile::tempdir().unwrap();
    let own = Arc::new(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(state.path().to_owned()),
            ..Default::default()
        })
        .unwrap(),
    );
    own.init_lmk(2, 2).await.unwrap();
    let sealed = TestKms::empty(own).await;
    sscard_kms::server::prepare_ceremonies(sealed.kms(), &ceremony, false)
        .await
        .unwrap();
}
