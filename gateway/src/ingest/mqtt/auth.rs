//! Authentication at CONNECT: username and argon2-hashed password from the
//! configuration, or anonymous access where the configuration allows it.
//!
//! Passwords are never stored: the configuration holds argon2 PHC strings.
//! Verification costs tens of milliseconds of CPU and 19 MiB by design, so
//! it goes through the [`Gate`], which bounds, caches and slows it down.

use std::net::IpAddr;

use tokio::time::Instant;

use super::acl::Acl;
use super::config::MqttConfig;
pub use super::gate::{hash_password, AuthFailure};
use super::gate::{Attempt, Gate};

/// Who is connecting, as far as authentication cares.
pub struct Credentials<'a> {
    pub addr: IpAddr,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The TLS layer verified a client certificate.
    pub client_cert: bool,
}

/// Checks the credentials before `deadline` (the CONNECT deadline); on
/// success returns the client's permissions.
pub async fn authenticate(
    config: &MqttConfig,
    gate: &Gate,
    who: &Credentials<'_>,
    deadline: Instant,
) -> Result<Acl, AuthFailure> {
    let Some(username) = who.username else {
        if config.allow_anonymous || who.client_cert {
            return Ok(Acl::new(
                &config.anonymous_publish_acl,
                &config.anonymous_subscribe_acl,
                who.client_id,
                None,
            ));
        }
        return Err(AuthFailure::NotAuthorized);
    };
    let attempt = Attempt {
        addr: who.addr,
        client_id: who.client_id,
        username,
        password: who.password.unwrap_or_default(),
    };
    let user = gate.check(&config.users, &attempt, deadline).await?;
    Ok(Acl::new(
        &user.publish_acl,
        &user.subscribe_acl,
        who.client_id,
        Some(username),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::mqtt::config::UserConfig;

    fn config_with_user(password: &str) -> MqttConfig {
        MqttConfig {
            allow_anonymous: false,
            users: vec![UserConfig {
                username: "ann".into(),
                password_hash: hash_password(password.as_bytes()).unwrap(),
                publish_acl: vec!["devices/{client_id}/#".into()],
                subscribe_acl: vec![],
            }],
            ..MqttConfig::default()
        }
    }

    fn who<'a>(user: Option<&'a str>, password: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            addr: IpAddr::from([127, 0, 0, 1]),
            client_id: "c1",
            username: user,
            password,
            client_cert: false,
        }
    }

    async fn check(config: &MqttConfig, who: &Credentials<'_>) -> Result<Acl, AuthFailure> {
        let gate = Gate::new(config, Default::default());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        authenticate(config, &gate, who, deadline).await
    }

    #[tokio::test]
    async fn right_password_is_accepted_and_gets_its_acl() {
        let config = config_with_user("s3cret");
        let acl = check(&config, &who(Some("ann"), Some(b"s3cret")))
            .await
            .unwrap();
        assert!(acl.may_publish("devices/c1/x"));
        assert!(!acl.may_publish("devices/c2/x"));
    }

    #[tokio::test]
    async fn wrong_password_unknown_user_and_anonymous_are_refused() {
        let config = config_with_user("s3cret");
        let wrong = check(&config, &who(Some("ann"), Some(b"guess"))).await;
        assert_eq!(wrong.unwrap_err(), AuthFailure::BadCredentials);
        let unknown = check(&config, &who(Some("bob"), Some(b"s3cret"))).await;
        assert_eq!(unknown.unwrap_err(), AuthFailure::BadCredentials);
        let anonymous = check(&config, &who(None, None)).await;
        assert_eq!(anonymous.unwrap_err(), AuthFailure::NotAuthorized);
    }

    #[test]
    fn hashes_are_salted_phc_strings() {
        let a = hash_password(b"pw").unwrap();
        let b = hash_password(b"pw").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
    }
}
