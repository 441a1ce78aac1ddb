//! The module, its token and sessions: one initialised context per module library and process,
//! the token found by its label (never by slot number: SoftHSM renumbers slots), login and
//! logout, and the LMK's objects in the token.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_api::{Error, Kcv, KcvMethod, Result};

/// Label of the LMK's wrapping key (AES-256, wraps and unwraps root keys only).
pub(crate) const LMK_WRAP_LABEL: &str = "sscard-kms LMK wrap";
/// Label of the LMK's MAC key (AES-256, CMAC of key tokens only).
pub(crate) const LMK_MAC_LABEL: &str = "sscard-kms LMK mac";
/// Label of the public data object that says an LMK exists and gives its KCV (readable while
/// logged out, so that the status tells an uninitialised token from a sealed one).
pub(crate) const LMK_MARKER_LABEL: &str = "sscard-kms LMK";

/// The dangerous test LMK's MAC key: the ASCII bytes of `SSCARD-KMS-TEST-P11-MAC-DO-NOT-USE`
/// cut to 32. Its wrapping key is the simulator's published test LMK
/// ([`hsm_sim::local::DANGEROUS_TEST_LMK_HEX`]).
pub const DANGEROUS_TEST_LMK_MAC_HEX: &str =
    "5353434152442D4B4D532D544553542D5031312D4D41432D444F2D4E4F542D55";

/// The initialised contexts of this process, one per module library, and the SoftHSM
/// configuration this process was pointed at, if any.
struct Registry {
    contexts: Vec<(PathBuf, Pkcs11)>,
    softhsm_conf: Option<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    contexts: Vec::new(),
    softhsm_conf: None,
});

fn storage(what: &str, e: &cryptoki::error::Error) -> Error {
    tracing::debug!(error = %e, "PKCS#11: {what}");
    Error::Storage(format!("PKCS#11: {what} failed").into())
}

/// The context of `module` (loaded and initialised once per process). With `softhsm_conf`, a
/// SoftHSM2 module is first pointed at that configuration; a process can be pointed at one only.
pub(crate) fn context(module: &Path, softhsm_conf: Option<&Path>) -> Result<Pkcs11> {
    let mut registry = REGISTRY.lock().map_err(|_| Error::StatePoisoned)?;
    if let Some(conf) = softhsm_conf {
        match &registry.softhsm_conf {
            Some(current) if current == conf => {}
            Some(_) => {
                return Err(Error::Storage(
                    "this process already uses another SoftHSM2 configuration".into(),
                ));
            }
            None if registry.contexts.iter().any(|(m, _)| m == module) => {
                return Err(Error::Storage(
                    "the SoftHSM2 module was initialised before its configuration was set".into(),
                ));
            }
            None => {
                crate::ffi::dangerous_set_softhsm_conf(conf);
                registry.softhsm_conf = Some(conf.to_owned());
            }
        }
    }
    if let Some((_, ctx)) = registry.contexts.iter().find(|(m, _)| m == module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| storage("loading the module", &e))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| storage("C_Initialize", &e))?;
    registry.contexts.push((module.to_owned(), ctx.clone()));
    Ok(ctx)
}

/// The slot of the initialised token labelled `label`.
pub(crate) fn find_token(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>> {
    for slot in ctx
        .get_slots_with_token()
        .map_err(|e| storage("C_GetSlotList", &e))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| storage("C_GetTokenInfo", &e))?;
        if info.token_initialized() && info.label().trim_end() == label {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// A read-write session on `slot` (logged in if the application is).
pub(crate) fn open(ctx: &Pkcs11, slot: Slot) -> Result<Session> {
    ctx.open_rw_session(slot)
        .map_err(|e| storage("C_OpenSession", &e))
}

/// Logs the user in with `pin`; a wrong PIN is a refused share, nothing else changes.
pub(crate) fn login(session: &Session, pin: &str) -> Result<()> {
    let pin = AuthPin::new(pin.into());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
            Ok(())
        }
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::PinIncorrect
            | cryptoki::error::RvError::PinLenRange
            | cryptoki::error::RvError::PinInvalid,
            _,
        )) => Err(Error::Share("the token refused the PIN".into())),
        Err(e) => Err(storage("C_Login", &e)),
    }
}

