//! A bounds-checked cursor over untrusted bytes.

use crate::WireError;

/// Reads fixed-size fields from a byte slice; every read checks the length and names the field
/// in its [`WireError::Truncated`].
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what` when fewer than `n` bytes are left.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes an `N`-byte array.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what`.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Takes one byte.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Takes a big-endian `u16`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what`.
    pub fn u16_be(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Takes a big-endian `u32`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what`.
    pub fn u32_be(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Takes a big-endian `u64`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] naming `what`.
    pub fn u64_be(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Checks that nothing is left.
    ///
    /// # Errors
    /// [`WireError::Trailing`] with the number of bytes left.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}
