//! The ccsrp worker: everything that computes tensors.

pub mod attack;
pub mod augment;
pub mod arch;
pub mod data;
pub mod device;
pub mod lif;
pub mod model;
pub mod model_file;
pub mod train;
