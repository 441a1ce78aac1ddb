//! `Hsm::batch`: one call for a whole card set or PSAM set, answering item for item what the
//! single operations answer.
//!
//! The scenario here is generic over the HSM, so that `remote` runs it through the wire too:
//! good items of every kind (TR-31 B and D, TDES and SM4, derived and token keys, WRITE KEY
//! under another item, a token or a derivation of its own), and bad items that each meet one
//! check of the single operations, among good ones that still succeed.

use hsm_api::{
    Algorithm, BatchDelivery, BatchItem, BatchOutput, Component, Derivation, Dispersion, Error,
    Exportability, ExportedKey, Factor, HierarchyLevel, Hsm, HsmStatus, IssuedShare, Kcv,
    KeyBlockVersion, KeySource, KeySpec, KeyToken, KeyUsage, LmkInit, LmkRotation, LmkShare,
    MacFold, Protector, Result, UnsealProgress, WrappedKey, WriteKeyCommand, WriteKeyDelivery,
    WriteKeyRequest, protector_item_error,
};
use hsm_sim::crypto::tr31;
use hsm_sim::crypto::{SecretKey, kcv};
use hsm_sim::local::{LocalHsm, LocalHsmConfig};
use zeroize::Zeroizing;

/// An HSM whose `batch` is the trait's default: the single operations one after the other.
pub struct Singles<'a, H>(pub &'a H);

impl<H: Hsm> Hsm for Singles<'static, H> {
    fn is_secure(&self) -> bool {
        self.0.is_secure()
    }
    async fn status(&self) -> Result<HsmStatus> {
        self.0.status().await
    }
    async fn take_secret_part(&self, set: &str, index: u8) -> Result<IssuedShare> {
        self.0.take_secret_part(set, index).await
    }
    async fn init_lmk(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        self.0.init_lmk(threshold, shares).await
    }
    async fn unseal(&self, share: LmkShare) -> Result<UnsealProgress> {
        self.0.unseal(share).await
    }
    async fn unseal_reset(&self) -> Result<()> {
        self.0.unseal_reset().await
    }
    async fn seal(&self) -> Result<()> {
        self.0.seal().await
    }
    async fn tamper(&self) -> Result<()> {
        self.0.tamper().await
    }
    async fn self_test(&self) -> Result<()> {
        self.0.self_test().await
    }
    async fn generate_key(&self, spec: KeySpec) -> Result<WrappedKey> {
        self.0.generate_key(spec).await
    }
    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        self.0.form_key(spec, components).await
    }
    async fn add_component(
        &self,
        into: hsm_api::Accumulation,
        component: Component,
    ) -> Result<hsm_api::Accumulated> {
        self.0.add_component(into, component).await
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        self.0.import_key(kek, block, usage).await
    }
    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        self.0.export_key(kek, key, version).await
    }
    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        self.0
            .derive_key(parent, method, factors, child_usage)
            .await
    }
    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        self.0.write_key_command(request).await
    }
    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        self.0.kcv(key).await
    }
    async fn sign(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(key, data).await
    }
    async fn public_key(&self, key: &KeyToken) -> Result<Vec<u8>> {
        self.0.public_key(key).await
    }
    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.0.random(len).await
    }
    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<[u8; hsm_api::INDEX_HASH_LEN]>> {
        self.0.index_hashes(key, domain, values).await
    }
    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::ClearField>,
    ) -> Result<Vec<hsm_api::SealedField>> {
        self.0.seal_fields(key, fields).await
    }
    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<hsm_api::SealedField>,
    ) -> Result<Vec<hsm_api::ClearField>> {
        self.0.open_fields(key, fields).await
    }
    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        self.0.mac(key, data).await
    }
    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        self.0.verify_mac(key, data, mac).await
    }
    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        self.0.prepare_lmk_rotation(tokens, threshold, shares).await
    }
    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> Result<Vec<KeyToken>> {
        self.0.rewrap_for_rotation(new_lmk_kcv, tokens).await
    }
    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        self.0.commit_lmk_rotation(new_lmk_kcv).await
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: Algorithm,
        components: u8,
    ) -> Result<hsm_api::IssuedComponents> {
        self.0
            .issue_transport_key_components(algorithm, components)
            .await
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        self.0.issue_transport_key_under(kek, algorithm).await
    }

    async fn backup_key(
        &self,
        key: &KeyToken,
        threshold: u8,
        shares: u8,
    ) -> Result<hsm_api::KeyBackup> {
        self.0.backup_key(key, threshold, shares).await
    }

    async fn restore_share(
        &self,
        into: hsm_api::Restoration,
        share: LmkShare,
    ) -> Result<hsm_api::Restored> {
        self.0.restore_share(into, share).await
    }
}

