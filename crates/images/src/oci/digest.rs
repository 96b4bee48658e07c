//! sha256 content digests (`sha256:HEX`): parsing, hashing readers and writers.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::error::{ErrorKind, KindResult};

/// The hex part of a `sha256:HEX` digest, checked to be 64 lower-case hex digits.
pub fn sha256_hex(digest: &str) -> KindResult<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ErrorKind::UnsupportedDigest(digest.to_string()))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(ErrorKind::UnsupportedDigest(digest.to_string()))
    }
}

/// `sha256:HEX` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fails unless `bytes` hash to `expected`.
pub fn verify_bytes(bytes: &[u8], expected: &str) -> KindResult<()> {
    sha256_hex(expected)?;
    let actual = digest_of(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(ErrorKind::DigestMismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left (so the hash covers the whole stream), then returns `sha256:HEX` and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer, `sha256:HEX` and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256_only() {
        let d = digest_of(b"x");
        assert_eq!(sha256_hex(&d).unwrap().len(), 64);
        assert!(sha256_hex("sha512:abcd").is_err());
        assert!(sha256_hex("sha256:../../etc").is_err());
        assert!(verify_bytes(b"x", &d).is_ok());
        assert!(verify_bytes(b"y", &d).is_err());
    }

    #[test]
    fn hashing_reader_covers_unread_rest() {
        let mut r = HashingReader::new(&b"hello"[..]);
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(d, digest_of(b"hello"));
        assert_eq!(n, 5);
    }
}
