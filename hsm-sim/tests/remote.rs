//! The HSM as a separate process, over gRPC with mutual TLS.
//!
//! - `the_hsm_process_serves_the_domain_chain_and_survives_a_restart`: the real `hsm-sim`
//!   binary; the DOMAIN.md §2 chain formed, derived and exported over the wire; killed →
//!   `Unavailable`; restarted on the same state → sealed, unsealed by 2 shares over the wire,
//!   same KCVs, with the same `RemoteHsm`; stops cleanly on SIGTERM.
//! - `only_service_certificates_of_the_ca_are_admitted`: a station certificate is refused with
//!   `PERMISSION_DENIED` before the HSM is touched; a foreign CA's and no certificate at all fail
//!   the first RPC; `RemoteHsm` reports all of them as `Unavailable`.
//! - `errors_survive_the_wire_variant_for_variant`: the same scenario of refusals on a
//!   `LocalHsm` directly and through `serve` + `RemoteHsm` gives equal errors.
//! - `the_binary_refuses_to_start_without_client_ca_or_with_bad_pem`: fail closed at start-up.

pub(crate) mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hsm_api::{
    Accumulated, Accumulation, Algorithm, Component, Dispersion, Error, Exportability, Factor,
    HierarchyLevel, Hsm, HsmState, Kcv, KcvMethod, KeyBlockVersion, KeySpec, KeyToken, KeyUsage,
    ListSignature, LmkShare, UnsealProgress,
};
use hsm_sim::crypto::{SecretKey, kcv};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use hsm_sim::remote::proto::hsm_client::HsmClient;
use hsm_sim::remote::{ClientTls, RemoteHsm, ServerTls, serve};
use pki::{Credential, Pki};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

/// Upper bound for the process to report its socket (a hung start fails instead of hanging).
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------- the process

