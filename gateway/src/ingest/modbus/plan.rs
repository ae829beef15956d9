//! A group's points as few read requests as possible, and each point's value
//! out of the registers or bits a request returned.
//!
//! Points of one table whose address ranges touch (or share a register, as
//! bits of one status word do) are read by one request, up to the
//! protocol's 125 registers or 2000 bits. Gaps are not read across: many
//! devices answer a read that spans an unmapped address with an exception.

use serde_json::Value;

use super::config::{DataType, Kind, Order, PointConfig};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub start: u16,
    /// Registers, or bits for coils and discrete inputs.
    pub count: u16,
    /// Indices into the group's points.
    pub points: Vec<usize>,
}

/// The requests that read `points` (which validation checked: addresses and
/// counts in range).
pub fn plan(points: &[PointConfig]) -> Vec<Request> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].kind, points[i].address));
    let mut requests: Vec<Request> = Vec::new();
    for i in order {
        let p = &points[i];
        let start = p.address;
        // Validation keeps `end` within 65536; saturate rather than wrap.
        let end = start.saturating_add(u32::from(p.count()));
        if let Some(last) = requests.last_mut() {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let merged = end.max(last_end) - u32::from(last.start);
            if last.kind == p.kind
                && start <= last_end
                && merged <= u32::from(p.kind.max_per_request())
            {
                last.count = merged as u16;
                last.points.push(i);
                continue;
            }
        }
        requests.push(Request {
            kind: p.kind,
            // Validation keeps addresses and ends within 0..=65535.
            start: start as u16,
            count: (end - start) as u16,
            points: vec![i],
        });
    }
    requests
}

/// A point's value from its items; `None` when it cannot be represented
/// (a NaN or infinite float).
pub fn decode_registers(point: &PointConfig, regs: &[u16]) -> Option<Value> {
    let bytes = ordered_bytes(regs, point.order);
    let raw = match point.data_type() {
        DataType::Bool => {
            let bit = point.bit.unwrap_or(0);
            return Some(Value::Bool(
                (regs.first()?.checked_shr(u32::from(bit))? & 1) == 1,
            ));
        }
        DataType::String => return Some(Value::String(text(&bytes, point.length))),
        DataType::Int16 => Raw::Int(i64::from(i16::from_be_bytes(array(&bytes)?))),
        DataType::Uint16 => Raw::Uint(u64::from(u16::from_be_bytes(array(&bytes)?))),
        DataType::Int32 => Raw::Int(i64::from(i32::from_be_bytes(array(&bytes)?))),
        DataType::Uint32 => Raw::Uint(u64::from(u32::from_be_bytes(array(&bytes)?))),
        DataType::Int64 => Raw::Int(i64::from_be_bytes(array(&bytes)?)),
        DataType::Uint64 => Raw::Uint(u64::from_be_bytes(array(&bytes)?)),
        DataType::Float32 => Raw::Float(f64::from(f32::from_be_bytes(array(&bytes)?))),
        DataType::Float64 => Raw::Float(f64::from_be_bytes(array(&bytes)?)),
    };
    raw.scaled(point.scale, point.offset)
}

