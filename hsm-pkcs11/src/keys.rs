//! The key operations: a token's key made present in the token (or released for one operation),
//! and every operation of the trait on it. The usage rules and the clear-key assembly are the
//! simulator's own ([`hsm_sim::policy`]); nothing here is a second implementation of them.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsm_api::{
    Accumulated, Accumulation, Algorithm, Component, Dispersion, Error, Exportability, ExportedKey,
    Factor, Kcv, KcvMethod, KeyBlockVersion, KeySpec, KeyToken, KeyUsage, ListSignature,
    PartialKey, Result, WrappedKey, WriteKeyCommand, WriteKeyRequest,
};
use hsm_sim::crypto::{SecretKey, diversify, kcv};
use hsm_sim::policy::{self, check_new_key, child_of, wrong_usage};
use zeroize::Zeroizing;

use crate::Pkcs11Hsm;
use crate::capability::{Mode, Outside, Where};
use crate::ffi::EncryptData;
use crate::session::{self, LmkObjects, refused};
use crate::token::{self, MAX_STEPS, StoredKey};

/// Factors one derivation may apply.
const FACTORS: core::ops::RangeInclusive<usize> = 1..=8;
/// Random bytes one call may ask for.
const RANDOM_LEN: core::ops::RangeInclusive<u32> = 1..=4096;

/// The PKCS#11 key type of a key of `alg` (SM4 has none: a generic secret holds its bytes).
fn key_type(alg: Algorithm) -> KeyType {
    match alg {
        Algorithm::Des => KeyType::DES,
        Algorithm::Tdes2 => KeyType::DES2,
        Algorithm::Tdes3 => KeyType::DES3,
        Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => KeyType::AES,
        Algorithm::Sm4 => KeyType::GENERIC_SECRET,
    }
}

/// A key used inside the token: a sensitive, never-extractable session object that encrypts
/// (KCVs), signs (AES: CMAC KCVs and the audit MAC) or derives (DES family).
fn in_token_template(alg: Algorithm) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type(alg)),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Sign(alg.is_aes()),
        Attribute::Derive(alg.is_des_family()),
    ]
}

/// A key released for one operation: a non-sensitive generic secret (no key type, so the token
/// adjusts no parity bit), read once and gone with its session; `len` bytes when derived (an
/// unwrapped key's length is its wrapping's).
fn release_template(len: Option<usize>) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    if let Some(len) = len {
        template.push(Attribute::ValueLen((len as u64).into()));
    }
    template
}

/// A new root key on its way to being wrapped by the LMK: sensitive, extractable (for that one
/// wrap), and usable for its KCV.
fn new_root_template(alg: Algorithm) -> Vec<Attribute> {
    let mut template = in_token_template(alg);
    template.retain(|a| !matches!(a, Attribute::Extractable(_)));
    template.push(Attribute::Extractable(true));
    template
}

/// The refusal of strict mode for what a standard token cannot do.
fn refusal(outside: Outside, alg: Algorithm) -> Error {
    Error::Unsupported {
        op: outside.reason().into(),
        alg,
    }
}

impl Pkcs11Hsm {
    /// The key of `token`, after the token checked its MAC under the LMK.
    pub(crate) fn verified(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        token: &KeyToken,
    ) -> Result<StoredKey> {
        let (key, body, mac) = token::parse(token.as_str())?;
        session
            .verify(&Mechanism::AesCMac, lmk.mac, body.as_bytes(), &mac)
            .map_err(|e| match refused("C_Verify (key token)", &e) {
                Error::Verification | Error::Storage(_) => Error::KeyBlockMac,
                other => other,
            })?;
        Ok(key)
    }

    /// The key of `token` if its usage passes `allowed`; otherwise [`Error::WrongUsage`].
    pub(crate) fn key_for(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        token: &KeyToken,
        allowed: fn(KeyUsage) -> bool,
        operation: &'static str,
    ) -> Result<StoredKey> {
        let key = self.verified(session, lmk, token)?;
        if !allowed(key.usage) {
            return Err(wrong_usage(key.usage, operation));
        }
        Ok(key)
    }