/// A running `hsm-sim serve`, killed when dropped.
struct HsmProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl HsmProcess {
    /// Starts the binary and waits for its `listening on` line.
    async fn start(pki: &Pki, state_dir: &Path, listen: &str, log: PathBuf) -> HsmProcess {
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
            .arg("serve")
            .args(["--listen", listen])
            .arg("--cert")
            .arg(&pki.server.cert)
            .arg("--key")
            .arg(&pki.server.key)
            .arg("--client-ca")
            .arg(&pki.ca)
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
            .await
            .expect("hsm-sim did not report its socket in time")
            .unwrap();
        let Some(line) = line else {
            panic!(
                "hsm-sim exited before listening:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        HsmProcess {
            child,
            addr,
            log,
            _stdout: stdout,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL: a crash, nothing is flushed or closed by the process itself.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .expect("hsm-sim did not stop on SIGTERM")
            .unwrap();
        if !status.success() {
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        status
    }
}

fn client_tls(pki: &Pki, who: &Credential) -> ClientTls {
    ClientTls::from_pem_files(&who.cert, &who.key, &pki.ca).unwrap()
}

fn remote(endpoint: &str, pki: &Pki, who: &Credential) -> RemoteHsm {
    RemoteHsm::connect_lazy(endpoint, client_tls(pki, who)).unwrap()
}

// ------------------------------------------------------------------------- the domain chain

const ROOT_HEX: &str = "11111111111111112222222222222222";
/// Two components whose XOR is [`ROOT_HEX`].
const ROOT_COMPONENTS: [&str; 2] = [
    "0123456789ABCDEFFEDCBA9876543210",
    "1032547698BADCFEDCFE98BA54761032",
];

fn spec(algorithm: Algorithm, usage: KeyUsage, exportability: Exportability) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportability,
    }
}

/// A component with the KCV its custodian would read from paper (or a wrong one).
fn component(hex: &str, kcv_ok: bool) -> Component {
    let mut kcv = kcv::compute_default(&SecretKey::from_hex(Algorithm::Tdes2, hex).unwrap())
        .unwrap()
        .value()
        .to_vec();
    if !kcv_ok {
        kcv[0] ^= 0x01;
    }
    Component::new(
        Zeroizing::new(hex.to_owned()),
        Kcv::from_parts(KcvMethod::EncryptZeros, kcv),
    )
}

fn root_components() -> Vec<Component> {
    let [a, b] = ROOT_COMPONENTS.map(|c| hex::decode(c).unwrap());
    let xor: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
    assert_eq!(hex::encode_upper(xor), ROOT_HEX);
    ROOT_COMPONENTS.iter().map(|c| component(c, true)).collect()
}

fn factors(hex: &[&str]) -> Vec<Factor> {
    hex.iter().map(|f| Factor::from_hex(f).unwrap()).collect()
}

const F1: &str = "3434303030307368";
const F2: &str = "3434303130307378";
const F3: &str = "86843202AD932A48";

struct Chain {
    root: KeyToken,
    province: KeyToken,
    city: KeyToken,
    card: KeyToken,
}

/// DOMAIN.md §2: the test national root from two components, and its descendants.
async fn form_domain_chain<H: Hsm>(hsm: &H) -> Chain {
    let derivation = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let root = hsm.form_key(derivation, root_components()).await.unwrap();
    assert_eq!(root.kcv.to_hex(), "D2B91C");
    let province = hsm
        .derive_key(
            &root.token,
            Dispersion::PbocTdes,
            &factors(&[F1]),
            KeyUsage::CardDerivation(HierarchyLevel::Province),
        )
        .await
        .unwrap();
    assert_eq!(province.kcv.to_hex(), "E47B1C");
    let city = hsm
        .derive_key(
            &province.token,
            Dispersion::PbocTdes,
            &factors(&[F2]),
            KeyUsage::CardDerivation(HierarchyLevel::City),
        )
        .await
        .unwrap();
    assert_eq!(city.kcv.to_hex(), "AEA797");
    // All three levels in one call from the root give the same card key as level by level.
    let card = hsm
        .derive_key(
            &root.token,
            Dispersion::PbocTdes,
            &factors(&[F1, F2, F3]),
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    assert_eq!(card.kcv.to_hex(), "32CD7C");
    let card_from_city = hsm
        .derive_key(
            &city.token,
            Dispersion::PbocTdes,
            &factors(&[F3]),
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    assert_eq!(card_from_city.kcv, card.kcv);
    Chain {
        root: root.token,
        province: province.token,
        city: city.token,
        card: card.token,
    }
}

async fn assert_chain_kcvs<H: Hsm>(hsm: &H, chain: &Chain) {
    for (token, kcv) in [
        (&chain.root, "D2B91C"),
        (&chain.province, "E47B1C"),
        (&chain.city, "AEA797"),
        (&chain.card, "32CD7C"),
    ] {
        assert_eq!(hsm.kcv(token).await.unwrap().to_hex(), kcv);
    }
}

/// A token whose MAC no longer verifies: its last hex digit changed.
fn tampered(token: &KeyToken) -> KeyToken {
    let mut text = token.as_str().to_owned();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    KeyToken::from_stored(text)
}

fn share(text: &str) -> LmkShare {
    LmkShare::new(Zeroizing::new(text.to_owned()))
}

// -------------------------------------------------------------------------------- the tests

#[tokio::test]
async fn the_hsm_process_serves_the_domain_chain_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();

    let process =
        HsmProcess::start(&pki, &state_dir, "127.0.0.1:0", dir.path().join("1.log")).await;
    let addr = process.addr;
    let hsm = remote(&process.endpoint(), &pki, &pki.kms);
    assert!(!hsm.is_secure());

    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Uninitialised);
    assert!(!status.secure);
    let junk = KeyToken::from_stored("D0016".to_owned());
    assert_eq!(hsm.kcv(&junk).await, Err(Error::Uninitialised));

    // The LMK ceremony over the wire: 2-of-3.
    let init = hsm_sim::handout::dangerous_init(&hsm, 2, 3).await.unwrap();
    assert_eq!(init.shares.len(), 3);
    assert_eq!(
        hsm.status().await.unwrap().lmk_kcv,
        Some(init.lmk_kcv.clone())
    );
    assert_eq!(
        hsm.init_lmk(2, 3).await.unwrap_err(),
        Error::AlreadyInitialised
    );

    // DOMAIN.md §2 over the wire.
    let chain = form_domain_chain(&hsm).await;
    assert_chain_kcvs(&hsm, &chain).await;

    // Export the card key to a station under its AES key-block protection key.
    let kbpk = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let exported = hsm
        .export_key(&kbpk.token, &chain.card, KeyBlockVersion::D)
        .await
        .unwrap();
    assert_eq!(exported.kcv.to_hex(), "32CD7C");
    assert!(exported.block.starts_with('D'));
    // ... and the block imports back to the same key.
    let imported = hsm
        .import_key(&kbpk.token, &exported.block, KeyUsage::CardKey)
        .await
        .unwrap();
    assert_eq!(imported.kcv.to_hex(), "32CD7C");

    // A published list signed over the wire verifies under the public key from the wire.
    let signer = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::ListSigning(ListSignature::EcdsaP256),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let signature = hsm.sign(&signer.token, b"blacklist v1").await.unwrap();
    let public = hsm.public_key(&signer.token).await.unwrap();
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
    assert!(
        p256::ecdsa::signature::Verifier::verify(&verifying, b"blacklist v1", &signature).is_ok()
    );
    // And an SM2 one: the scheme crosses the wire in the usage and stays in the token.
    let sm2_signer = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::ListSigning(ListSignature::Sm2),
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let signature = hsm.sign(&sm2_signer.token, b"blacklist v1").await.unwrap();
    let public = hsm.public_key(&sm2_signer.token).await.unwrap();
    let verifying =
        sm2::dsa::VerifyingKey::from_sec1_bytes(ListSignature::SM2_USER_ID, &public).unwrap();
    let signature = sm2::dsa::Signature::from_slice(&signature).unwrap();
    assert!(sm2::dsa::signature::Verifier::verify(&verifying, b"blacklist v1", &signature).is_ok());
    assert!(
        sm2::dsa::signature::Verifier::verify(&verifying, b"blacklist v2", &signature).is_err()
    );
    assert!(matches!(
        hsm.sign(&kbpk.token, b"x").await,
        Err(Error::WrongUsage { .. })
    ));
    assert!(matches!(
        hsm.export_key(&kbpk.token, &signer.token, KeyBlockVersion::D)
            .await,
        Err(Error::WrongUsage { .. } | Error::NotExportable)
    ));

    registry_over_the_wire(&hsm).await;

    // Typed errors survive the wire.
    assert_eq!(
        hsm.export_key(&kbpk.token, &chain.root, KeyBlockVersion::D)
            .await
            .unwrap_err(),
        Error::NotExportable
    );
    assert!(matches!(
        hsm.derive_key(
            &kbpk.token,
            Dispersion::PbocTdes,
            &factors(&[F1]),
            KeyUsage::CardKey,
        )
        .await,
        Err(Error::WrongUsage { .. })
    ));
    let derivation = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let bad = vec![
        component(ROOT_COMPONENTS[0], true),
        component(ROOT_COMPONENTS[1], false),
    ];
    assert_eq!(
        hsm.form_key(derivation, bad).await.unwrap_err(),
        Error::ComponentKcv { index: 2 }
    );
    assert_eq!(
        hsm.kcv(&tampered(&chain.card)).await.unwrap_err(),
        Error::KeyBlockMac
    );

    // A crash: every call is Unavailable while the process is down.
    process.kill().await;
    assert_eq!(hsm.status().await.unwrap_err(), Error::Unavailable);
    assert_eq!(hsm.kcv(&chain.card).await.unwrap_err(), Error::Unavailable);
    assert_eq!(
        hsm.unseal(share("x")).await.unwrap_err(),
        Error::Unavailable
    );

    // Back on the same port and state: sealed, and the same client reconnects by itself.
    let process = HsmProcess::start(
        &pki,
        &state_dir,
        &addr.to_string(),
        dir.path().join("2.log"),
    )
    .await;
    let status = hsm.status().await.unwrap();
    assert_eq!(status.state, HsmState::Sealed);
    assert_eq!(status.lmk_kcv, Some(init.lmk_kcv.clone()));
    assert_eq!(hsm.kcv(&chain.card).await.unwrap_err(), Error::Sealed);

    // Unseal with two of the three shares, over the wire.
    let mut shares = init.shares.into_iter().map(|issued| issued.share);
    let first = shares.next().unwrap();
    let third = shares.nth(1).unwrap();
    assert_eq!(
        hsm.unseal(first).await.unwrap(),
        UnsealProgress {
            submitted: 1,
            threshold: 2,
            unsealed: false
        }
    );
    assert!(matches!(
        hsm.unseal(share("not a share")).await,
        Err(Error::Share(_))
    ));
    let progress = hsm.unseal(third).await.unwrap();
    assert!(progress.unsealed);
    assert_eq!(progress.threshold, 2);
    assert_eq!(hsm.status().await.unwrap().state, HsmState::Operational);

    // The same tokens, the same keys.
    assert_chain_kcvs(&hsm, &chain).await;
    let card = hsm
        .derive_key(
            &chain.city,
            Dispersion::PbocTdes,
            &factors(&[F3]),
            KeyUsage::CardKey,
        )
        .await
        .unwrap();
    assert_eq!(card.kcv.to_hex(), "32CD7C");

    // Sealed over the wire, then a clean stop on SIGTERM.
    hsm.seal().await.unwrap();
    assert_eq!(hsm.kcv(&chain.card).await.unwrap_err(), Error::Sealed);
    assert!(process.terminate().await.success());
}

#[tokio::test]
async fn only_service_certificates_of_the_ca_are_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let process =
        HsmProcess::start(&pki, &state_dir, "127.0.0.1:0", dir.path().join("hsm.log")).await;
    let endpoint = process.endpoint();