enum Raw {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Raw {
    /// Integers stay exact unless a scale or offset is configured.
    fn scaled(self, scale: Option<f64>, offset: Option<f64>) -> Option<Value> {
        let as_float = match self {
            Raw::Int(v) if scale.is_none() && offset.is_none() => return Some(v.into()),
            Raw::Uint(v) if scale.is_none() && offset.is_none() => return Some(v.into()),
            Raw::Int(v) => v as f64,
            Raw::Uint(v) => v as f64,
            Raw::Float(v) => v,
        };
        let value = as_float * scale.unwrap_or(1.0) + offset.unwrap_or(0.0);
        serde_json::Number::from_f64(value).map(Value::Number)
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.get(..N)?.try_into().ok()
}

/// The registers' bytes in big-endian value order (A first).
fn ordered_bytes(regs: &[u16], order: Order) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if order.swaps_words() {
        words.reverse();
    }
    words
        .iter()
        .flat_map(|w| {
            let [hi, lo] = w.to_be_bytes();
            if order.swaps_bytes() {
                [lo, hi]
            } else {
                [hi, lo]
            }
        })
        .collect()
}

/// A fixed-length string: up to `length` bytes, cut at the first NUL,
/// trailing spaces removed (devices pad either way), invalid UTF-8 replaced.
fn text(bytes: &[u8], length: Option<u16>) -> String {
    let bytes = &bytes[..usize::from(length.unwrap_or(0)).min(bytes.len())];
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end_matches(' ')
        .to_string()
}

/// A response's data bytes as registers (big-endian each).
pub fn registers(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// Bit `index` of a coil or discrete input response (LSB of byte 0 first).
pub fn bit(data: &[u8], index: usize) -> Option<bool> {
    Some((data.get(index / 8)? >> (index % 8)) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(kind: Kind, address: u32, data_type: DataType) -> PointConfig {
        PointConfig {
            name: format!("p{address}"),
            kind,
            address,
            data_type: Some(data_type),
            order: Order::ABCD,
            scale: None,
            offset: None,
            unit: None,
            bit: None,
            length: Some(4),
            deadband: None,
            deadband_percent: None,
            max_interval_ms: None,
        }
    }

    #[test]
    fn adjacent_points_of_one_table_share_a_request_and_gaps_split() {
        let points = vec![
            point(Kind::HoldingRegister, 2, DataType::Float32),
            point(Kind::HoldingRegister, 0, DataType::Uint32),
            point(Kind::HoldingRegister, 10, DataType::Uint16),
            point(Kind::InputRegister, 4, DataType::Uint16),
            point(Kind::Coil, 0, DataType::Bool),
            point(Kind::Coil, 1, DataType::Bool),
        ];
        let requests = plan(&points);
        let shapes: Vec<(Kind, u16, u16, Vec<usize>)> = requests
            .into_iter()
            .map(|r| (r.kind, r.start, r.count, r.points))
            .collect();
        assert_eq!(
            shapes,
            vec![
                (Kind::Coil, 0, 2, vec![4, 5]),
                (Kind::HoldingRegister, 0, 4, vec![1, 0]),
                (Kind::HoldingRegister, 10, 1, vec![2]),
                (Kind::InputRegister, 4, 1, vec![3]),
            ]
        );
    }

    #[test]
    fn bits_of_one_register_are_one_read_and_the_limit_splits_requests() {
        let mut a = point(Kind::HoldingRegister, 7, DataType::Bool);
        a.bit = Some(0);
        let mut b = a.clone();
        b.bit = Some(15);
        assert_eq!(plan(&[a, b])[0].count, 1);
        let many: Vec<PointConfig> = (0..130)
            .map(|i| point(Kind::InputRegister, i, DataType::Uint16))
            .collect();
        let counts: Vec<u16> = plan(&many).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![125, 5]);
    }

    #[test]
    fn orders_place_bytes_and_words() {
        // 0x11223344 as float bits is irrelevant; check via uint32.
        let p = |order| PointConfig {
            order,
            ..point(Kind::HoldingRegister, 0, DataType::Uint32)
        };
        let want = Some(Value::from(0x1122_3344_u64));
        assert_eq!(decode_registers(&p(Order::ABCD), &[0x1122, 0x3344]), want);
        assert_eq!(decode_registers(&p(Order::CDAB), &[0x3344, 0x1122]), want);
        assert_eq!(decode_registers(&p(Order::BADC), &[0x2211, 0x4433]), want);
        assert_eq!(decode_registers(&p(Order::DCBA), &[0x4433, 0x2211]), want);
    }

    #[test]
    fn scale_and_offset_apply_and_strings_trim() {
        let mut p = point(Kind::InputRegister, 0, DataType::Int16);
        p.scale = Some(0.1);
        p.offset = Some(-40.0);
        let v = decode_registers(&p, &[615]).and_then(|v| v.as_f64());
        assert!((v.unwrap() - 21.5).abs() < 1e-9);
        let s = point(Kind::HoldingRegister, 0, DataType::String);
        assert_eq!(
            decode_registers(&s, &[0x4142, 0x2000]),
            Some(Value::from("AB"))
        );
    }

    proptest! {
        #[test]
        fn every_order_round_trips_64_bit_values(v: u64, order in 0usize..4) {
            let order = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA][order];
            let mut words: Vec<u16> = v.to_be_bytes().chunks(2).map(|c| {
                if order.swaps_bytes() { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) }
            }).collect();
            if order.swaps_words() { words.reverse(); }
            let p = PointConfig { order, ..point(Kind::HoldingRegister, 0, DataType::Uint64) };
            prop_assert_eq!(decode_registers(&p, &words), Some(Value::from(v)));
        }

        #[test]
        fn plans_cover_every_point_within_the_protocol_limits(addrs in proptest::collection::btree_set(0u32..400, 1..60)) {
            let points: Vec<PointConfig> = addrs.iter().map(|&a| point(Kind::HoldingRegister, a * 2, DataType::Uint16)).collect();
            let requests = plan(&points);
            let mut seen: Vec<usize> = requests.iter().flat_map(|r| r.points.clone()).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..points.len()).collect::<Vec<_>>());
            for r in &requests {
                prop_assert!(r.count >= 1 && r.count <= 125);
                for &i in &r.points {
                    let a = points[i].address;
                    prop_assert!(a >= u32::from(r.start) && a < u32::from(r.start) + u32::from(r.count));
                }
            }
        }
    }
}
