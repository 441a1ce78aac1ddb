//! What the service should deliver, computed independently from the published test keys
//! (`dev/test-keys.toml`) and DOMAIN.md: the key hierarchy, identifiers with their check
//! characters, and the secure-messaging WRITE KEY command.
//!
//! Every expected key is computed twice: with `hsm_sim::crypto::diversify::diversify_chain`, and by
//! hand from DOMAIN.md §2 (`D(K, F) = E_K(F ‖ ~F)` in ECB, one cipher call per level) with the
//! plain block cipher. The two must agree before anything is compared with the service.
//!
//! A WRITE KEY is rebuilt from the template and COS profile **files as written** — read here as
//! plain TOML, never through the service's parser — with DOMAIN.md §10's rules written out
//! below (type byte by role, master key id/version/follow-up, follow-up level by sequence number
//! in the directory, the header layout, P1/P2/Lc), and its field and MAC by hand from the block
//! cipher (DOMAIN.md §5), checked against `hsm_sim::crypto::mac`.

use hsm_api::Algorithm;
use hsm_api::Factor;
use hsm_api::MacFold;
use hsm_sim::crypto::SecretKey;
use sscard_kms::card::template::{KeyLevel, KeyRoot, KeySpec, Template};
use sscard_kms::dev::{TestKeys, test_keys};

/// The ATR every test card answers with unless a test says otherwise: `3B 6D 00 00` (TS; T0
/// announcing TB1, TC1 and 13 historical bytes; TB1; TC1), then 13 historical bytes, the last
/// 8 of which are the card factor of DOMAIN.md §2's worked chain (ISO/IEC 7816-3 structure, as
/// a real SSC answers: the reader code of DOMAIN.md §10 takes the 13 bytes after the first 4).
pub const ATR_HEX: &str = "3B6D000080318065B086843202AD932A48";

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
        KeyRoot::City(_) => &keys.city_root,
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
        KeyRoot::City(_) => vec![f3],
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
        // A city's own root is its city-level key: city → card.
        (KeyRoot::City(_), KeyLevel::City) => 0,
        (KeyRoot::City(_), KeyLevel::Card) => 1,
        (KeyRoot::City(_), _) => return None,
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
        .chain(keys.city_root.all())
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
pub fn vendor_transport(alg: Algorithm) -> Expected {
    let keys = published();
    let hex = match alg {
        Algorithm::Sm4 => keys.vendor_transport.sm4,
        _ => keys.vendor_transport.tdes,
    };
    Expected {
        key: SecretKey::from_hex(alg, &hex).unwrap(),
        hex,
    }
}

/// A shipped data file as written.
fn data_file(path: &str) -> toml::Table {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn byte(v: &toml::Value) -> u8 {
    u8::try_from(v.as_integer().expect("a byte")).expect("a byte")
}

fn strings(v: &toml::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// A COS profile's values, read from `profiles/cos/<id>.toml` as written.
#[derive(Debug, Clone)]
pub struct CosData {
    pub cla: u8,
    pub ins: u8,
    pub p1_master: u8,
    pub p1_other: u8,
    /// None: P2 is the key id.
    pub p2: Option<u8>,
    pub layout: Vec<String>,
    pub use_right: Option<u8>,
    pub change_right: Option<u8>,
    pub state_roles: Vec<String>,
    /// Algorithm name → (header byte, Lc).
    pub algorithms: std::collections::BTreeMap<String, (Option<u8>, u8)>,
    /// Role → type byte.
    pub types: std::collections::BTreeMap<String, u8>,
    /// Master key id, version, follow-up level.
    pub master: (u8, u8, u8),
    pub zero_roles: Vec<String>,
    pub number_zero_roles: bool,
}

/// Every value of a profile is a table `{ value = …, published|inferred = "…" }`.
fn value<'a>(table: &'a toml::Table, key: &str) -> &'a toml::Value {
    let entry = table
        .get(key)
        .unwrap_or_else(|| panic!("{key}"))
        .as_table()
        .unwrap();
    assert!(
        entry.contains_key("published") != entry.contains_key("inferred"),
        "{key}: one mark"
    );
    &entry["value"]
}

