//! RFC 5424 and RFC 3164 (BSD) syslog messages.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]` is RFC 5424
//! (`-` is a nil field); anything else after `<PRI>` is read as RFC 3164,
//! `Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`, leniently, as senders vary
//! (busybox and local forwarders leave the host name out). A message
//! without a valid `<PRI>`, or an RFC 5424 one whose header is broken, is
//! an error: the caller stores it raw with the reason.

/// The fields of a parsed message; borrowed from the datagram or frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub facility: u8,
    pub severity: u8,
    /// 1 for RFC 5424, 0 for RFC 3164.
    pub version: u8,
    pub timestamp: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub app_name: Option<&'a str>,
    pub procid: Option<&'a str>,
    pub msgid: Option<&'a str>,
    pub structured_data: Option<&'a str>,
    pub msg: &'a [u8],
}

pub fn parse(bytes: &[u8]) -> Result<Message<'_>, String> {
    let (pri, rest) = priority(bytes)?;
    let mut message = match rest.strip_prefix(b"1 ") {
        Some(rest) => rfc5424(rest)?,
        None => rfc3164(rest),
    };
    message.facility = pri / 8;
    message.severity = pri % 8;
    Ok(message)
}

fn priority(bytes: &[u8]) -> Result<(u8, &[u8]), String> {
    let rest = bytes.strip_prefix(b"<").ok_or("no <PRI> at the start")?;
    let end = rest
        .iter()
        .take(4)
        .position(|&b| b == b'>')
        .ok_or("<PRI> is not closed within 3 digits")?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err("<PRI> is not a number".into());
    }
    let pri: u32 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or("<PRI> is not a number")?;
    if pri > 191 {
        return Err(format!("<PRI> {pri} is over 191"));
    }
    Ok((pri as u8, &rest[end + 1..]))
}

/// The next space-separated header field, as text; `-` is nil.
fn field<'a>(rest: &mut &'a [u8], name: &str) -> Result<Option<&'a str>, String> {
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    let (token, tail) = rest.split_at(end);
    *rest = tail.strip_prefix(b" ").unwrap_or(tail);
    let text = std::str::from_utf8(token).map_err(|_| format!("{name} is not UTF-8"))?;
    if text.is_empty() {
        return Err(format!("no {name}"));
    }
    if !text.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(format!("{name} has non-printable characters"));
    }
    Ok((text != "-").then_some(text))
}

fn rfc5424(mut rest: &[u8]) -> Result<Message<'_>, String> {
    let timestamp = field(&mut rest, "TIMESTAMP")?;
    let hostname = field(&mut rest, "HOSTNAME")?;
    let app_name = field(&mut rest, "APP-NAME")?;
    let procid = field(&mut rest, "PROCID")?;
    let msgid = field(&mut rest, "MSGID")?;
    let (structured_data, msg) = structured_data(rest)?;
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    Ok(Message {
        version: 1,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        msg,
        ..Message::default()
    })
}

/// `-` or `[id k="v" ...]...` (with `\"`, `\\` and `\]` escaped in
/// values), then the message after one space.
fn structured_data(rest: &[u8]) -> Result<(Option<&str>, &[u8]), String> {
    if let Some(msg) = rest.strip_prefix(b"-") {
        return Ok((None, msg.strip_prefix(b" ").unwrap_or(msg)));
    }
    if rest.first() != Some(&b'[') {
        return Err("STRUCTURED-DATA is neither - nor [...]".into());
    }
    let mut i = 0;
    while rest.get(i) == Some(&b'[') {
        i = element_end(rest, i + 1)?;
    }
    let sd = std::str::from_utf8(&rest[..i]).map_err(|_| "STRUCTURED-DATA is not UTF-8")?;
    let msg = &rest[i..];
    Ok((Some(sd), msg.strip_prefix(b" ").unwrap_or(msg)))
}