/// The LMK's two keys in the token, and its KCV.
#[derive(Debug, Clone)]
pub(crate) struct LmkObjects {
    pub(crate) wrap: ObjectHandle,
    pub(crate) mac: ObjectHandle,
    pub(crate) kcv: Kcv,
}

fn find_one(session: &Session, template: &[Attribute]) -> Result<Option<ObjectHandle>> {
    let found = session
        .find_objects(template)
        .map_err(|e| storage("C_FindObjects", &e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(Error::Storage(
            "the token holds more than one object with an LMK label".into(),
        )),
    }
}

/// The value (`CKA_VALUE`) of `object`: a public data object, or a key released for one
/// operation.
pub(crate) fn read_value(session: &Session, object: ObjectHandle) -> Result<Vec<u8>> {
    session
        .get_attributes(object, &[AttributeType::Value])
        .map_err(|e| refused("C_GetAttributeValue", &e))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or(Error::Protocol)
}

/// The KCV the public marker object records, if there is one (no login needed).
pub(crate) fn marker_kcv(session: &Session) -> Result<Option<Kcv>> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(LMK_MARKER_LABEL.into()),
    ];
    let Some(marker) = find_one(session, &template)? else {
        return Ok(None);
    };
    Ok(Some(Kcv::from_parts(
        KcvMethod::Cmac,
        read_value(session, marker)?,
    )))
}

/// The LMK's KCV: the CMAC of a zero block under its MAC key, 5 bytes.
fn lmk_kcv(session: &Session, mac: ObjectHandle) -> Result<Kcv> {
    let mut full = session
        .sign(&Mechanism::AesCMac, mac, &[0u8; 16])
        .map_err(|e| storage("C_Sign (LMK KCV)", &e))?;
    full.truncate(5);
    Ok(Kcv::from_parts(KcvMethod::Cmac, full))
}

/// The LMK's keys, found by label in a logged-in session, checked against the marker's KCV.
pub(crate) fn find_lmk(session: &Session) -> Result<Option<LmkObjects>> {
    let key = |label: &str| {
        [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let (Some(wrap), Some(mac)) = (
        find_one(session, &key(LMK_WRAP_LABEL))?,
        find_one(session, &key(LMK_MAC_LABEL))?,
    ) else {
        return Ok(None);
    };
    let kcv = lmk_kcv(session, mac)?;
    if marker_kcv(session)?.is_some_and(|m| m != kcv) {
        return Err(Error::LmkKcvMismatch);
    }
    Ok(Some(LmkObjects { wrap, mac, kcv }))
}

/// The attributes of an LMK key: a private, sensitive, never-extractable token object.
fn lmk_template(label: &str, mac: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Wrap(!mac),
        Attribute::Unwrap(!mac),
        Attribute::Sign(mac),
        Attribute::Verify(mac),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
    ]
}

/// Creates the LMK in the token: two AES-256 keys generated inside it, or (`dangerous_test`) the
/// published test values, and the public marker with its KCV.
pub(crate) fn create_lmk(session: &Session, dangerous_test: bool) -> Result<LmkObjects> {
    let lmk = generate_lmk_keys(session, dangerous_test, LMK_WRAP_LABEL, LMK_MAC_LABEL)?;
    create_marker(session, &lmk.kcv)?;
    Ok(lmk)
}

/// The LMK's two keys under `wrap_label` and `mac_label`.
pub(crate) fn generate_lmk_keys(
    session: &Session,
    dangerous_test: bool,
    wrap_label: &str,
    mac_label: &str,
) -> Result<LmkObjects> {
    let make = |label: &str, mac: bool, value_hex: &str| -> Result<ObjectHandle> {
        let mut template = lmk_template(label, mac);
        if dangerous_test {
            let value = hex::decode(value_hex).map_err(|_| Error::Protocol)?;
            template.push(Attribute::Value(value));
            session
                .create_object(&template)
                .map_err(|e| storage("C_CreateObject (test LMK)", &e))
        } else {
            template.push(Attribute::ValueLen(32.into()));
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| storage("C_GenerateKey (LMK)", &e))
        }
    };
    let wrap = make(wrap_label, false, hsm_sim::local::DANGEROUS_TEST_LMK_HEX)?;
    let mac = make(mac_label, true, DANGEROUS_TEST_LMK_MAC_HEX)?;
    let kcv = lmk_kcv(session, mac)?;
    Ok(LmkObjects { wrap, mac, kcv })
}

