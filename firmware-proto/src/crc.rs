//! CRC-32C (Castagnoli), the checksum at the end of every raw frame.
//!
//! Castagnoli rather than the IEEE polynomial because it detects more error
//! patterns at the frame lengths we use, and it is the checksum the gateway's
//! log already uses. The 1 KiB table is built at compile time and lives in flash.

/// Reflected form of the Castagnoli polynomial 0x1EDC6F41.
const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC-32C of `data` (initial value and final xor `0xFFFF_FFFF`).
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let crc = data.iter().fold(!0u32, |crc, &byte| {
        // The index is masked to 0..=255, so it is always in bounds.
        TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8)
    });
    !crc
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn matches_the_standard_check_value() {
        // The catalogue check value of CRC-32/ISCSI.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn empty_input_has_crc_zero() {
        assert_eq!(crc32c(&[]), 0);
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_gateway_crc32c_crate(data: std::vec::Vec<u8>) {
            proptest::prop_assert_eq!(crc32c(&data), ::crc32c::crc32c(&data));
        }
    }
}
