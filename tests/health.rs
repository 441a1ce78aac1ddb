//! gRPC health follows the HSM: the server ("") and each of the four KMS services are
//! NOT_SERVING while the HSM is sealed and SERVING once custodians' shares (`UnsealHsm`) make it
//! operational; sealing it again turns them back. Each change is awaited on `Watch` streams,
//! never by sleeping; the time limit only bounds a broken run.

use std::sync::Arc;
use std::time::Duration;

use hsm_api::Hsm as _;
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use sscard_kms::proto::kms::v1 as pb;
use tokio_stream::StreamExt as _;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::common::harness::{OFFICER, OFFICER_2, STATION, TestKms, reason};

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// Every name's `Check` answer now.
async fn check_all(health: &mut HealthClient<Channel>) -> Vec<(String, ServingStatus)> {
    let mut out = Vec::new();
    for name in sscard_kms::server::HEALTH_SERVICE_NAMES {
        let status = health
            .check(request(name))
            .await
            .unwrap_or_else(|e| panic!("health of {name:?}: {e:?}"))
            .into_inner()
            .status();
        out.push((name.to_owned(), status));
    }
    out
}

/// Reads each stream until it says `want` (a stream may repeat the status it had).
async fn await_all(streams: &mut [(String, Streaming<HealthCheckResponse>)], want: ServingStatus) {
    for (name, stream) in streams.iter_mut() {
        let reached = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(message) = stream.next().await {
                if message.unwrap().status() == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(reached, Ok(true), "{name:?} never reported {want:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_hsm_is_sealed_and_serving_once_unsealed() {
    // An HSM with a real LMK (2 of 3 shares), sealed, under the service.
    let state = tempfile::tempdir().unwrap();
    let hsm = Arc::new(
        LocalHsm::open(LocalHsmConfig {
            state_dir: Some(state.path().to_owned()),
            ..Default::default()
        })
        .unwrap(),
    );
    let init = hsm_sim::handout::dangerous_init(&*hsm, 2, 3).await.unwrap();
    hsm.seal().await.unwrap();
    let kms = TestKms::from_fixture(Arc::clone(&hsm)).await;
    let clients = kms.client(OFFICER);
    let mut health = clients.health.clone();
    let mut officer = clients.admin.clone();

    let all = |s: ServingStatus| {
        sscard_kms::server::HEALTH_SERVICE_NAMES
            .iter()
            .map(|n| ((*n).to_owned(), s))
            .collect::<Vec<_>>()
    };
    assert_eq!(check_all(&mut health).await, all(ServingStatus::NotServing));
    let mut streams = Vec::new();
    for name in sscard_kms::server::HEALTH_SERVICE_NAMES {
        let stream = health.watch(request(name)).await.unwrap().into_inner();
        streams.push((name.to_owned(), stream));
    }
    await_all(&mut streams, ServingStatus::NotServing).await;

    // One share of two: still sealed, still not serving.
    let share = |i: usize| pb::UnsealHsmRequest {
        share: init.shares[i].share.secret_text().to_owned(),
    };
    let progress = officer.unseal_hsm(share(0)).await.unwrap().into_inner();
    assert!(!progress.unsealed);
    assert_eq!(check_all(&mut health).await, all(ServingStatus::NotServing));

    // The threshold: operational, and every name says so.
    // The second share from another custodian's own certificate.
    let mut officer_2 = kms.client(OFFICER_2).admin;
    let progress = officer_2.unseal_hsm(share(2)).await.unwrap().into_inner();
    assert!(progress.unsealed);
    await_all(&mut streams, ServingStatus::Serving).await;
    assert_eq!(check_all(&mut health).await, all(ServingStatus::Serving));

    // Sealed behind the service's back: the HSM's next answer (here the station's refused call)
    // turns every name back to NOT_SERVING.
    hsm.seal().await.unwrap();
    let mut station = kms.client(STATION);
    let demo = &crate::common::chain::published().card[0];
    let refused = station
        .card
        .inject_card_keys(crate::common::harness::tr31_request(
            crate::common::harness::card_identity(demo, &crate::common::chain::atr()),
            "ssc-2.0",
        ))
        .await
        .expect_err("a sealed HSM serves no key");
    assert_eq!(reason(&refused), "HSM_SEALED");
    await_all(&mut streams, ServingStatus::NotServing).await;
    assert_eq!(check_all(&mut health).await, all(ServingStatus::NotServing));
}
