//! Admission at CONNECT: the password check is the one cost of a connection
//! that a client can make large, so every part of it is bounded.
//!
//! An argon2 check takes tens of milliseconds of CPU and `m_cost` (19 MiB by
//! default) of memory. Left unbounded, 1,000 devices reconnecting after a
//! power blip ran 512 checks at once on the blocking pool and grew the
//! gateway to 18 GB: a Pi is OOM-killed, restarts, and the fleet reconnects
//! again. So:
//!
//! - **At most `max_auth_checks` checks run at once** (a semaphore; default:
//!   one per core). Peak memory is that many times `m_cost`.
//! - **Waiting is bounded**: at most `max_auth_waiting` connections wait for
//!   a check, each at most until its CONNECT deadline (`connect_timeout_ms`
//!   from accept). Beyond either, the client gets CONNACK "server
//!   unavailable" (3.1.1, 0x03) or "server busy" (MQTT 5, 0x89) and retries;
//!   a waiting one holds only its socket and its CONNECT.
//! - **A verified credential is not checked again for `credential_cache_s`**:
//!   the cache holds a keyed BLAKE2b MAC of (username, password, the user's
//!   password hash) under a key drawn at start, never the password. A
//!   changed or removed user no longer matches its entries. The cache holds
//!   at most [`CACHE_ENTRIES`] credentials, oldest dropped first. Devices
//!   sharing a credential that connect together run one check between them.
//! - **Failures slow the next attempt**: after a failed check, the same
//!   client id is refused without a check (MQTT 5: 0x9F "connection rate
//!   exceeded", 3.1.1: 0x03) for 1 s, doubling with each further failure up
//!   to 60 s. An address gets [`ADDRESS_FREE_FAILURES`] failures free (a NAT
//!   can hide a whole fleet, one of it misconfigured), then the same
//!   doubling. A brute force from one address therefore costs at most a
//!   handful of checks a minute, and valid devices elsewhere keep their
//!   permits. Devices behind the same address as the attacker wait with it:
//!   a check that succeeds on that address cannot be told from a lucky guess.
//!   For the same reason someone who knows a device's client id can delay
//!   that device's reconnects by failing with its id: the price of slowing
//!   guesses down without knowing who is guessing.
//!   Failure records are forgotten after [`FORGET`] without failures and are
//!   bounded in number.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::config::{MqttConfig, UserConfig};
use super::stats::MqttStats;

/// Verified credentials remembered at most.
pub const CACHE_ENTRIES: usize = 4096;
/// Failures from one address before it is slowed down.
pub const ADDRESS_FREE_FAILURES: u32 = 8;
/// Client ids and addresses whose failures are remembered at most (each).
const TRACKED: usize = 8192;
/// A failure record is dropped after this long without a failure.
pub const FORGET: Duration = Duration::from_secs(15 * 60);
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password (indistinguishable on purpose).
    BadCredentials,
    /// No credentials, and anonymous access is not allowed here.
    NotAuthorized,
    /// Not checked: this client id or address failed recently.
    Throttled,
    /// Not checked: too many connections are waiting for a check.
    Busy,
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

type Tag = [u8; 32];

/// How a credential was found good or bad.
enum Checked {
    /// By argon2, just now.
    Verified,
    /// By the cache, which another connection filled while this one waited.
    Cached,
    Refused,
}

/// A connecting client with a username.
pub struct Attempt<'a> {
    pub addr: IpAddr,
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a [u8],
}

pub struct Gate {
    checks: Semaphore,
    max_waiting: usize,
    cache_ttl: Duration,
    cache: Mutex<Cache>,
    failures: Mutex<Failures>,
    key: Tag,
    stats: Arc<MqttStats>,
}

impl Gate {
    pub fn new(config: &MqttConfig, stats: Arc<MqttStats>) -> Gate {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let permits = match config.max_auth_checks {
            0 => cores,
            n => n,
        };
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Gate {
            checks: Semaphore::new(permits),
            max_waiting: config.max_auth_waiting,
            cache_ttl: Duration::from_secs(config.credential_cache_s),
            cache: Mutex::new(Cache::default()),
            failures: Mutex::new(Failures::default()),
            key,
            stats,
        }
    }

