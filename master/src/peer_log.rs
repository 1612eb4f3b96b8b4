//! [`PeerLog`]: log lines about what peers do (refusals, registrations), rate-limited per peer so a
//! hostile or broken client cannot grow the master's log without bound.
//!
//! Each (peer address, event) pair may log [`BURST`] lines per [`WINDOW`]; the rest are counted,
//! and the count is logged once as a summary line when the window has passed (at the pair's next
//! event, or by [`PeerLog::flush`], which the server calls periodically). The table is bounded:
//! beyond [`MAX_PEERS`] pairs, further peers share one "other peers" entry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines one (peer, event) pair may log per window.
pub const BURST: u32 = 5;

/// The rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Pairs tracked individually; the rest share one entry.
pub const MAX_PEERS: usize = 4096;

/// The peer's IP address (connections from one host share a budget), or none when unknown.
pub type Peer = Option<IpAddr>;

/// The peer of a request: its remote IP address, when the transport knows it.
pub fn peer_of(addr: Option<SocketAddr>) -> Peer {
    addr.map(|a| a.ip())
}

/// How a peer is shown in log lines.
pub fn show(peer: Peer) -> String {
    peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-peer rate limits of log lines.
#[derive(Debug)]
pub struct PeerLog {
    entries: Mutex<HashMap<(Peer, &'static str), Entry>>,
    window: Duration,
    burst: u32,
    max_peers: usize,
}

impl Default for PeerLog {
    fn default() -> Self {
        PeerLog::new(WINDOW, BURST, MAX_PEERS)
    }
}

/// A window's suppressed lines, to be logged as one summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub peer: Peer,
    pub event: &'static str,
    pub count: u64,
}

fn log_summary(s: &Suppressed, window: Duration) {
    tracing::warn!(
        peer = %show(s.peer),
        event = s.event,
        suppressed = s.count,
        window_s = window.as_secs_f64(),
        "repeated events from one peer: lines not logged"
    );
}

impl PeerLog {
    pub fn new(window: Duration, burst: u32, max_peers: usize) -> PeerLog {
        PeerLog {
            entries: Mutex::new(HashMap::new()),
            window,
            burst,
            max_peers,
        }
    }

    /// Whether the caller should log this `event` from `peer` now (else it is counted). A summary
    /// of the previous window's suppressed lines is logged first when one is due.
    pub fn allow(&self, peer: Peer, event: &'static str) -> bool {
        let (allowed, summary) = self.allow_at(peer, event, Instant::now());
        if let Some(s) = summary {
            log_summary(&s, self.window);
        }
        allowed
    }

    /// [`PeerLog::allow`] at `now`, returning the summary due instead of logging it.
    pub fn allow_at(
        &self,
        peer: Peer,
        event: &'static str,
        now: Instant,
    ) -> (bool, Option<Suppressed>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if entries.len() >= self.max_peers && !entries.contains_key(&(peer, event)) {
            (None, event)
        } else {
            (peer, event)
        };
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        let mut summary = None;
        if now.duration_since(entry.window_start) >= self.window {
            if entry.suppressed > 0 {
                summary = Some(Suppressed {
                    peer: key.0,
                    event,
                    count: entry.suppressed,
                });
            }
            *entry = Entry {
                window_start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if entry.logged < self.burst {
            entry.logged += 1;
            (true, summary)
        } else {
            entry.suppressed += 1;
            (false, summary)
        }
    }

    /// Logs the summaries of every window that has passed and forgets those entries.
    pub fn flush(&self) {
        for s in self.flush_at(Instant::now()) {
            log_summary(&s, self.window);
        }
    }

    /// [`PeerLog::flush`] at `now`, returning the summaries instead of logging them.
    pub fn flush_at(&self, now: Instant) -> Vec<Suppressed> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        entries.retain(|&(peer, event), e| {
            if now.duration_since(e.window_start) < self.window {
                return true;
            }
            if e.suppressed > 0 {
                due.push(Suppressed {
                    peer,
                    event,
                    count: e.suppressed,
                });
            }
            false
        });
        due
    }

    /// Pairs tracked now.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Peer {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn a_burst_is_logged_the_rest_counted_and_summarised_once() {
        let log = PeerLog::new(Duration::from_secs(10), 3, 100);
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..1000)
            .map(|_| log.allow_at(ip(1), "refused", t0).0)
            .collect();
        assert_eq!(allowed.iter().filter(|a| **a).count(), 3);
        // Another peer and another event have their own budgets.
        assert!(log.allow_at(ip(2), "refused", t0).0);
        assert!(log.allow_at(ip(1), "registered", t0).0);
        // The next window: the count of the last one comes back once, and lines flow again.
        let (allowed, summary) = log.allow_at(ip(1), "refused", t0 + Duration::from_secs(11));
        assert!(allowed);
        assert_eq!(
            summary,
            Some(Suppressed {
                peer: ip(1),
                event: "refused",
                count: 997
            })
        );
    }

    #[test]
    fn flush_summarises_passed_windows_and_forgets_them() {
        let log = PeerLog::new(Duration::from_secs(10), 1, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            log.allow_at(ip(1), "refused", t0);
        }
        log.allow_at(ip(2), "refused", t0);
        assert!(log.flush_at(t0 + Duration::from_secs(1)).is_empty());
        let due = log.flush_at(t0 + Duration::from_secs(10));
        assert_eq!(
            due,
            vec![Suppressed {
                peer: ip(1),
                event: "refused",
                count: 4
            }]
        );
        assert!(log.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_the_overflow_shares_one_budget() {
        let log = PeerLog::new(Duration::from_secs(10), 1, 4);
        let t0 = Instant::now();
        let allowed = (0..=255u8)
            .filter(|n| log.allow_at(ip(*n), "refused", t0).0)
            .count();
        // Four tracked peers, then one shared entry for all others.
        assert!(log.len() <= 5, "{} entries", log.len());
        assert_eq!(allowed, 5);
    }
}