/// The index after the `]` closing the element that starts before `i`.
fn element_end(rest: &[u8], mut i: usize) -> Result<usize, String> {
    let mut quoted = false;
    while let Some(&b) = rest.get(i) {
        match (b, quoted) {
            (b'\\', true) => i += 1,
            (b'"', _) => quoted = !quoted,
            (b']', false) => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err("STRUCTURED-DATA element is not closed".into())
}

fn rfc3164(rest: &[u8]) -> Message<'_> {
    let mut message = Message::default();
    let mut rest = rest;
    if let Some(ts) = bsd_timestamp(rest) {
        message.timestamp = Some(ts);
        rest = rest[ts.len()..]
            .strip_prefix(b" ")
            .unwrap_or(&rest[ts.len()..]);
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let token = &rest[..end];
        let is_tag = token.ends_with(b":") || token.contains(&b'[');
        if !is_tag && end < rest.len() {
            message.hostname = std::str::from_utf8(token).ok().filter(|h| !h.is_empty());
            rest = &rest[end + 1..];
        }
    }
    let (app_name, procid, msg) = tag(rest);
    message.app_name = app_name;
    message.procid = procid;
    message.msg = msg;
    message
}

/// `Mmm dd hh:mm:ss` (day space-padded) at the start.
fn bsd_timestamp(rest: &[u8]) -> Option<&str> {
    let ts = std::str::from_utf8(rest.get(..15)?).ok()?;
    let b = ts.as_bytes();
    let months = "JanFebMarAprMayJunJulAugSepOctNovDec";
    let ok = months.as_bytes().chunks(3).any(|m| m == &b[..3])
        && b[3] == b' '
        && (b[4] == b' ' || b[4].is_ascii_digit())
        && b[5].is_ascii_digit()
        && b[6] == b' '
        && b[9] == b':'
        && b[12] == b':'
        && [7, 8, 10, 11, 13, 14]
            .iter()
            .all(|&i| b[i].is_ascii_digit());
    ok.then_some(ts)
}

/// `TAG[PID]: MSG` or `TAG: MSG`; no tag when none is there.
fn tag(rest: &[u8]) -> (Option<&str>, Option<&str>, &[u8]) {
    let Some(colon) = rest.iter().take(64).position(|&b| b == b':') else {
        return (None, None, rest);
    };
    let Ok(tag) = std::str::from_utf8(&rest[..colon]) else {
        return (None, None, rest);
    };
    if tag.is_empty() || tag.contains(' ') {
        return (None, None, rest);
    }
    let msg = &rest[colon + 1..];
    let msg = msg.strip_prefix(b" ").unwrap_or(msg);
    match tag.split_once('[') {
        Some((name, pid)) => (Some(name), pid.strip_suffix(']'), msg),
        None => (Some(tag), None, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc5424_fields_and_structured_data() {
        let m = parse(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\]ication\"][x@1 a=\"b\"] \xEF\xBB\xBFAn application event").unwrap();
        assert_eq!((m.facility, m.severity, m.version), (20, 5, 1));
        assert_eq!(m.timestamp, Some("2003-10-11T22:14:15.003Z"));
        assert_eq!(m.hostname, Some("mymachine.example.com"));
        assert_eq!(m.app_name, Some("evntslog"));
        assert_eq!((m.procid, m.msgid), (None, Some("ID47")));
        assert_eq!(
            m.structured_data,
            Some("[exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\]ication\"][x@1 a=\"b\"]")
        );
        assert_eq!(m.msg, b"An application event");
        let nil = parse(b"<13>1 - - - - - -").unwrap();
        assert_eq!((nil.hostname, nil.msg), (None, &b""[..]));
    }

    #[test]
    fn rfc3164_with_and_without_a_hostname() {
        let m = parse(b"<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed").unwrap();
        assert_eq!((m.facility, m.severity, m.version), (4, 2, 0));
        assert_eq!(m.timestamp, Some("Oct 11 22:14:15"));
        assert_eq!(m.hostname, Some("mymachine"));
        assert_eq!((m.app_name, m.procid), (Some("su"), Some("230")));
        assert_eq!(m.msg, b"'su root' failed");
        let local = parse(b"<13>Dec  2 01:45:00 cron: job done").unwrap();
        assert_eq!((local.hostname, local.app_name), (None, Some("cron")));
        assert_eq!(local.msg, b"job done");
        let bare = parse(b"<13>just text").unwrap();
        assert_eq!((bare.timestamp, bare.msg), (None, &b"just text"[..]));
    }

    #[test]
    fn malformed_messages_are_errors_with_a_reason() {
        for bad in [
            &b"no pri"[..],
            b"<999>1 x",
            b"<ab>x",
            b"<13",
            b"<13>1 - host app - - [unclosed",
            b"<13>1 - host app - - nosd",
            b"<13>1 ",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn rfc5424_round_trips_its_fields(
            pri in 0u8..192,
            host in "[a-z0-9.-]{1,20}",
            app in "[a-zA-Z0-9_]{1,20}",
            procid in "[0-9]{1,6}",
            msg in "[ -~]{0,80}",
        ) {
            let line = format!("<{pri}>1 2024-01-01T00:00:00Z {host} {app} {procid} - - {msg}");
            let m = parse(line.as_bytes()).unwrap();
            prop_assert_eq!((m.facility, m.severity), (pri / 8, pri % 8));
            prop_assert_eq!(m.hostname, (host != "-").then_some(host.as_str()));
            prop_assert_eq!(m.app_name, Some(app.as_str()));
            prop_assert_eq!(m.procid, Some(procid.as_str()));
            prop_assert_eq!(m.msg, msg.as_bytes());
        }
    }
}