/// The COS profile `id` as written.
pub fn cos_data(id: &str) -> CosData {
    let t = data_file(&format!("profiles/cos/{id}.toml"));
    let section = |name: &str| t[name].as_table().unwrap().clone();
    let w = section("write_key");
    let h = section("header");
    let m = section("master");
    let f = section("follow_up");
    let opt = |table: &toml::Table, key: &str| table.get(key).map(|_| byte(value(table, key)));
    CosData {
        cla: byte(value(&w, "cla")),
        ins: byte(value(&w, "ins")),
        p1_master: byte(value(&w, "p1_master")),
        p1_other: byte(value(&w, "p1_other")),
        p2: match value(&w, "p2") {
            toml::Value::String(s) if s == "key-id" => None,
            v => Some(byte(v)),
        },
        layout: strings(value(&h, "layout")),
        use_right: opt(&h, "use_right"),
        change_right: opt(&h, "change_right"),
        state_roles: h
            .get("state_roles")
            .map(|_| strings(value(&h, "state_roles")))
            .unwrap_or_default(),
        algorithms: t["algorithm"]
            .as_table()
            .unwrap()
            .iter()
            .map(|(name, a)| {
                let a = a.as_table().unwrap();
                (name.clone(), (opt(a, "header"), byte(value(a, "lc"))))
            })
            .collect(),
        types: t["type"]
            .as_table()
            .unwrap()
            .keys()
            .map(|role| {
                (
                    role.clone(),
                    byte(value(t["type"].as_table().unwrap(), role)),
                )
            })
            .collect(),
        master: (
            byte(value(&m, "key_id")),
            byte(value(&m, "version")),
            byte(value(&m, "follow_up")),
        ),
        zero_roles: strings(value(&f, "zero_roles")),
        number_zero_roles: value(&f, "number_zero_roles").as_bool().unwrap(),
    }
}

/// DOMAIN.md §10's T514 table, written out: the shipped `t514` profile must say the same.
pub fn assert_t514_is_domain_md(cos: &CosData) {
    assert_eq!(
        (cos.cla, cos.ins, cos.p1_master, cos.p1_other, cos.p2),
        (0x84, 0xD4, 0x01, 0x00, Some(0x00))
    );
    assert_eq!(
        cos.layout,
        [
            "type",
            "key_id",
            "version",
            "use_right",
            "error_counter",
            "algorithm",
            "follow_up",
            "length"
        ]
    );
    assert_eq!(cos.use_right, Some(0xEF));
    for (role, byte) in [
        ("master", 0x00),
        ("pin", 0x01),
        ("maintenance", 0x07),
        ("load", 0x08),
        ("purchase", 0x09),
        ("tac", 0x0A),
        ("internal-auth", 0x0E),
        ("external-auth", 0x0D),
        ("update", 0x0D),
        ("pin-unblock", 0x0D),
        ("pin-reload", 0x0D),
        ("block", 0x0D),
        ("lock", 0x0D),
    ] {
        assert_eq!(cos.types[role], byte, "{role}");
    }
    assert_eq!(cos.master, (0x00, 0x00, 0xFF));
    assert_eq!(cos.zero_roles, ["maintenance", "internal-auth"]);
    assert_eq!(cos.algorithms["tdes"], (Some(0x00), 0x24));
    assert_eq!(cos.algorithms["des"].0, Some(0x01));
    assert_eq!(cos.algorithms["sm4"].1, 0x24);
}

/// One key line of a template file as written.
#[derive(Debug, Clone)]
pub struct KeyLine {
    pub name: String,
    pub directory: String,
    pub role: String,
    pub key_id: Option<u8>,
    pub key_version: Option<u8>,
    pub error_counter: u8,
    pub length: u8,
    pub algorithm: String,
    pub protected_by: String,
}

