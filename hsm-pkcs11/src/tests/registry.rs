//! The registry's personal data in the token, strict mode (nothing released): index hashes by
//! `CKM_SHA256_HMAC` and sealed fields by `CKM_AES_GCM`, byte-compatible with the simulator
//! (the same keys, formed from the same components in both, hash alike, and what one seals the
//! other opens).

use hsm_api::{ClearField, SealedField};

use super::*;

const INDEX: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";
const DATA: &str = "F0E1D2C3B4A5968778695A4B3C2D1E0F00112233445566778899AABBCCDDEEFF";

/// Two AES-256 components of `hex_key`.
fn aes_components(hex_key: &str) -> Vec<Component> {
    let key = hex::decode(hex_key).unwrap();
    let mask = [0x5Au8; 32];
    let first: Vec<u8> = key.iter().zip(&mask).map(|(k, m)| k ^ m).collect();
    [first, mask.to_vec()]
        .into_iter()
        .map(|bytes| {
            let text = hex::encode_upper(&bytes);
            let kcv = kcv::compute_default(&SecretKey::from_hex(Algorithm::Aes256, &text).unwrap())
                .unwrap();
            Component::new(Zeroizing::new(text), kcv)
        })
        .collect()
}

async fn registry_keys<H: Hsm>(hsm: &H) -> (KeyToken, KeyToken) {
    let mut out = Vec::new();
    for (usage, hex) in [
        (KeyUsage::RegistryIndex, INDEX),
        (KeyUsage::RegistryData, DATA),
    ] {
        let made = hsm
            .form_key(
                spec(Algorithm::Aes256, usage, Exportability::NonExportable),
                aes_components(hex),
            )
            .await
            .unwrap();
        out.push(made.token);
    }
    let data = out.pop().unwrap();
    (out.pop().unwrap(), data)
}

fn field(aad: &str, value: &str) -> ClearField {
    ClearField {
        aad: aad.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn registry_hashes_and_sealed_fields_run_in_the_token_as_in_the_simulator() {
    let p11 = hsm("registry", Mode::Strict);
    let sim = local();
    let (p_index, p_data) = registry_keys(&p11).await;
    let (s_index, s_data) = registry_keys(&sim).await;

    let values = vec![b"440103199001011236".to_vec(), b"GZ0000012".to_vec()];
    let hashes = p11
        .index_hashes(&p_index, "ssn", values.clone())
        .await
        .unwrap();
    assert_eq!(hashes.len(), 2);
    assert_eq!(
        hashes,
        sim.index_hashes(&s_index, "ssn", values.clone())
            .await
            .unwrap()
    );
    assert_ne!(
        hashes,
        p11.index_hashes(&p_index, "card-number", values)
            .await
            .unwrap()
    );

    let fields = vec![
        field("card/A/ssn", "440103199001011236"),
        field("card/A/name", "欧阳晓明"),
    ];
    let sealed = p11.seal_fields(&p_data, fields.clone()).await.unwrap();
    assert_eq!(
        sim.open_fields(&s_data, sealed.clone()).await.unwrap(),
        fields
    );
    let by_sim = sim.seal_fields(&s_data, fields.clone()).await.unwrap();
    assert_eq!(p11.open_fields(&p_data, by_sim).await.unwrap(), fields);
    let moved = vec![SealedField {
        aad: b"card/B/ssn".to_vec(),
        sealed: sealed[0].sealed.clone(),
    }];
    assert_eq!(
        p11.open_fields(&p_data, moved).await.unwrap_err(),
        Error::Verification
    );

    // Each key for its own use only.
    assert!(matches!(
        p11.index_hashes(&p_data, "ssn", vec![b"x".to_vec()]).await,
        Err(Error::WrongUsage { .. })
    ));
    assert!(matches!(
        p11.seal_fields(&p_index, fields).await,
        Err(Error::WrongUsage { .. })
    ));
}
