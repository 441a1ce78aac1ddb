//! City-owned roots (N9, DOMAIN.md §12): a city's local extension declares a key whose root the
//! city holds in its own HSM. The province's deployment places it in the template but never
//! holds, derives or releases it, and names its owner; the city's deployment of the same
//! software holds that root and releases that key, and names the province as the owner of the
//! others. Both sides over real mTLS, the city's key checked against the independent chain.

use hsm_api::Algorithm;
use hsm_sim::crypto::tr31;
use sscard_kms::card::region::Region;
use sscard_kms::card::template::{KeyLevel, KeyOwner, Template};
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::proto::kms::v1::delivered_key::Form;
use tonic::Code;

use crate::common::chain::{atr, card_number, expected, published, ssn, station_kbpk};
use crate::common::harness::{OFFICER, OFFICER_2, TestKms, error_info, local_hsm, tr31_request};
use crate::rotation::{components, components_of};

/// Shenzhen's extension of ssc-2.0: a DF06 master key and an update key of the province's own
/// roots, and a key of DF06 whose root Shenzhen holds.
fn shenzhen_extension() -> String {
    format!(
        "{}{}",
        crate::restart::SHENZHEN,
        r#"
[[key]]
name = "PK_DF06"
directory = "DF06"
role = "update"
key_id = 0x02
key_version = 0x01
length = 16
error_counter = 0x55
protected_by = "MK_DF06"
root = "provincial"

[[key]]
name = "CK_DF06"
directory = "DF06"
role = "external-auth"
key_id = 0x01
key_version = 0x01
length = 16
error_counter = 0x55
protected_by = "MK_DF06"
root = "city"
"#
    )
}

const TEMPLATE: &str = "ssc-2.0-440300";
const SZ_STATION: &str = "sscard://station/440300/SZ-01";
const SZ_REGISTRAR: &str = "sscard://registrar/440300/SZ-REG-01";
const REVIEWER: &str = "sscard://registrar/440000/GD-REV-01";

/// The Shenzhen card both deployments serve.
fn shenzhen_card() -> pb::CardIdentity {
    pb::CardIdentity {
        card_identifier: "440300D15600000500000000000A0001".to_owned(),
        card_number: card_number("SZ000001"),
        social_security_number: ssn("44030319900101123"),
        atr: atr(),
    }
}

/// Loads the extension, registers Shenzhen's station and card (accepted).
async fn set_up<H: hsm_api::Hsm>(kms: &TestKms<H>) {
    set_up_with(kms, shenzhen_extension()).await;
}

/// [`set_up`] with the extension `toml`.
async fn set_up_with<H: hsm_api::Hsm>(kms: &TestKms<H>, toml: String) {
    let mut officer = kms.client(OFFICER);
    officer
        .admin
        .load_template(pb::LoadTemplateRequest { toml })
        .await
        .unwrap();
    kms.ceremony(
        pb::start_key_ceremony_request::Target::Endpoint(pb::EndpointTarget {
            kind: pb::EndpointKind::Station.into(),
            name: "SZ-01".to_owned(),
            region: "440300".to_owned(),
            transport_algorithm: "aes".to_owned(),
        }),
        components_of(Algorithm::Aes128, &published().station.transport_aes),
    )
    .await;
    let mut registrar = kms.client(SZ_REGISTRAR);
    let card = shenzhen_card();
    registrar
        .registry
        .register_card(pb::RegisterCardRequest {
            card: Some(card.clone()),
            template_id: TEMPLATE.to_owned(),
            replaces_card_identifier: String::new(),
        })
        .await
        .unwrap();
    // Acceptance is the province's (N4).
    kms.client(REVIEWER)
        .registry
        .accept_card(pb::CardRef {
            card_identifier: card.card_identifier,
        })
        .await
        .unwrap();
}

/// A dual-control request to generate the provincial root of `key_name`.
fn generate_root(key_name: &str) -> pb::RequestActRequest {
    pb::RequestActRequest {
        act: Some(pb::request_act_request::Act::GenerateRoot(
            pb::GenerateRootAct {
                template_id: TEMPLATE.to_owned(),
                key_name: key_name.to_owned(),
            },
        )),
    }
}