/// A template as written: its COS profile id and its key lines, in file order (a merged
/// extension: the base's `texts[0]`, then the extension's).
pub fn key_lines(texts: &[&str]) -> (String, Vec<KeyLine>) {
    let mut cos = None;
    let mut lines = Vec::new();
    for text in texts {
        let t: toml::Table = toml::from_str(text).unwrap();
        let cos_id = t["cos"].as_str().unwrap().to_owned();
        assert!(cos.as_ref().is_none_or(|c| *c == cos_id), "one COS profile");
        cos = Some(cos_id);
        let default_alg = t["algorithm"].as_str().unwrap();
        for k in t["key"].as_array().unwrap() {
            let k = k.as_table().unwrap();
            lines.push(KeyLine {
                name: k["name"].as_str().unwrap().to_owned(),
                directory: k["directory"].as_str().unwrap().to_owned(),
                role: k["role"].as_str().unwrap().to_owned(),
                key_id: k.get("key_id").map(byte),
                key_version: k.get("key_version").map(byte),
                error_counter: byte(&k["error_counter"]),
                length: byte(&k["length"]),
                algorithm: k
                    .get("algorithm")
                    .and_then(|a| a.as_str())
                    .unwrap_or(default_alg)
                    .to_owned(),
                protected_by: k["protected_by"].as_str().unwrap().to_owned(),
            });
        }
    }
    (cos.expect("a template"), lines)
}

/// The file of a shipped template.
pub fn template_text(id: &str) -> String {
    let path = format!("{}/templates/{id}.toml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One key of a PSAM profile file, read as plain TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsamLine {
    pub card_key: String,
    pub psam_key_id: u8,
    pub usage: u8,
    pub psam_key_version: u8,
}

/// The keys of `profiles/psam/<id>.toml` in file order, and whether it takes maintenance keys.
pub fn psam_profile_data(id: &str) -> (Vec<PsamLine>, bool) {
    let t = data_file(&format!("profiles/psam/{id}.toml"));
    let maintenance = value(&t, "maintenance_keys").as_bool().unwrap();
    let keys = t["key"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let k = k.as_table().unwrap();
            PsamLine {
                card_key: k["card_key"].as_str().unwrap().to_owned(),
                psam_key_id: byte(value(k, "psam_key_id")),
                usage: byte(value(k, "usage")),
                psam_key_version: byte(value(k, "psam_key_version")),
            }
        })
        .collect();
    (keys, maintenance)
}

/// CLA INS P1 P2, the key header and Lc of one key's WRITE KEY, from DOMAIN.md §10's rules
/// applied to the files as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteKeyBytes {
    pub command: [u8; 4],
    pub header: Vec<u8>,
    pub lc: u8,
    /// The key id and version the card records (a master key's are the profile's).
    pub key_id: u8,
    pub key_version: u8,
    pub key_type: u8,
}

/// DOMAIN.md §10 for the key `name` of the template written as `texts` (base first).
pub fn write_key_bytes(texts: &[&str], name: &str) -> WriteKeyBytes {
    let (cos_id, lines) = key_lines(texts);
    let cos = cos_data(&cos_id);
    let key = lines
        .iter()
        .find(|k| k.name == name)
        .expect("a key of the template");
    let master = key.role == "master";
    // The follow-up level: FF-style master value; otherwise the key's sequence number in its
    // directory (file order, the master key not counted; zero roles counted if the profile says
    // so) in both nibbles, 00 for the zero roles.
    let zero = cos.zero_roles.contains(&key.role);
    let follow_up = if master {
        cos.master.2
    } else if zero {
        0x00
    } else {
        let n = lines
            .iter()
            .filter(|k| k.directory == key.directory && k.role != "master")
            .filter(|k| cos.number_zero_roles || !cos.zero_roles.contains(&k.role))
            .position(|k| k.name == key.name)
            .unwrap()
            + 1;
        assert!(n <= 15, "{name}: sequence number {n}");
        u8::try_from(n).unwrap() * 0x11
    };
    let (key_id, key_version) = if master {
        assert!(key.key_id.is_none() && key.key_version.is_none(), "{name}");
        (cos.master.0, cos.master.1)
    } else {
        (key.key_id.unwrap(), key.key_version.unwrap())
    };
    let key_type = cos.types[&key.role];
    let (alg_byte, lc) = cos.algorithms[&key.algorithm];
    let header = cos
        .layout
        .iter()
        .map(|field| match field.as_str() {
            "type" => key_type,
            "key_id" => key_id,
            "version" => key_version,
            "use_right" => cos.use_right.unwrap(),
            "change_right" => cos.change_right.unwrap(),
            "version_or_state" if cos.state_roles.contains(&key.role) => follow_up,
            "version_or_state" => key_version,
            "error_counter" => key.error_counter,
            "algorithm" => alg_byte.unwrap(),
            "follow_up" => follow_up,
            "length" => key.length,
            other => panic!("header field {other}"),
        })
        .collect();
    WriteKeyBytes {
        command: [
            cos.cla,
            cos.ins,
            if master { cos.p1_master } else { cos.p1_other },
            cos.p2.unwrap_or(key_id),
        ],
        header,
        lc,
        key_id,
        key_version,
        key_type,
    }
}

