//! Hex text the service mints: random ids and tokens (replica ids, lock
//! and settle-marker tokens, consent request ids, id suffixes) and SHA-256
//! fingerprints (the names Redis keys and cookies are given for a secret,
//! the digest in an audit value's truncation marker). One spelling each:
//! lowercase, two digits a byte.

use std::fmt::Write as _;

/// `bytes` random bytes from the thread's CSPRNG, as `2 × bytes` hex digits.
pub fn random(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    encode(&buf)
}

/// The SHA-256 of `value`, as 64 hex digits.
pub fn sha256(value: &[u8]) -> String {
    encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value).as_ref())
}

fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_have_their_length_and_differ() {
        for n in [4, 6, 16] {
            let a = random(n);
            assert_eq!(a.len(), 2 * n);
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_ne!(a, random(n));
        }
    }

    #[test]
    fn sha256_is_the_known_digest() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
