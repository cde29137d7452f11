//! Failed sign-ins per client address: after `max_failures` within `window`, further attempts
//! from that address are refused with 429 until the oldest failure leaves the window. A
//! successful sign-in clears the address's record.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter { max_failures: max_failures.max(1), window, failures: Mutex::new(HashMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// None if `ip` may try now; otherwise how long until it may.
    pub fn check(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut table = self.table();
        let entry = table.get_mut(&ip)?;
        while entry.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            entry.pop_front();
        }
        if entry.len() < self.max_failures as usize {
            return None;
        }
        let oldest = *entry.front()?;
        Some(self.window.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1)))
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut table = self.table();
        // Bounded memory under a flood of addresses: forget the quiet ones first.
        if table.len() > 100_000 {
            let now = Instant::now();
            table.retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        table.entry(ip).or_default().push_back(Instant::now());
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.table().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_after_too_many_failures_and_others_are_not() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(a), None);
            limiter.failed(a);
        }
        let wait = limiter.check(a).expect("held back");
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        assert_eq!(limiter.check(b), None, "another address is not affected");
        limiter.succeeded(a);
        assert_eq!(limiter.check(a), None, "a success clears the record");
    }

    #[test]
    fn failures_leave_the_window() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(1));
        let a: IpAddr = "::1".parse().unwrap();
        limiter.failed(a);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(limiter.check(a), None);
    }
}
