//! Refusals of the key service over mTLS: the exact gRPC code, the reason or field the API
//! names, and one `denied: …` audit record for each refusal the service itself sees.

use sscard_kms::access::identity::Identity;
use sscard_kms::access::pki::DevPki;
use sscard_kms::access::tls::ClientTls;
use sscard_kms::proto::kms::v1 as pb;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::common::chain::{atr, card_number, card_number_bad_check, published, ssn};
use crate::common::harness::{
    OFFICER, PROVINCIAL_REGISTRAR, PSAM_LINE, REGISTRAR, STATION, TestBackend, TestKms,
    card_identity, reason, softhsm_hsm_in, tr31_request,
};

/// A Guangzhou card that is not one of the demo cards, with a chip of its own: the demo ATR
/// ending in the serial's last 4 bytes (a card factor belongs to one card).
fn new_card(serial: &str, number_body: &str, ssn17: &str) -> pb::CardIdentity {
    let mut chip = atr();
    let n = chip.len();
    chip[n - 4..].copy_from_slice(&hex::decode(&serial[serial.len() - 8..]).unwrap());
    pb::CardIdentity {
        card_identifier: format!("440100D156000005{serial}"),
        card_number: card_number(number_body),
        social_security_number: ssn(ssn17),
        atr: chip,
    }
}

fn register(card: &pb::CardIdentity) -> pb::RegisterCardRequest {
    pb::RegisterCardRequest {
        card: Some(card.clone()),
        template_id: "ssc-2.0".to_owned(),
        replaces_card_identifier: String::new(),
    }
}

fn card_ref(card: &pb::CardIdentity) -> pb::CardRef {
    pb::CardRef {
        card_identifier: card.card_identifier.clone(),
    }
}

async fn callers_out_of_role_or_region_are_refused_and_audited<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    let demo = &published().card[0];
    let gz_card = card_identity(demo, &atr());
    let inject = || tr31_request(gz_card.clone(), "ssc-2.0");

    // A Shenzhen station (same CA) asking for a Guangzhou card: the region check comes first,
    // so the station need not even be registered.
    let mut shenzhen = kms.client("sscard://station/440300/SZ-01");
    kms.refused(
        Code::PermissionDenied,
        "target is outside the caller's region",
        shenzhen.card.inject_card_keys(inject()),
    )
    .await;

    // Other roles asking for card keys.
    for uri in [PSAM_LINE, REGISTRAR, OFFICER] {
        let mut other = kms.client(uri);
        kms.refused(
            Code::PermissionDenied,
            "role may not perform this operation",
            other.card.inject_card_keys(inject()),
        )
        .await;
        kms.refused(
            Code::PermissionDenied,
            "role may not perform this operation",
            other
                .card
                .initialise_blank_card(pb::InitialiseBlankCardRequest {
                    card: Some(gz_card.clone()),
                    template_id: "ssc-2.0".to_owned(),
                    challenge: vec![0; 8],
                }),
        )
        .await;
    }

    // A station calling the administration and the registry.
    let mut station = kms.client(STATION);
    let denied = "role may not perform this operation";
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.admin.get_status(pb::GetStatusRequest {}),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.admin.list_keys(pb::ListKeysRequest {
            template_id: "ssc-2.0".to_owned(),
        }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.admin.load_template(pb::LoadTemplateRequest {
            toml: sscard_kms::card::template::SSC_2_0.to_owned(),
        }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.admin.generate_root_key(pb::GenerateRootKeyRequest {
            template_id: "ssc-2.0".to_owned(),
            key_name: "MK_MF".to_owned(),
        }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.admin.register_station(pb::RegisterEndpointRequest {
            name: "GZ-02".to_owned(),
            region: "440100".to_owned(),
            transport_algorithm: "aes".to_owned(),
            components: Vec::new(),
        }),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.registry.register_card(register(&gz_card)),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.registry.get_card(card_ref(&gz_card)),
    )
    .await;
    kms.refused(
        Code::PermissionDenied,
        denied,
        station.registry.blacklist_card(pb::BlacklistCardRequest {
            card_identifier: gz_card.card_identifier.clone(),
            reason: "station says so".to_owned(),
        }),
    )
    .await;
    // The refusal changed nothing: the card is still accepted.
    let mut registrar = kms.client(REGISTRAR);
    let record = registrar
        .registry
        .get_card(card_ref(&gz_card))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.status, pb::CardStatus::Accepted as i32);

    // TLS refusals happen in the handshake, before any request reaches the service: the
    // client "connects" (TLS 1.3) and its first RPC fails; nothing is there to audit.
    let before = kms.audit_trail().len();
    let foreign = DevPki::generate().unwrap();
    let pair = foreign
        .client(&Identity::from_uri(STATION).unwrap())
        .unwrap();
    let foreign_tls =
        ClientTls::from_pem(kms.pki().ca_pem(), &pair.cert_pem, &pair.key_pem).unwrap();
    let mut intruder = kms.client_with(foreign_tls.config());
    let status = intruder
        .card
        .inject_card_keys(inject())
        .await
        .expect_err("a certificate of another CA is refused");
    assert_ne!(status.code(), Code::Ok);
    let anonymous_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(kms.pki().ca_pem()))
        .domain_name("localhost");
    let mut anonymous = kms.client_with(anonymous_tls);
    let status = anonymous
        .card
        .inject_card_keys(inject())
        .await
        .expect_err("a client without certificate is refused");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(kms.audit_trail().len(), before);
}

