//! `ccsrp status`: one snapshot of a running job, for people or (with `--json`) for scripts.

use std::path::PathBuf;

use ccsrp_proto::v1::{JobStatus, NetworkPoint, StatusRequest};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The master, e.g. http://127.0.0.1:50051 (https://... for a master serving TLS).
    #[arg(long)]
    master: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// File holding the job's token [default: $CCSRP_TOKEN, else none].
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
}

/// The token for client commands: from `--token-file`, else `$CCSRP_TOKEN`.
pub fn client_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = ccsrp_master::auth::AccessToken::load(file)?;
    Ok(token.secret().map(str::to_string))
}

fn percent(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        100.0 * count as f64 / samples as f64
    }
}

fn network_line(label: &str, p: &NetworkPoint, dense_macs: Option<u64>) -> String {
    let macs = match dense_macs {
        Some(d) if d > 0 => format!(
            "{:.3e} ({:.1}% of dense)",
            p.macs as f64,
            100.0 * p.macs as f64 / d as f64
        ),
        _ => format!("{:.3e}", p.macs as f64),
    };
    format!(
        "{label}: iteration {}  validation clean {:.2}% PGD {:.2}%  test clean {:.2}%  FGSM {:.2}%  \
         PGD {:.2}%  MACs {macs}  filters {:?}",
        p.iteration,
        percent(p.val_clean_correct, p.val_samples),
        percent(p.val_pgd_correct, p.val_samples),
        percent(p.clean_correct, p.test_samples),
        percent(p.fgsm_correct, p.test_samples),
        percent(p.pgd_correct, p.test_samples),
        p.kept
    )
}

/// The people's form of a status.
pub fn summary(s: &JobStatus) -> String {
    let mut out = format!(
        "job {}: {}{}, iteration {}/{}, generation {}/{}\n\
         tasks: {} done, {} pending ({} leased); workers alive: {}; results accepted {}, dropped {}\n",
        s.job_name,
        s.phase,
        if s.done { " (finished)" } else { "" },
        s.iteration,
        s.iterations,
        s.generation,
        s.generations,
        s.tasks_done,
        s.tasks_pending,
        s.tasks_leased,
        s.workers_alive,
        s.results_accepted,
        s.results_dropped
    );
    out += &format!(
        "progress: {}/{} steps ({:.1}%), {} elapsed{}\n",
        s.steps_done,
        s.steps_total,
        s.percent_done,
        super::progress_view::duration_text(s.elapsed_seconds),
        match s.remaining_seconds {
            Some(left) if !s.done => {
                format!(", ~{} left", super::progress_view::duration_text(left))
            }
            _ => String::new(),
        }
    );
    if s.failed {
        out += &format!(
            "FAILED: task {} failed {} times:\n",
            s.failed_task,
            s.failure_reasons.len()
        );
        for reason in &s.failure_reasons {
            out += &format!("  - {reason}\n");
        }
        out += "fix the cause and restart the master on the same state dir to resume\n";
    }
    let dense_macs = s.dense.as_ref().map(|d| d.macs);
    if let Some(d) = &s.dense {
        out += &network_line("dense", d, None);
        out.push('\n');
    }
    match &s.best {
        Some(b) => out += &network_line("best ", b, dense_macs),
        None => out += "best : none yet",
    }
    out
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let token = client_token(args.token_file.as_deref())?;
    let tls = args.tls.load(&args.master)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let status = runtime.block_on(async {
        let mut client =
            ccsrp_master::client::progress(&args.master, token.as_deref(), &tls).await?;
        let status = match client.status(StatusRequest {}).await {
            Ok(status) => status,
            Err(s) => anyhow::bail!(
                "status of {}: {}",
                args.master,
                ccsrp_master::client::explain(&args.master, &tls, &s).await
            ),
        };
        anyhow::Ok(status.into_inner())
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!("{}", summary(&status));
    }
    Ok(())
}
