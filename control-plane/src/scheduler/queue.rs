//! Pods waiting for a node: an active queue tried in order, and the unschedulable ones parked
//! until the cluster changes.

use std::collections::{HashMap, HashSet, VecDeque};

use super::cache::{PodInfo, PodKey};

/// A pending pod and what was last said about it.
#[derive(Debug)]
pub struct Pending {
    pub info: PodInfo,
    /// The FailedScheduling message last written, to write only changes.
    pub last_message: Option<String>,
}

/// The scheduling queue.
#[derive(Debug, Default)]
pub struct Queue {
    pub pending: HashMap<PodKey, Pending>,
    active: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    unschedulable: HashSet<PodKey>,
}

impl Queue {
    /// Adds or updates a pending pod; a new pod, or one whose spec or labels changed, is tried
    /// again.
    pub fn upsert(&mut self, info: PodInfo) {
        let key = info.key.clone();
        let changed = match self.pending.get_mut(&key) {
            Some(old) => {
                let changed = old.info.uid != info.uid
                    || old.info.pod.spec != info.pod.spec
                    || old.info.labels != info.labels;
                old.info = info;
                changed
            }
            None => {
                self.pending.insert(
                    key.clone(),
                    Pending {
                        info,
                        last_message: None,
                    },
                );
                true
            }
        };
        if changed {
            self.activate(key);
        }
    }

    fn activate(&mut self, key: PodKey) {
        self.unschedulable.remove(&key);
        if self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.pending.remove(key);
        self.unschedulable.remove(key);
        // The active queue skips keys that are no longer pending.
        self.queued.remove(key);
    }

    /// The next pod to try.
    pub fn pop(&mut self) -> Option<PodKey> {
        while let Some(key) = self.active.pop_front() {
            if self.queued.remove(&key) && self.pending.contains_key(&key) {
                return Some(key);
            }
        }
        None
    }

    /// How many pods wait in the active queue and how many are parked.
    pub fn sizes(&self) -> (usize, usize) {
        (self.queued.len(), self.unschedulable.len())
    }

    pub fn has_active(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Parks a pod that fits nowhere until [`Queue::retry_unschedulable`].
    pub fn park(&mut self, key: PodKey) {
        if self.pending.contains_key(&key) {
            self.unschedulable.insert(key);
        }
    }

    /// Something changed that may make parked pods fit: try them all again.
    pub fn retry_unschedulable(&mut self) {
        let keys: Vec<PodKey> = self.unschedulable.drain().collect();
        for key in keys {
            self.activate(key);
        }
    }
}
