//! What the service should deliver, computed independently from the published test keys
//! (`dev/test-keys.toml`) and DOMAIN.md: the key hierarchy, identifiers with their check
//! characters, and the secure-messaging WRITE KEY command.
//!
//! Every expected key is computed twice: with `hsm_sim::crypto::diversify::diversify_chain`, and by
//! hand from DOMAIN.md §2 (`D(K, F) = E_K(F ‖ ~F)` in ECB, one cipher call per level) with the
//! plain block cipher. The two must agree before anything is compared with the service.

use hsm_api::Algorithm;
use hsm_api::Factor;
use hsm_api::MacFold;
use hsm_sim::crypto::SecretKey;
use sscard_kms::card::template::{KeyLevel, KeyRoot, KeySpec, Template};
use sscard_kms::dev::{TestKeys, test_keys};

/// The ATR every test card answers with unless a test says otherwise. Its last 8 bytes are the
/// card factor of DOMAIN.md §2's worked chain.
pub const ATR_HEX: &str = "3B6D000080318065B08701AD86843202AD932A48";

/// The ATR's bytes.
pub fn atr() -> Vec<u8> {
    hex::decode(ATR_HEX).unwrap()
}

/// The published test keys.
pub fn published() -> TestKeys {
    test_keys().unwrap()
}

/// A built-in card template.
pub fn template(id: &str) -> Template {
    Template::builtin(id).unwrap()
}

/// The published root of `spec`'s chain (hex).
fn root_hex(keys: &TestKeys, spec: &KeySpec) -> String {
    let by_alg = match spec.root {
        KeyRoot::National => &keys.national_root,
        KeyRoot::Provincial => &keys.provincial_root,
    };
    by_alg
        .root(spec.hsm_algorithm(), &spec.name)
        .unwrap()
        .to_owned()
}

/// The factors from `spec`'s root down to `level` (None: the chain has no key at that level,
/// e.g. the national level of a provincial-root key).
fn factors(spec: &KeySpec, level: KeyLevel, city: &str, atr: &[u8]) -> Option<Vec<Factor>> {
    let f1 = Factor::province("440000").unwrap();
    let f2 = Factor::city(city).unwrap();
    let f3 = Factor::from_atr(atr).unwrap();
    let all = match spec.root {
        KeyRoot::National => vec![f1, f2, f3],
        KeyRoot::Provincial => vec![f2, f3],
    };
    let below_root = match (spec.root, level) {
        (KeyRoot::National, KeyLevel::National) => 0,
        (KeyRoot::National, KeyLevel::Province) => 1,
        (KeyRoot::National, KeyLevel::City) => 2,
        (KeyRoot::National, KeyLevel::Card) => 3,
        (KeyRoot::Provincial, KeyLevel::National) => return None,
        (KeyRoot::Provincial, KeyLevel::Province) => 0,
        (KeyRoot::Provincial, KeyLevel::City) => 1,
        (KeyRoot::Provincial, KeyLevel::Card) => 2,
    };
    Some(all[..below_root].to_vec())
}

/// A key of the hierarchy as the tests expect it. Its `Debug` shows no key.
pub struct Expected {
    /// The key (compares in constant time with what a TR-31 block unwraps to).
    pub key: SecretKey,
    /// Its upper-case hex: what must never appear in a response, a record or a log.
    pub hex: String,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected").finish_non_exhaustive()
    }
}

/// The key of `spec` at `level` for `city` (a card key: also for the card factor of `atr`).
pub fn expected(spec: &KeySpec, level: KeyLevel, city: &str, atr: &[u8]) -> Expected {
    let keys = published();
    let alg = spec.hsm_algorithm();
    let root = root_hex(&keys, spec);
    let factors = factors(spec, level, city, atr).expect("the chain has a key at this level");
    let key = hsm_sim::crypto::diversify::diversify_chain(
        &SecretKey::from_hex(alg, &root).unwrap(),
        spec.dispersion,
        &factors,
    )
    .unwrap();
    let hex = by_hand(alg, &root, &factors);
    assert!(
        SecretKey::from_hex(alg, &hex).unwrap() == key,
        "diversify_chain and DOMAIN.md §2 by hand disagree for {} at {level}",
        spec.name
    );
    Expected { key, hex }
}

/// DOMAIN.md §2 by hand: each level is one ECB encryption of `F ‖ ~F` under the parent (two
/// 8-byte blocks under 3DES, one 16-byte block under SM4).
fn by_hand(alg: Algorithm, root_hex: &str, factors: &[Factor]) -> String {
    let mut key = hex::decode(root_hex).unwrap();
    for f in factors {
        let mut block = f.as_bytes().to_vec();
        block.extend(f.as_bytes().iter().map(|b| !b));
        key = hsm_sim::crypto::cipher::encrypt_ecb(&SecretKey::new(alg, &key).unwrap(), &block)
            .unwrap();
    }
    hex::encode_upper(key)
}

