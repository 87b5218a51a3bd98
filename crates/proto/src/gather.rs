//! Bytes waiting to be written, in order, for one gathered write: small pieces are copied
//! together into a buffer, and large payloads are kept by reference, so a body passes from
//! the buffer it was read into to the socket without a copy.
//!
//! [`Gather`] is a [`Buf`]: `AsyncWriteExt::write_all_buf` writes it with `writev` when the
//! stream supports it, handing every run to the kernel in one call.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Payloads of at least this many bytes are kept by reference; smaller ones are copied
/// (a copy of a few KiB costs less than another entry in the write's vector).
pub const KEEP_FROM: usize = 8 * 1024;

/// Bytes waiting to be written: sealed runs, oldest first, then the run being appended to.
#[derive(Debug, Default)]
pub struct Gather {
    /// Runs sealed by [`Gather::put_bytes`]: what was appended before a kept payload, and
    /// the payload itself.
    runs: VecDeque<Bytes>,
    /// Their total length.
    sealed: usize,
    /// The run being appended to, written after `runs`.
    tail: BytesMut,
    /// The bytes at the front of `tail` already written: the tail is not advanced, so once
    /// everything is written its whole room is used again from its start.
    tail_written: usize,
}

impl Gather {
    /// An empty one whose first run has room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Gather {
        Gather {
            runs: VecDeque::new(),
            sealed: 0,
            tail: BytesMut::with_capacity(capacity),
            tail_written: 0,
        }
    }

    /// The run being appended to: what is put there is written after everything before.
    /// Append only: what it holds already may be partly written.
    pub fn tail(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Appends a copy of `bytes`.
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.tail.put_slice(bytes);
    }

    /// Appends `bytes`: kept as they are when they are at least [`KEEP_FROM`] long, else
    /// copied.
    pub fn put_bytes(&mut self, bytes: Bytes) {
        if bytes.len() < KEEP_FROM {
            self.tail.put_slice(&bytes);
            return;
        }
        if self.tail.len() > self.tail_written {
            let mut run = self.tail.split().freeze();
            run.advance(std::mem::take(&mut self.tail_written));
            self.sealed += run.len();
            self.runs.push_back(run);
        } else {
            self.tail.clear();
            self.tail_written = 0;
        }
        self.sealed += bytes.len();
        self.runs.push_back(bytes);
    }

    /// The bytes waiting.
    pub fn len(&self) -> usize {
        self.sealed + self.tail.len().saturating_sub(self.tail_written)
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything waiting, keeping the tail's room.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.sealed = 0;
        self.tail.clear();
        self.tail_written = 0;
    }

    /// The room kept for appending.
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// What of the tail is still to be written.
    fn unwritten_tail(&self) -> &[u8] {
        self.tail.get(self.tail_written..).unwrap_or_default()
    }
}

impl Buf for Gather {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        match self.runs.front() {
            Some(run) => run,
            None => self.unwritten_tail(),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let runs = self.runs.iter().map(|r| &r[..]);
        for run in runs.chain(std::iter::once(self.unwritten_tail())) {
            if n == dst.len() {
                break;
            }
            if !run.is_empty() {
                dst[n] = IoSlice::new(run);
                n += 1;
            }
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(run) = self.runs.front_mut() else {
                let left = self.tail.len() - self.tail_written;
                debug_assert!(cnt <= left, "advanced past the end");
                self.tail_written += cnt.min(left);
                break;
            };
            let take = cnt.min(run.len());
            run.advance(take);
            self.sealed -= take;
            cnt -= take;
            if run.is_empty() {
                self.runs.pop_front();
            }
        }
        if self.runs.is_empty() && self.tail_written == self.tail.len() {
            // Written whole: the tail's room is used again from its start.
            self.tail.clear();
            self.tail_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectored(g: &Gather) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = g.chunks_vectored(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn runs_are_written_in_the_order_they_were_appended() {
        let mut g = Gather::default();
        g.put_slice(b"head;");
        let big = Bytes::from(vec![b'x'; KEEP_FROM]);
        g.put_bytes(big.clone());
        g.put_slice(b";tail");
        g.put_bytes(Bytes::from_static(b"small"));
        let mut want = b"head;".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b";tailsmall");
        assert_eq!(g.len(), want.len());
        assert_eq!(vectored(&g), want);
        // The large payload was kept, not copied: it is a run of its own.
        assert_eq!(g.runs.len(), 2);
        assert_eq!(g.runs[1].as_ptr(), big.as_ptr());
    }

    #[test]
    fn advancing_across_runs_leaves_the_rest_in_order() {
        let mut g = Gather::default();
        g.put_slice(b"ab");
        g.put_bytes(Bytes::from(vec![b'x'; KEEP_FROM]));
        g.put_slice(b"cd");
        g.advance(1);
        assert_eq!(g.chunk(), b"b");
        g.advance(1 + KEEP_FROM - 3);
        assert_eq!(g.chunk(), b"xxx");
        g.advance(4);
        assert_eq!(g.chunk(), b"d");
        assert_eq!(g.len(), 1);
        g.advance(1);
        assert!(g.is_empty());
        g.put_slice(b"again");
        assert_eq!(vectored(&g), b"again");
    }

    #[test]
    fn clear_drops_every_run() {
        let mut g = Gather::with_capacity(64);
        g.put_bytes(Bytes::from(vec![1; KEEP_FROM]));
        g.put_slice(b"x");
        g.clear();
        assert!(g.is_empty());
        assert_eq!(g.chunk(), b"");
    }
}
