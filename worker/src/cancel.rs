//! [`Cancel`]: stopping a computation between batches (SIGINT/SIGTERM, or a worker shutting down).
//!
//! A token is shared by whoever may stop the computation (a signal handler, the worker loop) and
//! installed on the thread that computes with [`Cancel::scope`]. Every forward pass of
//! [`crate::model::SnnModel`] (training steps, each PGD step, evaluation batches, candidate
//! scoring from the prefix cache) checks the token of its thread first with [`check`] and fails
//! with [`crate::model::ModelError::Cancelled`] once it is cancelled, so a cancelled training run,
//! attack or evaluation returns within one batch (one attack step) with an error its caller can
//! tell apart by asking the token ([`Cancel::is_cancelled`]) rather than by parsing the error.
//!
//! The check is per thread on purpose: the library's loops keep their signatures, several worker
//! loops in one process (`ccsrp run`) each stop their own compute, and code outside a scope (unit
//! tests, other threads) never sees a cancellation.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation flag: cheap to clone, set once, never reset.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// The computation was cancelled (what [`check`] returns once the thread's token is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled: stopping")]
pub struct Cancelled;

thread_local! {
    static CURRENT: RefCell<Option<Cancel>> = const { RefCell::new(None) };
}

impl Cancel {
    /// A token not cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every computation running under this token to stop at its next batch.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Runs `f` on this thread with this token installed (the previous one is restored after,
    /// also when `f` panics): the forward passes inside `f` check it.
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Cancel>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        f()
    }
}

/// Err once the token installed on this thread (by [`Cancel::scope`]) is cancelled; Ok outside
/// any scope.
pub fn check() -> Result<(), Cancelled> {
    CURRENT.with(|current| match &*current.borrow() {
        Some(cancel) if cancel.is_cancelled() => Err(Cancelled),
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_fails_only_inside_a_cancelled_scope() {
        let cancel = Cancel::new();
        assert_eq!(cancel.scope(check), Ok(()));
        cancel.cancel();
        assert_eq!(check(), Ok(()), "outside the scope nothing is cancelled");
        assert_eq!(cancel.scope(check), Err(Cancelled));
        assert_eq!(check(), Ok(()), "the scope is gone after it returned");
    }

    #[test]
    fn scopes_nest_and_restore_the_outer_token() {
        let outer = Cancel::new();
        let inner = Cancel::new();
        outer.cancel();
        outer.scope(|| {
            assert_eq!(inner.scope(check), Ok(()));
            assert_eq!(check(), Err(Cancelled));
        });
    }

    #[test]
    fn a_token_cancelled_from_another_thread_stops_the_computing_one() {
        let cancel = Cancel::new();
        let remote = cancel.clone();
        let batches = cancel.scope(|| {
            let mut batches = 0;
            while check().is_ok() {
                batches += 1;
                if batches == 3 {
                    std::thread::spawn({
                        let remote = remote.clone();
                        move || remote.cancel()
                    })
                    .join()
                    .unwrap();
                }
            }
            batches
        });
        assert_eq!(batches, 3);
        assert!(cancel.is_cancelled());
    }
}
