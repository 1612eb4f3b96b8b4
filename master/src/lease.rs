//! [`LeaseTable`]: which outstanding work item is waiting, which is leased to which worker until
//! when, and which are done, so that each item is computed until one result is accepted.
//!
//! - A lease is granted for the table's lease duration; a heartbeat extends it; when it passes its
//!   deadline the item goes back to the front of the queue (by creation order) and is re-issued
//!   with a higher attempt number.
//! - A result counts only from the worker holding the item's current lease, with that lease's
//!   attempt: anything else is [`Stale`] (late, duplicate or unknown), dropped by the caller.
//! - Items on an eval shard the worker served recently are preferred for it, so its prefix cache
//!   (DESIGN.md section 5) and its cached shard artifacts keep paying.
//!
//! Every operation costs O(log n) in the number of items (no scans per result); time is passed in,
//! so the table is deterministic and testable.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{WorkId, WorkItem, WorkKind};

/// A lease just granted.
#[derive(Debug, Clone)]
pub struct Grant {
    pub item: Arc<WorkItem>,
    /// 1 for the first lease of the item, +1 on each re-issue.
    pub attempt: u32,
    pub deadline: Instant,
}

/// Why a result does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("unknown task: no such task was issued")]
    Unknown,
    #[error("duplicate: the task was already completed")]
    Duplicate,
    #[error("late: attempt {got} of the task is not the current lease of this worker (current attempt {current}, {holder})")]
    Late {
        got: u32,
        current: u32,
        holder: String,
    },
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    item: Arc<WorkItem>,
    shard: Option<u32>,
    attempt: u32,
    holder: Option<Holder>,
}

#[derive(Debug)]
struct Holder {
    worker: Arc<str>,
    deadline: Instant,
}

/// The eval shard an item works on, if any: the unit of worker affinity.
pub fn shard_of(kind: &WorkKind) -> Option<u32> {
    match kind {
        WorkKind::EvaluateCandidates { shard, .. }
        | WorkKind::BuildAdversarialShard { shard, .. } => Some(*shard),
        _ => None,
    }
}

/// Outstanding items and their leases.
#[derive(Debug)]
pub struct LeaseTable {
    lease: Duration,
    next_seq: u64,
    entries: HashMap<WorkId, Entry>,
    /// Waiting items by creation order.
    ready: BTreeMap<u64, WorkId>,
    /// Waiting items per shard (creation order), for affinity.
    ready_by_shard: HashMap<u32, BTreeSet<u64>>,
    /// Lease deadlines, lazily invalidated: an entry counts only if the item still has that
    /// attempt leased with that deadline.
    deadlines: BinaryHeap<Reverse<(Instant, u64, WorkId, u32)>>,
    done: HashSet<WorkId>,
    leased: usize,
}

impl LeaseTable {
    /// An empty table granting leases of `lease`.
    pub fn new(lease: Duration) -> LeaseTable {
        LeaseTable {
            lease,
            next_seq: 0,
            entries: HashMap::new(),
            ready: BTreeMap::new(),
            ready_by_shard: HashMap::new(),
            deadlines: BinaryHeap::new(),
            done: HashSet::new(),
            leased: 0,
        }
    }

    /// Lease duration.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// Adds a new item, waiting. An item already known (outstanding or done) is ignored.
    pub fn add(&mut self, item: WorkItem) {
        if self.entries.contains_key(&item.id) || self.done.contains(&item.id) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let shard = shard_of(&item.kind);
        let id = item.id.clone();
        self.entries.insert(
            id.clone(),
            Entry {
                seq,
                item: Arc::new(item),
                shard,
                attempt: 0,
                holder: None,
            },
        );
        self.enqueue(seq, shard, id);
    }

    fn enqueue(&mut self, seq: u64, shard: Option<u32>, id: WorkId) {
        self.ready.insert(seq, id);
        if let Some(s) = shard {
            self.ready_by_shard.entry(s).or_default().insert(seq);
        }
    }

    fn dequeue(&mut self, seq: u64) -> Option<WorkId> {
        let id = self.ready.remove(&seq)?;
        if let Some(shard) = self.entries.get(&id).and_then(|e| e.shard) {
            if let Some(set) = self.ready_by_shard.get_mut(&shard) {
                set.remove(&seq);
                if set.is_empty() {
                    self.ready_by_shard.remove(&shard);
                }
            }
        }
        Some(id)
    }