/// Every published test key and component, upper-case hex: none may ever appear in the
/// service's output.
pub fn published_secrets() -> Vec<String> {
    let keys = published();
    let mut out: Vec<String> = keys
        .national_root
        .all()
        .chain(keys.provincial_root.all())
        .map(str::to_owned)
        .collect();
    out.extend([
        keys.vendor_transport.tdes.clone(),
        keys.vendor_transport.sm4.clone(),
        keys.station.transport_aes.clone(),
        keys.psam_line.transport_aes.clone(),
    ]);
    // The first component of each (key ⊕ mask); the mask itself is the second.
    let mask = hex::decode(&keys.component_mask).unwrap();
    let masked: Vec<String> = out
        .iter()
        .map(|k| {
            let k = hex::decode(k).unwrap();
            hex::encode_upper(k.iter().zip(&mask).map(|(a, b)| a ^ b).collect::<Vec<u8>>())
        })
        .collect();
    out.extend(masked);
    out.push(keys.component_mask.clone());
    out
}

/// True if `text` holds `secret_hex` in either case.
pub fn contains_hex(text: &str, secret_hex: &str) -> bool {
    text.to_ascii_uppercase()
        .contains(&secret_hex.to_ascii_uppercase())
}

/// The station's transport key (AES-128, TR-31 version D).
pub fn station_kbpk() -> SecretKey {
    SecretKey::from_hex(Algorithm::Aes128, &published().station.transport_aes).unwrap()
}

/// The PSAM line's transport key (AES-128, TR-31 version D).
pub fn psam_line_kbpk() -> SecretKey {
    SecretKey::from_hex(Algorithm::Aes128, &published().psam_line.transport_aes).unwrap()
}

/// The blank cards' vendor transport key of a template's algorithm.
pub fn vendor_transport(alg: Algorithm) -> SecretKey {
    let keys = published();
    let hex = match alg {
        Algorithm::Sm4 => keys.vendor_transport.sm4,
        _ => keys.vendor_transport.tdes,
    };
    SecretKey::from_hex(alg, &hex).unwrap()
}

/// The WRITE KEY command DOMAIN.md §5 describes, built here from its parts:
/// `84 D4 key_id 00 Lc ‖ field ‖ MAC`, where `field = ECB(protect, Ld ‖ header ‖ key ‖ 80 00..)`
/// (`hsm_sim::crypto::mac::encrypt_key_field`) and the MAC (`hsm_sim::crypto::mac::card_mac`, SM4 folded by
/// XOR of its four words) runs over the command header and the field, with the card's challenge
/// as IV. `Lc` counts the MAC.
pub fn write_key_apdu(
    protect: &SecretKey,
    template: &Template,
    spec: &KeySpec,
    key: &Expected,
    challenge: &[u8],
) -> Vec<u8> {
    let mut data = template.card_key_header(spec);
    data.extend(hex::decode(&key.hex).unwrap());
    let field = hsm_sim::crypto::mac::encrypt_key_field(protect, &data).unwrap();
    let lc = u8::try_from(field.len() + hsm_sim::crypto::mac::CARD_MAC_LEN).unwrap();
    let mut apdu = vec![0x84, 0xD4, spec.key_id, 0x00, lc];
    apdu.extend_from_slice(&field);
    let mac = hsm_sim::crypto::mac::card_mac(protect, challenge, &apdu, MacFold::Xor4).unwrap();
    apdu.extend_from_slice(&mac);
    apdu
}

/// A card number (卡号) with its check character (DOMAIN.md §7): weights 3 7 9 10 5 8 4 2 over
/// the values of `[0-9A-Z]`, `r = 11 − (Σ mod 11)`, 10 → `X`, 11 → `0`. Written out here
/// rather than taken from `sscard_kms::card::identifiers`: the oracle is not the code under test.
pub fn card_number(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .zip([3, 7, 9, 10, 5, 8, 4, 2])
        .map(|(c, w)| {
            let v = if c.is_ascii_digit() {
                u32::from(c - b'0')
            } else {
                u32::from(c - b'A') + 10
            };
            v * w
        })
        .sum();
    let check = match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        r => char::from_digit(r, 10).unwrap(),
    };
    format!("{body}{check}")
}

/// The same card number with a wrong check character.
pub fn card_number_bad_check(body: &str) -> String {
    let good = card_number(body);
    let last = good.chars().last().unwrap();
    let wrong = if last == '1' { '2' } else { '1' };
    format!("{body}{wrong}")
}

/// A social security number with its GB 11643-1999 check character (DOMAIN.md §7).
pub fn ssn(first17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(WEIGHTS)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize];
    format!("{first17}{}", char::from(check))
}
