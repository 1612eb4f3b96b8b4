//! Layer inputs of the representatives network, kept between tasks (DESIGN.md section 5).
//!
//! Every candidate of layer l is scored in the network whose other layers use the representatives
//! (the task's `context`), so all of them see the same input at layer l. The worker computes the
//! inputs of every layer once per (model, context, shard, image set) and keeps them here; the next
//! task on that shard, for any layer, starts each candidate's forward pass at its layer. The
//! master sends a worker the shards it already holds, which is what makes this pay.
//!
//! Entries are evicted least-recently-used first once their total size exceeds the byte budget
//! (the newest entry is always kept, even when it alone exceeds the budget).

use std::collections::VecDeque;
use std::sync::Arc;

use ccsrp_proto::v1::Mask;

/// Which images went through which network: the identity of one set of layer inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixKey {
    /// sha256 of the model artifact.
    pub model: String,
    /// The per-layer masks the network was pruned by (the representatives).
    pub context: Vec<Mask>,
    /// Eval shard index.
    pub shard: u32,
    /// `None`: the clean eval shard; `Some(sha256)`: that adversarial shard artifact.
    pub adversarial: Option<String>,
}

/// A bounded least-recently-used store of layer inputs.
pub struct PrefixCache<V> {
    budget_bytes: usize,
    used_bytes: usize,
    /// Oldest use first.
    entries: VecDeque<(PrefixKey, Arc<V>, usize)>,
}

impl<V> PrefixCache<V> {
    /// An empty cache holding at most about `budget_bytes`.
    pub fn new(budget_bytes: usize) -> PrefixCache<V> {
        PrefixCache {
            budget_bytes,
            used_bytes: 0,
            entries: VecDeque::new(),
        }
    }

    /// The entry for `key`, marked as just used.
    pub fn get(&mut self, key: &PrefixKey) -> Option<Arc<V>> {
        let at = self.entries.iter().position(|(k, _, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let value = Arc::clone(&entry.1);
        self.entries.push_back(entry);
        Some(value)
    }

    /// Stores `value` (of about `bytes`) under `key`, evicting the least recently used entries
    /// beyond the budget.
    pub fn insert(&mut self, key: PrefixKey, value: Arc<V>, bytes: usize) {
        if let Some(at) = self.entries.iter().position(|(k, _, _)| *k == key) {
            if let Some((_, _, old)) = self.entries.remove(at) {
                self.used_bytes -= old;
            }
        }
        self.entries.push_back((key, value, bytes));
        self.used_bytes += bytes;
        while self.used_bytes > self.budget_bytes && self.entries.len() > 1 {
            if let Some((_, _, evicted)) = self.entries.pop_front() {
                self.used_bytes -= evicted;
            }
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(shard: u32) -> PrefixKey {
        PrefixKey {
            model: "m".into(),
            context: vec![Mask::all(4)],
            shard,
            adversarial: None,
        }
    }

    #[test]
    fn least_recently_used_entry_is_evicted_first() {
        let mut cache = PrefixCache::new(250);
        cache.insert(key(0), Arc::new(0), 100);
        cache.insert(key(1), Arc::new(1), 100);
        assert_eq!(cache.get(&key(0)).as_deref(), Some(&0));
        cache.insert(key(2), Arc::new(2), 100);
        assert_eq!(cache.get(&key(1)), None);
        assert_eq!(cache.get(&key(0)).as_deref(), Some(&0));
        assert_eq!(cache.get(&key(2)).as_deref(), Some(&2));
    }

    #[test]
    fn different_context_is_a_different_entry() {
        let mut cache = PrefixCache::new(1000);
        cache.insert(key(0), Arc::new(0), 10);
        let mut other = key(0);
        other.context = vec![Mask::from_keep(&[true, false, true, true])];
        assert_eq!(cache.get(&other), None);
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_still_kept_alone() {
        let mut cache = PrefixCache::new(10);
        cache.insert(key(0), Arc::new(0), 5);
        cache.insert(key(1), Arc::new(1), 50);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&1));
    }
}
