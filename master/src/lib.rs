//! The ccsrp master: everything that decides, nothing that computes tensors.
