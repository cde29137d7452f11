//! User JWTs this process has already verified, so that a client sending the same token on
//! every request (all of them do) pays for the signature check and the JSON of the claims
//! once per token instead of once per request (about 7 % of the server's CPU per request).
//!
//! Only what a verification proves is kept: the token's signature is good, it is a user's
//! token, and it names this user and session until `exp`. Expiry is checked again at every
//! use, to the second as the full verification does (no leeway). Whether the session is still
//! active, the user not banned and their role current is not kept here: the identity cache
//! and its change notifications decide that, as for a freshly verified token.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

const MAX_TOKENS: usize = 10_000;

/// What a verified user token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedUser {
    pub user_id: Uuid,
    pub session_id: Option<Uuid>,
    /// The token's `exp` (seconds since the epoch).
    pub expires_at: i64,
}

#[derive(Default)]
pub struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, VerifiedUser>>,
}

impl VerifiedTokens {
    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, VerifiedUser>> {
        self.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user of `token` if it was verified before and has not expired at `now`.
    pub fn get(&self, token: &str, now: i64) -> Option<VerifiedUser> {
        let mut tokens = self.tokens();
        match tokens.get(token) {
            Some(v) if now <= v.expires_at => Some(*v),
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Remembers a token that passed verification. When full, expired tokens are dropped
    /// first, and everything if that is not enough (the next requests verify again).
    pub fn put(&self, token: &str, user: VerifiedUser, now: i64) {
        let mut tokens = self.tokens();
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, v| now <= v.expires_at);
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), user);
    }

    pub fn len(&self) -> usize {
        self.tokens().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(expires_at: i64) -> VerifiedUser {
        VerifiedUser { user_id: Uuid::new_v4(), session_id: Some(Uuid::new_v4()), expires_at }
    }

    #[test]
    fn a_token_is_good_until_its_expiry_to_the_second() {
        let tokens = VerifiedTokens::default();
        let u = user(1_000);
        tokens.put("t", u, 900);
        assert_eq!(tokens.get("t", 999), Some(u));
        assert_eq!(tokens.get("t", 1_000), Some(u), "exp itself is still valid, as in the full check");
        assert_eq!(tokens.get("t", 1_001), None);
        assert!(tokens.is_empty(), "an expired token is dropped when it is seen");
        assert_eq!(tokens.get("other", 0), None);
    }

    #[test]
    fn a_full_memo_drops_the_expired_then_everything() {
        let tokens = VerifiedTokens::default();
        for n in 0..MAX_TOKENS {
            tokens.put(&format!("t{n}"), user(if n % 2 == 0 { 10 } else { 1_000 }), 5);
        }
        assert_eq!(tokens.len(), MAX_TOKENS);
        tokens.put("new", user(1_000), 100);
        assert_eq!(tokens.len(), MAX_TOKENS / 2 + 1, "the expired half went");
        for n in 0..MAX_TOKENS {
            tokens.put(&format!("u{n}"), user(1_000), 100);
        }
        assert!(tokens.len() <= MAX_TOKENS, "never above the bound: {}", tokens.len());
    }
}
