//! Stopping a command on SIGINT (Ctrl-C) or SIGTERM, the same way in every command.
//!
//! [`StopSignals::listen`] starts a thread that waits for the signals. At the first one it
//! cancels the command's [`Cancel`] token (every forward pass under it fails at its next batch,
//! see `ccsrp_worker::cancel`), wakes [`StopSignals::first`] (what async commands hand their
//! shutdown to) and runs the command's announcement (which finishes its progress bar and says
//! "stopping"). A second signal exits the process at once with 128 + the signal's number (130
//! for SIGINT, 143 for SIGTERM). A command stopped by the first signal returns [`Stopped`], which
//! `main` turns into the same exit status.

use std::fmt;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget};
use tokio::sync::watch;

use ccsrp_worker::cancel::Cancel;

/// A signal that stops a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// The conventional exit status of a process ended by this signal: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// The error of a command a signal stopped before it finished: `main` prints it and exits with
/// [`Signal::exit_code`].
#[derive(Debug)]
pub struct Stopped {
    pub signal: Signal,
    /// What is left and how to go on (e.g. how to resume a job), when there is anything to say.
    pub next: Option<String>,
}

impl Stopped {
    /// The same stop, with what to do next.
    pub fn then(self, next: impl Into<String>) -> Stopped {
        Stopped {
            next: Some(next.into()),
            ..self
        }
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped by {}", self.signal)?;
        match &self.next {
            Some(next) => write!(f, "; {next}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Stopped {}

/// Listens for SIGINT and SIGTERM for the rest of the process.
pub struct StopSignals {
    cancel: Cancel,
    received: watch::Receiver<Option<Signal>>,
}

impl StopSignals {
    /// Starts listening now (the handlers are installed before this returns). `announce` runs
    /// once, on the listening thread, right after the first signal cancelled the token.
    pub fn listen(announce: impl FnOnce(Signal) + Send + 'static) -> anyhow::Result<StopSignals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the signal listener")?;
        let mut signals = {
            let _entered = runtime.enter();
            Signals::install().context("installing the SIGINT/SIGTERM handlers")?
        };
        let cancel = Cancel::new();
        let (sender, received) = watch::channel(None);
        let token = cancel.clone();
        std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let first = signals.next().await;
                    token.cancel();
                    sender.send_replace(Some(first));
                    announce(first);
                    let second = signals.next().await;
                    eprintln!("{second} again: exiting at once");
                    std::process::exit(i32::from(second.exit_code()));
                })
            })
            .context("starting the signal listener thread")?;
        Ok(StopSignals { cancel, received })
    }

    /// Runs a blocking command's `compute` under the token the first signal cancels
    /// ([`Cancel::scope`]). When it fails after a signal came, the error is the stop
    /// ([`Stopped`], followed by `next` where given, e.g. what was not written), not the
    /// cancelled computation's.
    pub fn run_cancellable<T>(
        &self,
        compute: impl FnOnce() -> anyhow::Result<T>,
        next: Option<String>,
    ) -> anyhow::Result<T> {
        let result = self.cancel.scope(compute);
        match (result, self.stopped()) {
            (Err(_), Some(stopped)) => Err(match next {
                Some(next) => stopped.then(next),
                None => stopped,
            }
            .into()),
            (result, _) => result,
        }
    }

    /// The first signal, once it came.
    pub fn received(&self) -> Option<Signal> {
        *self.received.borrow()
    }

    /// [`Stopped`] when a signal came: what a command returns instead of a result it could not
    /// finish.
    pub fn stopped(&self) -> Option<Stopped> {
        self.received().map(|signal| Stopped { signal, next: None })
    }

    /// Resolves at the first signal (at once if it already came).
    pub fn first(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut received = self.received.clone();
        async move {
            let _ = received.wait_for(Option::is_some).await;
        }
    }
}

/// Ends `bar` where it stands (so that what is printed next starts on a line of its own, and
/// nothing redraws it later) and prints `stopping (SIGNAL): what`, with how to exit at once.
pub fn announce(bar: &ProgressBar, signal: Signal, what: &str) {
    if !bar.is_hidden() {
        bar.abandon();
        bar.set_draw_target(ProgressDrawTarget::hidden());
        // indicatif leaves the cursor at the end of the bar's line.
        eprintln!();
    }
    eprintln!("stopping ({signal}): {what}; send the signal again to exit at once");
}

/// The two signals, as one stream.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; must run inside a tokio runtime.
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Signal::Interrupt,
                _ = self.terminate.recv() => Signal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}
