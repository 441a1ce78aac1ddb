//! The key service on a remote HSM (`hsm_sim::remote`, in-process on 127.0.0.1 over its own
//! mutual TLS): an HSM outage is UNAVAILABLE to the station, and the same service recovers by
//! itself once the HSM is back on the same port.

use std::sync::Arc;

use hsm_sim::local::LocalHsm;
use hsm_sim::remote::{ClientTls, RemoteHsm, ServerTls};
use sscard_kms::access::identity::Identity;
use sscard_kms::access::pki::DevPki;
use sscard_kms::proto::kms::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::common::chain::{atr, published};
use crate::common::harness::{STATION, TestKms, card_identity, local_hsm, reason, tr31_request};

/// The `hsm-sim` service in this process.
struct HsmProcess {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), hsm_sim::remote::SetupError>>,
}

impl HsmProcess {
    fn start(backend: &Arc<LocalHsm>, pki: &DevPki, listener: TcpListener) -> HsmProcess {
        let server = pki.server();
        let tls = ServerTls::from_pem(
            server.cert_pem.as_bytes(),
            server.key_pem.as_bytes(),
            pki.ca_pem().as_bytes(),
        )
        .unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(hsm_sim::remote::serve(
            Arc::clone(backend),
            listener,
            tls,
            async move {
                let _ = stop.await;
            },
        ));
        HsmProcess { shutdown, task }
    }

    /// Stops serving and waits until the server has finished.
    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn kcvs(response: &pb::InjectCardKeysResponse) -> Vec<Vec<u8>> {
    response
        .keys
        .iter()
        .map(|k| k.kcv.as_ref().unwrap().value.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_outage_is_unavailable_and_the_service_recovers_without_restart() {
    // The HSM's own PKI: its server certificate and the KMS's service-role client certificate.
    let hsm_pki = DevPki::generate().unwrap();
    let backend = local_hsm();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let process = HsmProcess::start(&backend, &hsm_pki, listener);

    let service = hsm_pki
        .client(&Identity::from_uri("sscard://service/kms").unwrap())
        .unwrap();
    let client_tls = ClientTls::from_pem(
        service.cert_pem.as_bytes(),
        service.key_pem.as_bytes(),
        hsm_pki.ca_pem().as_bytes(),
    )
    .unwrap();
    let remote =
        RemoteHsm::connect_lazy(&format!("https://localhost:{}", addr.port()), client_tls).unwrap();
    let kms = TestKms::from_fixture(Arc::new(remote)).await;
    let mut station = kms.client(STATION);
    let demo = &published().card[0];
    let request = || tr31_request(card_identity(demo, &atr()), &demo.template);

    let before = station
        .card
        .inject_card_keys(request())
        .await
        .unwrap()
        .into_inner();
    assert!(!before.keys.is_empty());

    // The HSM goes away: the station is told to come back later, and the refusal is audited
    // (unsealed: the audit key is in the HSM that is gone).
    process.stop().await;
    let refused = kms
        .refused(
            Code::Unavailable,
            "the HSM is unavailable",
            station.card.inject_card_keys(request()),
        )
        .await;
    // The reason code README lists for it (marked `mTLS (remote_hsm)`).
    assert_eq!(reason(&refused), "HSM_UNAVAILABLE");
    assert_eq!(
        crate::common::readme::tested("HSM_UNAVAILABLE"),
        "mTLS (remote_hsm)"
    );

    // The HSM comes back on the same address; the same service, not restarted, serves again.
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("the HSM's port {addr} cannot be bound again: {e}"));
    let process = HsmProcess::start(&backend, &hsm_pki, listener);
    let after = station
        .card
        .inject_card_keys(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kcvs(&after), kcvs(&before), "the same keys");
    process.stop().await;
}
