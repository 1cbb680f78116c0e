//! Block names: what a name must be, its hash (which chain it lives on), and comparing a
//! name with a stored one, word by word.

use crate::error::{Error, Result};

/// Longest block name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// FNV-1a over 8-byte words with a final avalanche, so that names differing only in a
/// trailing counter spread; also tells whether `name` holds a NUL byte.
fn fnv(name: &[u8]) -> (u64, bool) {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ name.len() as u64;
    let mut nul = 0u64;
    // Eight bytes per step (FNV-1a over words): names are hashed on every call. A word has a
    // zero byte exactly when the classic `(w - LOW) & !w & HIGH` test is non-zero; the tail
    // word is padded with 0xff so that its padding never looks like a NUL.
    let mut mix = |w: u64| {
        nul |= w.wrapping_sub(LOW) & !w & (LOW << 7);
        h ^= w;
        h = h.wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    };
    let mut words = name.chunks_exact(8);
    for w in &mut words {
        mix(word_of(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        mix(word_of(tail) | (!0u64 << (8 * tail.len())));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h, nul != 0)
}

/// Up to 8 bytes as a little-endian word, zero-padded: whole-word or two overlapping loads,
/// no byte loop and no library call for the short tail of a name.
#[inline]
pub(super) fn word_of(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if let Ok(w) = <[u8; 8]>::try_from(bytes) {
        u64::from_le_bytes(w)
    } else if n >= 4 {
        // Bytes 0..4 and n-4..n, each at its own position; the overlap ORs equal bytes.
        let low = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let high = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        u64::from(low) | u64::from(high) << (8 * (n - 4))
    } else if n > 0 {
        u64::from(bytes[0])
            | u64::from(bytes[n / 2]) << (8 * (n / 2))
            | u64::from(bytes[n - 1]) << (8 * (n - 1))
    } else {
        0
    }
}

/// The directory hash of a stored name.
pub(crate) fn hash(name: &[u8]) -> u64 {
    fnv(name).0
}

/// The hash of block name `name`, which is checked to be a valid name on the way: 1 to
/// [`MAX_NAME_LEN`] bytes without a NUL, else `InvalidName`.
#[inline]
pub(crate) fn checked_hash(name: &str) -> Result<u64> {
    let (h, nul) = fnv(name.as_bytes());
    if nul || name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid_name(name, nul));
    }
    Ok(h)
}

/// Out of line, so that every lookup's hash stays a few registers.
#[cold]
#[inline(never)]
fn invalid_name(name: &str, nul: bool) -> Error {
    Error::InvalidName {
        name: name.chars().take(64).collect(),
        reason: if nul {
            "block names cannot contain a NUL byte".into()
        } else {
            format!(
                "block names are 1 to {MAX_NAME_LEN} bytes, this one is {} bytes",
                name.len()
            )
        },
    }
}
