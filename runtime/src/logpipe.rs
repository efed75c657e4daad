//! A guest's stdout or stderr for one instance: kept up to a byte budget for the logs, and past
//! it accepted and dropped, with a count. A guest printing without end must neither fail its own
//! request (a full pipe would make `println!` panic) nor hold host memory; the platform reports
//! the drop as Heroku's `L10`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The most a guest may write in one go; it may always write this much, whatever is kept.
const PERMIT: usize = 64 << 10;

#[derive(Clone)]
pub(crate) struct LogPipe {
    capacity: usize,
    inner: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    bytes: BytesMut,
    dropped: u64,
}

impl LogPipe {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Arc::default(),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        // The guard is only held to copy bytes, which cannot panic halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything kept so far.
    pub(crate) fn contents(&self) -> Bytes {
        Bytes::copy_from_slice(&self.kept().bytes)
    }

    /// Bytes written past the budget so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.kept().dropped
    }

    fn take(&self, data: &[u8]) {
        let mut kept = self.kept();
        let room = self.capacity.saturating_sub(kept.bytes.len());
        let keep = data.len().min(room);
        kept.bytes.extend_from_slice(&data[..keep]);
        kept.dropped += (data.len() - keep) as u64;
    }
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_budget_and_counts_the_rest() -> Result<(), StreamError> {
        let pipe = LogPipe::new(10);
        let mut stream = pipe.p2_stream();
        stream.write(Bytes::from_static(b"hello\n"))?;
        stream.write(Bytes::from_static(b"world, and more\n"))?;
        assert_eq!(stream.check_write()?, PERMIT);
        assert_eq!(&pipe.contents()[..], b"hello\nworl");
        assert_eq!(pipe.dropped(), 12);
        Ok(())
    }
}
