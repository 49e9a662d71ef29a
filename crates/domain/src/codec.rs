//! Reading the services' stored values: big-endian integers and
//! `u32`-length-prefixed byte strings, every read bounds-checked (stored
//! bytes are untrusted after a crash or a tampered disk).

/// A cursor over a stored value. Every read returns `None` when the value
/// is too short, never panics.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Starts at the first byte of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A `u32`-length-prefixed byte string.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    /// Reads the leading version byte and checks it is `expected`.
    pub fn version(&mut self, expected: u8) -> Result<(), String> {
        match self.u8() {
            Some(v) if v == expected => Ok(()),
            Some(v) => Err(format!("unknown version {v}")),
            None => Err("empty value".into()),
        }
    }

    /// Checks that nothing is left.
    pub fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_refuses_short_values() {
        let mut v = vec![1u8];
        v.extend_from_slice(&7u32.to_be_bytes());
        v.extend_from_slice(&(-2i64).to_be_bytes());
        v.extend_from_slice(&3u32.to_be_bytes());
        v.extend_from_slice(b"abc");
        let mut r = Reader::new(&v);
        assert_eq!(r.version(1), Ok(()));
        assert_eq!(r.u32(), Some(7));
        assert_eq!(r.i64(), Some(-2));
        assert_eq!(r.string().as_deref(), Some("abc"));
        assert_eq!(r.end(), Ok(()));
        assert_eq!(r.u8(), None);
        for cut in 0..v.len() {
            let mut r = Reader::new(&v[..cut]);
            let whole = r.version(1).is_ok()
                && r.u32().is_some()
                && r.i64().is_some()
                && r.string().is_some();
            assert!(!whole, "cut {cut}");
        }
        assert_eq!(
            Reader::new(&[2]).version(1),
            Err("unknown version 2".into())
        );
        assert!(Reader::new(&[0]).end().is_err());
        // A claimed length far beyond the value.
        assert_eq!(Reader::new(&u32::MAX.to_be_bytes()).bytes(), None);
    }
}
