//! Who a credential belongs to, remembered for a few seconds: every request otherwise asks
//! the database for the user, their role and their session (or the application token and
//! its creator) before doing anything else.
//!
//! A change is seen at once, not after the lifetime: triggers on the sessions, users, roles
//! and application tokens notify `sfp_identity` with the user's id, and every server process
//! listening forgets that user's entries. The process making a change also forgets them
//! itself before it answers, so its own next request never sees the old identity. If the
//! listener loses its connection, the cache is emptied and stays unused until it listens
//! again. Time alone ends nothing sooner than the lifetime: an application token reaching
//! its expiry is cut off at the expiry, a session's `not_after` up to the lifetime late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Caller;
use crate::notifications::{self, Heard};

/// The channel the identity triggers notify.
pub const CHANNEL: &str = "sfp_identity";
const MAX_ENTRIES: usize = 10_000;

/// What a cached identity was looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A user JWT: the user and the session it names.
    Session(Uuid, Option<Uuid>),
    /// An application token, by its hash.
    ApplicationToken(Vec<u8>),
}

struct Entry {
    caller: Caller,
    until: Instant,
}

pub struct IdentityCache {
    ttl: Duration,
    entries: Mutex<HashMap<Credential, Entry>>,
    /// Whether a listener hears the changes; without one nothing is cached.
    listening: AtomicBool,
}

impl IdentityCache {
    /// A cache whose entries live `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration) -> Self {
        IdentityCache { ttl, entries: Mutex::new(HashMap::new()), listening: AtomicBool::new(false) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Credential, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, credential: &Credential) -> Option<Caller> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let mut entries = self.entries();
        match entries.get(credential) {
            Some(e) if e.until > Instant::now() => Some(e.caller.clone()),
            Some(_) => {
                entries.remove(credential);
                None
            }
            None => None,
        }
    }

    /// Remembers `caller` for the lifetime, or until `expires_in` if that is sooner.
    pub fn put(&self, credential: Credential, caller: &Caller, expires_in: Option<Duration>) {
        if self.ttl.is_zero() || !self.listening.load(Ordering::Acquire) {
            return;
        }
        let life = expires_in.map_or(self.ttl, |e| e.min(self.ttl));
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(credential, Entry { caller: caller.clone(), until: now + life });
    }

    /// Forgets every entry of a user (their sessions and their application tokens).
    pub fn forget_user(&self, user: Uuid) {
        self.entries().retain(|_, e| e.caller.user_id != user);
    }

    pub fn clear(&self) {
        self.entries().clear();
    }

    /// Listens for identity changes until `shutdown`; reconnects after a lost connection,
    /// caching nothing meanwhile.
    pub async fn listen(&self, pool: PgPool, shutdown: CancellationToken) {
        if self.ttl.is_zero() {
            return;
        }
        notifications::listen(
            pool,
            CHANNEL,
            "identity changes; not caching identities",
            shutdown,
            |heard| match heard {
                Heard::Listening => {
                    // Whatever changed while nobody listened is unknown: start empty.
                    self.clear();
                    self.listening.store(true, Ordering::Release);
                }
                Heard::Notification(payload) => match Uuid::parse_str(payload) {
                    Ok(user) => self.forget_user(user),
                    Err(_) => self.clear(),
                },
                Heard::Deaf => {
                    self.listening.store(false, Ordering::Release);
                    self.clear();
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{CallerKind, Role};

    fn caller(user: Uuid) -> Caller {
        Caller {
            kind: CallerKind::User,
            user_id: user,
            email: None,
            role: Some(Role::Member),
            creator_role: None,
            token_id: None,
            session_id: None,
        }
    }

    #[test]
    fn entries_live_until_forgotten_or_expired_and_only_while_listening() {
        let cache = IdentityCache::new(Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let key_a = Credential::Session(a, None);
        cache.put(key_a.clone(), &caller(a), None);
        assert!(cache.get(&key_a).is_none(), "nothing is cached while no listener hears changes");
        cache.listening.store(true, Ordering::Release);
        cache.put(key_a.clone(), &caller(a), None);
        let key_b = Credential::ApplicationToken(vec![1]);
        cache.put(key_b.clone(), &caller(b), None);
        assert_eq!(cache.get(&key_a).map(|c| c.user_id), Some(a));
        cache.forget_user(a);
        assert!(cache.get(&key_a).is_none());
        assert!(cache.get(&key_b).is_some());
        cache.put(key_a.clone(), &caller(a), Some(Duration::ZERO));
        assert!(cache.get(&key_a).is_none(), "an entry never outlives its credential");
    }
}
