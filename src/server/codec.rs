//! The protobuf codec of the KMS API: prost's, except that a request that does not decode is the
//! caller's error (`INVALID_ARGUMENT`), not the server's. tonic-prost maps every decode error to
//! `INTERNAL`, which tells a caller that sends garbage that the server failed, and hides a
//! hostile client among real faults in the log. `build.rs` names this codec for every service
//! of `proto/sscard/kms/v1`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::error::{Error, Refusal};

/// prost encoding, and decode failures as `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
pub struct KmsCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KmsCodec<T, U> {
    fn default() -> Self {
        KmsCodec(PhantomData)
    }
}

impl<T, U> Codec for KmsCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KmsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        KmsDecoder(PhantomData)
    }
}

/// Decodes a `U`; a malformed message is refused as the caller's error.
#[derive(Debug, Clone, Copy)]
pub struct KmsDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for KmsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            tracing::debug!(error = %e, "a message that does not decode");
            super::to_status(&Error::InvalidArgument {
                field: "request",
                reason: Refusal::MessageUndecodable,
            })
        })
    }
}