    let kms = remote(&endpoint, &pki, &pki.kms);
    kms.init_lmk(2, 3).await.unwrap();

    // A station of the right CA: TLS accepts it, the HSM's rule does not.
    let station = raw_client(&endpoint, &pki, &pki.station).await;
    let refused = station
        .clone()
        .seal(hsm_sim::remote::proto::SealRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused
            .metadata()
            .get_bin(hsm_sim::remote::ERROR_METADATA_KEY)
            .is_none()
    );
    let refused = station
        .clone()
        .status(hsm_sim::remote::proto::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // The seal attempt never reached the HSM.
    assert_eq!(kms.status().await.unwrap().state, HsmState::Operational);
    // Through the trait, a refused identity is an unavailable HSM.
    let as_station = remote(&endpoint, &pki, &pki.station);
    assert_eq!(as_station.seal().await.unwrap_err(), Error::Unavailable);

    // A service certificate from a CA the HSM does not trust: the first RPC fails (under TLS
    // 1.3 the client's handshake completes before the server rejects its certificate).
    let foreign = raw_client(&endpoint, &pki, &pki.foreign).await;
    let refused = foreign
        .clone()
        .seal(hsm_sim::remote::proto::SealRequest {})
        .await
        .unwrap_err();
    assert!(transport_failure(&refused), "{refused:?}");
    let as_foreign = remote(&endpoint, &pki, &pki.foreign);
    assert_eq!(as_foreign.seal().await.unwrap_err(), Error::Unavailable);

    // No client certificate at all.
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    let anonymous = Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .unwrap()
        .connect_lazy();
    let refused = HsmClient::new(anonymous)
        .seal(hsm_sim::remote::proto::SealRequest {})
        .await
        .unwrap_err();
    assert!(transport_failure(&refused), "{refused:?}");

    // A plain-text endpoint is refused by the client before anything is sent.
    assert!(
        RemoteHsm::connect_lazy(
            &endpoint.replace("https", "http"),
            client_tls(&pki, &pki.kms)
        )
        .is_err()
    );

    assert_eq!(kms.status().await.unwrap().state, HsmState::Operational);
    assert!(process.terminate().await.success());
}

/// How a TLS refusal shows on the client's first RPC: the connection is closed under it (the
/// exact code depends on when the server's alert arrives), never an answer of the service.
fn transport_failure(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unknown | Code::Unavailable | Code::Cancelled
    ) && status
        .metadata()
        .get_bin(hsm_sim::remote::ERROR_METADATA_KEY)
        .is_none()
}

