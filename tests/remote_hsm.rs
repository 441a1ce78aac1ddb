//! The key service on a remote HSM (`hsm_sim::remote`, in-process on 127.0.0.1 over its own
//! mutual TLS): an HSM outage is UNAVAILABLE to the station, and the same service recovers by
//! itself once the HSM is back on the same port; a card set (TR-31 or WRITE KEY), a blank
//! card's initialisation and a PSAM set each cost one HSM batch, counted by the server (a card's
//! also two index-hash calls, made at once, for the registry's comparison of its data).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hsm_api::{
    BatchItem, BatchOutput, Component, Dispersion, ExportedKey, Factor, Hsm, HsmStatus,
    IssuedShare, Kcv, KeyBlockVersion, KeySpec, KeyToken, KeyUsage, LmkInit, LmkRotation, LmkShare,
    Result, UnsealProgress, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
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
use crate::common::harness::{
    PSAM_LINE, STATION, TestKms, card_identity, local_hsm, reason, sm_request, tr31_request,
};

/// The `hsm-sim` service in this process.
struct HsmProcess {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), hsm_sim::remote::SetupError>>,
}

impl HsmProcess {
    fn start<H: Hsm>(backend: &Arc<H>, pki: &DevPki, listener: TcpListener) -> HsmProcess {
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

/// The HSM behind the server, counting the calls it receives (one per RPC).
struct Counting {
    inner: Arc<LocalHsm>,
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl Counting {
    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
    }

    /// The calls since the last `take`, but the audit seals (one `mac` per store commit,
    /// shared by every request of the commit).
    fn take(&self) -> BTreeMap<&'static str, usize> {
        let mut calls = std::mem::take(&mut *self.calls.lock().unwrap());
        calls.remove("mac");
        calls
    }
}

impl Hsm for Counting {
    fn is_secure(&self) -> bool {
        self.inner.is_secure()
    }
    async fn status(&self) -> Result<HsmStatus> {
        self.count("status");
        self.inner.status().await
    }
    async fn take_secret_part(&self, set: &str, index: u8) -> Result<IssuedShare> {
        self.count("take_secret_part");
        self.inner.take_secret_part(set, index).await
    }
    async fn init_lmk(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        self.count("init_lmk");
        self.inner.init_lmk(threshold, shares).await
    }
    async fn unseal(&self, share: LmkShare) -> Result<UnsealProgress> {
        self.count("unseal");
        self.inner.unseal(share).await
    }
    async fn unseal_reset(&self) -> Result<()> {
        self.count("unseal_reset");
        self.inner.unseal_reset().await
    }
    async fn seal(&self) -> Result<()> {
        self.count("seal");
        self.inner.seal().await
    }
    async fn tamper(&self) -> Result<()> {
        self.count("tamper");
        self.inner.tamper().await
    }
    async fn self_test(&self) -> Result<()> {
        self.count("self_test");
        self.inner.self_test().await
    }
    async fn generate_key(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.count("generate_key");
        self.inner.generate_key(spec).await
    }
    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        self.count("form_key");
        self.inner.form_key(spec, components).await
    }
    async fn add_component(
        &self,
        into: hsm_api::Accumulation,
        component: Component,
    ) -> Result<hsm_api::Accumulated> {
        self.count("add_component");
        self.inner.add_component(into, component).await
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        self.count("import_key");
        self.inner.import_key(kek, block, usage).await
    }
    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.count("export_key");
        self.inner.export_key(kek, key, version).await
    }
    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        self.count("derive_key");
        self.inner
            .derive_key(parent, method, factors, child_usage)
            .await
    }
    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.count("write_key_command");
        self.inner.write_key_command(request).await
    }
    async fn batch(&self, items: Vec<BatchItem>) -> Result<Vec<Result<BatchOutput>>> {
        self.count("batch");
        self.inner.batch(items).await
    }
    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        self.count("kcv");
        self.inner.kcv(key).await
    }
    async fn sign(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.count("sign");
        self.inner.sign(key, data).await
    }
    async fn public_key(&self, key: &KeyToken) -> Result<Vec<u8>> {
        self.count("public_key");
        self.inner.public_key(key).await
    }
    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.count("random");
        self.inner.random(len).await
    }
    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<[u8; hsm_api::INDEX_HASH_LEN]>> {
        self.count("index_hashes");
        self.inner.index_hashes(key, domain, values).await
    }
    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::ClearField>,
    ) -> Result<Vec<hsm_api::SealedField>> {
        self.count("seal_fields");
        self.inner.seal_fields(key, fields).await
    }
    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::SealedField>,
    ) -> Result<Vec<hsm_api::ClearField>> {
        self.count("open_fields");
        self.inner.open_fields(key, fields).await
    }
    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.count("mac");
        self.inner.mac(key, data).await
    }
    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        self.count("verify_mac");
        self.inner.verify_mac(key, data, mac).await
    }
    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        self.count("prepare_lmk_rotation");
        self.inner
            .prepare_lmk_rotation(tokens, threshold, shares)
            .await
    }
    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> Result<Vec<KeyToken>> {
        self.count("rewrap_for_rotation");
        self.inner.rewrap_for_rotation(new_lmk_kcv, tokens).await
    }
    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        self.count("commit_lmk_rotation");
        self.inner.commit_lmk_rotation(new_lmk_kcv).await
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: hsm_api::Algorithm,
        components: u8,
    ) -> Result<hsm_api::IssuedComponents> {
        self.count("issue_transport_key_components");
        self.inner
            .issue_transport_key_components(algorithm, components)
            .await
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: hsm_api::Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        self.count("issue_transport_key_under");
        self.inner.issue_transport_key_under(kek, algorithm).await
    }

    async fn backup_key(
        &self,
        key: &KeyToken,
        threshold: u8,
        shares: u8,
    ) -> Result<hsm_api::KeyBackup> {
        self.count("backup_key");
        self.inner.backup_key(key, threshold, shares).await
    }

    async fn restore_share(
        &self,
        into: hsm_api::Restoration,
        share: LmkShare,
    ) -> Result<hsm_api::Restored> {
        self.count("restore_share");
        self.inner.restore_share(into, share).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_set_and_a_psam_set_are_one_hsm_round_trip_each() {
    let hsm_pki = DevPki::generate().unwrap();
    let backend = Arc::new(Counting {
        inner: local_hsm(),
        calls: Mutex::new(BTreeMap::new()),
    });
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
    let mut line = kms.client(PSAM_LINE);
    let one_batch = BTreeMap::from([("batch", 1)]);
    // A card's release also hashes the request's card number and SSN (two calls, made at
    // once) to compare them with the registry's index hashes (issue 9).
    let card_batch = BTreeMap::from([("batch", 1), ("index_hashes", 2)]);

    for demo in &published().card {
        let card = || card_identity(demo, &atr());
        let template = crate::common::chain::template(&demo.template);
        backend.take();

        let set = station
            .card
            .inject_card_keys(tr31_request(card(), &demo.template))
            .await
            .unwrap()
            .into_inner();
        // Every key but the master keys, which leave only inside WRITE KEY commands.
        let tr31_keys = template
            .keys()
            .iter()
            .filter(|k| !template.is_master_key(k))
            .count();
        assert_eq!(set.keys.len(), tr31_keys);
        assert_eq!(backend.take(), card_batch, "{}: TR-31 set", demo.template);

        let challenge_len = if template.algorithm().to_string() == "sm4" {
            16
        } else {
            8
        };
        let challenges: Vec<(&str, Vec<u8>)> = template
            .write_order()
            .map(|k| (k.name.as_str(), vec![0x42; challenge_len]))
            .collect();
        let set = station
            .card
            .inject_card_keys(sm_request(card(), &demo.template, &challenges))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.keys.len(), template.keys().len());
        assert_eq!(
            backend.take(),
            card_batch,
            "{}: WRITE KEY set",
            demo.template
        );

        station
            .card
            .initialise_blank_card(pb::InitialiseBlankCardRequest {
                card: Some(card()),
                template_id: demo.template.clone(),
                challenge: vec![0x42; challenge_len],
            })
            .await
            .unwrap();
        assert_eq!(backend.take(), card_batch, "{}: blank card", demo.template);

        let serial = format!("GZPSAM{}", demo.template.replace(['.', '-'], ""));
        line.psam
            .register_psams(pb::RegisterPsamsRequest {
                serials: vec![serial.clone()],
                region: "440100".to_owned(),
                template_id: demo.template.clone(),
                psam_profile: String::new(),
            })
            .await
            .unwrap();
        backend.take();
        let set = line
            .psam
            .get_psam_key_set(pb::GetPsamKeySetRequest { serial })
            .await
            .unwrap()
            .into_inner();
        assert!(set.keys.len() > 1);
        assert_eq!(backend.take(), one_batch, "{}: PSAM set", demo.template);
    }
    process.stop().await;
}
