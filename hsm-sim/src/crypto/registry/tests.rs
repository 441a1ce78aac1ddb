//! Known answers (RFC 4231 for HMAC-SHA256; the GCM specification's AES-256 test cases, as in
//! NIST's GCM validation) and the binding of sealed fields.

use hsm_api::{Algorithm, ClearField, Error, SealedField};

use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn hmac_sha256_rfc_4231() {
    // RFC 4231 §4.2 (test case 1) and §4.3 (test case 2).
    assert_eq!(
        hmac_sha256(&[0x0b; 20], &[b"Hi There".as_slice()])
            .unwrap()
            .to_vec(),
        h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    );
    assert_eq!(
        hmac_sha256(b"Jefe", &[b"what do ya want ".as_slice(), b"for nothing?"])
            .unwrap()
            .to_vec(),
        h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

#[test]
fn aes_256_gcm_known_answers() {
    // The GCM specification (McGrew and Viega, as submitted to NIST), test cases 14 and 16.
    let zero = [0u8; 32];
    assert_eq!(
        gcm_seal(&zero, &[0; 12], b"", &[0; 16]).unwrap(),
        h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")
    );
    let key = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
    let iv = h("cafebabefacedbaddecaf888");
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let pt = h(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    );
    let ct = h(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
         76fc6ece0f4e1768cddf8853bb2d551b",
    );
    assert_eq!(gcm_seal(&key, &iv, &aad, &pt).unwrap(), ct);
    assert_eq!(gcm_open(&key, &iv, &aad, &ct).unwrap(), pt);
    let mut bad = ct.clone();
    bad[0] ^= 1;
    assert!(matches!(
        gcm_open(&key, &iv, &aad, &bad),
        Err(Error::Verification)
    ));
}

fn key(byte: u8) -> SecretKey {
    SecretKey::new(Algorithm::Aes256, &[byte; 32]).unwrap()
}

#[test]
fn index_hashes_are_keyed_and_domain_separated() {
    let values = vec![b"440102199003071234".to_vec(), b"A00000001".to_vec()];
    let a = index_hashes(&key(1), "ssn", &values).unwrap();
    assert_eq!(a.len(), 2);
    // The definition: HMAC(key, domain ‖ 0 ‖ value).
    assert_eq!(
        a[0],
        hmac_sha256(&[1; 32], &[b"ssn\x00440102199003071234".as_slice()]).unwrap()
    );
    assert_eq!(a, index_hashes(&key(1), "ssn", &values).unwrap());
    assert_ne!(a, index_hashes(&key(2), "ssn", &values).unwrap());
    assert_ne!(a, index_hashes(&key(1), "card-number", &values).unwrap());
    assert!(index_hashes(&key(1), "SSN", &values).is_err());
    assert!(index_hashes(&key(1), "", &values).is_err());
}

#[test]
fn sealed_fields_open_only_with_their_key_and_binding() {
    let fields = vec![
        ClearField {
            aad: b"card/X/ssn".to_vec(),
            value: b"440102199003071234".to_vec(),
        },
        ClearField {
            aad: b"card/X/name".to_vec(),
            value: "张三".as_bytes().to_vec(),
        },
    ];
    let sealed = seal_fields(&key(3), &fields).unwrap();
    assert_eq!(sealed[0].sealed.len(), 18 + 28);
    // A fresh nonce each time.
    assert_ne!(sealed, seal_fields(&key(3), &fields).unwrap());
    assert_eq!(open_fields(&key(3), &sealed).unwrap(), fields);
    assert!(matches!(
        open_fields(&key(4), &sealed),
        Err(Error::Verification)
    ));
    // Moved to another record: does not open.
    let moved = vec![SealedField {
        aad: b"card/Y/ssn".to_vec(),
        sealed: sealed[0].sealed.clone(),
    }];
    assert!(matches!(
        open_fields(&key(3), &moved),
        Err(Error::Verification)
    ));
    let short = vec![SealedField {
        aad: Vec::new(),
        sealed: vec![0; 27],
    }];
    assert!(matches!(
        open_fields(&key(3), &short),
        Err(Error::Verification)
    ));
    assert_eq!(
        format!("{:?}", fields[0]),
        "ClearField { aad: \"card/X/ssn\", .. }"
    );
}