/// Over the wire, no answer carries two custodians' shares: `InitLmk` and `PrepareLmkRotation`
/// answer with the KCV and the set's name (their old `shares` field stays empty), each
/// `TakeSecretPart` answer is one share, a second take of it is `PART_NOT_AVAILABLE` (the
/// error rebuilt exactly from the metadata), and the rotation cannot be committed before every
/// new share has been taken.
#[tokio::test]
async fn each_answer_carries_at_most_one_share() {
    use hsm_sim::remote::proto;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let process =
        HsmProcess::start(&pki, &state_dir, "127.0.0.1:0", dir.path().join("hsm.log")).await;
    let endpoint = process.endpoint();
    let mut raw = raw_client(&endpoint, &pki, &pki.kms).await;
    let kms = remote(&endpoint, &pki, &pki.kms);

    let init = raw
        .init_lmk(proto::InitLmkRequest {
            threshold: 2,
            shares: 3,
        })
        .await
        .unwrap()
        .into_inner();
    #[allow(deprecated)]
    let old_field = init.shares.len();
    assert_eq!(old_field, 0, "no share in the answer to InitLmk");
    let parts = init.parts.unwrap();
    assert_eq!((parts.count, parts.threshold), (3, 2));
    let mut taken = Vec::new();
    for index in 1..=3 {
        let part = raw
            .take_secret_part(proto::TakeSecretPartRequest {
                set: parts.set.clone(),
                index,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(part.share.starts_with("lmk1-"), "one share per answer");
        assert!(!taken.contains(&part.share));
        taken.push(part.share);
    }
    let again = raw
        .take_secret_part(proto::TakeSecretPartRequest {
            set: parts.set.clone(),
            index: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        kms.take_secret_part(&parts.set, 2).await.unwrap_err(),
        Error::PartNotAvailable
    );

    // A rotation: the same, and no commit before the last new share has been taken. A token
    // re-wrapped after the prepare, over the wire, under the prepared LMK.
    let key = kms
        .generate_key(KeySpec {
            algorithm: Algorithm::Aes256,
            usage: KeyUsage::AuditMac,
            exportability: Exportability::NonExportable,
        })
        .await
        .unwrap();
    let rotation = kms.prepare_lmk_rotation(Vec::new(), 2, 2).await.unwrap();
    let rewrapped = kms
        .rewrap_for_rotation(&rotation.lmk_kcv, vec![key.token.clone()])
        .await
        .unwrap();
    assert_eq!(
        kms.rewrap_for_rotation(&key.kcv, vec![key.token.clone()])
            .await
            .unwrap_err(),
        Error::RotationNotPrepared
    );
    let new_parts = rotation.parts.clone().unwrap();
    assert_eq!(
        kms.commit_lmk_rotation(&rotation.lmk_kcv)
            .await
            .unwrap_err(),
        Error::PartNotAvailable
    );
    let first = kms.take_secret_part(&new_parts.set, 1).await.unwrap();
    assert_eq!(
        kms.commit_lmk_rotation(&rotation.lmk_kcv)
            .await
            .unwrap_err(),
        Error::PartNotAvailable
    );
    let second = kms.take_secret_part(&new_parts.set, 2).await.unwrap();
    assert_ne!(first.share.secret_text(), second.share.secret_text());
    kms.commit_lmk_rotation(&rotation.lmk_kcv).await.unwrap();
    assert_eq!(kms.status().await.unwrap().lmk_kcv, Some(rotation.lmk_kcv));
    assert_eq!(kms.kcv(&rewrapped[0]).await.unwrap(), key.kcv);
    assert_eq!(kms.kcv(&key.token).await.unwrap_err(), Error::KeyBlockMac);
    assert!(process.terminate().await.success());
}

async fn raw_client(
    endpoint: &str,
    pki: &Pki,
    who: &Credential,
) -> HsmClient<tonic::transport::Channel> {
    let tls = ClientTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(&who.cert).unwrap(),
            std::fs::read(&who.key).unwrap(),
        ))
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()));
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    HsmClient::new(channel)
}