    /// Checks `attempt` against `users`; on success returns its user.
    /// `deadline` is the connection's CONNECT deadline.
    pub async fn check<'u>(
        &self,
        users: &'u [UserConfig],
        attempt: &Attempt<'_>,
        deadline: Instant,
    ) -> Result<&'u UserConfig, AuthFailure> {
        if lock(&self.failures).slowed(attempt, Instant::now()) {
            self.stats.gate.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(AuthFailure::Throttled);
        }
        let user = users.iter().find(|u| u.username == attempt.username);
        let tag = user.map(|u| self.tag(attempt, &u.password_hash));
        if let Some((user, tag)) = user.zip(tag.as_ref()) {
            if lock(&self.cache).holds(tag, Instant::now()) {
                self.stats.gate.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(user);
            }
        }
        let phc = user.map(|u| u.password_hash.clone());
        let password = attempt.password.to_vec();
        let checked = self.verify(phc, password, tag.as_ref(), deadline).await?;
        let now = Instant::now();
        match (checked, user, tag) {
            (Checked::Cached, Some(user), _) => Ok(user),
            (Checked::Verified, Some(user), Some(tag)) => {
                lock(&self.failures).forgive(attempt.client_id);
                if !self.cache_ttl.is_zero() {
                    lock(&self.cache).insert(tag, now + self.cache_ttl);
                }
                Ok(user)
            }
            _ => {
                lock(&self.failures).record(attempt, now);
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    /// Runs one argon2 check under a permit; `phc` is `None` for an unknown
    /// user, which is checked against a dummy hash so that timing does not
    /// tell which usernames exist. The cache is asked again once the permit
    /// is held: devices sharing a credential that arrive together wait for
    /// the first one's check instead of each running their own.
    async fn verify(
        &self,
        phc: Option<String>,
        password: Vec<u8>,
        tag: Option<&Tag>,
        deadline: Instant,
    ) -> Result<Checked, AuthFailure> {
        let _place = self.queue()?;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.checks.acquire()).await else {
            self.stats.gate.busy.fetch_add(1, Ordering::Relaxed);
            return Err(AuthFailure::Busy);
        };
        if tag.is_some_and(|tag| lock(&self.cache).holds(tag, Instant::now())) {
            self.stats.gate.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Checked::Cached);
        }
        self.stats.gate.checks.fetch_add(1, Ordering::Relaxed);
        let verified = tokio::task::spawn_blocking(move || match phc {
            Some(phc) => verify_password(&phc, &password),
            None => {
                let _ = verify_password(dummy_hash(), &password);
                false
            }
        })
        .await
        .unwrap_or(false);
        Ok(if verified {
            Checked::Verified
        } else {
            Checked::Refused
        })
    }

    /// A place in the queue of connections waiting for a permit, or `Busy`
    /// when `max_auth_waiting` are waiting already.
    fn queue(&self) -> Result<Place<'_>, AuthFailure> {
        let waiting = self.stats.gate.waiting.fetch_add(1, Ordering::AcqRel);
        let place = Place(&self.stats.gate.waiting);
        if waiting >= self.max_waiting {
            self.stats.gate.busy.fetch_add(1, Ordering::Relaxed);
            return Err(AuthFailure::Busy);
        }
        Ok(place)
    }

    /// The cache key: a MAC of the credential and the hash it was checked
    /// against, length-prefixed so no two inputs run together.
    fn tag(&self, attempt: &Attempt<'_>, phc: &str) -> Tag {
        let mut mac =
            <Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new_from_slice(&self.key)
                .expect("a 32-byte key fits BLAKE2b (at most 64)");
        for part in [
            attempt.username.as_bytes(),
            attempt.password,
            phc.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize_fixed().into()
    }
}

/// A connection waiting for a check; leaving the queue in any way counts it out.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc)
        .map(|hash| Argon2::default().verify_password(password, &hash).is_ok())
        .unwrap_or(false)
}

/// An argon2id hash with the default parameters, made once, that unknown
/// usernames are checked against.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"tidewell-unknown-user").unwrap_or_default())
}

fn fill_random(key: &mut Tag) {
    use argon2::password_hash::rand_core::RngCore;
    OsRng.fill_bytes(key);
}

/// Verified credentials until they expire, oldest first.
#[derive(Default)]
struct Cache {
    expiry: HashMap<Tag, Instant>,
    order: VecDeque<(Tag, Instant)>,
}

impl Cache {
    fn holds(&mut self, tag: &Tag, now: Instant) -> bool {
        self.expiry.get(tag).is_some_and(|&until| until > now)
    }

