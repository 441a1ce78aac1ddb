//! Every reason code the API can produce arrives in the status details over real mTLS: a
//! `google.rpc.ErrorInfo` of domain `sscard-kms` with the code as its `reason`, beside the gRPC
//! code README's table gives. The codes README marks `mTLS` are exactly the ones this test
//! provokes, so the table and the test cannot drift apart; the ones marked `unit` are tested on
//! the mapping in `src/server/status.rs`, and `HSM_UNAVAILABLE` in `remote_hsm`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hsm_api::Algorithm;
use hsm_api::Hsm as _;
use hsm_sim::crypto::SecretKey;
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sscard_kms::proto::kms::v1 as pb;
use tonic::{Code, Response, Status};

use crate::common::applicants::{applicant, csv, submit, submit_chunked};
use crate::common::chain::{atr, card_number, card_number_bad_check, published, ssn};
use crate::common::harness::{
    OFFICER, OFFICER_2, PROVINCIAL_REGISTRAR, PSAM_LINE, REGISTRAR, STATION, TestKms,
    card_identity, error_info, sm_request, tr31_request,
};

/// The codes README's reason-code table marks as tested here (`mTLS`), with their gRPC status.
fn readme_api_codes() -> BTreeMap<String, String> {
    crate::common::readme::reason_codes()
        .into_iter()
        .filter(|row| row.tested == "mTLS")
        .map(|row| (row.code, row.status))
        .collect()
}

/// `PermissionDenied` → `PERMISSION_DENIED`, as README names gRPC codes.
fn status_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Collects what each refused call carried; failures are gathered, not fatal one by one, so a
/// run names every code that did not arrive.
#[derive(Default)]
struct Seen {
    codes: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl Seen {
    async fn expect<T: std::fmt::Debug>(
        &mut self,
        code: Code,
        reason: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) {
        match call.await {
            Ok(r) => self
                .failures
                .push(format!("{reason}: the call succeeded: {r:?}")),
            Err(status) => {
                let info = error_info(&status);
                match info {
                    Some(info) if info.reason == reason && status.code() == code => {
                        self.codes.insert(info.reason, status_name(code));
                    }
                    other => self.failures.push(format!(
                        "{reason} ({code:?}): got {:?} {:?} with {other:?}",
                        status.code(),
                        status.message()
                    )),
                }
            }
        }
    }
}

/// A change to a card's identity that makes it invalid.
type Edit<'a> = dyn Fn(&mut pb::CardIdentity) + 'a;

/// A Guangzhou card that is not one of the demo cards.
fn new_card(serial: &str, number_body: &str, ssn17: &str) -> pb::CardIdentity {
    pb::CardIdentity {
        card_identifier: format!("440100D156000005{serial}"),
        card_number: card_number(number_body),
        social_security_number: ssn(ssn17),
        atr: atr(),
    }
}

fn register(card: &pb::CardIdentity, template_id: &str) -> pb::RegisterCardRequest {
    pb::RegisterCardRequest {
        card: Some(card.clone()),
        template_id: template_id.to_owned(),
        replaces_card_identifier: String::new(),
    }
}

fn card_ref(card: &pb::CardIdentity) -> pb::CardRef {
    pb::CardRef {
        card_identifier: card.card_identifier.clone(),
    }
}

/// A TDES-2 component with its KCV (as a custodian would read it from paper).
fn component(hex: &str) -> pb::Component {
    pb::Component {
        hex: hex.to_owned(),
        kcv_hex: hsm_sim::crypto::kcv::compute_default(
            &SecretKey::from_hex(Algorithm::Tdes2, hex).unwrap(),
        )
        .unwrap()
        .to_hex(),
    }
}

fn xor_hex(a: &str, b: &str) -> String {
    let (a, b) = (hex::decode(a).unwrap(), hex::decode(b).unwrap());
    hex::encode_upper(a.iter().zip(&b).map(|(x, y)| x ^ y).collect::<Vec<u8>>())
}

/// A component ceremony of two custodians for the vendor transport key of `ssc-2.0`.
fn vendor_ceremony() -> pb::StartKeyCeremonyRequest {
    pb::StartKeyCeremonyRequest {
        components: 2,
        target: Some(pb::start_key_ceremony_request::Target::VendorTransport(
            pb::VendorTransportTarget {
                template_id: "ssc-2.0".to_owned(),
            },
        )),
    }
}

/// A component ceremony of two custodians for a new Guangzhou station's transport key.
fn endpoint_ceremony(name: &str, family: &str) -> pb::StartKeyCeremonyRequest {
    pb::StartKeyCeremonyRequest {
        components: 2,
        target: Some(pb::start_key_ceremony_request::Target::Endpoint(
            pb::EndpointTarget {
                kind: pb::EndpointKind::Station.into(),
                name: name.to_owned(),
                region: "440100".to_owned(),
                transport_algorithm: family.to_owned(),
            },
        )),
    }
}

fn component_submission(id: &str, component: pb::Component) -> pb::SubmitComponentRequest {
    pb::SubmitComponentRequest {
        ceremony_id: id.to_owned(),
        component: Some(component),
    }
}

/// A dual-control request to generate a provincial root.
fn generate_root(template_id: &str, key_name: &str) -> pb::RequestActRequest {
    pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::GenerateRoot(
            pb::GenerateRootAct {
                template_id: template_id.to_owned(),
                key_name: key_name.to_owned(),
            },
        )),
    }
}