    /// A key token for `key` (its MAC made by the token).
    pub(crate) fn seal_token(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &StoredKey,
    ) -> Result<KeyToken> {
        let body = key.body();
        let mac = session
            .sign(&Mechanism::AesCMac, lmk.mac, body.as_bytes())
            .map_err(|e| refused("C_Sign (key token)", &e))?;
        Ok(KeyToken::from_stored(format!(
            "{body}.{}",
            hex::encode_upper(mac)
        )))
    }

    /// The root of `key` unwrapped from its LMK wrapping into a session object of `template`.
    pub(crate) fn unwrap_root(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &StoredKey,
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        session
            .unwrap_key(&Mechanism::AesKeyWrapPad, lmk.wrap, &key.wrapped, template)
            .map_err(|e| refused("C_UnwrapKey (root key)", &e))
    }

    /// The root of `key` unwrapped as a sensitive but extractable session object, for the one
    /// `C_WrapKey` of an LMK rotation.
    pub(crate) fn unwrap_extractable(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &StoredKey,
    ) -> Result<ObjectHandle> {
        self.unwrap_root(session, lmk, key, &new_root_template(key.root_alg))
    }

    /// One dispersion step in the token: the child of `parent` (of `alg`) for `factor`.
    fn derive_step(
        &self,
        session: &Session,
        parent: ObjectHandle,
        alg: Algorithm,
        method: Dispersion,
        factor: &Factor,
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let mut data = Zeroizing::new(Vec::with_capacity(16));
        data.extend_from_slice(factor.as_bytes());
        let mechanism = match (method, alg) {
            (
                Dispersion::PbocTdes | Dispersion::EmvOptionA,
                Algorithm::Tdes2 | Algorithm::Tdes3,
            ) => {
                data.extend_from_slice(&factor.complement());
                EncryptData::Des3Ecb
            }
            (Dispersion::PbocDes, Algorithm::Des) => EncryptData::DesEcb,
            (Dispersion::PbocDes, Algorithm::Tdes2 | Algorithm::Tdes3) => EncryptData::Des3Ecb,
            (method, alg) => {
                method.child_algorithm(alg)?;
                return Err(refusal(Outside::Sm4, alg));
            }
        };
        self.raw
            .encrypt_data(session, mechanism, parent, &data, template)
    }

    /// The key of `key` as a sensitive, non-extractable session object: its root unwrapped and
    /// every dispersion step run in the token. Refused (SM4) if the token cannot hold it.
    pub(crate) fn in_token(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &StoredKey,
    ) -> Result<ObjectHandle> {
        if key.needs_sm4() {
            return Err(refusal(Outside::Sm4, Algorithm::Sm4));
        }
        let mut handle = self.unwrap_root(session, lmk, key, &in_token_template(key.root_alg))?;
        let mut alg = key.root_alg;
        for (method, factor) in &key.steps {
            let child = method.child_algorithm(alg)?;
            handle = self.derive_step(
                session,
                handle,
                alg,
                *method,
                factor,
                &in_token_template(child),
            )?;
            alg = child;
        }
        Ok(handle)
    }

    /// The clear key of `key`, released by the token for one operation that needs `outside`; in
    /// strict mode, the refusal. Every dispersion step but the last runs in the token (SM4 chains
    /// run outside from their released root).
    fn released(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &StoredKey,
        outside: Outside,
    ) -> Result<SecretKey> {
        if outside.runs(self.mode) == Where::Refused {
            return Err(refusal(outside, key.alg));
        }
        let read = |handle: ObjectHandle, alg: Algorithm| -> Result<SecretKey> {
            SecretKey::from_vec(alg, session::read_value(session, handle)?)
        };
        if key.steps.is_empty() || key.needs_sm4() {
            let root = self.unwrap_root(session, lmk, key, &release_template(None))?;
            let mut clear = read(root, key.root_alg)?;
            for (method, factor) in &key.steps {
                clear = diversify::diversify(&clear, *method, factor)?;
            }
            return Ok(clear);
        }
        let (last, above) = key.steps.split_last().ok_or(Error::Protocol)?;
        let parent = StoredKey {
            steps: above.to_vec(),
            ..key.clone()
        };
        let mut parent_alg = key.root_alg;
        for (method, _) in above {
            parent_alg = method.child_algorithm(parent_alg)?;
        }
        let parent = self.in_token(session, lmk, &parent)?;
        let (method, factor) = last;
        let child = self.derive_step(
            session,
            parent,
            parent_alg,
            *method,
            factor,
            &release_template(Some(key.alg.key_len())),
        )?;
        let clear = read(child, key.alg)?;
        if *method == Dispersion::EmvOptionA {
            let adjusted: Zeroizing<Vec<u8>> = Zeroizing::new(
                clear
                    .secret_bytes()
                    .iter()
                    .map(|b| diversify::with_odd_parity(*b))
                    .collect(),
            );
            return SecretKey::new(key.alg, &adjusted);
        }
        Ok(clear)
    }

