//! [`RemoteHsm`]: the [`Hsm`] trait as a client of the `hsm-sim` process.
//!
//! The channel connects lazily and reconnects by itself: while the process is down every call
//! fails fast with [`Error::Unavailable`], and the same `RemoteHsm` works again once the process
//! is back. Errors of the HSM come back as the very variant the server's HSM returned
//! (see [`super::status`]).

use core::fmt;
use std::time::Duration;

use hsm_api::{
    Accumulated, Accumulation, Algorithm, BatchItem, BatchOutput, ClearField, Component,
    Dispersion, Error, ExportedKey, Factor, Hsm, HsmStatus, INDEX_HASH_LEN, IssuedComponents,
    IssuedShare, IssuedUnderKek, Kcv, KeyBackup, KeyBlockVersion, KeySpec, KeyToken, KeyUsage,
    LmkInit, LmkRotation, LmkShare, Restoration, Restored, Result, SealedField, UnsealProgress,
    WrappedKey, WriteKeyCommand, WriteKeyRequest, check_batch_len,
};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::convert::{
    accumulated_from_wire, algorithm_to_wire, backup_from_wire, batch_item_to_wire,
    batch_result_from_wire, dispersion_to_wire, fold_to_wire, kcv_from_wire, kcv_to_wire,
    parts_from_wire, progress_from_wire, restored_from_wire, share_from_wire, spec_to_wire,
    status_from_wire, usage_to_wire, version_to_wire, wide, wrapped_from_wire,
};
use super::proto;
use super::proto::hsm_client::HsmClient;
use super::status::from_status;
use super::{ClientTls, SetupError};

/// Timeouts of a [`RemoteHsm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteHsmOptions {
    /// How long a TCP connection plus TLS handshake may take.
    pub connect_timeout: Duration,
    /// How long one call may take, connection included; sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 pings that detect a dead connection while calls are in flight.
    pub keep_alive_interval: Duration,
}

impl Default for RemoteHsmOptions {
    fn default() -> RemoteHsmOptions {
        RemoteHsmOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(20),
        }
    }
}

/// The HSM in another process, over gRPC with mutual TLS. Cheap to clone: clones share one
/// connection.
#[derive(Clone)]
pub struct RemoteHsm {
    client: HsmClient<Channel>,
    endpoint: String,
}

impl RemoteHsm {
    /// A client of the HSM at `endpoint` (`https://host:port`) with default timeouts. Does not
    /// connect: the first call does. Must be called within a Tokio runtime.
    pub fn connect_lazy(endpoint: &str, tls: ClientTls) -> Result<RemoteHsm, SetupError> {
        RemoteHsm::connect_lazy_with(endpoint, tls, RemoteHsmOptions::default())
    }

    /// As [`RemoteHsm::connect_lazy`], with explicit timeouts.
    pub fn connect_lazy_with(
        endpoint: &str,
        tls: ClientTls,
        options: RemoteHsmOptions,
    ) -> Result<RemoteHsm, SetupError> {
        // tonic speaks plain HTTP/2 to an `http://` URI even with a TLS configuration: only
        // `https://` is accepted, so that the channel is always mutually authenticated.
        if !endpoint.starts_with("https://") {
            return Err(SetupError::Endpoint(endpoint.to_owned()));
        }
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| SetupError::Endpoint(endpoint.to_owned()))?
            .tls_config(tls.config())?
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .http2_keep_alive_interval(options.keep_alive_interval)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = HsmClient::new(channel)
            .max_decoding_message_size(super::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(super::MAX_MESSAGE_SIZE);
        Ok(RemoteHsm {
            client,
            endpoint: endpoint.to_owned(),
        })
    }

    fn client(&self) -> HsmClient<Channel> {
        self.client.clone()
    }
}