/// The ssc-2.0 template under another id: loaded, but no root, hierarchy or vendor key yet.
fn copy_of_ssc_2_0(id: &str) -> String {
    let toml = sscard_kms::card::template::SSC_2_0;
    assert!(toml.contains("\nid = \"ssc-2.0\"\n"));
    toml.replace("\nid = \"ssc-2.0\"\n", &format!("\nid = \"{id}\"\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_code_reachable_from_the_api_arrives_in_the_details() {
    let kms = TestKms::seeded().await;
    let mut seen = Seen::default();
    let mut station = kms.client(STATION);
    let mut registrar = kms.client(REGISTRAR);
    let mut province = kms.client(PROVINCIAL_REGISTRAR);
    let mut officer = kms.client(OFFICER);
    let mut officer_2 = kms.client(OFFICER_2);
    let mut line = kms.client(PSAM_LINE);
    let demo = &published().card[0];
    let atr = atr();
    let gz_card = card_identity(demo, &atr);
    let inject = |card: &pb::CardIdentity| tr31_request(card.clone(), "ssc-2.0");

    // ---- permission denied
    seen.expect(
        Code::PermissionDenied,
        "ROLE_NOT_ALLOWED",
        station.admin.get_status(pb::GetStatusRequest {}),
    )
    .await;
    let mut shenzhen = kms.client("sscard://station/440300/SZ-01");
    seen.expect(
        Code::PermissionDenied,
        "OUTSIDE_CALLER_REGION",
        shenzhen.card.inject_card_keys(inject(&gz_card)),
    )
    .await;
    // The province's certificate for a station registered in Guangzhou.
    let mut misplaced = kms.client("sscard://station/440000/GZ-01");
    seen.expect(
        Code::PermissionDenied,
        "ENDPOINT_REGION_MISMATCH",
        misplaced.card.inject_card_keys(inject(&gz_card)),
    )
    .await;
    line.psam
        .register_psams(pb::RegisterPsamsRequest {
            serials: vec!["GZPSAMCODES1".to_owned()],
            region: "440100".to_owned(),
            template_id: "ssc-2.0".to_owned(),
            psam_profile: String::new(),
        })
        .await
        .unwrap();
    let mut other_line = kms.client("sscard://psam-line/440000/PSAM-LINE-02");
    seen.expect(
        Code::PermissionDenied,
        "PSAM_OF_ANOTHER_LINE",
        other_line.psam.get_psam_key_set(pb::GetPsamKeySetRequest {
            serial: "GZPSAMCODES1".to_owned(),
        }),
    )
    .await;

    // ---- the registry and the card's state
    let mut unregistered = kms.client("sscard://station/440100/GZ-99");
    seen.expect(
        Code::FailedPrecondition,
        "CALLER_NOT_REGISTERED",
        unregistered.card.inject_card_keys(inject(&gz_card)),
    )
    .await;
    let card = new_card("00000000000C0001", "GZ300001", "44010319920202123");
    registrar
        .registry
        .register_card(register(&card, "ssc-2.0"))
        .await
        .unwrap();
    seen.expect(
        Code::FailedPrecondition,
        "CARD_NOT_ACCEPTED",
        station.card.inject_card_keys(inject(&card)),
    )
    .await;
    province
        .registry
        .accept_card(card_ref(&card))
        .await
        .unwrap();
    registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: card.card_identifier.clone(),
            reason: "lost".to_owned(),
        })
        .await
        .unwrap();
    seen.expect(
        Code::FailedPrecondition,
        "CARD_BLACKLISTED",
        station.card.inject_card_keys(inject(&card)),
    )
    .await;
    let mut other_number = gz_card.clone();
    other_number.card_number = card_number("GZ399999");
    // A card whose data differ from the registry's gets the answer of an unknown card.
    seen.expect(
        Code::NotFound,
        "NO_MATCHING_CARD",
        station.card.inject_card_keys(inject(&other_number)),
    )
    .await;
    seen.expect(
        Code::FailedPrecondition,
        "CARD_TEMPLATE_MISMATCH",
        station
            .card
            .inject_card_keys(tr31_request(gz_card.clone(), "ssc-3.0")),
    )
    .await;
    station
        .card
        .inject_card_keys(inject(&gz_card))
        .await
        .unwrap();
    let mut other_chip = gz_card.clone();
    *other_chip.atr.last_mut().unwrap() ^= 0x01;
    seen.expect(
        Code::FailedPrecondition,
        "ATR_MISMATCH",
        station.card.inject_card_keys(inject(&other_chip)),
    )
    .await;

    // ---- a template loaded without its hierarchy, then with it but without a vendor key
    officer
        .admin
        .load_template(pb::LoadTemplateRequest {
            toml: copy_of_ssc_2_0("ssc-2.0-codes"),
        })
        .await
        .unwrap();
    let fresh = new_card("00000000000C0002", "GZ300002", "44010319930303123");
    registrar
        .registry
        .register_card(register(&fresh, "ssc-2.0-codes"))
        .await
        .unwrap();
    province
        .registry
        .accept_card(card_ref(&fresh))
        .await
        .unwrap();
    seen.expect(
        Code::FailedPrecondition,
        "HIERARCHY_NOT_DERIVED",
        station
            .card
            .inject_card_keys(tr31_request(fresh.clone(), "ssc-2.0-codes")),
    )
    .await;
    // The master-key root under dual control: one officer asks, another approves.
    let asked = officer
        .admin
        .request_act(generate_root("ssc-2.0-codes", "MK_MF"))
        .await
        .unwrap()
        .into_inner();
    officer_2
        .admin
        .approve_request(pb::RequestRef { id: asked.id })
        .await
        .unwrap();
    officer
        .admin
        .derive_hierarchy(pb::DeriveHierarchyRequest {
            template_id: "ssc-2.0-codes".to_owned(),
        })
        .await
        .unwrap();
    seen.expect(
        Code::FailedPrecondition,
        "VENDOR_TRANSPORT_KEY_MISSING",
        station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(fresh.clone()),
                template_id: "ssc-2.0-codes".to_owned(),
                challenge: vec![0; 8],
            }),
    )
    .await;

    // ---- administration
    seen.expect(
        Code::FailedPrecondition,
        "TEMPLATE_REVISION_NOT_NEWER",
        officer.admin.load_template(pb::LoadTemplateRequest {
            toml: sscard_kms::card::template::SSC_2_0.to_owned(),
        }),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "TEMPLATE_INVALID",
        officer.admin.load_template(pb::LoadTemplateRequest {
            toml: "id = \"x\"\nversion = \"one\"\n".to_owned(),
        }),
    )
    .await;
    seen.expect(
        Code::FailedPrecondition,
        "ROOT_NOT_PROVINCIAL",
        officer
            .admin
            .request_act(generate_root("ssc-2.0", "STK_SSSE")),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "TEMPLATE_KEY_NOT_FOUND",
        officer
            .admin
            .request_act(generate_root("ssc-2.0", "NO_SUCH_KEY")),
    )
    .await;
    let root_with = |level: pb::KeyLevel, key_name: &str, ministry_psam_permission: bool| {
        pb::StartKeyCeremonyRequest {
            components: 2,
            target: Some(pb::start_key_ceremony_request::Target::Root(
                pb::RootTarget {
                    template_id: "ssc-2.0".to_owned(),
                    key_name: key_name.to_owned(),
                    level: level as i32,
                    ministry_psam_permission,
                },
            )),
        }
    };
    let root = |level: pb::KeyLevel, key_name: &str| root_with(level, key_name, false);
    seen.expect(
        Code::InvalidArgument,
        "ROOT_LEVEL_INVALID",
        officer
            .admin
            .start_key_ceremony(root(pb::KeyLevel::City, "STK_SSSE")),
    )
    .await;
    // The zero value of an enum is "unset", never a level.
    seen.expect(
        Code::InvalidArgument,
        "FIELD_REQUIRED",
        officer
            .admin
            .start_key_ceremony(root(pb::KeyLevel::Unspecified, "STK_SSSE")),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "NATIONAL_ROOT_NOT_ALLOWED",
        officer
            .admin
            .start_key_ceremony(root(pb::KeyLevel::National, "MK_MF")),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "PSAM_PERMISSION_ONLY_NATIONAL",
        officer
            .admin
            .start_key_ceremony(root_with(pb::KeyLevel::Provincial, "STK_SSSE", true)),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "TRANSPORT_ALGORITHM_INVALID",
        officer
            .admin
            .start_key_ceremony(endpoint_ceremony("GZ-03", "des")),
    )
    .await;

    // ---- components: checked by the service, then by the HSM as each arrives (each a
    // ceremony of two custodians: officer-1's component, then officer-2's)
    let k1 = "0123456789ABCDEFFEDCBA9876543210";
    let k2 = "F0E1D2C3B4A5968778695A4B3C2D1E0F";
    let vendor = |first: pb::Component| {
        let mut one = officer.admin.clone();
        async move {
            let c = one
                .start_key_ceremony(vendor_ceremony())
                .await
                .unwrap()
                .into_inner();
            one.submit_component(component_submission(&c.id, first))
                .await
                .unwrap();
            c.id
        }
    };
    let id = vendor(component(k1)).await;
    seen.expect(
        Code::InvalidArgument,
        "NOT_HEX",
        officer_2.admin.submit_component(component_submission(
            &id,
            pb::Component {
                hex: k2.to_owned(),
                kcv_hex: "not hex".to_owned(),
            },
        )),
    )
    .await;
    // A component of the wrong length is refused by the HSM when it arrives.
    let mut short = officer.admin.clone();
    let c = short
        .start_key_ceremony(vendor_ceremony())
        .await
        .unwrap()
        .into_inner();
    seen.expect(
        Code::InvalidArgument,
        "KEY_LENGTH_INVALID",
        short.submit_component(component_submission(
            &c.id,
            pb::Component {
                hex: k1[..16].to_owned(),
                kcv_hex: "000000".to_owned(),
            },
        )),
    )
    .await;
    let mut wrong_kcv = component(k1);
    wrong_kcv.kcv_hex = "000000".to_owned();
    let id = vendor(component(k2)).await;
    seen.expect(
        Code::InvalidArgument,
        "COMPONENT_KCV_MISMATCH",
        officer_2
            .admin
            .submit_component(component_submission(&id, wrong_kcv)),
    )
    .await;
    // Two components whose XOR repeats its first half: K1 = K2 is single DES in disguise.
    let repeating = "1F2E3D4C5B6A79881F2E3D4C5B6A7988";
    let id = vendor(component(k1)).await;
    seen.expect(
        Code::InvalidArgument,
        "WEAK_KEY",
        officer_2.admin.submit_component(component_submission(
            &id,
            component(&xor_hex(k1, repeating)),
        )),
    )
    .await;

    // ---- PSAM lines
    let psams = |serials: Vec<&str>| pb::RegisterPsamsRequest {
        serials: serials.into_iter().map(str::to_owned).collect(),
        region: "440100".to_owned(),
        template_id: "ssc-2.0".to_owned(),
        psam_profile: String::new(),
    };
    // A city's PSAMs take the city profile; an unknown profile is no profile.
    seen.expect(
        Code::InvalidArgument,
        "PSAM_PROFILE_REGION_MISMATCH",
        line.psam.register_psams(pb::RegisterPsamsRequest {
            psam_profile: "province-wide".to_owned(),
            ..psams(vec!["PROFILEPSAM1"])
        }),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "PSAM_PROFILE_NOT_FOUND",
        line.psam.register_psams(pb::RegisterPsamsRequest {
            psam_profile: "kiosk".to_owned(),
            ..psams(vec!["PROFILEPSAM1"])
        }),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "SERIAL_COUNT_OUT_OF_RANGE",
        line.psam.register_psams(psams(Vec::new())),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "SERIAL_MALFORMED",
        line.psam.register_psams(psams(vec!["GZ-PSAM"])),
    )
    .await;
    seen.expect(
        Code::AlreadyExists,
        "PSAM_SERIAL_ALREADY_EXISTS",
        line.psam.register_psams(psams(vec!["GZPSAMCODES1"])),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "PSAM_NOT_FOUND",
        line.psam.get_psam_key_set(pb::GetPsamKeySetRequest {
            serial: "NOSUCHPSAM".to_owned(),
        }),
    )
    .await;

    // ---- requests a station gets wrong
    let mut no_delivery = inject(&gz_card);
    no_delivery.delivery = pb::DeliveryForm::Unspecified as i32;
    seen.expect(
        Code::InvalidArgument,
        "FIELD_REQUIRED",
        station.card.inject_card_keys(no_delivery),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "CHALLENGES_REQUIRED",
        station
            .card
            .inject_card_keys(sm_request(gz_card.clone(), "ssc-2.0", &[])),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "DATA_LENGTH_INVALID",
        station.card.inject_card_keys(sm_request(
            gz_card.clone(),
            "ssc-2.0",
            &[("MK_DF03", vec![0; 3])],
        )),
    )
    .await;
    let unknown = new_card("00000000000C0003", "GZ300003", "44010319940404123");
    seen.expect(
        Code::NotFound,
        "NO_MATCHING_CARD",
        station.card.inject_card_keys(inject(&unknown)),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "CARD_NOT_FOUND",
        province.registry.accept_card(card_ref(&unknown)),
    )
    .await;

    // ---- the registry review of applicant files
    seen.expect(
        Code::PermissionDenied,
        "PROVINCE_ONLY",
        registrar.registry.accept_card(card_ref(&unknown)),
    )
    .await;
    let mut long_name = applicant("440100", "RC", 1);
    long_name.name = "欧阳".repeat(8);
    let mut bad_check = applicant("440100", "RC", 2);
    let last = if bad_check.ssn.ends_with('1') {
        '2'
    } else {
        '1'
    };
    bad_check.ssn = format!("{}{last}", &bad_check.ssn[..17]);
    let file = csv(&[applicant("440100", "RC", 0), long_name, bad_check]);
    let batch = submit(&mut registrar.registry, file.as_bytes())
        .await
        .unwrap()
        .into_inner();
    seen.expect(
        Code::InvalidArgument,
        "APPLICANT_FILE_UNREADABLE",
        submit(&mut registrar.registry, b"ssn,name\n"),
    )
    .await;
    seen.expect(
        Code::InvalidArgument,
        "BATCH_ID_MALFORMED",
        submit_chunked(
            &mut registrar.registry,
            file.as_bytes(),
            "not an id",
            pb::ApplicantFileEncoding::Unspecified,
            1000,
        ),
    )
    .await;
    let other = csv(&[applicant("440100", "RC", 3)]);
    seen.expect(
        Code::AlreadyExists,
        "APPLICANT_BATCH_ALREADY_EXISTS",
        submit_chunked(
            &mut registrar.registry,
            other.as_bytes(),
            &batch.batch_id,
            pb::ApplicantFileEncoding::Unspecified,
            1000,
        ),
    )
    .await;
    seen.expect(
        Code::PermissionDenied,
        "CITY_REGISTRAR_ONLY",
        submit(&mut province.registry, file.as_bytes()),
    )
    .await;
    let mut shenzhen_registrar = kms.client("sscard://registrar/440300/SZ-REG-01");
    seen.expect(
        Code::PermissionDenied,
        "BATCH_OF_ANOTHER_CITY",
        submit(&mut shenzhen_registrar.registry, file.as_bytes()),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "APPLICANT_BATCH_NOT_FOUND",
        province
            .registry
            .get_applicant_batch(pb::GetApplicantBatchRequest {
                batch_id: "no-such-batch".to_owned(),
            }),
    )
    .await;
    let row = |line: u64| pb::AcceptApplicantRowRequest {
        batch_id: batch.batch_id.clone(),
        line,
        note: String::new(),
    };
    seen.expect(
        Code::NotFound,
        "APPLICANT_ROW_NOT_FOUND",
        province.registry.accept_applicant_row(row(99)),
    )
    .await;
    seen.expect(
        Code::FailedPrecondition,
        "ROW_NOT_WAIVABLE",
        province.registry.accept_applicant_row(row(4)),
    )
    .await;
    seen.expect(
        Code::FailedPrecondition,
        "ROW_ACCEPTED_ALREADY",
        province.registry.accept_applicant_row(row(2)),
    )
    .await;

    // ---- caps on lists and strings, and lists the template bounds
    let mut long_name = inject(&gz_card);
    long_name.key_names = vec!["K".repeat(65)];
    seen.expect(
        Code::InvalidArgument,
        "FIELD_TOO_LONG",
        station.card.inject_card_keys(long_name),
    )
    .await;
    let mut many = inject(&gz_card);
    many.key_names = vec!["MK_MF".to_owned(); 65];
    seen.expect(
        Code::InvalidArgument,
        "TOO_MANY_ENTRIES",
        station.card.inject_card_keys(many),
    )
    .await;
    let mut twice = inject(&gz_card);
    twice.key_names = vec!["MK_MF".to_owned(), "MK_MF".to_owned()];
    seen.expect(
        Code::InvalidArgument,
        "KEY_NAMED_TWICE",
        station.card.inject_card_keys(twice),
    )
    .await;
    let keys = sscard_kms::card::template::Template::builtin("ssc-2.0")
        .unwrap()
        .keys()
        .len();
    let mut more = inject(&gz_card);
    more.key_names = (0..=keys).map(|i| format!("K{i}")).collect();
    seen.expect(
        Code::InvalidArgument,
        "MORE_ENTRIES_THAN_KEYS",
        station.card.inject_card_keys(more),
    )
    .await;
    seen.expect(
        Code::NotFound,
        "TEMPLATE_NOT_FOUND",
        station
            .card
            .inject_card_keys(tr31_request(gz_card.clone(), "ssc-9.9")),
    )
    .await;

    // ---- identifiers, each fault named with its field
    let with = |edit: &Edit<'_>| {
        let mut c = new_card("00000000000C0004", "GZ300004", "44010319950505123");
        edit(&mut c);
        register(&c, "ssc-2.0")
    };
    let faults: [(&str, &Edit<'_>); 12] = [
        ("IDENTIFIER_LENGTH", &|c| {
            c.social_security_number.pop();
        }),
        ("IDENTIFIER_MALFORMED", &|c| {
            c.card_number = "GZ30000!4".to_owned()
        }),
        ("IDENTIFIER_CHECK_CHARACTER", &|c| {
            c.card_number = card_number_bad_check("GZ300004");
        }),
        ("IDENTIFIER_BIRTH_DATE", &|c| {
            c.social_security_number = ssn("44010319951332123");
        }),
        ("REGION_UNKNOWN", &|c| {
            c.card_identifier = "441000D15600000500000000000C0004".to_owned();
        }),
        ("IDENTIFIER_PROVIDER_PART", &|c| {
            c.card_identifier = "440100D15600000600000000000C0004".to_owned();
        }),
        ("ATR_TOO_SHORT", &|c| c.atr = vec![0x3B; 7]),
        ("ATR_TOO_LONG", &|c| c.atr = vec![0x3B; 34]),
        ("ATR_INITIAL_CHARACTER", &|c| c.atr[0] = 0x3C),
        // Every TDi announces another TDi: the ATR ends inside them.
        ("ATR_INTERFACE_BYTES", &|c| {
            c.atr = vec![0x3B, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]
        }),
        ("ATR_HISTORICAL_BYTES", &|c| c.atr.push(0x00)),
        // T=1 announced in TD1, so a TCK follows the 8 historical bytes; this one is off by one bit.
        ("ATR_CHECKSUM", &|c| {
            let mut t1 = vec![0x3B, 0x88, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
            let tck = t1[1..].iter().fold(0u8, |acc, b| acc ^ b);
            t1.push(tck ^ 0x01);
            c.atr = t1;
        }),
    ];
    for (reason, edit) in faults {
        let request = with(edit);
        if reason.starts_with("ATR") {
            // Registration does not read the ATR; a station's request does.
            seen.expect(
                Code::InvalidArgument,
                reason,
                station
                    .card
                    .inject_card_keys(tr31_request(request.card.unwrap(), "ssc-2.0")),
            )
            .await;
        } else {
            seen.expect(
                Code::InvalidArgument,
                reason,
                registrar.registry.register_card(request),
            )
            .await;
        }
    }
    let mut provincial_registrar = kms.client("sscard://registrar/440000/GD-REG-01");
    seen.expect(
        Code::InvalidArgument,
        "ISSUING_REGION_NOT_A_CITY",
        provincial_registrar.registry.register_card(with(&|c| {
            c.card_identifier = "440000D15600000500000000000C0004".to_owned();
        })),
    )
    .await;

    // ---- what is registered once
    let again = |edit: &Edit<'_>| {
        let mut c = new_card("00000000000C0005", "GZ300005", "44010319960606123");
        edit(&mut c);
        register(&c, "ssc-2.0")
    };
    seen.expect(
        Code::AlreadyExists,
        "CARD_IDENTIFIER_ALREADY_EXISTS",
        registrar
            .registry
            .register_card(again(&|c| c.card_identifier = demo.card_identifier.clone())),
    )
    .await;
    seen.expect(
        Code::AlreadyExists,
        "CARD_NUMBER_ALREADY_EXISTS",
        registrar
            .registry
            .register_card(again(&|c| c.card_number = demo.card_number.clone())),
    )
    .await;
    seen.expect(
        Code::AlreadyExists,
        "LIVE_CARD_FOR_SSN_ALREADY_EXISTS",
        registrar.registry.register_card(again(&|c| {
            c.social_security_number = demo.social_security_number.clone();
        })),
    )
    .await;

    // ---- a TDES transport key asked to carry SM4 keys
    let station_key = "0123456789ABCDEFFEDCBA9876543210";
    let c = kms
        .open_ceremony(endpoint_ceremony("GZ-TDES", "tdes").target.unwrap(), 2)
        .await;
    officer
        .admin
        .submit_component(component_submission(
            &c.id,
            component(&xor_hex(station_key, k2)),
        ))
        .await
        .unwrap();
    officer_2
        .admin
        .submit_component(component_submission(&c.id, component(k2)))
        .await
        .unwrap();
    let mut tdes_station = kms.client("sscard://station/440100/GZ-TDES");
    seen.expect(
        Code::FailedPrecondition,
        "TRANSPORT_KEY_CANNOT_CARRY",
        tdes_station.card.inject_card_keys(tr31_request(
            card_identity(&published().card[1], &atr),
            "ssc-3.0",
        )),
    )
    .await;

    // ---- last: the HSM sealed
    kms.hsm().seal().await.unwrap();
    seen.expect(
        Code::FailedPrecondition,
        "HSM_SEALED",
        station.card.inject_card_keys(inject(&gz_card)),
    )
    .await;

    // ---- an HSM with no LMK yet, then one with an LMK but sealed
    let state = tempfile::tempdir().unwrap();
    let blank = Arc::new(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(state.path().to_owned()),
            ..Default::default()
        })
        .unwrap(),
    );
    let blank_kms = TestKms::from_fixture(Arc::clone(&blank)).await;
    let unseal = |share: &str| pb::UnsealHsmRequest {
        share: share.to_owned(),
    };
    let mut blank_officer = blank_kms.client(OFFICER);
    seen.expect(
        Code::FailedPrecondition,
        "HSM_UNINITIALISED",
        blank_officer.admin.unseal_hsm(unseal("lmk1-01-00")),
    )
    .await;
    blank.init_lmk(2, 3).await.unwrap();
    blank.seal().await.unwrap();
    seen.expect(
        Code::InvalidArgument,
        "LMK_SHARE_REFUSED",
        blank_officer.admin.unseal_hsm(unseal("not a share")),
    )
    .await;

    // ---- a store the HSM never served: no audit key to anchor a checkpoint with
    let never_state = tempfile::tempdir().unwrap();
    let never = Arc::new(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(never_state.path().to_owned()),
            ..Default::default()
        })
        .unwrap(),
    );
    let empty_kms = TestKms::empty(never).await;
    let mut empty_officer = empty_kms.client(OFFICER);
    seen.expect(
        Code::FailedPrecondition,
        "NO_AUDIT_KEY_YET",
        empty_officer
            .admin
            .get_audit_checkpoint(pb::GetAuditCheckpointRequest {}),
    )
    .await;

    assert!(seen.failures.is_empty(), "{:#?}", seen.failures);
    let readme = readme_api_codes();
    assert_eq!(
        seen.codes, readme,
        "the codes provoked here (with their gRPC status) and README's rows marked `mTLS` differ"
    );
}