/// The public marker object that records the LMK's KCV.
pub(crate) fn create_marker(session: &Session, kcv: &Kcv) -> Result<()> {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(LMK_MARKER_LABEL.into()),
            Attribute::Value(kcv.value().to_vec()),
        ])
        .map_err(|e| storage("C_CreateObject (LMK marker)", &e))?;
    Ok(())
}

/// Every object labelled `label` (of any class).
pub(crate) fn find_labelled(session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(|e| storage("C_FindObjects", &e))
}

/// Destroys `object`.
pub(crate) fn destroy(session: &Session, object: ObjectHandle) -> Result<()> {
    session
        .destroy_object(object)
        .map_err(|e| storage("C_DestroyObject", &e))
}

/// Relabels `object`.
pub(crate) fn relabel(session: &Session, object: ObjectHandle, label: &str) -> Result<()> {
    session
        .update_attributes(object, &[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(|e| storage("C_SetAttributeValue (label)", &e))
}

/// Maps a token's refusal of a key operation.
pub(crate) fn refused(what: &str, e: &cryptoki::error::Error) -> Error {
    match e {
        cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserNotLoggedIn, _) => {
            Error::Sealed
        }
        cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::SignatureInvalid, _) => {
            Error::Verification
        }
        other => storage(what, other),
    }
}

/// Label of the public data object that records the PIN's custodian shares (threshold and check
/// values, never a share), when the PIN was split at `init_lmk`.
pub(crate) const PIN_SHARES_LABEL: &str = "sscard-kms PIN shares";

/// The record of the PIN's shares, if the PIN was split: `v1;<KCV hex>;<m>;<cv>,<cv>,…`.
pub(crate) fn pin_record(session: &Session) -> Result<Option<hsm_sim::shares::ShareRecord>> {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Label(PIN_SHARES_LABEL.into()),
    ];
    let Some(object) = find_one(session, &template)? else {
        return Ok(None);
    };
    let value = read_value(session, object)?;
    let corrupt = || Error::Storage("the token's PIN share record is malformed".into());
    let text = String::from_utf8(value).map_err(|_| corrupt())?;
    let mut fields = text.split(';');
    let (Some("v1"), Some(kcv), Some(threshold), Some(check_values), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(corrupt());
    };
    Ok(Some(hsm_sim::shares::ShareRecord {
        kcv: Kcv::from_parts(KcvMethod::Cmac, hex::decode(kcv).map_err(|_| corrupt())?),
        threshold: threshold.parse().map_err(|_| corrupt())?,
        check_values: check_values.split(',').map(str::to_owned).collect(),
    }))
}

/// Records the PIN's shares in the token (a public data object).
pub(crate) fn store_pin_record(
    session: &Session,
    record: &hsm_sim::shares::ShareRecord,
) -> Result<()> {
    let text = format!(
        "v1;{};{};{}",
        record.kcv.to_hex(),
        record.threshold,
        record.check_values.join(",")
    );
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(PIN_SHARES_LABEL.into()),
            Attribute::Value(text.into_bytes()),
        ])
        .map_err(|e| storage("C_CreateObject (PIN share record)", &e))?;
    Ok(())
}

/// Changes the user PIN from `old` to `new` (logged in).
pub(crate) fn set_pin(session: &Session, old: &str, new: &str) -> Result<()> {
    session
        .set_pin(&AuthPin::new(old.into()), &AuthPin::new(new.into()))
        .map_err(|e| storage("C_SetPIN", &e))
}
