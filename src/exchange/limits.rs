//! Limits on what a peer may send: no more than it announced, and not slower than a minimum
//! average rate once a grace period has passed. Together with the sockets' idle timeouts
//! (nothing at all for a while) this cuts off slow and endless peers with a clear error instead
//! of holding a transfer, a thread and a temp file forever.

use super::Options;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// A reader that fails once its source is too slow on average or sends more than `limit`.
pub(crate) struct RateGuard<R> {
    inner: R,
    start: Instant,
    read: u64,
    min_rate: u64,
    grace: Duration,
    limit: Option<u64>,
}

impl<R> RateGuard<R> {
    /// Guard `inner` with the rate of `opts`; `limit` is the size the peer announced, if any.
    pub(crate) fn new(inner: R, opts: &Options, limit: Option<u64>) -> Self {
        Self::with(inner, opts.min_rate, opts.grace, limit)
    }

    pub(crate) fn with(inner: R, min_rate: u64, grace: Duration, limit: Option<u64>) -> Self {
        RateGuard {
            inner,
            start: Instant::now(),
            read: 0,
            min_rate,
            grace,
            limit,
        }
    }

    /// The time the bytes so far may have taken: the grace period plus their size at the
    /// minimum rate.
    fn allowed(&self) -> Duration {
        if self.min_rate == 0 {
            return Duration::MAX;
        }
        self.grace.saturating_add(Duration::from_secs_f64(
            self.read as f64 / self.min_rate as f64,
        ))
    }
}

impl<R: Read> Read for RateGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(limit) = self.limit {
            if self.read > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the peer sent more than the {limit} bytes it announced"),
                ));
            }
        }
        let elapsed = self.start.elapsed();
        if elapsed > self.allowed() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "transfer too slow: {} bytes in {:.0} s (the minimum is {} bytes/s after {} s)",
                    self.read,
                    elapsed.as_secs_f64(),
                    self.min_rate,
                    self.grace.as_secs()
                ),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `chunk` bytes per read, sleeping `pause` before each.
    struct Slow {
        left: usize,
        chunk: usize,
        pause: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = self.left.min(self.chunk).min(buf.len());
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_slow_source_is_cut_off_and_a_fast_one_is_not() {
        let slow = Slow {
            left: 1 << 20,
            chunk: 10,
            pause: Duration::from_millis(20),
        };
        let err = io::copy(
            &mut RateGuard::with(slow, 10_000, Duration::from_millis(50), None),
            &mut io::sink(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("too slow"), "{err}");
        let fast = &[7u8; 100_000][..];
        let n = io::copy(
            &mut RateGuard::with(fast, 10_000, Duration::from_millis(50), Some(100_000)),
            &mut io::sink(),
        )
        .unwrap();
        assert_eq!(n, 100_000);
    }

    #[test]
    fn more_than_announced_is_refused() {
        let err = io::copy(
            &mut RateGuard::with(&[1u8; 11][..], 0, Duration::ZERO, Some(10)),
            &mut io::sink(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
    }
}