impl fmt::Debug for RemoteHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteHsm")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The error a failed call stands for.
fn failed(status: Status) -> Error {
    let err = from_status(&status);
    if status.code() == tonic::Code::PermissionDenied && err == Error::Unavailable {
        tracing::warn!(
            message = status.message(),
            "the HSM refused this client: its certificate must name sscard://service/<name>"
        );
    } else if matches!(err, Error::Unavailable | Error::Protocol) {
        tracing::debug!(code = ?status.code(), message = status.message(), error = %err, "HSM call failed");
    }
    err
}

fn token(key: &KeyToken) -> String {
    key.as_str().to_owned()
}

impl Hsm for RemoteHsm {
    /// False: the process behind the wire is the simulator, never a secure device.
    fn is_secure(&self) -> bool {
        false
    }

    async fn status(&self) -> Result<HsmStatus> {
        let response = self
            .client()
            .status(proto::StatusRequest {})
            .await
            .map_err(failed)?;
        status_from_wire(response.into_inner()).ok_or(Error::Protocol)
    }

    async fn init_lmk(&self, threshold: u8, shares: u8) -> Result<LmkInit> {
        let request = proto::InitLmkRequest {
            threshold: threshold.into(),
            shares: shares.into(),
        };
        let init = self
            .client()
            .init_lmk(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(LmkInit {
            parts: parts_from_wire(init.parts)?,
            lmk_kcv: kcv_from_wire(init.lmk_kcv).ok_or(Error::Protocol)?,
        })
    }

    async fn take_secret_part(&self, set: &str, index: u8) -> Result<IssuedShare> {
        let request = proto::TakeSecretPartRequest {
            set: set.to_owned(),
            index: index.into(),
        };
        let part = self
            .client()
            .take_secret_part(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(share_from_wire(part))
    }

    async fn unseal(&self, share: LmkShare) -> Result<UnsealProgress> {
        // The share is wiped when dropped; its copy in the request is not (prost owns it).
        let request = proto::UnsealRequest {
            share: share.secret_text().to_owned(),
        };
        drop(share);
        let progress = self
            .client()
            .unseal(request)
            .await
            .map_err(failed)?
            .into_inner();
        progress_from_wire(progress).ok_or(Error::Protocol)
    }

    async fn unseal_reset(&self) -> Result<()> {
        self.client()
            .unseal_reset(proto::UnsealResetRequest {})
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn seal(&self) -> Result<()> {
        self.client()
            .seal(proto::SealRequest {})
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn tamper(&self) -> Result<()> {
        self.client()
            .tamper(proto::TamperRequest {})
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn self_test(&self) -> Result<()> {
        self.client()
            .self_test(proto::SelfTestRequest {})
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn generate_key(&self, spec: KeySpec) -> Result<WrappedKey> {
        let request = proto::GenerateKeyRequest {
            spec: Some(spec_to_wire(spec)),
        };
        let key = self.client().generate_key(request).await.map_err(failed)?;
        wrapped_from_wire(key.into_inner()).ok_or(Error::Protocol)
    }

    async fn form_key(&self, spec: KeySpec, components: Vec<Component>) -> Result<WrappedKey> {
        let request = proto::FormKeyRequest {
            spec: Some(spec_to_wire(spec)),
            components: components
                .iter()
                .map(|c| proto::Component {
                    hex: c.secret_hex().to_owned(),
                    expected_kcv: Some(kcv_to_wire(&c.expected_kcv)),
                })
                .collect(),
        };
        drop(components);
        let key = self.client().form_key(request).await.map_err(failed)?;
        wrapped_from_wire(key.into_inner()).ok_or(Error::Protocol)
    }

    async fn add_component(&self, into: Accumulation, component: Component) -> Result<Accumulated> {
        let into = match into {
            Accumulation::Begin { spec, components } => {
                proto::add_component_request::Into::Begin(proto::BeginForm {
                    spec: Some(spec_to_wire(spec)),
                    components: components.into(),
                })
            }
            Accumulation::Continue(partial) => {
                proto::add_component_request::Into::Partial(token(&partial))
            }
        };
        let request = proto::AddComponentRequest {
            into: Some(into),
            component: Some(proto::Component {
                hex: component.secret_hex().to_owned(),
                expected_kcv: Some(kcv_to_wire(&component.expected_kcv)),
            }),
        };
        drop(component);
        let answer = self.client().add_component(request).await.map_err(failed)?;
        accumulated_from_wire(answer.into_inner()).ok_or(Error::Protocol)
    }

    async fn import_key(&self, kek: &KeyToken, block: &str, usage: KeyUsage) -> Result<WrappedKey> {
        let (usage, level) = usage_to_wire(usage);
        let request = proto::ImportKeyRequest {
            kek: token(kek),
            block: block.to_owned(),
            usage: usage.into(),
            level: level.into(),
        };
        let key = self.client().import_key(request).await.map_err(failed)?;
        wrapped_from_wire(key.into_inner()).ok_or(Error::Protocol)
    }

    async fn export_key(
        &self,
        kek: &KeyToken,
        key: &KeyToken,
        version: KeyBlockVersion,
    ) -> Result<ExportedKey> {
        let request = proto::ExportKeyRequest {
            kek: token(kek),
            key: token(key),
            version: version_to_wire(version).into(),
        };
        let exported = self
            .client()
            .export_key(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(ExportedKey {
            block: exported.block,
            kcv: kcv_from_wire(exported.kcv).ok_or(Error::Protocol)?,
        })
    }

    async fn derive_key(
        &self,
        parent: &KeyToken,
        method: Dispersion,
        factors: &[Factor],
        child_usage: KeyUsage,
    ) -> Result<WrappedKey> {
        let (usage, level) = usage_to_wire(child_usage);
        let request = proto::DeriveKeyRequest {
            parent: token(parent),
            method: dispersion_to_wire(method).into(),
            factors: factors.iter().map(|f| f.as_bytes().to_vec()).collect(),
            child_usage: usage.into(),
            child_level: level.into(),
        };
        let key = self.client().derive_key(request).await.map_err(failed)?;
        wrapped_from_wire(key.into_inner()).ok_or(Error::Protocol)
    }

    async fn write_key_command(&self, request: WriteKeyRequest) -> Result<WriteKeyCommand> {
        let request = proto::WriteKeyRequest {
            key: token(&request.key),
            protect: token(&request.protect),
            cla: request.cla.into(),
            ins: request.ins.into(),
            p1: request.p1.into(),
            p2: request.p2.into(),
            key_header: request.key_header,
            challenge: request.challenge,
            fold: fold_to_wire(request.fold).into(),
        };
        let command = self
            .client()
            .write_key_command(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(WriteKeyCommand {
            apdu: command.apdu,
            kcv: kcv_from_wire(command.kcv).ok_or(Error::Protocol)?,
        })
    }

    async fn batch(&self, items: Vec<BatchItem>) -> Result<Vec<Result<BatchOutput>>> {
        // Refused here as the server would, without a round trip.
        check_batch_len(items.len())?;
        let count = items.len();
        let request = proto::BatchRequest {
            items: items.iter().map(batch_item_to_wire).collect(),
        };
        drop(items);
        let results = self
            .client()
            .batch(request)
            .await
            .map_err(failed)?
            .into_inner()
            .results;
        if results.len() != count {
            return Err(Error::Protocol);
        }
        results
            .into_iter()
            .map(|r| batch_result_from_wire(r).ok_or(Error::Protocol))
            .collect()
    }

    async fn kcv(&self, key: &KeyToken) -> Result<Kcv> {
        let request = proto::KcvRequest { key: token(key) };
        let kcv = self.client().kcv(request).await.map_err(failed)?;
        kcv_from_wire(Some(kcv.into_inner())).ok_or(Error::Protocol)
    }

    async fn random(&self, len: usize) -> Result<Vec<u8>> {
        let request = proto::RandomRequest { len: wide(len) };
        let bytes = self
            .client()
            .random(request)
            .await
            .map_err(failed)?
            .into_inner()
            .bytes;
        if bytes.len() != len {
            return Err(Error::Protocol);
        }
        Ok(bytes)
    }

    async fn mac(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        let request = proto::MacRequest {
            key: token(key),
            data: data.to_vec(),
        };
        let mac = self.client().mac(request).await.map_err(failed)?;
        Ok(mac.into_inner().mac)
    }

    async fn verify_mac(&self, key: &KeyToken, data: &[u8], mac: &[u8]) -> Result<()> {
        let request = proto::VerifyMacRequest {
            key: token(key),
            data: data.to_vec(),
            mac: mac.to_vec(),
        };
        self.client().verify_mac(request).await.map_err(failed)?;
        Ok(())
    }

    async fn sign(&self, key: &KeyToken, data: &[u8]) -> Result<Vec<u8>> {
        let request = proto::SignRequest {
            key: token(key),
            data: data.to_vec(),
        };
        let signed = self.client().sign(request).await.map_err(failed)?;
        Ok(signed.into_inner().signature)
    }

    async fn public_key(&self, key: &KeyToken) -> Result<Vec<u8>> {
        let request = proto::PublicKeyRequest { key: token(key) };
        let public = self.client().public_key(request).await.map_err(failed)?;
        Ok(public.into_inner().public_key)
    }

    async fn index_hashes(
        &self,
        key: &KeyToken,
        domain: &str,
        values: Vec<Vec<u8>>,
    ) -> Result<Vec<[u8; INDEX_HASH_LEN]>> {
        let count = values.len();
        let request = proto::IndexHashesRequest {
            key: token(key),
            domain: domain.to_owned(),
            values,
        };
        let hashes = self.client().index_hashes(request).await.map_err(failed)?;
        let hashes = hashes.into_inner().hashes;
        if hashes.len() != count {
            return Err(Error::Protocol);
        }
        hashes
            .into_iter()
            .map(|h| <[u8; INDEX_HASH_LEN]>::try_from(h.as_slice()).map_err(|_| Error::Protocol))
            .collect()
    }

    async fn seal_fields(
        &self,
        key: &KeyToken,
        fields: Vec<ClearField>,
    ) -> Result<Vec<SealedField>> {
        let count = fields.len();
        let request = proto::SealFieldsRequest {
            key: token(key),
            fields: fields
                .iter()
                .map(|f| proto::RegistryField {
                    aad: f.aad.clone(),
                    data: f.value.clone(),
                })
                .collect(),
        };
        let sealed = self.client().seal_fields(request).await.map_err(failed)?;
        let sealed = sealed.into_inner().fields;
        if sealed.len() != count {
            return Err(Error::Protocol);
        }
        Ok(sealed
            .into_iter()
            .map(|f| SealedField {
                aad: f.aad,
                sealed: f.data,
            })
            .collect())
    }

    async fn open_fields(
        &self,
        key: &KeyToken,
        fields: Vec<SealedField>,
    ) -> Result<Vec<ClearField>> {
        let count = fields.len();
        let request = proto::OpenFieldsRequest {
            key: token(key),
            fields: fields
                .into_iter()
                .map(|f| proto::RegistryField {
                    aad: f.aad,
                    data: f.sealed,
                })
                .collect(),
        };
        let opened = self.client().open_fields(request).await.map_err(failed)?;
        let opened = opened.into_inner().fields;
        if opened.len() != count {
            return Err(Error::Protocol);
        }
        Ok(opened
            .into_iter()
            .map(|mut f| ClearField {
                aad: std::mem::take(&mut f.aad),
                value: std::mem::take(&mut f.data),
            })
            .collect())
    }

    async fn prepare_lmk_rotation(
        &self,
        tokens: Vec<KeyToken>,
        threshold: u8,
        shares: u8,
    ) -> Result<LmkRotation> {
        let count = tokens.len();
        let request = proto::PrepareLmkRotationRequest {
            tokens: tokens.iter().map(token).collect(),
            threshold: threshold.into(),
            shares: shares.into(),
        };
        let rotation = self
            .client()
            .prepare_lmk_rotation(request)
            .await
            .map_err(failed)?
            .into_inner();
        if rotation.tokens.len() != count {
            return Err(Error::Protocol);
        }
        Ok(LmkRotation {
            parts: parts_from_wire(rotation.parts)?,
            lmk_kcv: kcv_from_wire(rotation.lmk_kcv).ok_or(Error::Protocol)?,
            tokens: rotation
                .tokens
                .into_iter()
                .map(KeyToken::from_stored)
                .collect(),
        })
    }

    async fn rewrap_for_rotation(
        &self,
        new_lmk_kcv: &Kcv,
        tokens: Vec<KeyToken>,
    ) -> Result<Vec<KeyToken>> {
        hsm_api::check_batch_len(tokens.len())?;
        let count = tokens.len();
        let request = proto::RewrapForRotationRequest {
            new_lmk_kcv: Some(kcv_to_wire(new_lmk_kcv)),
            tokens: tokens.iter().map(token).collect(),
        };
        let answer = self
            .client()
            .rewrap_for_rotation(request)
            .await
            .map_err(failed)?
            .into_inner();
        if answer.tokens.len() != count {
            return Err(Error::Protocol);
        }
        Ok(answer
            .tokens
            .into_iter()
            .map(KeyToken::from_stored)
            .collect())
    }

    async fn commit_lmk_rotation(&self, new_lmk_kcv: &Kcv) -> Result<()> {
        let request = proto::CommitLmkRotationRequest {
            new_lmk_kcv: Some(kcv_to_wire(new_lmk_kcv)),
        };
        self.client()
            .commit_lmk_rotation(request)
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn issue_transport_key_components(
        &self,
        algorithm: Algorithm,
        components: u8,
    ) -> Result<IssuedComponents> {
        let request = proto::IssueTransportKeyComponentsRequest {
            algorithm: algorithm_to_wire(algorithm).into(),
            components: components.into(),
        };
        let issued = self
            .client()
            .issue_transport_key_components(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(IssuedComponents {
            key: issued
                .key
                .and_then(wrapped_from_wire)
                .ok_or(Error::Protocol)?,
            parts: parts_from_wire(issued.parts)?.ok_or(Error::Protocol)?,
        })
    }

    async fn issue_transport_key_under(
        &self,
        kek: &KeyToken,
        algorithm: Algorithm,
    ) -> Result<IssuedUnderKek> {
        let request = proto::IssueTransportKeyUnderRequest {
            kek: token(kek),
            algorithm: algorithm_to_wire(algorithm).into(),
        };
        let issued = self
            .client()
            .issue_transport_key_under(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(IssuedUnderKek {
            key: issued
                .key
                .and_then(wrapped_from_wire)
                .ok_or(Error::Protocol)?,
            block: issued.block,
        })
    }

    async fn backup_key(&self, key: &KeyToken, threshold: u8, shares: u8) -> Result<KeyBackup> {
        let request = proto::BackupKeyRequest {
            key: token(key),
            threshold: threshold.into(),
            shares: shares.into(),
        };
        let answer = self.client().backup_key(request).await.map_err(failed)?;
        backup_from_wire(answer.into_inner()).ok_or(Error::Protocol)
    }

    async fn restore_share(&self, into: Restoration, share: LmkShare) -> Result<Restored> {
        let into = match into {
            Restoration::Begin { spec, kcv, backup } => {
                proto::restore_share_request::Into::Begin(proto::BeginRestore {
                    spec: Some(spec_to_wire(spec)),
                    kcv: Some(kcv_to_wire(&kcv)),
                    backup,
                })
            }
            Restoration::Continue(partial) => {
                proto::restore_share_request::Into::Partial(token(&partial))
            }
        };
        let request = proto::RestoreShareRequest {
            into: Some(into),
            share: share.secret_text().to_owned(),
        };
        drop(share);
        let answer = self.client().restore_share(request).await.map_err(failed)?;
        restored_from_wire(answer.into_inner()).ok_or(Error::Protocol)
    }
}
