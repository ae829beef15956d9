//! What the types cannot check about `[modbus]`, as (key path, problem).
//!
//! The load rule: every request costs its request and response characters
//! at the line's bits per character, two 3.5-character silences (1.75 ms
//! each above 19200 baud, as the serial line specification fixes them) and
//! the bus's `pause_ms`; a group's polls cost the sum of its requests. A bus
//! whose groups together need more than all of its time (the sum over its
//! groups of poll time / `interval_ms` above 1) cannot keep their intervals,
//! and is refused at the group that takes the largest share. For Modbus TCP
//! only the pause counts (the network is not the limit).

use std::collections::HashSet;
use std::time::Duration;

use super::config::{BusConfig, DataType, GroupConfig, ModbusConfig, PointConfig, Transport};
use super::plan::{plan, Request};

type Problems = Vec<(String, String)>;

impl ModbusConfig {
    /// Every problem found (empty when the section is fine).
    pub fn validate(&self, topics: &[&str]) -> Problems {
        let mut problems = Vec::new();
        let mut devices = HashSet::new();
        for (b, bus) in self.buses.iter().enumerate() {
            let key = format!("modbus.buses[{b}]");
            if self.buses[..b].iter().any(|o| o.name == bus.name) {
                let msg = format!("bus {:?} is configured twice", bus.name);
                problems.push((format!("{key}.name"), msg));
            }
            if !topics.contains(&bus.topic.as_str()) {
                let msg = format!("no topic {:?} is configured under [topics]", bus.topic);
                problems.push((format!("{key}.topic"), msg));
            }
            bus_problems(bus, &key, &mut problems);
            for (d, device) in bus.devices.iter().enumerate() {
                let dkey = format!("{key}.devices[{d}]");
                if !devices.insert(device.name.as_str()) {
                    let msg = format!(
                        "device {:?} is configured twice (names key the records)",
                        device.name
                    );
                    problems.push((format!("{dkey}.name"), msg));
                }
                device_problems(bus, d, &dkey, &mut problems);
            }
        }
        if problems.is_empty() {
            for (b, bus) in self.buses.iter().enumerate() {
                problems.extend(overload(bus, b));
            }
        }
        problems
    }
}

fn device_problems(bus: &BusConfig, d: usize, key: &str, problems: &mut Problems) {
    let device = &bus.devices[d];
    if bus.devices[..d].iter().any(|o| o.unit == device.unit) {
        let msg = format!("unit {} is configured twice on this bus", device.unit);
        problems.push((format!("{key}.unit"), msg));
    }
    if bus.transport != Transport::Tcp && !(1..=247).contains(&device.unit) {
        problems.push((format!("{key}.unit"), "RTU unit ids are 1 to 247".into()));
    }
    if device.groups.is_empty() {
        problems.push((
            format!("{key}.groups"),
            "a device needs at least one [[...groups]] entry".into(),
        ));
    }
    for (g, group) in device.groups.iter().enumerate() {
        let gkey = format!("{key}.groups[{g}]");
        if device.groups[..g].iter().any(|o| o.name == group.name) {
            let msg = format!("group {:?} is configured twice", group.name);
            problems.push((format!("{gkey}.name"), msg));
        }
        group_problems(group, &gkey, problems);
    }
}

