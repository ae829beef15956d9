//! Authentication at CONNECT: username and argon2-hashed password from the
//! configuration, or anonymous access where the configuration allows it.
//!
//! Passwords are never stored: the configuration holds argon2 PHC strings.
//! Verification costs tens of milliseconds of CPU by design, so it runs on
//! the blocking pool, not on a runtime worker.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::acl::Acl;
use super::config::{MqttConfig, UserConfig};

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password (indistinguishable on purpose).
    BadCredentials,
    /// No credentials, and anonymous access is not allowed here.
    NotAuthorized,
}

/// Who is connecting, as far as authentication cares.
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The TLS layer verified a client certificate.
    pub client_cert: bool,
}

/// Checks the credentials; on success returns the client's permissions.
pub fn authenticate(config: &MqttConfig, who: &Credentials<'_>) -> Result<Acl, AuthFailure> {
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
    let user = config.users.iter().find(|u| u.username == username);
    let password = who.password.unwrap_or_default();
    match user {
        Some(user) if verify_password(user, password) => Ok(Acl::new(
            &user.publish_acl,
            &user.subscribe_acl,
            who.client_id,
            Some(username),
        )),
        Some(_) => Err(AuthFailure::BadCredentials),
        None => {
            // Spend the same time as for a known user, so timing does not
            // reveal which usernames exist.
            let _ = hash_password(password);
            Err(AuthFailure::BadCredentials)
        }
    }
}

fn verify_password(user: &UserConfig, password: &[u8]) -> bool {
    PasswordHash::new(&user.password_hash)
        .map(|hash| Argon2::default().verify_password(password, &hash).is_ok())
        .unwrap_or(false)
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            client_id: "c1",
            username: user,
            password,
            client_cert: false,
        }
    }

    #[test]
    fn right_password_is_accepted_and_gets_its_acl() {
        let config = config_with_user("s3cret");
        let acl = authenticate(&config, &who(Some("ann"), Some(b"s3cret"))).unwrap();
        assert!(acl.may_publish("devices/c1/x"));
        assert!(!acl.may_publish("devices/c2/x"));
    }

    #[test]
    fn wrong_password_unknown_user_and_anonymous_are_refused() {
        let config = config_with_user("s3cret");
        let wrong = authenticate(&config, &who(Some("ann"), Some(b"guess")));
        assert_eq!(wrong.unwrap_err(), AuthFailure::BadCredentials);
        let unknown = authenticate(&config, &who(Some("bob"), Some(b"s3cret")));
        assert_eq!(unknown.unwrap_err(), AuthFailure::BadCredentials);
        let anonymous = authenticate(&config, &who(None, None));
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