    /// The KCV of a key present in the token (encrypt zeros; CMAC for AES), default length.
    pub(crate) fn kcv_in_token(
        &self,
        session: &Session,
        handle: ObjectHandle,
        alg: Algorithm,
    ) -> Result<Kcv> {
        let method = KcvMethod::default_for(alg);
        let mut full = match alg {
            Algorithm::Des => session.encrypt(&Mechanism::DesEcb, handle, &[0u8; 8]),
            Algorithm::Tdes2 | Algorithm::Tdes3 => {
                session.encrypt(&Mechanism::Des3Ecb, handle, &[0u8; 8])
            }
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => {
                session.sign(&Mechanism::AesCMac, handle, &[0u8; 16])
            }
            Algorithm::Sm4 => return Err(refusal(Outside::Sm4, alg)),
        }
        .map_err(|e| refused("KCV in the token", &e))?;
        full.truncate(method.default_len(alg));
        Ok(Kcv::from_parts(method, full))
    }

    /// The KCV of a token's key: computed in the token, or (SM4) on the key released for it.
    fn kcv_of(&self, session: &Session, lmk: &LmkObjects, key: &StoredKey) -> Result<Kcv> {
        if key.needs_sm4() {
            return kcv::compute_default(&self.released(session, lmk, key, Outside::Sm4)?);
        }
        let handle = self.in_token(session, lmk, key)?;
        self.kcv_in_token(session, handle, key.alg)
    }

    /// Wraps the root key `handle` (of `alg`) by the LMK into a token of `usage`.
    fn new_root(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        handle: ObjectHandle,
        alg: Algorithm,
        usage: KeyUsage,
        exportability: Exportability,
    ) -> Result<KeyToken> {
        let wrapped = session
            .wrap_key(&Mechanism::AesKeyWrapPad, lmk.wrap, handle)
            .map_err(|e| refused("C_WrapKey (root key)", &e))?;
        let key = StoredKey {
            usage,
            alg,
            exportability,
            root_alg: alg,
            steps: Vec::new(),
            wrapped,
        };
        self.seal_token(session, lmk, &key)
    }

    /// A token for a key the HSM process holds in clear (formed from components, or imported
    /// from a block): the key enters the token, is wrapped by the LMK, and its object is gone with
    /// the session.
    fn root_from_clear(
        &self,
        session: &Session,
        lmk: &LmkObjects,
        key: &SecretKey,
        usage: KeyUsage,
        exportability: Exportability,
    ) -> Result<WrappedKey> {
        if key.algorithm() == Algorithm::Sm4 && self.mode == Mode::Strict {
            return Err(refusal(Outside::Sm4, Algorithm::Sm4));
        }
        let mut template = new_root_template(key.algorithm());
        template.push(Attribute::Value(key.secret_bytes().to_vec()));
        let handle = session
            .create_object(&template)
            .map_err(|e| refused("C_CreateObject (root key)", &e))?;
        let token = self.new_root(session, lmk, handle, key.algorithm(), usage, exportability)?;
        Ok(WrappedKey {
            token,
            // The same value the token computes; this key is in the process anyway.
            kcv: kcv::compute_default(key)?,
        })
    }

