//! `ccsrp watch`: follow a running job live until it is done. On a terminal: a bar over the job's
//! steps, and above it one line per notable event and per generation (each layer's best, the best
//! network's validation accuracy and MACs kept). With stdout not a terminal (a log, a pipe, a
//! Kubernetes pod): the same lines as plain text, each stamped with its UTC time. Then the summary.

use std::io::IsTerminal;
use std::path::PathBuf;

use ccsrp_proto::v1::{EventsRequest, JobEvent, JobStatus};
use indicatif::{ProgressBar, ProgressDrawTarget};

use super::progress_view;

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The master, e.g. http://127.0.0.1:50051 (https://... for a master serving TLS).
    #[arg(long)]
    master: String,
    /// File holding the job's token [default: $CCSRP_TOKEN, else none].
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
}

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let token = super::status::client_token(args.token_file.as_deref())?;
    let tls = args.tls.load(&args.master)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client =
            ccsrp_master::client::progress(&args.master, token.as_deref(), &tls).await?;
        let mut events = client
            .events(EventsRequest {})
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "events of {}: {} ({:?})",
                    args.master,
                    s.message(),
                    s.code()
                )
            })?
            .into_inner();
        let mut view = View::new(std::io::stdout().is_terminal());
        let mut last = None;
        while let Some(event) = events
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("event stream of {}: {}", args.master, s.message()))?
        {
            let Some(s) = &event.status else { continue };
            view.show(&event, s);
            let done = s.done || s.failed;
            last = event.status;
            if done {
                break;
            }
        }
        view.finish();
        match last {
            Some(s) => println!("{}", super::status::summary(&s)),
            None => anyhow::bail!("the master closed the event stream without a status"),
        }
        Ok(())
    })
}

/// What `watch` prints: on a terminal, the bar with notable events and a line per generation above
/// it; otherwise the same events and lines as plain time-stamped text (no bar).
struct View {
    bar: Option<ProgressBar>,
    /// (phase, iteration, generation) of the last line printed.
    position: Option<(String, u32, u32)>,
}

impl View {
    fn new(terminal: bool) -> View {
        View {
            bar: terminal.then(|| progress_view::steps_bar(ProgressDrawTarget::stdout())),
            position: None,
        }
    }

    fn show(&mut self, event: &JobEvent, s: &JobStatus) {
        // A move of the search gets the line of where it stands (the event's own message says
        // the same in fewer words); other notable events (a task failure) are shown as they are.
        let mut lines = Vec::new();
        let position = (s.phase.clone(), s.iteration, s.generation);
        let moved = self.position.as_ref() != Some(&position);
        let routine = ["progress", "subscribed"].contains(&event.message.as_str());
        if !routine && (!moved || event.message.starts_with("job failed")) {
            lines.push(event.message.clone());
        }
        if moved {
            self.position = Some(position);
            lines.push(progress_view::generation_line(s));
        }
        match &self.bar {
            Some(bar) => {
                progress_view::update_bar(bar, s);
                for line in lines {
                    bar.println(line);
                }
            }
            None => {
                for line in lines {
                    println!("{}", progress_view::timestamped(event.unix_ms, &line));
                }
            }
        }
    }

    /// Takes the bar off the screen, so what follows starts on a line of its own.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
