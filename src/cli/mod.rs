//! One module per subcommand: its clap arguments and the function that runs it; `progress_view`
//! renders a job's progress for `watch` and `run`.

pub mod eval;
pub mod health;
pub mod info;
pub mod master;
pub mod progress_view;
pub mod prune;
pub mod report;
pub mod run;
pub mod status;
pub mod stop;
pub mod tls;
pub mod train;
pub mod watch;
pub mod worker;