fn bus_problems(bus: &BusConfig, key: &str, problems: &mut Problems) {
    let mut say =
        |field: &str, msg: &str| problems.push((format!("{key}.{field}"), msg.to_string()));
    if bus.name.is_empty() {
        say("name", "must not be empty");
    }
    match bus.transport {
        Transport::Rtu if bus.path.is_none() => {
            say("path", "an rtu bus needs the serial port's path");
        }
        Transport::Rtu if bus.address.is_some() => {
            say("address", "an rtu bus has a path, not an address");
        }
        Transport::Tcp | Transport::RtuOverTcp if bus.address.is_none() => {
            say(
                "address",
                "a tcp or rtu_over_tcp bus needs address = \"host:port\"",
            );
        }
        Transport::Tcp | Transport::RtuOverTcp if bus.path.is_some() => {
            say(
                "path",
                "a tcp or rtu_over_tcp bus has an address, not a path",
            );
        }
        _ => {}
    }
    if bus.address.as_deref().is_some_and(|a| {
        a.rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    }) {
        say("address", "use host:port, e.g. 192.168.1.20:502");
    }
    if bus.baud == 0 {
        say("baud", "must be positive");
    }
    if !(7..=8).contains(&bus.data_bits) {
        say("data_bits", "must be 7 or 8");
    }
    if !(1..=2).contains(&bus.stop_bits) {
        say("stop_bits", "must be 1 or 2");
    }
    if bus.timeout_ms == 0 {
        say("timeout_ms", "must be positive");
    }
    if bus.retries > 10 {
        say("retries", "at most 10 (each retry holds the whole bus)");
    }
    if bus.devices.is_empty() {
        say("devices", "a bus needs at least one [[...devices]] entry");
    }
}

fn group_problems(group: &GroupConfig, key: &str, problems: &mut Problems) {
    if group.interval_ms == 0 {
        problems.push((format!("{key}.interval_ms"), "must be positive".into()));
    }
    if group.points.is_empty() {
        problems.push((
            format!("{key}.points"),
            "a group needs at least one [[...points]] entry".into(),
        ));
    }
    for (p, point) in group.points.iter().enumerate() {
        let pkey = format!("{key}.points[{p}]");
        if group.points[..p].iter().any(|o| o.name == point.name) {
            problems.push((
                format!("{pkey}.name"),
                format!("point {:?} is configured twice", point.name),
            ));
        }
        if let Some((field, msg)) = point_problem(point) {
            problems.push((format!("{pkey}.{field}"), msg));
        } else if let Some(other) = group.points[..p].iter().find(|o| overlaps(o, point)) {
            problems.push((
                format!("{pkey}.address"),
                format!("overlaps point {:?}", other.name),
            ));
        }
    }
}

fn point_problem(point: &PointConfig) -> Option<(&'static str, String)> {
    let t = point.data_type();
    let numeric = t.is_numeric();
    if point.name.is_empty() || point.name == super::report::QUALITY_KEY {
        return Some((
            "name",
            "must not be empty or \"quality\" (the record's quality key)".into(),
        ));
    }
    if point.kind.is_bits() && t != DataType::Bool {
        return Some(("type", "coils and discrete inputs are type \"bool\"".into()));
    }
    if point.bit.is_some() && (point.kind.is_bits() || t != DataType::Bool) {
        return Some(("bit", "only for type = \"bool\" on a register".into()));
    }
    if point.bit.is_some_and(|b| b > 15) {
        return Some(("bit", "a register has bits 0 to 15".into()));
    }
    if t == DataType::String && !point.length.is_some_and(|l| (1..=250).contains(&l)) {
        return Some((
            "length",
            "a string needs length = 1 to 250 bytes (125 registers, one request)".into(),
        ));
    }
    if t == DataType::String && point.order.swaps_words() {
        return Some((
            "order",
            "a string's registers are in address order: \"ABCD\", or \"BADC\" to swap the bytes in each register".into(),
        ));
    }
    if point.length.is_some() && t != DataType::String {
        return Some(("length", "only for type = \"string\"".into()));
    }
    if !numeric && (point.scale.is_some() || point.offset.is_some()) {
        return Some((
            "scale",
            "scale and offset apply to numeric types only".into(),
        ));
    }
    if point.scale.is_some_and(|s| !s.is_finite()) || point.offset.is_some_and(|o| !o.is_finite()) {
        return Some(("scale", "scale and offset must be finite numbers".into()));
    }
    deadband_problem(point, numeric).or_else(|| address_problem(point))
}

