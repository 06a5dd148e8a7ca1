//! The answers of the API server's reviews, kept for a while as the kubelet's webhook
//! authenticator and authorizer keep them: every request to the agent needs one, and asking the
//! API server each time would make every log line and exec a round trip. Bounded (least recently
//! used out first), so that a flood of distinct tokens cannot grow the agent's memory; each
//! answer expires after its own time to live.

use std::{hash::Hash, num::NonZeroUsize, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// A bounded map whose entries expire.
#[derive(Debug)]
pub struct ExpiringCache<K: Hash + Eq, V> {
    entries: Mutex<lru::LruCache<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> ExpiringCache<K, V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// The value of `key`, if it is there and has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// Keeps `value` for `ttl`.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        self.insert_at(key, value, ttl, Instant::now());
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((value, expires)) if now < *expires => Some(value.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    fn insert_at(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> ExpiringCache<&'static str, bool> {
        ExpiringCache::new(NonZeroUsize::new(capacity).unwrap())
    }

    #[test]
    fn an_entry_lives_for_its_own_time_to_live() {
        let c = cache(8);
        let start = Instant::now();
        c.insert_at("allowed", true, Duration::from_secs(120), start);
        c.insert_at("denied", false, Duration::from_secs(30), start);
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(c.get_at(&"allowed", at(29)), Some(true));
        assert_eq!(c.get_at(&"denied", at(29)), Some(false));
        assert_eq!(c.get_at(&"denied", at(30)), None);
        assert_eq!(c.get_at(&"allowed", at(119)), Some(true));
        assert_eq!(c.get_at(&"allowed", at(120)), None);
        // Expired entries are gone, not only hidden.
        assert_eq!(c.entries.lock().unwrap().len(), 0);
        assert_eq!(c.get_at(&"never", start), None);
    }

    #[test]
    fn a_full_cache_forgets_the_least_recently_used() {
        let c = cache(2);
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        c.insert_at("a", true, ttl, now);
        c.insert_at("b", true, ttl, now);
        assert_eq!(c.get_at(&"a", now), Some(true));
        c.insert_at("c", true, ttl, now);
        assert_eq!(c.get_at(&"b", now), None);
        assert_eq!(c.get_at(&"a", now), Some(true));
        assert_eq!(c.get_at(&"c", now), Some(true));
    }

    #[test]
    fn a_new_answer_replaces_the_old_one() {
        let c = cache(2);
        let now = Instant::now();
        c.insert_at("a", false, Duration::from_secs(30), now);
        c.insert_at("a", true, Duration::from_secs(300), now);
        assert_eq!(c.get_at(&"a", now + Duration::from_secs(100)), Some(true));
    }
}
