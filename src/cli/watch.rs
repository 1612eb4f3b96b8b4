//! `ccsrp watch`: follow a running job live (a progress bar over its tasks, one line per notable
//! event) until it is done.

use std::path::PathBuf;

use ccsrp_proto::v1::EventsRequest;
use indicatif::{ProgressBar, ProgressStyle};

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
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut last = None;
        while let Some(event) = events
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("event stream of {}: {}", args.master, s.message()))?
        {
            let Some(s) = event.status else { continue };
            bar.set_length(s.tasks_done + s.tasks_pending);
            bar.set_position(s.tasks_done);
            bar.set_message(format!(
                "{} it {}/{} gen {}/{} workers {}",
                s.phase, s.iteration, s.iterations, s.generation, s.generations, s.workers_alive
            ));
            if event.message != "progress" {
                bar.println(event.message.clone());
            }
            let done = s.done;
            last = Some(s);
            if done {
                break;
            }
        }
        bar.finish();
        match last {
            Some(s) => println!("{}", super::status::summary(&s)),
            None => anyhow::bail!("the master closed the event stream without a status"),
        }
        Ok(())
    })
}