async fn cards_and_requests_the_registry_does_not_allow_are_refused_and_audited<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    let mut station = kms.client(STATION);
    let mut registrar = kms.client(REGISTRAR);
    let demo = &published().card[0];
    let atr = atr();
    let gz_card = card_identity(demo, &atr);

    // Registered but not yet accepted.
    let card = new_card("00000000000A0001", "GZ100001", "44010319920202123");
    let record = registrar
        .registry
        .register_card(register(&card))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.status, pb::CardStatus::Registered as i32);
    kms.refused(
        Code::FailedPrecondition,
        "the card's data has not been reviewed and accepted",
        station
            .card
            .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
    )
    .await;

    // The city that registered it may not accept it: acceptance is the province's verdict.
    kms.refused(
        Code::PermissionDenied,
        "only a provincial registrar may accept",
        registrar.registry.accept_card(card_ref(&card)),
    )
    .await;
    // Accepted by the province: released; then blacklisted by its registrar: never again.
    let mut province = kms.client(PROVINCIAL_REGISTRAR);
    let record = province
        .registry
        .accept_card(card_ref(&card))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.status, pb::CardStatus::Accepted as i32);
    station
        .card
        .inject_card_keys(tr31_request(card.clone(), "ssc-2.0"))
        .await
        .unwrap();
    let record = registrar
        .registry
        .blacklist_card(pb::BlacklistCardRequest {
            card_identifier: card.card_identifier.clone(),
            reason: "lost".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.status, pb::CardStatus::Blacklisted as i32);
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        station
            .card
            .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
    )
    .await;
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(card.clone()),
                template_id: "ssc-2.0".to_owned(),
                challenge: vec![0; 8],
            }),
    )
    .await;
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        province.registry.accept_card(card_ref(&card)),
    )
    .await;

    // Unknown card, unknown template.
    let unknown = new_card("00000000000A0002", "GZ100002", "44010319930303123");
    kms.refused(
        Code::NotFound,
        "no registered card matches these identifiers",
        station
            .card
            .inject_card_keys(tr31_request(unknown.clone(), "ssc-2.0")),
    )
    .await;
    kms.refused(
        Code::NotFound,
        "card template not found",
        station
            .card
            .inject_card_keys(tr31_request(gz_card.clone(), "ssc-9.9")),
    )
    .await;

    // Malformed identifiers: INVALID_ARGUMENT naming the field.
    let mut bad_number = gz_card.clone();
    bad_number.card_number = card_number_bad_check(&demo.card_number[..8]);
    assert_ne!(bad_number.card_number, demo.card_number);
    kms.refused(
        Code::InvalidArgument,
        "invalid card_number: bad check character",
        station
            .card
            .inject_card_keys(tr31_request(bad_number, "ssc-2.0")),
    )
    .await;
    let mut short_ssn = gz_card.clone();
    short_ssn.social_security_number.pop();
    kms.refused(
        Code::InvalidArgument,
        "invalid social_security_number: wrong length",
        station
            .card
            .inject_card_keys(tr31_request(short_ssn, "ssc-2.0")),
    )
    .await;
    let mut short_atr = gz_card.clone();
    short_atr.atr = atr[atr.len() - 7..].to_vec();
    kms.refused(
        Code::InvalidArgument,
        "invalid atr: ATR shorter than 8 bytes",
        station
            .card
            .inject_card_keys(tr31_request(short_atr, "ssc-2.0")),
    )
    .await;

    // A second card with a card number already taken.
    let mut duplicate = new_card("00000000000A0003", "GZ100003", "44010319940404123");
    duplicate.card_number = demo.card_number.clone();
    kms.refused(
        Code::AlreadyExists,
        "card number already exists",
        registrar.registry.register_card(register(&duplicate)),
    )
    .await;

    // Released once for one ATR: a different ATR is another chip, refused.
    station
        .card
        .inject_card_keys(tr31_request(gz_card.clone(), "ssc-2.0"))
        .await
        .unwrap();
    let mut other_chip = gz_card.clone();
    *other_chip.atr.last_mut().unwrap() ^= 0x01;
    kms.refused(
        Code::FailedPrecondition,
        "the ATR differs from the one this card's keys were released for",
        station
            .card
            .inject_card_keys(tr31_request(other_chip.clone(), "ssc-2.0")),
    )
    .await;

    // Last: the HSM sealed (the test LMK cannot be unsealed again).
    kms.hsm().seal().await.unwrap();
    kms.refused(
        Code::FailedPrecondition,
        "the HSM is sealed",
        station
            .card
            .inject_card_keys(tr31_request(gz_card.clone(), "ssc-2.0")),
    )
    .await;
    // Registry refusals are decided before any HSM call: with the HSM sealed they still name
    // the card's state, not the HSM's.
    kms.refused(
        Code::FailedPrecondition,
        "the card is blacklisted",
        station
            .card
            .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
    )
    .await;
    kms.refused(
        Code::FailedPrecondition,
        "the ATR differs from the one this card's keys were released for",
        station
            .card
            .inject_card_keys(tr31_request(other_chip, "ssc-2.0")),
    )
    .await;
}

