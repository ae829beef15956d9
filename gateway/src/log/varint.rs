//! LEB128 varints and zigzag encoding, as in Kafka's record batch v2.

pub fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    put_u64(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reads a varint at `*pos`, advancing it. `None` on truncation or overflow.
pub fn get_u64(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub fn get_i64(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let raw = get_u64(bytes, pos)?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn unsigned_round_trips(v in any::<u64>()) {
            let mut out = Vec::new();
            put_u64(&mut out, v);
            let mut pos = 0;
            prop_assert_eq!(get_u64(&out, &mut pos), Some(v));
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn signed_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            let mut pos = 0;
            prop_assert_eq!(get_i64(&out, &mut pos), Some(v));
        }

        #[test]
        fn truncated_input_is_none_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut pos = 0;
            let _ = get_u64(&bytes, &mut pos);
            prop_assert!(pos <= bytes.len());
        }
    }

    #[test]
    fn small_values_take_one_byte() {
        let mut out = Vec::new();
        put_u64(&mut out, 127);
        put_i64(&mut out, -64);
        assert_eq!(out.len(), 2);
    }
}
