//! The open image's recent reduced runs, for encoders and VLMs alike: moving a slider back to a
//! ratio it visited answers from here instead of running again.

use std::collections::VecDeque;
use std::sync::Arc;

use super::RunSpec;
use crate::reduce::Budget;

/// Runs by key, at most `capacity`; the least recently used goes first.
pub(super) struct Recent<T> {
    capacity: usize,
    /// Oldest first.
    entries: VecDeque<(String, Arc<T>)>,
}

impl<T> Recent<T> {
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: VecDeque::new() }
    }

    /// The run kept under `key`, now the most recently used.
    pub(super) fn get(&mut self, key: &str) -> Option<Arc<T>> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at).expect("found above");
        let run = entry.1.clone();
        self.entries.push_back(entry);
        Some(run)
    }

    /// Keeps `run` under `key`, dropping the least recently used run when full.
    pub(super) fn insert(&mut self, key: String, run: Arc<T>) {
        self.entries.retain(|(k, _)| *k != key);
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((key, run));
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The cache key of `spec` at `keep` tokens: a budget asked as a fraction and as the token count
/// it resolves to is one run.
pub(super) fn key(spec: &RunSpec, keep: usize) -> String {
    serde_json::to_string(&RunSpec { budget: Budget::Keep(keep), ..spec.clone() }).expect("specs serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_run_goes_first() {
        let mut recent = Recent::new(2);
        recent.insert("a".into(), Arc::new(1));
        recent.insert("b".into(), Arc::new(2));
        assert_eq!(recent.get("a").as_deref(), Some(&1)); // "b" is now the oldest
        recent.insert("c".into(), Arc::new(3));
        assert_eq!(recent.len(), 2);
        assert_eq!(recent.get("b"), None);
        assert_eq!((recent.get("a").as_deref(), recent.get("c").as_deref()), (Some(&1), Some(&3)));
        recent.insert("c".into(), Arc::new(4)); // the same key again replaces, not duplicates
        assert_eq!((recent.len(), recent.get("c").as_deref()), (2, Some(&4)));
        recent.clear();
        assert_eq!(recent.len(), 0);
    }

    #[test]
    fn a_fraction_and_its_token_count_are_one_key() {
        let spec = RunSpec { budget: Budget::RemoveFraction(0.5), ..RunSpec::default() };
        let same = RunSpec { budget: Budget::Keep(8), ..RunSpec::default() };
        assert_eq!(key(&spec, 8), key(&same, 8));
        assert_ne!(key(&spec, 8), key(&spec, 9));
        assert_ne!(key(&spec, 8), key(&RunSpec { max_new_tokens: 3, ..spec.clone() }, 8));
    }
}