/// A root ceremony for `key_name` at `level` (started by one officer; its components are
/// another matter).
fn root_ceremony(key_name: &str, level: pb::KeyLevel) -> pb::StartKeyCeremonyRequest {
    pb::StartKeyCeremonyRequest {
        components: 2,
        target: Some(root_target(key_name, level)),
    }
}

fn root_target(key_name: &str, level: pb::KeyLevel) -> pb::start_key_ceremony_request::Target {
    pb::start_key_ceremony_request::Target::Root(pb::RootTarget {
        template_id: TEMPLATE.to_owned(),
        key_name: key_name.to_owned(),
        level: level as i32,
        ministry_psam_permission: false,
    })
}

fn names(request: &[&str]) -> pb::InjectCardKeysRequest {
    let mut r = tr31_request(shenzhen_card(), TEMPLATE);
    r.key_names = request.iter().map(|n| (*n).to_owned()).collect();
    r
}

/// The reason code and the owner named in a refusal's details.
fn owner_refusal(status: &tonic::Status) -> (String, String, String) {
    let info = error_info(status).expect("an ErrorInfo");
    (
        info.reason,
        info.metadata.get("key").cloned().unwrap_or_default(),
        info.metadata.get("owner").cloned().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_province_places_a_city_owned_key_but_never_holds_or_releases_it() {
    let kms = TestKms::seeded().await;
    set_up(&kms).await;
    let mut officer = kms.client(OFFICER);

    // No root of the city's key is generated or imported at the province.
    let refused = kms
        .refused(
            Code::FailedPrecondition,
            "key CK_DF06 is owned by city 440300",
            officer.admin.request_act(generate_root("CK_DF06")),
        )
        .await;
    assert_eq!(
        owner_refusal(&refused),
        (
            "KEY_OWNED_ELSEWHERE".into(),
            "CK_DF06".into(),
            "440300".into()
        )
    );
    assert_eq!(
        crate::common::readme::tested("KEY_OWNED_ELSEWHERE"),
        "mTLS (city_roots)"
    );
    kms.refused(
        Code::FailedPrecondition,
        "owned by city 440300",
        officer
            .admin
            .start_key_ceremony(root_ceremony("CK_DF06", pb::KeyLevel::City)),
    )
    .await;

    // The province's own keys of the extension are released, the city's is named as its city's.
    let mut officer_2 = kms.client(OFFICER_2);
    for key_name in ["MK_DF06", "PK_DF06"] {
        let asked = officer
            .admin
            .request_act(generate_root(key_name))
            .await
            .unwrap()
            .into_inner();
        officer_2
            .admin
            .approve_request(pb::RequestRef { id: asked.id })
            .await
            .unwrap();
    }
    officer
        .admin
        .derive_hierarchy(pb::DeriveHierarchyRequest {
            template_id: TEMPLATE.to_owned(),
        })
        .await
        .unwrap();
    let mut station = kms.client(SZ_STATION);
    let response = station
        .card
        .inject_card_keys(names(&["PK_DF06"]))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = response.keys.iter().map(|k| k.key_name.as_str()).collect();
    assert_eq!(got, ["PK_DF06"]);
    let omitted: Vec<(&str, &str)> = response
        .omitted
        .iter()
        .map(|o| (o.key_name.as_str(), o.reason.as_str()))
        .collect();
    assert_eq!(omitted, [("CK_DF06", "owned by city 440300")]);

    // Asked for by name, the city's key is refused with its owner, and the refusal audited.
    let refused = kms
        .refused(
            Code::FailedPrecondition,
            "key CK_DF06 is owned by city 440300",
            station.card.inject_card_keys(names(&["CK_DF06"])),
        )
        .await;
    assert_eq!(owner_refusal(&refused).2, "440300");
    // Its write order still places it after its protector.
    let t = Template::parse(&shenzhen_extension()).unwrap();
    assert_eq!(
        t.key("CK_DF06").unwrap().owner(),
        KeyOwner::City(Region::lookup("440300").unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_deployment_holds_its_root_and_releases_only_its_keys() {
    let shenzhen = Region::lookup("440300").unwrap();
    let kms = TestKms::empty_as(local_hsm(), KeyOwner::City(shenzhen)).await;
    let mut officer = kms.client(OFFICER);
    // The city's deployment runs the same software: the base template, then its extension.
    officer
        .admin
        .load_template(pb::LoadTemplateRequest {
            toml: sscard_kms::card::template::SSC_2_0.to_owned(),
        })
        .await
        .unwrap();
    set_up(&kms).await;

    // The city imports the root it holds, at the city level.
    let root = published()
        .city_root
        .root(Algorithm::Tdes2, "CK_DF06")
        .unwrap()
        .to_owned();
    kms.ceremony(
        root_target("CK_DF06", pb::KeyLevel::City),
        components(&root),
    )
    .await;
    let record = officer
        .admin
        .list_keys(pb::ListKeysRequest {
            template_id: TEMPLATE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .find(|k| k.key_name == "CK_DF06" && k.active)
        .unwrap();
    assert_eq!(
        (record.level, record.region.as_str(), record.version),
        (pb::KeyLevel::City as i32, "440300", 1)
    );
    // The province's keys are not the city's to hold.
    let refused = kms
        .refused(
            Code::FailedPrecondition,
            "key MK_DF06 is owned by the province",
            officer.admin.request_act(generate_root("MK_DF06")),
        )
        .await;
    assert_eq!(owner_refusal(&refused).2, "province");

    // Every key asked for: the city's key, and the province named as the owner of the others.
    let mut station = kms.client(SZ_STATION);
    let response = station
        .card
        .inject_card_keys(names(&[]))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = response.keys.iter().map(|k| k.key_name.as_str()).collect();
    assert_eq!(got, ["CK_DF06"]);
    let base = Template::builtin("ssc-2.0").unwrap();
    assert_eq!(response.omitted.len(), base.keys().len() + 2);
    assert!(
        response
            .omitted
            .iter()
            .all(|o| o.reason == "owned by the province" && o.key_name != "CK_DF06")
    );
    // The key is D(K_city, F3) of the city's root: the independent chain.
    let merged = Template::extend(&base, &Template::parse(&shenzhen_extension()).unwrap()).unwrap();
    let spec = merged.key("CK_DF06").unwrap();
    let Some(Form::Tr31Block(block)) = &response.keys[0].form else {
        panic!("not a TR-31 block");
    };
    let (_, key) = tr31::unwrap(&station_kbpk(), block).unwrap();
    let want = expected(spec, KeyLevel::Card, "440300", &atr());
    assert!(key == want.key, "not the city-root card key");
    assert_eq!(response.keys[0].level, pb::KeyLevel::Card as i32);
}

/// Issue 12: a template whose policy is `issuer_only_delivery = "secure-messaging"` (here a city
/// extension, which may make its base's policy stricter) never sends an issuer-only key as TR-31:
/// naming one is refused with its reason and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_messaging_only_template_never_sends_an_issuer_only_key_as_tr31() {
    let kms = TestKms::seeded().await;
    let strict = shenzhen_extension().replacen(
        "\n[[key]]",
        "\nissuer_only_delivery = \"secure-messaging\"\n\n[[key]]",
        1,
    );
    assert!(strict.contains("issuer_only_delivery"));
    set_up_with(&kms, strict).await;
    // Refused before any HSM work (which keys an all-keys injection leaves out, and that the
    // others still leave: the template's unit tests).
    let mut station = kms.client(SZ_STATION);
    let refused = kms
        .refused(
            Code::FailedPrecondition,
            "only inside secure-messaging WRITE KEY commands",
            station.card.inject_card_keys(names(&["STK_SSSE"])),
        )
        .await;
    assert_eq!(
        error_info(&refused).expect("an ErrorInfo").reason,
        "SECURE_MESSAGING_ONLY"
    );
    assert_eq!(
        crate::common::readme::tested("SECURE_MESSAGING_ONLY"),
        "mTLS (delivery)"
    );
}