/// A scenario of refusals, each labelled; run on any HSM.
async fn refusals<H: Hsm>(hsm: &H) -> Vec<(&'static str, Error)> {
    let kbpk_spec = spec(
        Algorithm::Aes256,
        KeyUsage::KeyBlockProtection,
        Exportability::NonExportable,
    );
    let derivation = spec(
        Algorithm::Tdes2,
        KeyUsage::CardDerivation(HierarchyLevel::National),
        Exportability::NonExportable,
    );
    let mut errors = Vec::new();
    let mut refused = |label: &'static str, result: Result<(), Error>| {
        errors.push((label, result.expect_err(label)));
    };

    refused("uninitialised", hsm.generate_key(kbpk_spec).await.map(drop));
    refused("threshold > shares", hsm.init_lmk(4, 3).await.map(drop));
    let init = hsm_sim::handout::dangerous_init(hsm, 2, 3).await.unwrap();
    refused("initialised twice", hsm.init_lmk(2, 3).await.map(drop));
    let set = init.parts.clone().unwrap().set;
    refused(
        "share taken twice",
        hsm.take_secret_part(&set, 1).await.map(drop),
    );

    let kbpk = hsm.generate_key(kbpk_spec).await.unwrap();
    let bad = vec![
        component(ROOT_COMPONENTS[0], true),
        component(ROOT_COMPONENTS[1], false),
    ];
    refused(
        "component KCV",
        hsm.form_key(derivation, bad).await.map(drop),
    );
    let one = vec![component(ROOT_COMPONENTS[0], true)];
    refused(
        "one component",
        hsm.form_key(derivation, one).await.map(drop),
    );
    // One component at a time (the same code behind both): each checked as it arrives; a
    // token is no partial key, a partial key is no key; the result is the same root.
    let begin = || Accumulation::Begin {
        spec: derivation,
        components: 2,
    };
    refused(
        "component KCV, one at a time",
        hsm.add_component(begin(), component(ROOT_COMPONENTS[0], false))
            .await
            .map(drop),
    );
    refused(
        "a token as a partial key",
        hsm.add_component(
            Accumulation::Continue(kbpk.token.clone()),
            component(ROOT_COMPONENTS[0], true),
        )
        .await
        .map(drop),
    );
    let Accumulated::Partial(partial) = hsm
        .add_component(begin(), component(ROOT_COMPONENTS[0], true))
        .await
        .unwrap()
    else {
        panic!("one of two components is a partial key")
    };
    assert_eq!((partial.received, partial.components), (1, 2));
    refused(
        "a partial key as a key",
        hsm.kcv(&partial.token).await.map(drop),
    );
    let Accumulated::Formed(root) = hsm
        .add_component(
            Accumulation::Continue(partial.token),
            component(ROOT_COMPONENTS[1], true),
        )
        .await
        .unwrap()
    else {
        panic!("the second of two components forms the key")
    };
    assert_eq!(root.kcv.to_hex(), "D2B91C");
    let chain = form_domain_chain(hsm).await;
    refused(
        "derive from a KBPK",
        hsm.derive_key(
            &kbpk.token,
            Dispersion::PbocTdes,
            &factors(&[F1]),
            KeyUsage::CardKey,
        )
        .await
        .map(drop),
    );
    refused(
        "SM4 dispersion of TDES",
        hsm.derive_key(
            &chain.city,
            Dispersion::Sm4Complement,
            &factors(&[F3]),
            KeyUsage::CardKey,
        )
        .await
        .map(drop),
    );
    refused(
        "export non-exportable",
        hsm.export_key(&kbpk.token, &chain.root, KeyBlockVersion::D)
            .await
            .map(drop),
    );
    refused(
        "version B under an AES KBPK",
        hsm.export_key(&kbpk.token, &chain.card, KeyBlockVersion::B)
            .await
            .map(drop),
    );
    refused(
        "tampered token",
        hsm.kcv(&tampered(&chain.card)).await.map(drop),
    );
    refused(
        "truncated token",
        hsm.kcv(&KeyToken::from_stored("D0016".to_owned()))
            .await
            .map(drop),
    );
    refused(
        "import garbage",
        hsm.import_key(&kbpk.token, "not a key block", KeyUsage::CardKey)
            .await
            .map(drop),
    );
    refused("no random bytes", hsm.random(0).await.map(drop));
    refused("too many random bytes", hsm.random(4097).await.map(drop));
    let audit = hsm
        .generate_key(spec(
            Algorithm::Aes256,
            KeyUsage::AuditMac,
            Exportability::NonExportable,
        ))
        .await
        .unwrap();
    let mut mac = hsm.mac(&audit.token, b"audit record").await.unwrap();
    hsm.verify_mac(&audit.token, b"audit record", &mac)
        .await
        .unwrap();
    mac[0] ^= 1;
    refused(
        "wrong MAC",
        hsm.verify_mac(&audit.token, b"audit record", &mac).await,
    );
    refused(
        "MAC with a card key",
        hsm.mac(&chain.card, b"x").await.map(drop),
    );
    refused(
        "sign with a card key",
        hsm.sign(&chain.card, b"x").await.map(drop),
    );
    refused(
        "commit without prepare",
        hsm.commit_lmk_rotation(&init.lmk_kcv).await,
    );

    hsm.seal().await.unwrap();
    refused("sealed", hsm.kcv(&chain.card).await.map(drop));
    refused(
        "garbage share",
        hsm.unseal(share("garbage")).await.map(drop),
    );
    let mut shares = init.shares.into_iter().map(|issued| issued.share);
    let first = shares.next().unwrap();
    let again = LmkShare::new(Zeroizing::new(first.secret_text().to_owned()));
    hsm.unseal(first).await.unwrap();
    refused("share repeated", hsm.unseal(again).await.map(drop));
    hsm.unseal(shares.next().unwrap()).await.unwrap();
    assert_chain_kcvs(hsm, &chain).await;
    hsm.tamper().await.unwrap();
    refused("tampered HSM", hsm.random(8).await.map(drop));
    errors
}

