//! `ccsrp`: the one binary. Parses the command line and hands each subcommand to its module in
//! `cli/`; all real work lives in the `ccsrp-master` and `ccsrp-worker` libraries.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ccsrp",
    version,
    about = "Robust pruning of spiking neural networks by cooperative coevolution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole job in one process: an embedded master and N workers over loopback.
    Run(cli::run::RunArgs),
    /// Serve a job to workers over gRPC.
    Master(cli::master::MasterArgs),
    /// Pull tasks from a master and evaluate them.
    Worker(cli::worker::WorkerArgs),
    /// Print a running job's progress.
    Status(cli::status::StatusArgs),
    /// Follow a running job live.
    Watch(cli::watch::WatchArgs),
    /// Exit 0 when the master is serving (for container health checks).
    Health(cli::health::HealthArgs),
    /// Train a dense SNN.
    Train(cli::train::TrainArgs),
    /// Evaluate a model: clean or under attack.
    Eval(cli::eval::EvalArgs),
    /// Prune a dense model by a classic criterion (L1 norm, random) and fine-tune it: the
    /// baselines a job's result is compared with, at equal MACs and fine-tuning budget.
    Prune(cli::prune::PruneArgs),
    /// Describe a model file: architecture, parameters, MACs.
    Info(cli::info::InfoArgs),
    /// Draw a finished job's report: OUT_DIR/report.html and its SVG figures.
    Report(cli::report::ReportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Commands that compute tensors keep freed memory for the next batch; the master (many
    // threads, small allocations) keeps glibc's per-thread arenas.
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Worker(_)
            | Command::Train(_)
            | Command::Eval(_)
            | Command::Prune(_)
    ) {
        ccsrp_worker::allocator::keep_freed_memory();
    }
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Master(a) => cli::master::run(a),
        Command::Worker(a) => cli::worker::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Watch(a) => cli::watch::run(a),
        Command::Health(a) => cli::health::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Prune(a) => cli::prune::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Report(a) => cli::report::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::stop::Stopped>() {
            // SIGINT/SIGTERM stopped the command: 128 + the signal's number, as a shell reports.
            Some(stopped) => {
                eprintln!("{stopped}");
                std::process::ExitCode::from(stopped.signal.exit_code())
            }
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
