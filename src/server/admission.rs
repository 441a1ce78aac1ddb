//! Admission control in front of the API: a cap on open connections, and a request rate per
//! caller identity. The TLS handshake timeout is tonic's own (`ServerTlsConfig::timeout`), set
//! from the same [`Limits`](super::config::Limits).
//!
//! - **Connections**: [`LimitedIncoming`] accepts from the listener and holds one semaphore
//!   permit per open connection, inside the connection's I/O object, so the permit is returned
//!   when the connection ends for any reason (closed, reset, handshake failed or timed out).
//!   A connection beyond the cap is accepted and closed at once (the client sees the close
//!   before any TLS), and logged; the kernel backlog never fills with connections nobody
//!   serves.
//! - **Rate**: [`RateLimiter`] is a token bucket per identity (`sscard://…` URI): `burst`
//!   requests at once, refilled at `requests_per_second`. A request over the rate is refused
//!   `RESOURCE_EXHAUSTED` with gRPC's retry pushback (`grpc-retry-pushback-ms`): the time until
//!   a token is back. Refusals for rate are logged, not audited (a flood must not grow the audit
//!   trail).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::error::{Error, Result};

// ------------------------------------------------------------------------------ connections

/// The listener's connections, at most `max` open at once.
#[derive(Debug)]
pub(super) struct LimitedIncoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedIncoming {
    pub(super) fn new(listener: TcpListener, max: usize) -> LimitedIncoming {
        LimitedIncoming {
            listener,
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<Admitted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match this.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            };
            match Arc::clone(&this.permits).try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Admitted {
                        stream,
                        _permit: permit,
                    })));
                }
                Err(_) => {
                    tracing::warn!(%peer, "connection refused: the connection limit is reached");
                    drop(stream);
                }
            }
        }
    }
}

/// An admitted connection: its stream and its permit, returned when it is dropped.
#[derive(Debug)]
pub(super) struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

// ------------------------------------------------------------------------------------- rate

/// Identities tracked at once; past this, buckets that are full again (idle callers) are
/// forgotten. Identities come from certificates of the client CA, so this bounds memory only.
const MAX_TRACKED: usize = 10_000;

/// One request, in the buckets' unit (nano-tokens: exact integer arithmetic).
const TOKEN: u128 = 1_000_000_000;

/// A token bucket per identity.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u128,
    burst: u128,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nano-tokens.
    tokens: u128,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: u128, burst: u128) {
        // A token per second per unit of rate: nanoseconds × rate nano-tokens.
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(per_second))
            .min(burst);
        self.at = now;
    }
}

impl RateLimiter {
    /// `burst` requests at once, `per_second` on average, per identity (both at least 1).
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: u128::from(per_second.max(1)),
            burst: u128::from(burst.max(1)) * TOKEN,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request of `identity` at `now`, or refuses it with the time until it would
    /// be admitted.
    pub fn admit(&self, identity: &str, now: Instant) -> Result<()> {
        let mut buckets = self.buckets.lock().map_err(|_| Error::Store)?;
        let (per_second, burst) = (self.per_second, self.burst);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(identity) {
            buckets.retain(|_, b| {
                b.refill(now, per_second, burst);
                b.tokens < burst
            });
        }
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.refill(now, per_second, burst);
        if bucket.tokens >= TOKEN {
            bucket.tokens -= TOKEN;
            return Ok(());
        }
        // Nanoseconds until a whole token is back, rounded up to a millisecond.
        let wait_ns = (TOKEN - bucket.tokens).div_ceil(per_second);
        Err(Error::ResourceExhausted {
            what: "request rate of this identity exceeded",
            retry_after_ms: u64::try_from(wait_ns.div_ceil(1_000_000)).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn retry_ms(r: Result<()>) -> u64 {
        match r {
            Err(Error::ResourceExhausted { retry_after_ms, .. }) => retry_after_ms,
            other => panic!("not refused for rate: {other:?}"),
        }
    }

    #[test]
    fn a_burst_then_the_rate_per_identity() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.admit("sscard://station/440100/A", t0).unwrap();
        }
        // The fourth at once: a token is back in 100 ms.
        assert_eq!(
            retry_ms(limiter.admit("sscard://station/440100/A", t0)),
            100
        );
        // Another identity has its own bucket.
        limiter.admit("sscard://station/440100/B", t0).unwrap();
        // 50 ms later, half a token: 50 ms to go; 100 ms later, one more request.
        let t50 = t0 + Duration::from_millis(50);
        assert_eq!(
            retry_ms(limiter.admit("sscard://station/440100/A", t50)),
            50
        );
        let t100 = t0 + Duration::from_millis(100);
        limiter.admit("sscard://station/440100/A", t100).unwrap();
        assert!(limiter.admit("sscard://station/440100/A", t100).is_err());
        // An idle caller gets its whole burst back, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.admit("sscard://station/440100/A", later).unwrap();
        }
        assert!(limiter.admit("sscard://station/440100/A", later).is_err());
    }

    #[test]
    fn idle_identities_are_forgotten_past_the_table_size() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            limiter.admit(&format!("id-{i}"), t0).unwrap();
        }
        // Every bucket is empty now; one second later they are all full again, and forgotten
        // when a new identity needs room.
        let t1 = t0 + Duration::from_secs(1);
        limiter.admit("newcomer", t1).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
