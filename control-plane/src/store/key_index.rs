//! Every key's revisions in memory, as etcd keeps its key index (`treeIndex`): what the
//! embedded store counts the keys after a list's page with, instead of reading every later
//! version (values included) from the file for each page. Paging through 20,000 pods 500 at a
//! time read the versions after each page again: 15 s, and quadratic in the number of pods.

use std::{collections::BTreeMap, ops::Bound};

use super::{Revision, WatchEvent};

/// For each key, its versions in revision order: the revision and whether it wrote a value
/// (`false`: a tombstone).
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Box<str>, Vec<(Revision, bool)>>,
}

impl KeyIndex {
    /// Records a version of `key` written at `revision` (after every version recorded before).
    pub fn record(&mut self, key: &str, revision: Revision, live: bool) {
        match self.keys.get_mut(key) {
            Some(versions) => versions.push((revision, live)),
            None => {
                self.keys.insert(key.into(), vec![(revision, live)]);
            }
        }
    }

    /// Records the versions a committed transaction wrote.
    pub fn record_events(&mut self, events: &[WatchEvent]) {
        for event in events {
            match event {
                WatchEvent::Put { kv, .. } => self.record(&kv.key, kv.mod_revision, true),
                WatchEvent::Delete { prev, revision } => self.record(&prev.key, *revision, false),
            }
        }
    }

    /// Forgets the history up to `revision` as the store's compaction does: of each key's
    /// versions up to it only the last stays, unless that is a tombstone.
    pub fn compact(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            let upto = versions.partition_point(|(r, _)| *r <= revision);
            if upto > 0 {
                let keep_last = versions[upto - 1].1;
                let drop = if keep_last { upto - 1 } else { upto };
                versions.drain(..drop);
            }
            !versions.is_empty()
        });
    }

    /// How many keys under `prefix` and after `after` existed at revision `at`.
    pub fn count_live(&self, prefix: &str, after: &str, at: Revision) -> u64 {
        let start = if after >= prefix {
            Bound::Excluded(after)
        } else {
            Bound::Included(prefix)
        };
        let live = self
            .keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, versions)| {
                let upto = versions.partition_point(|(r, _)| *r <= at);
                upto > 0 && versions[upto - 1].1
            })
            .count();
        live as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_as_they_were_at_a_revision() {
        let mut index = KeyIndex::default();
        index.record("/p/a", 1, true);
        index.record("/p/b", 2, true);
        index.record("/p/c", 3, true);
        index.record("/q/a", 4, true);
        index.record("/p/b", 5, false);
        index.record("/p/d", 6, true);
        index.record("/p/b", 7, true);
        assert_eq!(index.count_live("/p/", "", 7), 4);
        assert_eq!(index.count_live("/p/", "/p/a", 7), 3);
        // At 5 /p/b was deleted and /p/d not yet written.
        assert_eq!(index.count_live("/p/", "/p/a", 5), 1);
        assert_eq!(index.count_live("/p/", "/p/a", 4), 2);
        assert_eq!(index.count_live("/p/", "", 0), 0);
        assert_eq!(index.count_live("/p/", "/p/d", 7), 0);
        assert_eq!(index.count_live("/", "", 7), 5);
    }

    #[test]
    fn compaction_keeps_what_reads_from_its_revision_on_see() {
        let mut index = KeyIndex::default();
        index.record("/p/a", 1, true);
        index.record("/p/a", 2, true);
        index.record("/p/b", 3, true);
        index.record("/p/b", 4, false);
        index.record("/p/a", 5, true);
        index.compact(4);
        // /p/a keeps its version 2 (current at 4) and 5; /p/b, deleted at 4, is gone.
        assert_eq!(index.keys["/p/a"], [(2, true), (5, true)]);
        assert!(!index.keys.contains_key("/p/b"));
        assert_eq!(index.count_live("/p/", "", 4), 1);
        assert_eq!(index.count_live("/p/", "", 5), 1);
    }
}