#[tokio::test]
async fn errors_survive_the_wire_variant_for_variant() {
    let local = refusals(&LocalHsm::open(LocalHsmConfig::default()).unwrap()).await;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, &pki.ca).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        Arc::new(LocalHsm::open(LocalHsmConfig::default()).unwrap()),
        listener,
        tls,
        async {
            stopped.await.ok();
        },
    ));
    // Checked against the name, not the address, this time.
    let hsm = RemoteHsm::connect_lazy(
        &format!("https://{addr}"),
        client_tls(&pki, &pki.kms).with_domain_name("localhost"),
    )
    .unwrap();
    let wire = refusals(&hsm).await;

    assert_eq!(wire, local);
    let by_label = |label: &str| {
        wire.iter()
            .find(|(l, _)| *l == label)
            .map(|(_, e)| e.clone())
            .unwrap()
    };
    assert_eq!(by_label("uninitialised"), Error::Uninitialised);
    assert_eq!(by_label("initialised twice"), Error::AlreadyInitialised);
    assert!(matches!(
        by_label("threshold > shares"),
        Error::Count { .. }
    ));
    assert_eq!(by_label("component KCV"), Error::ComponentKcv { index: 2 });
    assert!(matches!(
        by_label("derive from a KBPK"),
        Error::WrongUsage { .. }
    ));
    assert!(matches!(
        by_label("SM4 dispersion of TDES"),
        Error::Unsupported { .. }
    ));
    assert_eq!(by_label("export non-exportable"), Error::NotExportable);
    assert_eq!(by_label("tampered token"), Error::KeyBlockMac);
    assert_eq!(by_label("wrong MAC"), Error::Verification);
    assert_eq!(
        by_label("commit without prepare"),
        Error::RotationNotPrepared
    );
    assert_eq!(by_label("sealed"), Error::Sealed);
    assert!(matches!(by_label("garbage share"), Error::Share(_)));
    assert!(matches!(by_label("share repeated"), Error::Share(_)));
    assert_eq!(by_label("tampered HSM"), Error::Sealed);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // The server has stopped: the client says so.
    assert_eq!(hsm.status().await.unwrap_err(), Error::Unavailable);
}

