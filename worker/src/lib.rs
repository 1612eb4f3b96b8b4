//! The ccsrp worker: everything that computes tensors.