fn deadband_problem(point: &PointConfig, numeric: bool) -> Option<(&'static str, String)> {
    if point.has_deadband() && !numeric {
        return Some(("deadband", "deadbands apply to numeric types only".into()));
    }
    if point.deadband.is_some() && point.deadband_percent.is_some() {
        return Some((
            "deadband_percent",
            "set deadband or deadband_percent, not both".into(),
        ));
    }
    if point.deadband.is_some_and(|d| !(d >= 0.0 && d.is_finite()))
        || point
            .deadband_percent
            .is_some_and(|d| !(d >= 0.0 && d.is_finite()))
    {
        return Some(("deadband", "must be a finite number, 0 or more".into()));
    }
    if point.max_interval_ms.is_some() && !point.has_deadband() {
        return Some((
            "max_interval_ms",
            "only with deadband or deadband_percent".into(),
        ));
    }
    if point.max_interval_ms == Some(0) {
        return Some(("max_interval_ms", "must be positive".into()));
    }
    None
}

fn address_problem(point: &PointConfig) -> Option<(&'static str, String)> {
    // u64: an address near u32::MAX must not overflow (or wrap) here.
    let end = u64::from(point.address) + u64::from(point.count());
    if end > 65_536 {
        let msg = format!(
            "addresses are 0 to 65535 (0-based protocol addresses); this point ends at {}",
            end - 1
        );
        return Some(("address", msg));
    }
    None
}

/// Two points reading the same items (bits of one register excepted).
fn overlaps(a: &PointConfig, b: &PointConfig) -> bool {
    if a.kind != b.kind {
        return false;
    }
    let bits = |p: &PointConfig| p.bit.is_some();
    if bits(a) && bits(b) {
        return a.address == b.address && a.bit == b.bit;
    }
    // An earlier point may have an out-of-range address: u64, no overflow.
    let span = |p: &PointConfig| {
        let start = u64::from(p.address);
        (start, start + u64::from(p.count()))
    };
    let ((a0, a1), (b0, b1)) = (span(a), span(b));
    a0 < b1 && b0 < a1
}

/// Line time of one request and its response, with both silences and the pause.
pub fn request_time(bus: &BusConfig, request: &Request) -> Duration {
    let pause = Duration::from_millis(bus.pause_ms);
    if !bus.is_rtu() {
        return pause;
    }
    let data = if request.kind.is_bits() {
        usize::from(request.count).div_ceil(8)
    } else {
        2 * usize::from(request.count)
    };
    let chars = 8 + 5 + data;
    let char_s = f64::from(bus.bits_per_char()) / f64::from(bus.baud.max(1));
    Duration::from_secs_f64(chars as f64 * char_s) + 2 * silence(bus) + pause
}

/// The 3.5-character silence that ends an RTU frame.
pub fn silence(bus: &BusConfig) -> Duration {
    if bus.baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * f64::from(bus.bits_per_char()) / f64::from(bus.baud.max(1)))
    }
}

