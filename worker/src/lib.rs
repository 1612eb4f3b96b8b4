//! The ccsrp worker: everything that computes tensors.

pub mod data;
