//! A stable 64-bit hash for consistent hashing, versions and change
//! detection (not for secrets: see `config::Definition` for digests).

/// 64-bit FNV-1a followed by a SplitMix64 finalizer: stable across
/// processes and versions (replicas must agree on the ring).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// Writes `v` as lower-case hex into `out` (most significant digit first,
/// as many digits as `out` holds): request ids and trace ids.
pub(crate) fn hex_into(mut v: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