fn spec(algorithm: Algorithm, usage: KeyUsage, exportability: Exportability) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportability,
    }
}

/// A key formed from two components whose XOR is `hex` (the second is `hex` itself over a
/// first of alternating bits), so that the test knows it.
async fn known<H: Hsm>(hsm: &H, spec: KeySpec, hex: &str) -> WrappedKey {
    let clear = hex::decode(hex).unwrap();
    let first: Vec<u8> = (0..clear.len()).map(|i| 0x5A ^ i as u8).collect();
    let second: Vec<u8> = clear.iter().zip(&first).map(|(c, f)| c ^ f).collect();
    let component = |bytes: &[u8]| {
        let key = SecretKey::new(spec.algorithm, bytes).unwrap();
        Component::new(
            Zeroizing::new(hex::encode_upper(bytes)),
            kcv::compute_default(&key).unwrap(),
        )
    };
    hsm.form_key(spec, vec![component(&first), component(&second)])
        .await
        .unwrap()
}

const AES_KEK: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";
const TDES_KEK: &str = "0123456789ABCDEFFEDCBA9876543210";

/// The keys a batch works on.
pub struct Keys {
    aes_kek: KeyToken,
    tdes_kek: KeyToken,
    tdes_city: KeyToken,
    sm4_city: KeyToken,
    tdes_mk_city: KeyToken,
    sm4_mk_city: KeyToken,
    psam_city: KeyToken,
    vendor: KeyToken,
}

/// The keys of the scenario, made in `hsm` (operational).
pub async fn keys<H: Hsm>(hsm: &H) -> Keys {
    let kbpk = |alg| {
        spec(
            alg,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        )
    };
    let generate = |alg, usage, exportability| hsm.generate_key(spec(alg, usage, exportability));
    let city = KeyUsage::CardDerivation(HierarchyLevel::City);
    let mk_city = KeyUsage::MasterKeyDerivation(HierarchyLevel::City);
    let non = Exportability::NonExportable;
    Keys {
        aes_kek: known(hsm, kbpk(Algorithm::Aes256), AES_KEK).await.token,
        tdes_kek: known(hsm, kbpk(Algorithm::Tdes2), TDES_KEK).await.token,
        tdes_city: generate(Algorithm::Tdes2, city, non).await.unwrap().token,
        sm4_city: generate(Algorithm::Sm4, city, non).await.unwrap().token,
        tdes_mk_city: generate(Algorithm::Tdes2, mk_city, non)
            .await
            .unwrap()
            .token,
        sm4_mk_city: generate(Algorithm::Sm4, mk_city, non).await.unwrap().token,
        psam_city: generate(Algorithm::Tdes2, city, Exportability::Exportable)
            .await
            .unwrap()
            .token,
        vendor: generate(Algorithm::Tdes2, KeyUsage::VendorTransport, non)
            .await
            .unwrap()
            .token,
    }
}

/// A card key derived from a city key.
fn card(parent: &KeyToken, method: Dispersion, factor: u8) -> KeySource {
    KeySource::Derived(derivation(parent, method, factor, KeyUsage::CardKey))
}

/// A card master key derived from a city master-key derivation key.
fn master(parent: &KeyToken, method: Dispersion, factor: u8) -> KeySource {
    KeySource::Derived(derivation(parent, method, factor, KeyUsage::CardMasterKey))
}

fn derivation(parent: &KeyToken, method: Dispersion, factor: u8, usage: KeyUsage) -> Derivation {
    Derivation {
        parent: parent.clone(),
        method,
        factors: vec![
            Factor::from_bytes(&[0x86, 0x84, 0x32, 0x02, 0xAD, 0x93, 0x2A, factor]).unwrap(),
        ],
        child_usage: usage,
    }
}

fn export(kbpk: &KeyToken, version: KeyBlockVersion) -> BatchDelivery {
    BatchDelivery::Export {
        kbpk: kbpk.clone(),
        version,
    }
}