    /// Grants up to `max` waiting items to `worker`: first those on the shards in `affinity` (in
    /// the order given), then the oldest.
    pub fn lease(
        &mut self,
        worker: &Arc<str>,
        max: usize,
        affinity: &[u32],
        now: Instant,
    ) -> Vec<Grant> {
        let mut picked = Vec::new();
        for shard in affinity {
            while picked.len() < max {
                let Some(seq) = self
                    .ready_by_shard
                    .get(shard)
                    .and_then(|s| s.first().copied())
                else {
                    break;
                };
                picked.extend(self.dequeue(seq));
            }
        }
        while picked.len() < max {
            let Some(seq) = self.ready.keys().next().copied() else {
                break;
            };
            picked.extend(self.dequeue(seq));
        }
        let deadline = now + self.lease;
        let mut grants = Vec::with_capacity(picked.len());
        for id in picked {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            entry.attempt += 1;
            entry.holder = Some(Holder {
                worker: worker.clone(),
                deadline,
            });
            self.leased += 1;
            self.deadlines
                .push(Reverse((deadline, entry.seq, id, entry.attempt)));
            grants.push(Grant {
                item: entry.item.clone(),
                attempt: entry.attempt,
                deadline,
            });
        }
        grants
    }

    /// Extends `worker`'s lease of `id` to `now + lease`; false when it no longer holds it.
    pub fn extend(&mut self, worker: &str, id: &WorkId, now: Instant) -> bool {
        let lease = self.lease;
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        match &mut entry.holder {
            Some(h) if &*h.worker == worker => {
                h.deadline = now + lease;
                self.deadlines
                    .push(Reverse((h.deadline, entry.seq, id.clone(), entry.attempt)));
                true
            }
            _ => false,
        }
    }