/// `80 00..` to a whole block, always added (ISO/IEC 9797-1 method 2).
fn pad(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    out.push(0x80);
    while !out.len().is_multiple_of(block) {
        out.push(0);
    }
    out
}

/// DOMAIN.md §5's MAC by hand: 3DES — single-DES CBC under the left half with the challenge as
/// IV, the last block decrypted with the right half and encrypted with the left, first 4 bytes;
/// SM4 — SM4-CBC with the challenge as IV, the last block folded by XOR of its four words.
fn mac_by_hand(protect: &Expected, challenge: &[u8], data: &[u8]) -> [u8; 4] {
    let bytes = hex::decode(&protect.hex).unwrap();
    let mut out = [0u8; 4];
    match protect.key.algorithm() {
        Algorithm::Tdes2 => {
            let left = SecretKey::new(Algorithm::Des, &bytes[..8]).unwrap();
            let right = SecretKey::new(Algorithm::Des, &bytes[8..]).unwrap();
            let cbc =
                hsm_sim::crypto::cipher::encrypt_cbc(&left, challenge, &pad(data, 8)).unwrap();
            let last = &cbc[cbc.len() - 8..];
            let last = hsm_sim::crypto::cipher::decrypt_ecb(&right, last).unwrap();
            let last = hsm_sim::crypto::cipher::encrypt_ecb(&left, &last).unwrap();
            out.copy_from_slice(&last[..4]);
        }
        Algorithm::Sm4 => {
            let cbc = hsm_sim::crypto::cipher::encrypt_cbc(&protect.key, challenge, &pad(data, 16))
                .unwrap();
            for word in cbc[cbc.len() - 16..].chunks_exact(4) {
                out.iter_mut().zip(word).for_each(|(o, w)| *o ^= w);
            }
        }
        other => panic!("no card MAC for {other:?}"),
    }
    out
}

/// The WRITE KEY command of `name` of the template written as `texts`, rebuilt from its
/// parts: `CLA INS P1 P2 Lc ‖ field ‖ MAC`, where `field = ECB(protect, Ld ‖ header ‖ key ‖
/// 80 00..)` and the MAC runs over the command header and the field with the card's challenge
/// as IV (DOMAIN.md §5). Field and MAC are done by hand and checked against
/// `hsm_sim::crypto::mac::encrypt_key_field` / `card_mac`; Lc is checked against the profile's.
pub fn write_key_apdu(
    protect: &Expected,
    texts: &[&str],
    name: &str,
    key: &Expected,
    challenge: &[u8],
) -> Vec<u8> {
    let bytes = write_key_bytes(texts, name);
    let mut data = bytes.header.clone();
    data.extend(hex::decode(&key.hex).unwrap());
    let mut plain = vec![u8::try_from(data.len()).unwrap()];
    plain.extend_from_slice(&data);
    let block = protect.key.algorithm().block_len();
    let field = hsm_sim::crypto::cipher::encrypt_ecb(&protect.key, &pad(&plain, block)).unwrap();
    assert_eq!(
        field,
        hsm_sim::crypto::mac::encrypt_key_field(&protect.key, &data).unwrap(),
        "{name}: the field by hand and hsm_sim's"
    );
    let lc = u8::try_from(field.len() + hsm_sim::crypto::mac::CARD_MAC_LEN).unwrap();
    assert_eq!(lc, bytes.lc, "{name}: Lc is the profile's");
    let mut apdu = bytes.command.to_vec();
    apdu.push(lc);
    apdu.extend_from_slice(&field);
    let mac = mac_by_hand(protect, challenge, &apdu);
    assert_eq!(
        mac,
        hsm_sim::crypto::mac::card_mac(&protect.key, challenge, &apdu, MacFold::Xor4).unwrap(),
        "{name}: the MAC by hand and hsm_sim's"
    );
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
