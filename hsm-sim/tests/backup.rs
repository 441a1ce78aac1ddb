//! Root backups through the `Hsm` trait: a province root split 2-of-3 in one HSM, each share
//! taken once, restored one share at a time in another HSM under another LMK (in process, and
//! both ends over the wire), the same key there (its KCV, a card key derived from it); the
//! refusals at their own share.

use std::sync::Arc;

use hsm_api::{
    Algorithm, Dispersion, Error, Exportability, Factor, HierarchyLevel, Hsm, IssuedShare, KeySpec,
    KeyUsage, LmkShare, Restoration, Restored,
};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use hsm_sim::remote::{ClientTls, RemoteHsm, ServerTls, serve};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::remote::pki::Pki;

const PROVINCE: KeySpec = KeySpec {
    algorithm: Algorithm::Tdes2,
    usage: KeyUsage::CardDerivation(HierarchyLevel::Province),
    exportability: Exportability::NonExportable,
};

async fn initialised() -> LocalHsm {
    let hsm = LocalHsm::open(LocalHsmConfig::default()).unwrap();
    hsm_sim::handout::dangerous_init(&hsm, 2, 2).await.unwrap();
    hsm
}

fn copy(issued: &IssuedShare) -> LmkShare {
    LmkShare::new(Zeroizing::new(issued.share.secret_text().to_owned()))
}

/// The card key of `parent` for one card (city and card factors), its KCV.
async fn card_kcv<H: Hsm>(hsm: &H, parent: &hsm_api::KeyToken) -> hsm_api::Kcv {
    let factors = [
        Factor::from_hex("4401030000000000").unwrap(),
        Factor::from_hex("1234567890ABCDEF").unwrap(),
    ];
    hsm.derive_key(parent, Dispersion::PbocTdes, &factors, KeyUsage::CardKey)
        .await
        .unwrap()
        .kcv
}

/// Backs a province root up on `from`, restores it on `to`, with every refusal on the way.
async fn backup_and_restore<F: Hsm, T: Hsm>(from: &F, to: &T) {
    let root = from.generate_key(PROVINCE).await.unwrap();
    let backup = from.backup_key(&root.token, 2, 3).await.unwrap();
    assert_eq!((backup.spec, &backup.kcv), (PROVINCE, &root.kcv));
    assert_eq!((backup.parts.count, backup.parts.threshold), (3, 2));
    let shares: Vec<IssuedShare> = {
        let mut taken = Vec::new();
        for index in 1..=3 {
            taken.push(
                from.take_secret_part(&backup.parts.set, index)
                    .await
                    .unwrap(),
            );
        }
        taken
    };
    assert_eq!(
        from.take_secret_part(&backup.parts.set, 1)
            .await
            .unwrap_err(),
        Error::PartNotAvailable
    );
    for issued in &shares {
        assert!(issued.share.secret_text().contains(&backup.backup));
        assert!(issued.share.secret_text().ends_with(&issued.check_value));
    }
    // Only roots: a city key, a card key are refused.
    let city = from
        .derive_key(
            &root.token,
            Dispersion::PbocTdes,
            &[Factor::from_hex("4401030000000000").unwrap()],
            KeyUsage::CardDerivation(HierarchyLevel::City),
        )
        .await
        .unwrap();
    assert!(matches!(
        from.backup_key(&city.token, 2, 3).await,
        Err(Error::WrongUsage { .. })
    ));
    // Another backup of the same root: its shares are not this backup's.
    let again = from.backup_key(&root.token, 2, 3).await.unwrap();
    let foreign = from.take_secret_part(&again.parts.set, 2).await.unwrap();

    let begin = || Restoration::Begin {
        spec: backup.spec,
        kcv: backup.kcv.clone(),
        backup: backup.backup.clone(),
    };
    assert!(matches!(
        to.restore_share(begin(), copy(&foreign)).await,
        Err(Error::Share(_))
    ));
    let Restored::Partial(first) = to.restore_share(begin(), copy(&shares[2])).await.unwrap()
    else {
        panic!("one share of two restores nothing")
    };
    assert_eq!((first.received, first.threshold), (1, 2));
    assert!(
        to.kcv(&first.token).await.is_err(),
        "a partial restore is no key"
    );
    let cont = || Restoration::Continue(first.token.clone());
    let mut mistyped = shares[0].share.secret_text().to_owned();
    let at = mistyped.len() - 12;
    let digit = if &mistyped[at..=at] == "0" { "1" } else { "0" };
    mistyped.replace_range(at..=at, digit);
    for bad in [
        copy(&shares[2]),
        copy(&foreign),
        LmkShare::new(Zeroizing::new(mistyped)),
    ] {
        assert!(matches!(
            to.restore_share(cont(), bad).await,
            Err(Error::Share(_))
        ));
    }
    let Restored::Formed(restored) = to.restore_share(cont(), copy(&shares[0])).await.unwrap()
    else {
        panic!("two shares of two restore the root")
    };
    assert_eq!(restored.kcv, root.kcv);
    assert_ne!(restored.token, root.token);
    assert_eq!(
        card_kcv(to, &restored.token).await,
        card_kcv(from, &root.token).await
    );
    // Under the other LMK, the original token means nothing.
    assert!(to.kcv(&root.token).await.is_err());
}

#[tokio::test]
async fn a_root_backed_up_in_one_hsm_is_restored_in_another() {
    backup_and_restore(&initialised().await, &initialised().await).await;
}

#[tokio::test]
async fn a_root_backup_and_restore_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let tls = || ServerTls::from_pem_files(&pki.server.cert, &pki.server.key, &pki.ca).unwrap();
    let mut ends = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            Arc::new(initialised().await),
            listener,
            tls(),
            async {
                stopped.await.ok();
            },
        ));
        let client = ClientTls::from_pem_files(&pki.kms.cert, &pki.kms.key, &pki.ca).unwrap();
        ends.push(RemoteHsm::connect_lazy(&format!("https://localhost:{port}"), client).unwrap());
        stops.push((stop, server));
    }
    backup_and_restore(&ends[0], &ends[1]).await;
    for (stop, server) in stops {
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}

/// The wire message that carries a backup share prints none of it in Debug.
#[test]
fn the_restore_request_prints_no_share() {
    use hsm_sim::remote::proto;
    let request = proto::RestoreShareRequest {
        into: Some(proto::restore_share_request::Into::Partial(
            "0S-partial".into(),
        )),
        share: "RB1-SECRETSHARETEXT".into(),
    };
    let shown = format!("{request:?}");
    assert!(!shown.contains("SECRETSHARETEXT"), "{shown}");
    assert!(shown.contains("0S-partial"), "{shown}");
}
