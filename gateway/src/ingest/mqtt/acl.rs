//! Topic permissions: which topics a client may publish to and subscribe within.
//!
//! Patterns are MQTT topic filters with `{client_id}` and `{username}`
//! placeholders. Client ids containing `/`, `+` or `#` are refused at
//! CONNECT (see `connect.rs`), so a substituted id can never widen a pattern
//! (a client called `+` must not gain `devices/+/#`).

use rumqttd::protocol::{matches, valid_filter};

/// The permissions of one connected client, placeholders already substituted.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Acl {
    pub fn new(
        publish: &[String],
        subscribe: &[String],
        client_id: &str,
        username: Option<&str>,
    ) -> Acl {
        let expand = |patterns: &[String]| {
            patterns
                .iter()
                .filter_map(|p| substitute(p, client_id, username))
                .collect()
        };
        Acl {
            publish: expand(publish),
            subscribe: expand(subscribe),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| matches(topic, f))
    }

    /// A subscription is allowed when every topic it can match is inside one
    /// of the permitted filters.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|a| filter_within(filter, a))
    }
}

/// `pattern` with its placeholders filled in; `None` when it needs a username
/// the client does not have.
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let mut out = pattern.replace("{client_id}", client_id);
    if out.contains("{username}") {
        out = out.replace("{username}", username?);
    }
    Some(out)
}

/// Whether `pattern` is a usable ACL pattern or route filter.
pub fn valid_acl_pattern(pattern: &str) -> bool {
    let probe = pattern
        .replace("{client_id}", "x")
        .replace("{username}", "x");
    !probe.contains(['{', '}']) && valid_filter(&probe)
}

/// True when every topic matching `inner` also matches `outer`.
pub fn filter_within(inner: &str, outer: &str) -> bool {
    let mut inner_levels = inner.split('/');
    for o in outer.split('/') {
        if o == "#" {
            return true;
        }
        match inner_levels.next() {
            None | Some("#") => return false,
            Some("+") if o != "+" => return false,
            Some(i) if o != "+" && o != i => return false,
            Some(_) => {}
        }
    }
    inner_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(publish: &[&str], subscribe: &[&str], id: &str, user: Option<&str>) -> Acl {
        let own = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        Acl::new(&own(publish), &own(subscribe), id, user)
    }

    #[test]
    fn client_id_is_substituted_into_the_default_pattern() {
        let a = acl(&["devices/{client_id}/#"], &[], "pump-3", None);
        assert!(a.may_publish("devices/pump-3/telemetry"));
        assert!(a.may_publish("devices/pump-3"));
        assert!(!a.may_publish("devices/pump-4/telemetry"));
        assert!(!a.may_publish("other/pump-3"));
    }

    #[test]
    fn username_pattern_is_skipped_for_anonymous_clients() {
        let a = acl(&["users/{username}/#"], &[], "c", None);
        assert!(!a.may_publish("users/{username}/x"));
        let b = acl(&["users/{username}/#"], &[], "c", Some("ann"));
        assert!(b.may_publish("users/ann/x"));
    }

    #[test]
    fn subscriptions_must_stay_inside_a_permitted_filter() {
        let a = acl(&[], &["devices/+/telemetry", "dash/#"], "c", None);
        assert!(a.may_subscribe("devices/+/telemetry"));
        assert!(a.may_subscribe("devices/d1/telemetry"));
        assert!(a.may_subscribe("dash/#"));
        assert!(a.may_subscribe("dash/a/+"));
        assert!(!a.may_subscribe("devices/#"));
        assert!(!a.may_subscribe("devices/+/+"));
        assert!(!a.may_subscribe("#"));
        let all = acl(&[], &["#"], "c", None);
        assert!(all.may_subscribe("#") && all.may_subscribe("a/+/b"));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(valid_acl_pattern("devices/{client_id}/#"));
        assert!(valid_acl_pattern("#"));
        assert!(!valid_acl_pattern("devices/{clientid}/#"));
        assert!(!valid_acl_pattern("a/#/b"));
        assert!(!valid_acl_pattern(""));
    }
}
