//! Bounded big-endian reading and writing of TPM 2.0 wire structures.
//!
//! Every read checks the remaining length first; every TPM2B size is checked against its type's
//! maximum before anything is copied. Nothing here panics.

use crate::error::EvidenceError;

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn malformed(&self, why: &str) -> EvidenceError {
        EvidenceError::Malformed(format!("{}: {why} at byte {}", self.what, self.pos))
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], EvidenceError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.malformed("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.malformed("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, EvidenceError> {
        let b = self.bytes(1)?;
        b.first()
            .copied()
            .ok_or_else(|| self.malformed("truncated"))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, EvidenceError> {
        let b: [u8; 2] = self
            .bytes(2)?
            .try_into()
            .map_err(|_| self.malformed("truncated"))?;
        Ok(u16::from_be_bytes(b))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, EvidenceError> {
        let b: [u8; 4] = self
            .bytes(4)?
            .try_into()
            .map_err(|_| self.malformed("truncated"))?;
        Ok(u32::from_be_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, EvidenceError> {
        let b: [u8; 8] = self
            .bytes(8)?
            .try_into()
            .map_err(|_| self.malformed("truncated"))?;
        Ok(u64::from_be_bytes(b))
    }

    /// A TPM2B: a u16 size, checked against `max`, then that many bytes.
    pub(crate) fn tpm2b(&mut self, max: usize, field: &str) -> Result<&'a [u8], EvidenceError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(self.malformed(&format!("{field} size {n} above its maximum {max}")));
        }
        self.bytes(n)
    }

    /// Fails unless every byte was consumed: trailing bytes are never ignored.
    pub(crate) fn finish(self) -> Result<(), EvidenceError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(EvidenceError::Malformed(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len().saturating_sub(self.pos)
            )))
        }
    }
}

/// Big-endian writer for the structures writ makes (tests, MakeCredential, round trips).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A TPM2B. Callers hold values that came from a parse or a bounded constructor, so the size
    /// fits; a longer value is truncated to the u16 range rather than panicking.
    pub(crate) fn tpm2b(&mut self, v: &[u8]) {
        let n = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(n);
        self.bytes(v.get(..usize::from(n)).unwrap_or(v));
    }
}
