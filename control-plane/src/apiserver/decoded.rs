//! Objects decoded from watch events, shared by every watcher of them.
//!
//! Each change reaches every watcher of its resource (a thousand node agents each watch pods
//! with a `spec.nodeName` field selector); decoding the stored JSON once per watcher made each
//! pod write cost a thousand decodes. A watcher now filters the shared decoded object and copies
//! it only when it delivers it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde_json::Value;

use crate::store::{KeyValue, Revision};

/// Decoded objects kept for other watchers of the same change: enough to cover the events
/// every watcher has in its queue at once.
const CAPACITY: usize = 8192;

/// A bounded memo of decoded objects by the revision that wrote them (a revision writes one
/// key) and the version they are served in, oldest forgotten first.
#[derive(Debug, Default)]
pub struct Decoded {
    inner: Mutex<Memo>,
}

#[derive(Debug, Default)]
struct Memo {
    objects: HashMap<(Revision, &'static str), Arc<Value>>,
    order: VecDeque<(Revision, &'static str)>,
}

impl Decoded {
    /// The object `kv` holds as `version` serves it (one stored object may be served in several
    /// versions), decoded by `decode` unless a watcher of that version already did.
    pub fn get_or_decode<E>(
        &self,
        kv: &KeyValue,
        version: &'static str,
        decode: impl FnOnce(&KeyValue) -> Result<Value, E>,
    ) -> Result<Arc<Value>, E> {
        let id = (kv.mod_revision, version);
        if let Some(object) = self.lock().objects.get(&id) {
            return Ok(Arc::clone(object));
        }
        // Decoded outside the lock: two watchers may both decode, which is only wasted work.
        let object = Arc::new(decode(kv)?);
        let mut memo = self.lock();
        if memo.objects.insert(id, Arc::clone(&object)).is_none() {
            memo.order.push_back(id);
            while memo.order.len() > CAPACITY {
                if let Some(old) = memo.order.pop_front() {
                    memo.objects.remove(&old);
                }
            }
        }
        Ok(object)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        // A panic while holding it leaves a consistent map: nothing is half-inserted.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many objects are kept.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, revision: Revision, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: revision,
        }
    }

    #[test]
    fn one_decode_per_change_and_bounded() {
        let memo = Decoded::default();
        let decodes = std::cell::Cell::new(0);
        let decode = |kv: &KeyValue| {
            decodes.set(decodes.get() + 1);
            serde_json::from_slice::<Value>(&kv.value)
        };
        let a = memo
            .get_or_decode(&kv("/a", 2, r#"{"x":1}"#), "v1", decode)
            .unwrap();
        let b = memo
            .get_or_decode(&kv("/a", 2, r#"{"x":1}"#), "v1", decode)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = memo
            .get_or_decode(&kv("/a", 3, r#"{"x":2}"#), "v1", decode)
            .unwrap();
        assert_eq!(c["x"], 2);
        assert_eq!(decodes.get(), 2);
        for revision in 10..10 + CAPACITY as Revision + 5 {
            memo.get_or_decode(&kv("/b", revision, "{}"), "v1", decode)
                .unwrap();
        }
        assert_eq!(memo.len(), CAPACITY);
        // The oldest went first.
        memo.get_or_decode(&kv("/a", 2, r#"{"x":1}"#), "v1", decode)
            .unwrap();
        assert_eq!(decodes.get(), 2 + CAPACITY + 5 + 1);
    }

    #[test]
    fn decode_errors_are_not_kept() {
        let memo = Decoded::default();
        let bad = kv("/a", 2, "not json");
        assert!(
            memo.get_or_decode(&bad, "v1", |kv| serde_json::from_slice::<Value>(&kv.value))
                .is_err()
        );
        assert!(memo.is_empty());
    }
}