#[test]
fn the_binary_refuses_to_start_without_client_ca_or_with_bad_pem() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hsm-sim"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let server = [
        "--cert".as_ref(),
        pki.server.cert.as_os_str(),
        "--key".as_ref(),
        pki.server.key.as_os_str(),
    ];

    // No client CA: refused by the argument parser, nothing bound.
    let out = run(&server);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-ca"));
    assert!(out.stdout.is_empty());

    // A client CA that is not a certificate, or not there.
    let mut args = server.to_vec();
    args.extend(["--client-ca".as_ref(), pki.kms.key.as_os_str()]);
    let out = run(&args);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let missing = dir.path().join("missing.pem");
    let mut args = server.to_vec();
    args.extend(["--client-ca".as_ref(), missing.as_os_str()]);
    let out = run(&args);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    // A key that does not belong to the certificate.
    let args = [
        "--cert".as_ref(),
        pki.server.cert.as_os_str(),
        "--key".as_ref(),
        pki.kms.key.as_os_str(),
        "--client-ca".as_ref(),
        pki.ca.as_os_str(),
    ];
    let out = run(&args);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn a_batch_over_the_wire_answers_as_the_single_operations_do() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, &pki.ca).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let backend = LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap();
    let server = tokio::spawn(serve(Arc::new(backend), listener, tls, async {
        stopped.await.ok();
    }));
    let hsm: &'static RemoteHsm = Box::leak(Box::new(remote(
        &format!("https://localhost:{}", addr.port()),
        &pki,
        &pki.kms,
    )));
    // Good and bad items, every error variant of the scenario rebuilt from the wire.
    crate::batch::batch_equals_single_operations(hsm).await;
    // Transport keys issued by the HSM, over the wire (before the refusals seal it).
    crate::issue::issued_transport_keys(hsm).await;
    crate::batch::whole_batch_refusals(hsm).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The registry's personal data over the wire: index hashes are `HMAC-SHA256(key, domain ‖ 0 ‖
