//! Hostile input and limits over real mutual TLS: key lists capped at the template and without
//! repeats, every field capped, refusals recorded with a bounded subject, a malformed protobuf
//! refused as INVALID_ARGUMENT, no existence oracle for stations, and the server's admission
//! limits — TLS handshake timeout, connection cap, per-identity rate with a retry hint.

use std::time::{Duration, Instant};

use prost::bytes::{Buf as _, BufMut as _};
use sscard_kms::access::identity::Identity;
use sscard_kms::proto::kms::v1 as pb;
use sscard_kms::server::{Limits, RETRY_PUSHBACK};
use sscard_kms::state::audit::MAX_REFUSAL_TEXT;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use crate::common::chain::{atr, card_number, published, ssn};
use crate::common::harness::{
    OFFICER, PSAM_LINE, REGISTRAR, STATION, TestKms, card_identity, error_info, reason, sm_request,
    tr31_request,
};
use crate::common::readme::tested as readme_row;

/// A bound for an event that must come (a close, an answer), not a wait.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lists_are_capped_at_the_template_and_refuse_repeats() {
    let kms = TestKms::seeded().await;
    let mut station = kms.client(STATION);
    let demo = &published().card[0];
    let card = card_identity(demo, &atr());
    let with_names = |names: Vec<&str>| {
        let mut r = tr31_request(card.clone(), "ssc-2.0");
        r.key_names = names.into_iter().map(str::to_owned).collect();
        r
    };
    kms.refused(
        Code::InvalidArgument,
        "invalid key_names: a key is named more than once",
        station
            .card
            .inject_card_keys(with_names(vec!["STK_SSSE", "MK_MF", "STK_SSSE"])),
    )
    .await;
    // 34 names for a 33-key template.
    kms.refused(
        Code::InvalidArgument,
        "invalid key_names: more entries than the template has keys",
        station
            .card
            .inject_card_keys(with_names(vec!["STK_SSSE"; 34])),
    )
    .await;
    kms.refused(
        Code::InvalidArgument,
        "invalid challenges: a key is named more than once",
        station.card.inject_card_keys(sm_request(
            card.clone(),
            "ssc-2.0",
            &[("STK_SSSE", vec![0x5A; 8]), ("STK_SSSE", vec![0x5B; 8])],
        )),
    )
    .await;
    // Each key once is served (not a master key: those never leave as TR-31 blocks).
    let served = station
        .card
        .inject_card_keys(with_names(vec!["STK_SSSE", "IRK_SSSE"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.keys.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_and_string_has_a_cap_checked_before_the_service() {
    let kms = TestKms::seeded().await;
    let mut station = kms.client(STATION);
    let mut line = kms.client(PSAM_LINE);
    let mut officer = kms.client(OFFICER);
    let mut registrar = kms.client(REGISTRAR);
    let before = kms.audit_trail().len();
    let demo = &published().card[0];
    let card = card_identity(demo, &atr());

    let over = |status: tonic::Status, message: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), message);
    };
    let mut many = tr31_request(card.clone(), "ssc-2.0");
    many.key_names = vec!["STK_SSSE".to_owned(); 50_000];
    over(
        station.card.inject_card_keys(many).await.unwrap_err(),
        "invalid key_names: more than 64 entries",
    );
    over(
        line.psam
            .get_psam_key_set(pb::GetPsamKeySetRequest {
                serial: "A".repeat(100_000),
            })
            .await
            .unwrap_err(),
        "invalid serial: longer than 64 bytes",
    );
    over(
        registrar
            .registry
            .blacklist_card(pb::BlacklistCardRequest {
                card_identifier: demo.card_identifier.clone(),
                reason: "x".repeat(10_000),
            })
            .await
            .unwrap_err(),
        "invalid reason: longer than 800 bytes",
    );
    over(
        officer
            .admin
            .register_station(pb::RegisterEndpointRequest {
                name: "GZ-02".to_owned(),
                region: "440100".to_owned(),
                transport_algorithm: "aes".to_owned(),
                components: vec![
                    pb::Component {
                        hex: "00".repeat(16),
                        kcv_hex: "000000".to_owned(),
                    };
                    10
                ],
            })
            .await
            .unwrap_err(),
        "invalid components: more than 9 entries",
    );
    let mut long_atr = card.clone();
    long_atr.atr = vec![0x3B; 1000];
    over(
        station
            .card
            .inject_card_keys(tr31_request(long_atr, "ssc-2.0"))
            .await
            .unwrap_err(),
        "invalid atr: longer than 64 bytes",
    );
    // A message over 1 MiB is not even decoded (tonic's own limit, lowered from 4 MiB).
    let status = officer
        .admin
        .load_template(pb::LoadTemplateRequest {
            toml: "#".repeat(2 << 20),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // None of these reached the service: nothing was audited.
    assert_eq!(kms.audit_trail().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_records_a_bounded_subject() {
    let kms = TestKms::seeded().await;
    let line = Identity::from_uri(PSAM_LINE).unwrap();
    // Below the gRPC caps, through the service itself: a 4 MiB serial.
    let serial = "A".repeat(4 << 20);
    let refused = kms.kms().psam_key_set(&line, &serial).await.unwrap_err();
    assert_eq!(refused.to_string(), "PSAM not found");
    let last = kms.audit_trail().pop().unwrap();
    assert!(last.outcome.starts_with("denied"), "{last:?}");
    assert!(
        last.subject.len() <= MAX_REFUSAL_TEXT,
        "{}",
        last.subject.len()
    );
    assert!(
        last.subject
            .ends_with(&format!("[{} bytes]", serial.len() + 5)),
        "{}",
        last.subject
    );
}

// ------------------------------------------------------------------- malformed protobuf

/// Sends and receives raw bytes, whatever the method's message types.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_protobuf_is_the_callers_error() {
    let kms = TestKms::seeded().await;
    let mut grpc = tonic::client::Grpc::new(kms.channel(STATION));
    let inject = PathAndQuery::from_static("/sscard.kms.v1.CardKeyService/InjectCardKeys");
    // Field 1 (card), length-delimited, claiming 2^35 bytes; then a truncated varint.
    for garbage in [
        vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        vec![0x08, 0xFF],
        vec![0xFF; 16],
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(garbage.clone()),
                inject.clone(),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{garbage:02X?}: {status:?}"
        );
        assert_eq!(
            status.message(),
            "invalid request: not a valid protobuf encoding of this method's message"
        );
        assert_eq!(reason(&status), "MESSAGE_UNDECODABLE");
    }
    assert_eq!(readme_row("MESSAGE_UNDECODABLE"), "mTLS (hostile)");
    // The same channel and codec with a well-formed message reach the service.
    let mut good = Vec::new();
    prost::Message::encode(
        &tr31_request(card_identity(&published().card[0], &atr()), "ssc-9.9"),
        &mut good,
    )
    .unwrap();
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(tonic::Request::new(good), inject, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

// ------------------------------------------------------------------- existence oracle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_card_and_a_mismatching_card_get_the_same_answer() {
    let kms = TestKms::seeded().await;
    let mut station = kms.client(STATION);
    let demo = &published().card[0];
    let real = card_identity(demo, &atr());
    let unknown = pb::CardIdentity {
        card_identifier: "440100D1560000050000000000000A77".to_owned(),
        ..real.clone()
    };
    let other_number = pb::CardIdentity {
        card_number: card_number("GZ777777"),
        ..real.clone()
    };
    let other_ssn = pb::CardIdentity {
        social_security_number: ssn("44010319770707123"),
        ..real.clone()
    };
    let mut answers = Vec::new();
    for card in [&unknown, &other_number, &other_ssn] {
        let status = kms
            .refused(
                Code::NotFound,
                "no registered card matches these identifiers",
                station
                    .card
                    .inject_card_keys(tr31_request(card.clone(), "ssc-2.0")),
            )
            .await;
        answers.push((status.code(), status.message().to_owned()));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // The blank-card path answers alike.
    kms.refused(
        Code::NotFound,
        "no registered card matches these identifiers",
        station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(other_number.clone()),
                template_id: "ssc-2.0".to_owned(),
                challenge: vec![0; 8],
            }),
    )
    .await;
    // The audit trail keeps which it was.
    let trail = kms.audit_trail();
    let details: Vec<&str> = trail[trail.len() - 4..]
        .iter()
        .map(|r| r.outcome.as_str())
        .collect();
    assert!(
        details[0].ends_with("(unknown card identifier)"),
        "{details:?}"
    );
    assert!(
        details[1].ends_with("(the card number differs from the registry's)"),
        "{details:?}"
    );
    assert!(
        details[2].ends_with("(the social security number differs from the registry's)"),
        "{details:?}"
    );
}

// ------------------------------------------------------------------- admission limits

/// Reads `stream` until the server closes it; the time it took.
async fn closed_by_server(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("the server sent {n} bytes to a silent client"),
        Err(_) => panic!("the server kept a silent connection open for {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_closed_at_the_timeout() {
    let kms = TestKms::seeded_with_limits(Limits {
        handshake_timeout_ms: 300,
        ..Limits::default()
    })
    .await;
    let port = kms.port();
    // Several silent connections, as an attacker holding half-open handshakes.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    for stream in &mut silent {
        let held = closed_by_server(stream).await;
        assert!(held < PATIENCE, "{held:?}");
    }
    // The first was held at least the timeout: a close by the timeout, not a refusal.
    let mut late = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(closed_by_server(&mut late).await >= Duration::from_millis(250));
    // A real client still gets in.
    let mut officer = kms.client(OFFICER);
    officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_closed_at_once() {
    let kms = TestKms::seeded_with_limits(Limits {
        max_connections: 2,
        handshake_timeout_ms: 60_000,
        ..Limits::default()
    })
    .await;
    let port = kms.port();
    // Connection 1: a real client, kept open by its channel.
    let mut officer = kms.client(OFFICER);
    officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    // Connection 2: silent, held (the handshake timeout is a minute).
    let _held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Connection 3: over the cap, closed at once — long before any handshake timeout.
    let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(closed_by_server(&mut third).await < Duration::from_secs(10));
    // A new client cannot get in; the open one is still served.
    let mut newcomer = kms.client(OFFICER);
    let refused = newcomer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_rate_is_told_when_to_retry() {
    let kms = TestKms::seeded_with_limits(Limits {
        requests_per_second: 1,
        burst: 2,
        ..Limits::default()
    })
    .await;
    let mut officer = kms.client(OFFICER);
    let before = kms.audit_trail().len();
    for _ in 0..2 {
        officer
            .admin
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap();
    }
    let refused = officer
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("request rate of this identity exceeded: retry after"),
        "{refused:?}"
    );
    let pushback: u64 = refused
        .metadata()
        .get(RETRY_PUSHBACK)
        .expect("a retry pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&pushback), "{pushback}");
    assert_eq!(reason(&refused), "RATE_LIMITED");
    assert_eq!(
        error_info(&refused).unwrap().metadata.get("retry_after_ms"),
        Some(&pushback.to_string())
    );
    assert_eq!(readme_row("RATE_LIMITED"), "mTLS (hostile)");
    // Another identity has its own rate; the refusal for rate was not audited (nor, as ever,
    // a status read).
    let mut auditor = kms.client("sscard://auditor/auditor-1");
    auditor
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(kms.audit_trail().len(), before);
}