fn write(protect: Protector, p1: u8, challenge_len: usize, fold: MacFold) -> BatchDelivery {
    BatchDelivery::WriteKey(WriteKeyDelivery {
        protect,
        cla: 0x84,
        ins: 0xD4,
        p1,
        p2: 0x00,
        key_header: vec![0xF0, 0x02, p1, 0x01, 0x33],
        challenge: (0..challenge_len).map(|i| 0xC0 ^ i as u8).collect(),
        fold,
    })
}

fn tampered(token: &KeyToken) -> KeyToken {
    let mut text = token.as_str().to_owned();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    KeyToken::from_stored(text)
}

/// The items of the scenario, each with a label; the bad ones say what they expect.
pub fn items(k: &Keys) -> Vec<(&'static str, BatchItem, Option<Error>)> {
    use Dispersion::{PbocTdes, Sm4Complement};
    use KeyBlockVersion::{B, D};
    let item = |key, delivery| BatchItem { key, delivery };
    let wrong = |usage: &'static str, operation: &'static str| {
        Some(Error::WrongUsage {
            usage: usage.into(),
            operation: operation.into(),
        })
    };
    vec![
        // 0..=7: good items.
        (
            "TDES card key, TR-31 D",
            item(card(&k.tdes_city, PbocTdes, 1), export(&k.aes_kek, D)),
            None,
        ),
        (
            "TDES card key, TR-31 B",
            item(card(&k.tdes_city, PbocTdes, 2), export(&k.tdes_kek, B)),
            None,
        ),
        (
            "SM4 card key, TR-31 D",
            item(card(&k.sm4_city, Sm4Complement, 3), export(&k.aes_kek, D)),
            None,
        ),
        (
            "PSAM city key",
            item(
                KeySource::Token(k.psam_city.clone()),
                export(&k.tdes_kek, B),
            ),
            None,
        ),
        (
            "MK under the vendor key",
            item(
                master(&k.tdes_mk_city, PbocTdes, 4),
                write(
                    Protector::Key(KeySource::Token(k.vendor.clone())),
                    0,
                    8,
                    MacFold::Xor4,
                ),
            ),
            None,
        ),
        (
            "key under item 4",
            item(
                card(&k.tdes_city, PbocTdes, 5),
                write(Protector::Item(4), 1, 8, MacFold::Xor4),
            ),
            None,
        ),
        (
            "key under a protector of its own",
            item(
                card(&k.tdes_city, PbocTdes, 6),
                write(
                    Protector::Key(master(&k.tdes_mk_city, PbocTdes, 4)),
                    2,
                    8,
                    MacFold::Xor4,
                ),
            ),
            None,
        ),
        (
            "SM4 key under an SM4 master key of its own",
            item(
                card(&k.sm4_city, Sm4Complement, 7),
                write(
                    Protector::Key(master(&k.sm4_mk_city, Sm4Complement, 7)),
                    3,
                    16,
                    MacFold::First4,
                ),
            ),
            None,
        ),
        // 8..: each meets one check.
        (
            "parent is a vendor key",
            item(card(&k.vendor, PbocTdes, 8), export(&k.aes_kek, D)),
            wrong("vendor transport", "derive a key"),
        ),
        (
            "master key as TR-31",
            item(master(&k.tdes_mk_city, PbocTdes, 9), export(&k.aes_kek, D)),
            Some(Error::NotExportable),
        ),
        (
            "KBPK is a vendor key",
            item(card(&k.tdes_city, PbocTdes, 10), export(&k.vendor, D)),
            wrong("vendor transport", "wrap a key block"),
        ),
        (
            "version B under an AES KBPK",
            item(card(&k.tdes_city, PbocTdes, 11), export(&k.aes_kek, B)),
            Some(Error::KeyBlockKbpk {
                version: 'B',
                expected: "2- or 3-key TDES".into(),
            }),
        ),
        (
            "no factors",
            item(
                KeySource::Derived(Derivation {
                    factors: Vec::new(),
                    ..derivation(&k.tdes_city, PbocTdes, 12, KeyUsage::CardKey)
                }),
                export(&k.aes_kek, D),
            ),
            Some(Error::Count {
                field: "factors".into(),
                expected: "1 to 8".into(),
            }),
        ),
        (
            "short challenge",
            item(
                card(&k.tdes_city, PbocTdes, 13),
                write(Protector::Item(4), 4, 4, MacFold::Xor4),
            ),
            Some(Error::DataLength {
                field: "challenge (IV)".into(),
                expected: "8 bytes".into(),
                actual: 4,
            }),
        ),
        (
            "protector out of range",
            item(
                card(&k.tdes_city, PbocTdes, 14),
                write(Protector::Item(99), 5, 8, MacFold::Xor4),
            ),
            Some(protector_item_error()),
        ),
        (
            "protector is itself",
            item(
                card(&k.tdes_city, PbocTdes, 15),
                write(Protector::Item(15), 6, 8, MacFold::Xor4),
            ),
            Some(protector_item_error()),
        ),
        (
            "protector failed",
            item(
                card(&k.tdes_city, PbocTdes, 16),
                write(Protector::Item(8), 7, 8, MacFold::Xor4),
            ),
            wrong("vendor transport", "derive a key"),
        ),
        (
            "protector is a city key",
            item(
                card(&k.tdes_city, PbocTdes, 17),
                write(
                    Protector::Key(KeySource::Token(k.tdes_city.clone())),
                    8,
                    8,
                    MacFold::Xor4,
                ),
            ),
            wrong("city card derivation", "protect a key written to a card"),
        ),
        (
            "export of a KBPK",
            item(KeySource::Token(k.aes_kek.clone()), export(&k.tdes_kek, B)),
            wrong("key-block protection", "be exported"),
        ),
        (
            "tampered token",
            item(
                KeySource::Token(tampered(&k.psam_city)),
                export(&k.tdes_kek, B),
            ),
            Some(Error::KeyBlockMac),
        ),
        (
            "write of a KBPK",
            item(
                KeySource::Token(k.tdes_kek.clone()),
                write(Protector::Item(4), 9, 8, MacFold::Xor4),
            ),
            wrong("key-block protection", "be written to a card"),
        ),
        (
            "SM4 dispersion of a TDES key",
            item(card(&k.tdes_city, Sm4Complement, 21), export(&k.aes_kek, D)),
            Some(Error::Unsupported {
                op: "sm4-f-notf-v1".into(),
                alg: Algorithm::Tdes2,
            }),
        ),
        (
            "card key under the vendor key",
            item(
                card(&k.tdes_city, PbocTdes, 22),
                write(
                    Protector::Key(KeySource::Token(k.vendor.clone())),
                    10,
                    8,
                    MacFold::Xor4,
                ),
            ),
            wrong(
                "vendor transport",
                "protect the write of anything but a card master key",
            ),
        ),
        (
            "card key as protector",
            item(
                card(&k.tdes_city, PbocTdes, 23),
                write(Protector::Item(0), 11, 8, MacFold::Xor4),
            ),
            wrong("card", "protect a key written to a card"),
        ),
        (
            "master key from a card derivation key",
            item(
                master(&k.tdes_city, PbocTdes, 24),
                write(Protector::Item(4), 12, 8, MacFold::Xor4),
            ),
            wrong(
                "city card derivation",
                "derive anything but card keys and card derivation keys below it",
            ),
        ),
        (
            "vendor key written",
            item(
                KeySource::Token(k.vendor.clone()),
                write(Protector::Item(4), 13, 8, MacFold::Xor4),
            ),
            wrong("vendor transport", "be written to a card"),
        ),
        (
            "vendor key exported",
            item(KeySource::Token(k.vendor.clone()), export(&k.aes_kek, D)),
            Some(Error::NotExportable),
        ),
    ]
}

