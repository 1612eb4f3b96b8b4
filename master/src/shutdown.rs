//! [`Shutdown`]: the one signal every long-running task of the master listens to.
//!
//! The server owns a [`ShutdownTrigger`]; each task holds a [`Shutdown`] clone and selects on
//! [`Shutdown::wait`] beside its work, so a SIGTERM/SIGINT (or an embedding program) stops the
//! accept loop, long polls, event streams and the checkpointer together, and the final checkpoint
//! is written after all of them returned.

use tokio::sync::watch;

/// Sends the shutdown signal (once; later calls are no-ops).
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Listens for the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its first listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Asks every listener to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was, or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_wakes_on_trigger() {
        let (trigger, mut a) = channel();
        let mut b = trigger.subscribe();
        assert!(!a.is_triggered());
        let waiter = tokio::spawn(async move { b.wait().await });
        trigger.trigger();
        a.wait().await;
        waiter.await.unwrap();
        assert!(a.is_triggered());
    }
}