    pub(crate) fn generate_key_now(&self, lmk: &LmkObjects, spec: KeySpec) -> Result<WrappedKey> {
        check_new_key(spec)?;
        if spec.usage == KeyUsage::ListSigning(ListSignature::Sm2) {
            return Err(refusal(Outside::Sm2, spec.algorithm));
        }
        let session = self.session()?;
        let alg = spec.algorithm;
        let mechanism = match alg {
            Algorithm::Des => Mechanism::DesKeyGen,
            Algorithm::Tdes2 => Mechanism::Des2KeyGen,
            Algorithm::Tdes3 => Mechanism::Des3KeyGen,
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => Mechanism::AesKeyGen,
            Algorithm::Sm4 => {
                // No SM4 key generation in a token: its random bytes, then a key released.
                let bytes = self.random_now(16)?;
                let key = SecretKey::from_vec(Algorithm::Sm4, bytes)?;
                key.check_not_weak()?;
                return self.root_from_clear(&session, lmk, &key, spec.usage, spec.exportability);
            }
        };
        let mut template = new_root_template(alg);
        if alg.is_aes() {
            template.push(Attribute::ValueLen((alg.key_len() as u64).into()));
        }
        let handle = session
            .generate_key(&mechanism, &template)
            .map_err(|e| refused("C_GenerateKey", &e))?;
        let kcv = self.kcv_in_token(&session, handle, alg)?;
        let token = self.new_root(&session, lmk, handle, alg, spec.usage, spec.exportability)?;
        Ok(WrappedKey { token, kcv })
    }

    pub(crate) fn form_key_now(
        &self,
        lmk: &LmkObjects,
        spec: KeySpec,
        components: &[Component],
    ) -> Result<WrappedKey> {
        check_new_key(spec)?;
        let key = policy::form_key(spec.algorithm, components)?;
        let session = self.session()?;
        self.root_from_clear(&session, lmk, &key, spec.usage, spec.exportability)
    }

    /// [`hsm_api::Hsm::add_component`]: the component XORed in the HSM process (as
    /// [`Pkcs11Hsm::form_key_now`] does, the components are clear anyway) into the sum the
    /// partial key's LMK wrapping gives back; the sum wrapped again, or at the last component
    /// the key entering the token.
    pub(crate) fn add_component_now(
        &self,
        lmk: &LmkObjects,
        into: Accumulation,
        component: &Component,
    ) -> Result<Accumulated> {
        let session = self.session()?;
        let (spec, components, received, mut sum) = match into {
            Accumulation::Begin { spec, components } => {
                check_new_key(spec)?;
                policy::check_component_count(usize::from(components))?;
                let sum = Zeroizing::new(vec![0u8; spec.algorithm.key_len()]);
                (spec, components, 0u8, sum)
            }
            Accumulation::Continue(partial) => {
                let (p, body, mac) = token::parse_partial(partial.as_str())?;
                session
                    .verify(&Mechanism::AesCMac, lmk.mac, body.as_bytes(), &mac)
                    .map_err(|_| Error::KeyBlockMac)?;
                let handle = session
                    .unwrap_key(
                        &Mechanism::AesKeyWrapPad,
                        lmk.wrap,
                        &p.wrapped,
                        &release_template(None),
                    )
                    .map_err(|e| refused("C_UnwrapKey (partial key)", &e))?;
                let sum = Zeroizing::new(session::read_value(&session, handle)?);
                (p.spec, p.components, p.received, sum)
            }
        };
        if spec.algorithm == Algorithm::Sm4 && self.mode == Mode::Strict {
            return Err(refusal(Outside::Sm4, Algorithm::Sm4));
        }
        let received = received + 1;
        policy::xor_component(spec.algorithm, &mut sum, component, usize::from(received))?;
        if received == components {
            let key = policy::finish_key(spec.algorithm, &sum)?;
            let formed =
                self.root_from_clear(&session, lmk, &key, spec.usage, spec.exportability)?;
            return Ok(Accumulated::Formed(formed));
        }
        let mut template = release_template(None);
        template.retain(|a| !matches!(a, Attribute::Sensitive(_)));
        template.push(Attribute::Sensitive(true));
        template.push(Attribute::Value(sum.to_vec()));
        let handle = session
            .create_object(&template)
            .map_err(|e| refused("C_CreateObject (partial key)", &e))?;
        let wrapped = session
            .wrap_key(&Mechanism::AesKeyWrapPad, lmk.wrap, handle)
            .map_err(|e| refused("C_WrapKey (partial key)", &e))?;
        let stored = token::PartialStored {
            spec,
            received,
            components,
            wrapped,
        };
        let body = stored.body();
        let mac = session
            .sign(&Mechanism::AesCMac, lmk.mac, body.as_bytes())
            .map_err(|e| refused("C_Sign (partial key)", &e))?;
        Ok(Accumulated::Partial(PartialKey {
            token: KeyToken::from_stored(format!("{body}.{}", hex::encode_upper(mac))),
            received,
            components,
        }))
    }