/// A station whose transport key is TDES gets TR-31 version B blocks: DES-family keys only. An
/// SM4 card's keys are refused before any HSM work, with the reason.
async fn a_tdes_transport_key_carries_no_sm4_keys<B: TestBackend>() {
    let kms = TestKms::<B>::seeded_on().await;
    // The station's TDES transport key, as two components with their KCVs.
    let key = "0123456789ABCDEFFEDCBA9876543210";
    let mask = "F0E1D2C3B4A5968778695A4B3C2D1E0F";
    let first: String = hex::encode_upper(
        hex::decode(key)
            .unwrap()
            .iter()
            .zip(hex::decode(mask).unwrap())
            .map(|(k, m)| k ^ m)
            .collect::<Vec<u8>>(),
    );
    let component = |hex: &str| pb::Component {
        hex: hex.to_owned(),
        kcv_hex: hsm_sim::crypto::kcv::compute_default(
            &hsm_sim::crypto::SecretKey::from_hex(hsm_api::Algorithm::Tdes2, hex).unwrap(),
        )
        .unwrap()
        .to_hex(),
    };
    kms.ceremony(
        pb::start_key_ceremony_request::Target::Endpoint(pb::EndpointTarget {
            kind: pb::EndpointKind::Station.into(),
            name: "GZ-TDES".to_owned(),
            region: "440100".to_owned(),
            transport_algorithm: "tdes".to_owned(),
        }),
        vec![component(&first), component(mask)],
    )
    .await;
    let mut station = kms.client("sscard://station/440100/GZ-TDES");
    let atr = atr();
    let [tdes_card, sm4_card] = [&published().card[0], &published().card[1]];

    let keys = station
        .card
        .inject_card_keys(tr31_request(card_identity(tdes_card, &atr), "ssc-2.0"))
        .await
        .unwrap()
        .into_inner()
        .keys;
    for k in &keys {
        let Some(pb::delivered_key::Form::Tr31Block(block)) = &k.form else {
            panic!("{}: not a TR-31 block", k.key_name);
        };
        assert!(block.starts_with('B'), "{}: {block}", k.key_name);
    }
    let kbpk = hsm_sim::crypto::SecretKey::from_hex(hsm_api::Algorithm::Tdes2, key).unwrap();
    let (header, _) = hsm_sim::crypto::tr31::unwrap(
        &kbpk,
        match &keys[0].form {
            Some(pb::delivered_key::Form::Tr31Block(b)) => b,
            _ => unreachable!(),
        },
    )
    .unwrap();
    assert_eq!(header.version, hsm_api::KeyBlockVersion::B);

    kms.refused(
        Code::FailedPrecondition,
        "travel only under an AES transport key",
        station
            .card
            .inject_card_keys(tr31_request(card_identity(sm4_card, &atr), "ssc-3.0")),
    )
    .await;
}

/// The PKCS#11 backend in strict mode on the same seeded store (its tokens do not depend on the
/// mode): a station's TR-31 delivery needs the clear transport key, which a standard token cannot
/// use — refused with `OPERATION_UNSUPPORTED`, the reason and the mode that would run it, and
/// audited; what runs in the token (a registrar's write, sealed by the audit MAC) still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_pkcs11_refuses_tr31_delivery_with_the_reason() {
    let kms = TestKms::seeded_with(softhsm_hsm_in(hsm_pkcs11::Mode::Strict)).await;
    let card = new_card("0050640776EF3301", "00000009", "44010119800101001");
    let mut registrar = kms.client(REGISTRAR);
    registrar
        .registry
        .register_card(register(&card))
        .await
        .unwrap();
    kms.client(PROVINCIAL_REGISTRAR)
        .registry
        .accept_card(card_ref(&card))
        .await
        .unwrap();
    let mut station = kms.client(STATION);
    let status = kms
        .refused(
            Code::FailedPrecondition,
            "strict mode; mode \"release\" runs it",
            station
                .card
                .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
        )
        .await;
    assert_eq!(reason(&status), "OPERATION_UNSUPPORTED");
    assert!(status.message().contains("TR-31"), "{status:?}");
}

crate::on_every_backend!(
    callers_out_of_role_or_region_are_refused_and_audited,
    cards_and_requests_the_registry_does_not_allow_are_refused_and_audited,
    a_tdes_transport_key_carries_no_sm4_keys,
);