/// value)` of a key formed from known components (computed here with `hmac`), sealed fields
/// open with their binding only, and each key does its own job only.
async fn registry_over_the_wire<H: Hsm>(hsm: &H) {
    use hmac::{KeyInit, Mac};
    const KEY: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";
    const MASK: &str = "5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A";
    let aes = |hex: &str| {
        let kcv =
            kcv::compute_default(&SecretKey::from_hex(Algorithm::Aes256, hex).unwrap()).unwrap();
        Component::new(Zeroizing::new(hex.to_owned()), kcv)
    };
    let first: Vec<u8> = hex::decode(KEY)
        .unwrap()
        .iter()
        .zip(hex::decode(MASK).unwrap())
        .map(|(k, m)| k ^ m)
        .collect();
    let components = || vec![aes(&hex::encode_upper(&first)), aes(MASK)];
    let index = hsm
        .form_key(
            spec(
                Algorithm::Aes256,
                KeyUsage::RegistryIndex,
                Exportability::NonExportable,
            ),
            components(),
        )
        .await
        .unwrap();
    let data = hsm
        .form_key(
            spec(
                Algorithm::Aes256,
                KeyUsage::RegistryData,
                Exportability::NonExportable,
            ),
            components(),
        )
        .await
        .unwrap();
    let values = vec![b"440103199001011236".to_vec(), b"GZ0000012".to_vec()];
    let hashes = hsm
        .index_hashes(&index.token, "ssn", values.clone())
        .await
        .unwrap();
    for (value, hash) in values.iter().zip(&hashes) {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&hex::decode(KEY).unwrap())
                .unwrap();
        mac.update(b"ssn\0");
        mac.update(value);
        assert_eq!(hash.as_slice(), mac.finalize().into_bytes().as_slice());
    }
    let fields = vec![hsm_api::ClearField {
        aad: b"card/A/name".to_vec(),
        value: "梁嘉欣".as_bytes().to_vec(),
    }];
    let sealed = hsm.seal_fields(&data.token, fields.clone()).await.unwrap();
    assert_eq!(sealed[0].sealed.len(), 9 + 28);
    assert_eq!(
        hsm.open_fields(&data.token, sealed.clone()).await.unwrap(),
        fields
    );
    let moved = vec![hsm_api::SealedField {
        aad: b"card/B/name".to_vec(),
        sealed: sealed[0].sealed.clone(),
    }];
    assert_eq!(
        hsm.open_fields(&data.token, moved).await.unwrap_err(),
        Error::Verification
    );
    assert!(matches!(
        hsm.index_hashes(&data.token, "ssn", values).await,
        Err(Error::WrongUsage { .. })
    ));
    assert!(matches!(
        hsm.open_fields(&index.token, sealed).await,
        Err(Error::WrongUsage { .. })
    ));
    assert!(hsm.index_hashes(&index.token, "SSN", vec![]).await.is_err());
}

/// The wire messages that carry personal data print none of it in Debug (a log line, a panic).
#[test]
fn registry_messages_print_no_personal_data() {
    use hsm_sim::remote::proto;
    let value = b"44010319810101123X".to_vec();
    let hashes = proto::IndexHashesRequest {
        key: String::new(),
        domain: "ssn".to_owned(),
        values: vec![value.clone()],
    };
    let field = proto::RegistryField {
        aad: b"card".to_vec(),
        data: value,
    };
    for shown in [format!("{hashes:?}"), format!("{field:?}")] {
        assert!(!shown.contains("44010319810101123X"), "{shown}");
        assert!(!shown.contains("52, 52, 48"), "{shown}");
    }
    assert!(format!("{hashes:?}").contains("ssn"));
}
