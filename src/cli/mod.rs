//! One module per subcommand: its clap arguments and the function that runs it.

pub mod eval;
pub mod health;
pub mod info;
pub mod master;
pub mod prune;
pub mod run;
pub mod status;
pub mod stop;
pub mod train;
pub mod watch;
pub mod worker;