/// Asserts that `batch` answers as `singles`, item for item: the same errors, the same APDUs
/// byte for byte, the same KCVs, and TR-31 blocks with the same header and length that unwrap
/// to the same key (their padding is random, so two blocks of one key differ).
pub fn assert_same(
    labels: &[(&'static str, BatchItem, Option<Error>)],
    batch: &[Result<BatchOutput>],
    singles: &[Result<BatchOutput>],
) {
    assert_eq!(batch.len(), labels.len());
    assert_eq!(singles.len(), labels.len());
    let kbpk = |item: &BatchItem| match &item.delivery {
        BatchDelivery::Export { version, .. } => Some(match version {
            KeyBlockVersion::D => SecretKey::from_hex(Algorithm::Aes256, AES_KEK).unwrap(),
            KeyBlockVersion::B => SecretKey::from_hex(Algorithm::Tdes2, TDES_KEK).unwrap(),
        }),
        BatchDelivery::WriteKey(_) => None,
    };
    for (((label, item, expected), b), s) in labels.iter().zip(batch).zip(singles) {
        match (b, s) {
            (Err(b), Err(s)) => {
                assert_eq!(b, s, "{label}");
                assert_eq!(Some(b), expected.as_ref(), "{label}");
            }
            (Ok(BatchOutput::WriteKey(b)), Ok(BatchOutput::WriteKey(s))) => {
                assert_eq!(expected, &None, "{label}");
                assert_eq!(b, s, "{label}");
            }
            (Ok(BatchOutput::Exported(b)), Ok(BatchOutput::Exported(s))) => {
                assert_eq!(expected, &None, "{label}");
                assert_eq!(b.kcv, s.kcv, "{label}");
                assert_eq!(b.block.len(), s.block.len(), "{label}");
                let kbpk = kbpk(item).unwrap();
                let (bh, bk) = tr31::unwrap(&kbpk, &b.block).unwrap();
                let (sh, sk) = tr31::unwrap(&kbpk, &s.block).unwrap();
                assert_eq!(bh, sh, "{label}");
                assert!(bk == sk, "{label}");
                assert_eq!(kcv::compute_default(&bk).unwrap(), b.kcv, "{label}");
            }
            (b, s) => panic!("{label}: batch {b:?}, single operations {s:?}"),
        }
    }
}

/// The whole scenario on `hsm` (operational): the batch against the single operations.
pub async fn batch_equals_single_operations<H: Hsm>(hsm: &'static H) {
    let keys = keys(hsm).await;
    let labelled = items(&keys);
    let items: Vec<BatchItem> = labelled.iter().map(|(_, item, _)| item.clone()).collect();
    let batch = hsm.batch(items.clone()).await.unwrap();
    let singles = Singles(hsm).batch(items).await.unwrap();
    assert_same(&labelled, &batch, &singles);
    // Good items succeed among the bad ones.
    let good = batch.iter().take_while(|r| r.is_ok()).count();
    assert_eq!(good, 8);
    assert!(batch[8..].iter().all(Result::is_err));
}

/// Refusals of the batch as a whole.
pub async fn whole_batch_refusals<H: Hsm>(hsm: &H) {
    let keys = keys(hsm).await;
    let one = items(&keys).swap_remove(0).1;
    let count = Error::Count {
        field: "batch items".into(),
        expected: "1 to 256".into(),
    };
    assert_eq!(hsm.batch(Vec::new()).await, Err(count.clone()));
    assert_eq!(hsm.batch(vec![one.clone(); 257]).await, Err(count));
    assert_eq!(hsm.batch(vec![one.clone(); 256]).await.unwrap().len(), 256);
    hsm.seal().await.unwrap();
    assert_eq!(hsm.batch(vec![one]).await, Err(Error::Sealed));
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

fn test_lmk_hsm() -> LocalHsm {
    LocalHsm::open(LocalHsmConfig {
        dangerous_test_lmk: true,
        ..LocalHsmConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_batch_answers_as_the_single_operations_do() {
    batch_equals_single_operations(leak(test_lmk_hsm())).await;
}

#[tokio::test]
async fn a_batch_is_refused_as_a_whole_only_when_nothing_can_be_done() {
    whole_batch_refusals(&test_lmk_hsm()).await;
}

#[tokio::test]
async fn a_derived_key_of_a_batch_is_never_wrapped_under_the_lmk() {
    // One derivation parent cached, one KBPK cached: the children are not.
    let hsm = test_lmk_hsm();
    let keys = keys(&hsm).await;
    let before = hsm.status().await.unwrap().cached_keys;
    let items: Vec<BatchItem> = (0..24)
        .map(|i| BatchItem {
            key: card(&keys.tdes_city, Dispersion::PbocTdes, i),
            delivery: export(&keys.aes_kek, KeyBlockVersion::D),
        })
        .collect();
    let outputs = hsm.batch(items).await.unwrap();
    assert!(outputs.iter().all(Result::is_ok));
    let after = hsm.status().await.unwrap().cached_keys;
    assert!(after <= before + 2, "{before} → {after}");
}