    /// Returns every lease past its deadline to the queue; the items and their former holders.
    pub fn expire(&mut self, now: Instant) -> Vec<(WorkId, Arc<str>)> {
        let mut expired = Vec::new();
        while let Some(Reverse((deadline, _, _, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, seq, id, attempt))) = self.deadlines.pop() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let current = entry.attempt == attempt
                && entry
                    .holder
                    .as_ref()
                    .is_some_and(|h| h.deadline == deadline);
            if !current {
                continue;
            }
            if let Some(holder) = entry.holder.take() {
                let shard = entry.shard;
                self.leased -= 1;
                self.enqueue(seq, shard, id.clone());
                expired.push((id, holder.worker));
            }
        }
        expired
    }

    /// Returns `id`'s lease to the queue now (its holder reported that it failed); false when
    /// nobody held it.
    pub fn release(&mut self, id: &WorkId) -> bool {
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        if entry.holder.take().is_none() {
            return false;
        }
        let (seq, shard) = (entry.seq, entry.shard);
        self.leased -= 1;
        self.enqueue(seq, shard, id.clone());
        true
    }

    /// Whether a result for `id`, attempt `attempt`, from `worker` counts.
    pub fn check_result(&self, worker: &str, id: &WorkId, attempt: u32) -> Result<(), Stale> {
        let Some(entry) = self.entries.get(id) else {
            return Err(if self.done.contains(id) {
                Stale::Duplicate
            } else {
                Stale::Unknown
            });
        };
        match &entry.holder {
            Some(h) if &*h.worker == worker && entry.attempt == attempt => Ok(()),
            holder => Err(Stale::Late {
                got: attempt,
                current: entry.attempt,
                holder: match holder {
                    Some(h) => format!("leased to {}", h.worker),
                    None => "waiting to be re-issued".into(),
                },
            }),
        }
    }

    /// Marks `id` done (its result was accepted): it leaves the table for good.
    pub fn complete(&mut self, id: &WorkId) {
        if let Some(entry) = self.entries.remove(id) {
            if entry.holder.is_some() {
                self.leased -= 1;
            } else {
                self.ready.remove(&entry.seq);
                if let Some(s) = entry.shard {
                    if let Some(set) = self.ready_by_shard.get_mut(&s) {
                        set.remove(&entry.seq);
                    }
                }
            }
        }
        self.done.insert(id.clone());
    }

    /// Items waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.ready.len()
    }

    /// Items leased now.
    pub fn leased(&self) -> usize {
        self.leased
    }

    /// Items completed since the table was created.
    pub fn completed(&self) -> usize {
        self.done.len()
    }

    /// The earliest lease deadline (possibly of an already extended lease), to schedule expiry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, ..))| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TestAttackParams;
    use crate::ModelRef;

    fn item(id: &str, shard: Option<u32>) -> WorkItem {
        let kind = match shard {
            Some(shard) => WorkKind::EvaluateCandidates {
                iteration: 1,
                generation: 1,
                layer: 0,
                shard,
                model: ModelRef("m".into()),
                adversarial: crate::ArtifactRef("a".into()),
                context: vec![],
                candidates: vec![],
            },
            None => WorkKind::EvaluateTest {
                iteration: 0,
                model: ModelRef("m".into()),
                attack: TestAttackParams::default(),
            },
        };
        WorkItem {
            id: WorkId(id.into()),
            kind,
        }
    }

    fn w(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn expired_lease_is_reissued_to_another_worker_with_a_new_attempt() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(LEASE);
        t.add(item("a", None));
        let g = t.lease(&w("w1"), 4, &[], t0);
        assert_eq!((g.len(), g[0].attempt), (1, 1));
        assert!(t.lease(&w("w2"), 4, &[], t0).is_empty());
        assert!(t.expire(t0 + LEASE / 2).is_empty());
        let expired = t.expire(t0 + LEASE);
        assert_eq!(expired, vec![(WorkId("a".into()), w("w1"))]);
        let g = t.lease(&w("w2"), 4, &[], t0 + LEASE);
        assert_eq!((g.len(), g[0].attempt), (1, 2));
        assert!(matches!(
            t.check_result("w1", &WorkId("a".into()), 1),
            Err(Stale::Late { .. })
        ));
        assert_eq!(t.check_result("w2", &WorkId("a".into()), 2), Ok(()));
    }

    #[test]
    fn heartbeat_extends_a_lease_past_its_first_deadline() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(LEASE);
        t.add(item("a", None));
        t.lease(&w("w1"), 1, &[], t0);
        assert!(t.extend("w1", &WorkId("a".into()), t0 + LEASE / 2));
        assert!(!t.extend("w2", &WorkId("a".into()), t0 + LEASE / 2));
        assert!(t.expire(t0 + LEASE).is_empty());
        assert_eq!(t.leased(), 1);
        assert_eq!(t.expire(t0 + LEASE * 3 / 2).len(), 1);
        assert_eq!((t.leased(), t.waiting()), (0, 1));
    }

    #[test]
    fn completed_task_reports_duplicates_and_unknown_ids_are_unknown() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(LEASE);
        t.add(item("a", None));
        t.lease(&w("w1"), 1, &[], t0);
        t.complete(&WorkId("a".into()));
        assert_eq!(
            t.check_result("w1", &WorkId("a".into()), 1),
            Err(Stale::Duplicate)
        );
        assert_eq!(
            t.check_result("w1", &WorkId("zzz".into()), 1),
            Err(Stale::Unknown)
        );
        assert_eq!((t.leased(), t.waiting(), t.completed()), (0, 0, 1));
        t.add(item("a", None));
        assert_eq!(t.waiting(), 0, "a completed item is never queued again");
    }

    #[test]
    fn result_from_a_worker_that_never_held_the_lease_is_late() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(LEASE);
        t.add(item("a", None));
        assert!(matches!(
            t.check_result("w1", &WorkId("a".into()), 0),
            Err(Stale::Late { .. })
        ));
        t.lease(&w("w1"), 1, &[], t0);
        assert!(matches!(
            t.check_result("w2", &WorkId("a".into()), 1),
            Err(Stale::Late { .. })
        ));
    }

    #[test]
    fn worker_gets_its_recent_shards_first_then_the_oldest_items() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(LEASE);
        for (id, shard) in [("s0a", 0), ("s1a", 1), ("s2a", 2), ("s1b", 1)] {
            t.add(item(id, Some(shard)));
        }
        let ids = |g: Vec<Grant>| g.iter().map(|g| g.item.id.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(t.lease(&w("w1"), 3, &[1], t0)), ["s1a", "s1b", "s0a"]);
        assert_eq!(ids(t.lease(&w("w2"), 3, &[1], t0)), ["s2a"]);
    }
}
