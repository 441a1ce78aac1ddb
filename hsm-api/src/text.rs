//! Upper-case hex text of bytes that are not secret (key blocks, check values, digests): the
//! `hex` crate's table encoding, a stack buffer at a time, so that a hot path (a key block per
//! delivered key) pays no allocation and no per-character iterator for it.

/// Bytes encoded per step: a 64-byte stack buffer of text.
const CHUNK: usize = 32;

/// Appends the upper-case hex of `bytes` to `out`.
pub fn push_upper_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    let mut buf = [0u8; 2 * CHUNK];
    for chunk in bytes.chunks(CHUNK) {
        let text = &mut buf[..2 * chunk.len()];
        // Cannot fail: the output is exactly twice the input.
        if hex::encode_to_slice(chunk, text).is_err() {
            continue;
        }
        text.make_ascii_uppercase();
        // Hex digits are ASCII; `from_utf8` cannot refuse them.
        if let Ok(text) = core::str::from_utf8(text) {
            out.push_str(text);
        }
    }
}

/// The upper-case hex of `bytes`.
pub fn upper_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_upper_hex(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_hex_crate_at_every_length_around_the_chunk() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for len in [0, 1, 2, 31, 32, 33, 63, 64, 65, 255, 256, 512] {
            assert_eq!(
                upper_hex(&bytes[..len]),
                hex::encode_upper(&bytes[..len]),
                "{len}"
            );
        }
        let mut out = String::from("AB");
        push_upper_hex(&mut out, &[0x0f, 0xa0]);
        assert_eq!(out, "AB0FA0");
    }
}
