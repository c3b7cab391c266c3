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

/// The HMAC-SHA256 of `value` under `key`, as 64 hex digits (how a
/// webhook receiver checks who signed a body).
pub fn hmac_sha256(key: &[u8], value: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    encode(aws_lc_rs::hmac::sign(&key, value).as_ref())
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
    fn hmac_sha256_is_the_rfc_4231_digest() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sha256_is_the_known_digest() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