fn overload(bus: &BusConfig, b: usize) -> Option<(String, String)> {
    let mut total = 0.0;
    let mut worst: Option<(f64, String, Duration, u64)> = None;
    for (d, device) in bus.devices.iter().enumerate() {
        for (g, group) in device.groups.iter().enumerate() {
            let poll: Duration = plan(&group.points)
                .iter()
                .map(|r| request_time(bus, r))
                .sum();
            let share = poll.as_secs_f64() * 1000.0 / group.interval_ms as f64;
            total += share;
            if worst.as_ref().is_none_or(|w| share > w.0) {
                let key = format!("modbus.buses[{b}].devices[{d}].groups[{g}].interval_ms");
                worst = Some((share, key, poll, group.interval_ms));
            }
        }
    }
    let (_, key, poll, interval) = worst?;
    (total > 1.0).then(|| {
        let msg = format!(
            "the bus cannot serve its groups: together they need {:.0}% of its time at {} baud (this group's poll takes about {:.1} ms of its {interval} ms); lengthen intervals, raise the baud rate or lower pause_ms",
            total * 100.0,
            bus.baud,
            poll.as_secs_f64() * 1000.0
        );
        (key, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Problems {
        let config: ModbusConfig = toml::from_str(text).unwrap();
        config.validate(&["ingest"])
    }

    const BUS: &str = "[[buses]]\nname = \"b\"\ntransport = \"rtu\"\npath = \"/dev/ttyS0\"\nbaud = 9600\n\
                       [[buses.devices]]\nname = \"d\"\nunit = 1\n[[buses.devices.groups]]\nname = \"g\"\n";

    fn point(name: &str, kind: &str, address: u32, extra: &str) -> String {
        format!("[[buses.devices.groups.points]]\nname = \"{name}\"\nkind = \"{kind}\"\naddress = {address}\n{extra}\n")
    }

    #[test]
    fn a_sound_bus_has_no_problems() {
        let text = format!(
            "{BUS}interval_ms = 1000\n{}{}",
            point("a", "holding_register", 0, "type = \"float32\""),
            point("b", "coil", 0, "")
        );
        assert_eq!(problems(&text), Vec::<(String, String)>::new());
    }

    #[test]
    fn mistakes_are_named_by_key_path() {
        let text = format!(
            "{BUS}interval_ms = 1000\n{}{}{}{}",
            point("a", "coil", 0, "type = \"int16\""),
            point("b", "holding_register", 0, "bit = 16\ntype = \"bool\""),
            point(
                "c",
                "input_register",
                0,
                "type = \"string\"\nscale = 2.0\nlength = 2"
            ),
            point("d", "input_register", 0, "max_interval_ms = 5"),
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|(k, _)| k).collect();
        let at = "modbus.buses[0].devices[0].groups[0].points";
        assert_eq!(
            keys,
            vec![
                format!("{at}[0].type"),
                format!("{at}[1].bit"),
                format!("{at}[2].scale"),
                format!("{at}[3].max_interval_ms")
            ]
        );
    }

    #[test]
    fn an_address_near_u32_max_is_a_key_path_problem_not_an_overflow() {
        let text = format!(
            "{BUS}interval_ms = 1000\n{}{}",
            point("a", "holding_register", 4_294_967_295, "type = \"float64\""),
            point("b", "holding_register", 4_294_967_294, "type = \"uint32\"")
        );
        let found = problems(&text);
        let at = "modbus.buses[0].devices[0].groups[0].points";
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![format!("{at}[0].address"), format!("{at}[1].address")],
            "{found:?}"
        );
        assert!(found[0].1.contains("0 to 65535"), "{}", found[0].1);
    }

    #[test]
    fn word_swapping_orders_are_refused_on_strings() {
        let string = |order: &str| {
            format!(
                "{BUS}interval_ms = 1000\n{}",
                point(
                    "s",
                    "holding_register",
                    0,
                    &format!("type = \"string\"\nlength = 8\norder = \"{order}\"")
                )
            )
        };
        for order in ["CDAB", "DCBA"] {
            let found = problems(&string(order));
            assert_eq!(found.len(), 1, "{order}: {found:?}");
            assert_eq!(
                found[0].0,
                "modbus.buses[0].devices[0].groups[0].points[0].order"
            );
        }
        for order in ["ABCD", "BADC"] {
            assert!(problems(&string(order)).is_empty(), "{order}");
        }
    }

    #[test]
    fn a_bus_busier_than_its_time_is_refused_at_its_largest_share() {
        // One register at 9600 baud, 11 bits: (8 + 7) chars + 2 x 3.5 = 25.2 ms, + 20 ms pause.
        let text = format!(
            "{BUS}interval_ms = 45\n{}",
            point("a", "holding_register", 0, "")
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0,
            "modbus.buses[0].devices[0].groups[0].interval_ms"
        );
        assert!(found[0].1.contains("100%"), "{}", found[0].1);
        let fits = format!(
            "{BUS}interval_ms = 46\n{}",
            point("a", "holding_register", 0, "")
        );
        assert!(problems(&fits).is_empty());
    }
}