    /// A new transport key and its components, made and split in the HSM process (as
    /// [`Pkcs11Hsm::form_key_now`] handles components in clear), the key then entering the
    /// token; the components for the caller to deposit for hand-out.
    pub(crate) fn issue_components_now(
        &self,
        lmk: &LmkObjects,
        alg: Algorithm,
        count: u8,
    ) -> Result<(WrappedKey, Vec<hsm_api::IssuedShare>)> {
        policy::check_transport_key(alg)?;
        let key = hsm_sim::crypto::random::generate_key(alg)?;
        let parts = policy::split_into_components(&key, count)?;
        let session = self.session()?;
        let key = self.root_from_clear(
            &session,
            lmk,
            &key,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        )?;
        Ok((key, parts))
    }

    /// A new transport key wrapped at birth under `kek` ([`policy::export_new_transport_key`]):
    /// the KEK is released for that one operation as for any TR-31 block (refused in strict
    /// mode), the new key made in the process and entering the token.
    pub(crate) fn issue_under_now(
        &self,
        lmk: &LmkObjects,
        kek: &KeyToken,
        alg: Algorithm,
    ) -> Result<hsm_api::IssuedUnderKek> {
        let session = self.session()?;
        let kek = self.key_for(&session, lmk, kek, policy::is_kek, "wrap a key block")?;
        policy::check_transport_key(alg)?;
        let clear_kek = self.released(&session, lmk, &kek, Outside::Tr31)?;
        let key = hsm_sim::crypto::random::generate_key(alg)?;
        let block = policy::export_new_transport_key(clear_kek.algorithm(), &key, |h, k| {
            hsm_sim::crypto::tr31::wrap(&clear_kek, h, k)
        })?;
        drop(clear_kek);
        let key = self.root_from_clear(
            &session,
            lmk,
            &key,
            KeyUsage::KeyBlockProtection,
            Exportability::NonExportable,
        )?;
        Ok(hsm_api::IssuedUnderKek { key, block })
    }

    pub(crate) fn import_key_now(
        &self,
        lmk: &LmkObjects,
        kek: &KeyToken,
        block: &str,
        usage: KeyUsage,
    ) -> Result<WrappedKey> {
        let session = self.session()?;
        let kek = self.key_for(&session, lmk, kek, policy::is_kek, "unwrap a key block")?;
        if usage == KeyUsage::CardMasterKey {
            return Err(policy::only_derived());
        }
        let kek = self.released(&session, lmk, &kek, Outside::Tr31)?;
        let (key, exportability) = policy::import_block(&kek, block, usage)?;
        drop(kek);
        self.root_from_clear(&session, lmk, &key, usage, exportability)
    }

    /// The P-256 signing key of a [`KeyUsage::ListSigning`] token, from the seed the token
    /// releases for this one operation ([`Outside::ListSigning`]); an SM2 token is refused
    /// ([`Outside::Sm2`]).
    pub(crate) fn list_signing_key_now(
        &self,
        lmk: &LmkObjects,
        key: &KeyToken,
    ) -> Result<hsm_sim::crypto::sign::ListSigningKey> {
        let session = self.session()?;
        let key = self.key_for(
            &session,
            lmk,
            key,
            |u| matches!(u, KeyUsage::ListSigning(_)),
            "sign a published list",
        )?;
        let KeyUsage::ListSigning(scheme) = key.usage else {
            return Err(wrong_usage(key.usage, "sign a published list"));
        };
        let outside = match scheme {
            ListSignature::EcdsaP256 => Outside::ListSigning,
            ListSignature::Sm2 => Outside::Sm2,
        };
        let seed = self.released(&session, lmk, &key, outside)?;
        hsm_sim::crypto::sign::ListSigningKey::from_seed(&seed, scheme)
    }

