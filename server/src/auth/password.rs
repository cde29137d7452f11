//! Password hashes: new ones are Argon2id (PHC strings); bcrypt hashes written by GoTrue
//! (`$2a$…`) verify too, so users created by a real GoTrue sign in here.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};

pub fn hash(password: &str) -> String {
    Argon2::default().hash_password(password.as_bytes()).expect("argon2 with default parameters").to_string()
}

/// Whether `password` matches `stored`; an unknown or damaged hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$") {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Compares the work of a verification when no user matched, so timing does not tell which
/// e-mail addresses exist.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("a password nobody has"));
    let _ = verify(password, dummy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_hashes_verify_and_differ_per_hash() {
        let a = hash("correct horse");
        let b = hash("correct horse");
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify("correct horse", &a));
        assert!(!verify("wrong horse", &a));
    }

    #[test]
    fn gotrue_bcrypt_hashes_verify() {
        let stored = bcrypt::hash("from gotrue", 4).unwrap().replacen("$2b$", "$2a$", 1);
        assert!(verify("from gotrue", &stored));
        assert!(!verify("not it", &stored));
        assert!(!verify("anything", "garbage"));
        assert!(!verify("anything", ""));
    }
}