    fn insert(&mut self, tag: Tag, until: Instant) {
        let now = Instant::now();
        while let Some(&(old, old_until)) = self.order.front() {
            if old_until > now && self.order.len() < CACHE_ENTRIES {
                break;
            }
            self.order.pop_front();
            if self.expiry.get(&old) == Some(&old_until) {
                self.expiry.remove(&old);
            }
        }
        self.expiry.insert(tag, until);
        self.order.push_back((tag, until));
    }
}

/// Recent failures of one client id or address.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    /// Attempts before this are refused without a check.
    until: Instant,
    last: Instant,
}

#[derive(Default)]
struct Failures {
    clients: HashMap<String, Record>,
    addrs: HashMap<IpAddr, Record>,
}

impl Failures {
    fn slowed(&mut self, attempt: &Attempt<'_>, now: Instant) -> bool {
        let active = |r: Option<&Record>| r.is_some_and(|r| r.until > now);
        active(self.clients.get(attempt.client_id)) || active(self.addrs.get(&attempt.addr))
    }

    fn record(&mut self, attempt: &Attempt<'_>, now: Instant) {
        if let Some(r) = note(&mut self.clients, attempt.client_id.to_string(), now) {
            r.until = now + delay(r.failures);
        }
        if let Some(r) = note(&mut self.addrs, attempt.addr, now) {
            if r.failures > ADDRESS_FREE_FAILURES {
                r.until = now + delay(r.failures - ADDRESS_FREE_FAILURES);
            }
        }
    }

    fn forgive(&mut self, client_id: &str) {
        self.clients.remove(client_id);
    }
}

/// Counts a failure of `who`; `None` when the table is full of fresh records.
fn note<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Record>,
    who: K,
    now: Instant,
) -> Option<&mut Record> {
    if table.len() >= TRACKED && !table.contains_key(&who) {
        table.retain(|_, r| now.duration_since(r.last) < FORGET);
        if table.len() >= TRACKED {
            return None;
        }
    }
    let r = table.entry(who).or_insert(Record {
        failures: 0,
        until: now,
        last: now,
    });
    if now.duration_since(r.last) >= FORGET {
        r.failures = 0;
    }
    r.failures += 1;
    r.last = now;
    Some(r)
}