    pub(crate) fn export_key_now(
        &self,
        lmk: &LmkObjects,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        let session = self.session()?;
        let kek = self.key_for(&session, lmk, kek, policy::is_kek, "wrap a key block")?;
        let key = self.key_for(
            &session,
            lmk,
            key,
            policy::may_be_asked_for_export,
            "be exported",
        )?;
        if !key.usage.may_be_exported() || key.exportability != Exportability::Exportable {
            return Err(Error::NotExportable);
        }
        let clear_kek = self.released(&session, lmk, &kek, Outside::Tr31)?;
        let clear_key = self.released(&session, lmk, &key, Outside::Tr31)?;
        policy::export_block(
            &clear_kek,
            &clear_key,
            key.usage,
            key.exportability,
            version,
        )
    }

    pub(crate) fn derive_key_now(
        &self,
        lmk: &LmkObjects,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        let session = self.session()?;
        let parent = self.key_for(&session, lmk, parent, policy::is_parent, "derive a key")?;
        if !FACTORS.contains(&factors.len()) {
            return Err(Error::Count {
                field: "factors".into(),
                expected: "1 to 8".into(),
            });
        }
        let exportability = child_of(
            parent.usage,
            parent.exportability,
            factors.len(),
            child_usage,
        )?;
        let mut alg = parent.alg;
        for _ in factors {
            alg = method.child_algorithm(alg)?;
        }
        let mut steps = parent.steps.clone();
        steps.extend(factors.iter().map(|f| (method, *f)));
        if steps.len() > MAX_STEPS {
            return Err(Error::Count {
                field: "dispersions from the root".into(),
                expected: "at most 8".into(),
            });
        }
        let child = StoredKey {
            usage: child_usage,
            alg,
            exportability,
            root_alg: parent.root_alg,
            steps,
            wrapped: parent.wrapped,
        };
        if child.needs_sm4() && self.mode == Mode::Strict {
            return Err(refusal(Outside::Sm4, Algorithm::Sm4));
        }
        let kcv = self.kcv_of(&session, lmk, &child)?;
        let token = self.seal_token(&session, lmk, &child)?;
        Ok(WrappedKey { token, kcv })
    }

    pub(crate) fn write_key_command_now(
        &self,
        lmk: &LmkObjects,
        request: &WriteKeyRequest,
    ) -> Result<WriteKeyCommand> {
        let session = self.session()?;
        let key = self.key_for(
            &session,
            lmk,
            &request.key,
            policy::may_be_written,
            "be written to a card",
        )?;
        let protect = self.key_for(
            &session,
            lmk,
            &request.protect,
            policy::may_protect_a_write,
            "protect a key written to a card",
        )?;
        if protect.usage == KeyUsage::VendorTransport && key.usage != KeyUsage::CardMasterKey {
            return Err(wrong_usage(
                protect.usage,
                "protect the write of anything but a card master key",
            ));
        }
        let clear_key = self.released(&session, lmk, &key, Outside::CardKeyField)?;
        let clear_protect = self.released(&session, lmk, &protect, Outside::CardKeyField)?;
        policy::write_key_command(
            &clear_key,
            key.usage,
            &clear_protect,
            protect.usage,
            request,
        )
    }

    pub(crate) fn kcv_now(&self, lmk: &LmkObjects, token: &KeyToken) -> Result<Kcv> {
        let session = self.session()?;
        let key = self.verified(&session, lmk, token)?;
        self.kcv_of(&session, lmk, &key)
    }

    pub(crate) fn random_now(&self, len: usize) -> Result<Vec<u8>> {
        let len32 = u32::try_from(len).unwrap_or(0);
        if !RANDOM_LEN.contains(&len32) {
            return Err(Error::Count {
                field: "random length".into(),
                expected: "1 to 4096 bytes".into(),
            });
        }
        self.session()?
            .generate_random_vec(len32)
            .map_err(|_| Error::Random)
    }

    pub(crate) fn audit_mac(
        &self,
        lmk: &LmkObjects,
        token: &KeyToken,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let session = self.session()?;
        let key = self.key_for(
            &session,
            lmk,
            token,
            |u| u == KeyUsage::AuditMac,
            "compute or verify an audit MAC",
        )?;
        if !key.alg.is_aes() {
            return Err(Error::Unsupported {
                op: "the audit MAC".into(),
                alg: key.alg,
            });
        }
        let handle = self.in_token(&session, lmk, &key)?;
        session
            .sign(&Mechanism::AesCMac, handle, data)
            .map_err(|e| refused("C_Sign (audit MAC)", &e))
    }
}