/// 1 s after the first failure, doubling, at most 60 s.
fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cache_s: u64) -> MqttConfig {
        MqttConfig {
            credential_cache_s: cache_s,
            max_auth_checks: 1,
            ..MqttConfig::default()
        }
    }

    fn user(name: &str, password: &str) -> UserConfig {
        UserConfig {
            username: name.into(),
            password_hash: hash_password(password.as_bytes()).unwrap(),
            publish_acl: vec![],
            subscribe_acl: vec![],
        }
    }

    fn attempt<'a>(addr: [u8; 4], client_id: &'a str, name: &'a str, pw: &'a str) -> Attempt<'a> {
        Attempt {
            addr: IpAddr::from(addr),
            client_id,
            username: name,
            password: pw.as_bytes(),
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn a_verified_credential_is_cached_and_a_changed_hash_invalidates_it() {
        let gate = Gate::new(&config(600), Arc::default());
        let mut users = vec![user("ann", "pw1")];
        let a = attempt([10, 0, 0, 1], "c1", "ann", "pw1");
        gate.check(&users, &a, soon()).await.unwrap();
        gate.check(&users, &a, soon()).await.unwrap();
        assert_eq!(gate.stats.gate.checks.load(Ordering::Relaxed), 1);
        assert_eq!(gate.stats.gate.cache_hits.load(Ordering::Relaxed), 1);
        // The password changes: the old one must be checked, and fail.
        users[0] = user("ann", "pw2");
        let old = gate.check(&users, &a, soon()).await;
        assert_eq!(old.unwrap_err(), AuthFailure::BadCredentials);
        assert_eq!(gate.stats.gate.checks.load(Ordering::Relaxed), 2);
        // A removed user is not let in by its cached credential.
        let a2 = attempt([10, 0, 0, 1], "c2", "ann", "pw2");
        gate.check(&users, &a2, soon()).await.unwrap();
        let gone = gate.check(&[], &a2, soon()).await;
        assert_eq!(gone.unwrap_err(), AuthFailure::BadCredentials);
    }

    #[tokio::test]
    async fn without_a_cache_every_connect_is_checked() {
        let gate = Gate::new(&config(0), Arc::default());
        let users = vec![user("ann", "pw")];
        let a = attempt([10, 0, 0, 1], "c1", "ann", "pw");
        gate.check(&users, &a, soon()).await.unwrap();
        gate.check(&users, &a, soon()).await.unwrap();
        assert_eq!(gate.stats.gate.checks.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failure_slows_that_client_id_and_many_slow_the_address() {
        let gate = Gate::new(&config(600), Arc::default());
        let users = vec![user("ann", "pw")];
        let wrong = attempt([10, 0, 0, 9], "x", "ann", "guess");
        let failed = gate.check(&users, &wrong, soon()).await;
        assert_eq!(failed.unwrap_err(), AuthFailure::BadCredentials);
        let again = gate.check(&users, &wrong, soon()).await;
        assert_eq!(again.unwrap_err(), AuthFailure::Throttled);
        // Other client ids from that address still get checked, until it has
        // used up its free failures.
        for i in 0..ADDRESS_FREE_FAILURES {
            let id = format!("y{i}");
            let r = gate
                .check(&users, &attempt([10, 0, 0, 9], &id, "ann", "no"), soon())
                .await;
            assert_eq!(r.unwrap_err(), AuthFailure::BadCredentials, "attempt {i}");
        }
        let blocked = gate
            .check(&users, &attempt([10, 0, 0, 9], "z", "ann", "pw"), soon())
            .await;
        assert_eq!(blocked.unwrap_err(), AuthFailure::Throttled);
        // Another address is not affected.
        gate.check(&users, &attempt([10, 0, 0, 2], "ok", "ann", "pw"), soon())
            .await
            .unwrap();
        assert_eq!(
            gate.stats.gate.checks.load(Ordering::Relaxed),
            u64::from(ADDRESS_FREE_FAILURES) + 2
        );
    }

    #[test]
    fn delays_double_from_one_second_to_a_minute() {
        assert_eq!(delay(1), Duration::from_secs(1));
        assert_eq!(delay(2), Duration::from_secs(2));
        assert_eq!(delay(4), Duration::from_secs(8));
        assert_eq!(delay(7), Duration::from_secs(60));
        assert_eq!(delay(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let config = MqttConfig {
            max_auth_waiting: 0,
            ..config(600)
        };
        let gate = Gate::new(&config, Arc::default());
        let users = vec![user("ann", "pw")];
        let r = gate
            .check(&users, &attempt([10, 0, 0, 1], "c", "ann", "pw"), soon())
            .await;
        assert_eq!(r.unwrap_err(), AuthFailure::Busy);
        assert_eq!(gate.stats.gate.busy.load(Ordering::Relaxed), 1);
        assert_eq!(gate.stats.gate.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_waiting_past_its_deadline_is_refused_unchecked() {
        let gate = Gate::new(&config(600), Arc::default());
        let users = vec![user("ann", "pw")];
        let _held = gate.checks.acquire().await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        let r = gate
            .check(&users, &attempt([10, 0, 0, 1], "c", "ann", "pw"), deadline)
            .await;
        assert_eq!(r.unwrap_err(), AuthFailure::Busy);
        assert_eq!(gate.stats.gate.checks.load(Ordering::Relaxed), 0);
        assert_eq!(gate.stats.gate.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn devices_sharing_a_credential_that_arrive_together_run_one_check() {
        let gate = Gate::new(&config(600), Arc::default());
        let users = vec![user("fleet", "pw")];
        let ids: Vec<String> = (0..8).map(|i| format!("dev{i}")).collect();
        let attempts: Vec<_> = ids
            .iter()
            .map(|id| attempt([10, 0, 0, 1], id, "fleet", "pw"))
            .collect();
        let checks = attempts.iter().map(|a| gate.check(&users, a, soon()));
        for r in futures_join_all(checks).await {
            r.unwrap();
        }
        // One permit (max_auth_checks = 1): the first checks, the rest find it cached.
        assert_eq!(gate.stats.gate.checks.load(Ordering::Relaxed), 1);
        assert_eq!(gate.stats.gate.cache_hits.load(Ordering::Relaxed), 7);
    }

    /// Polls every future to completion concurrently on this task.
    async fn futures_join_all<F: std::future::Future>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
                if slot.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *slot = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter()
            .map(|v| v.expect("polled to completion"))
            .collect()
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let mut cache = Cache::default();
        let until = Instant::now() + Duration::from_secs(600);
        for i in 0..(CACHE_ENTRIES + 10) {
            let mut tag = [0u8; 32];
            tag[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(tag, until);
        }
        assert!(cache.expiry.len() <= CACHE_ENTRIES);
        assert!(!cache.holds(&[0u8; 32], Instant::now()));
    }
}
