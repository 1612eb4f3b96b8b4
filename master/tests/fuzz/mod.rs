//! The harness of the property tests of parsers and decoders (shared by the master's and, through
//! `#[path]`, the worker's): mutations of valid inputs, and a global allocator that refuses any
//! single allocation above a bound.
//!
//! - [`Mutation`] / [`mutations`] / [`apply`]: bit flips, truncation, inserted and deleted bytes,
//!   and 4- or 8-byte fields overwritten with huge values (announced lengths, dimensions), applied
//!   in sequence to the bytes of a valid input.
//! - [`BoundedAlloc`]: install with `#[global_allocator]` in a test binary. An allocation over its
//!   limit returns null, so infallible allocations abort the binary with "memory allocation of N
//!   bytes failed" (the test run fails) and `try_reserve` gets an error: a decoder that allocates
//!   from an announced size rather than the bytes present cannot pass.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};

use proptest::prelude::*;

/// One edit of a byte string; positions are taken modulo the length at the time of the edit.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(usize),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
    /// Overwrites 4 bytes (big-endian) with a large value, as a forged length or dimension.
    Huge32(usize, u32),
    /// Overwrites 8 bytes (little-endian) with a large value (safetensors' header length).
    Huge64(usize, u64),
}

/// Values a forged size field takes: the edges where size arithmetic overflows or allocates.
fn huge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        Just(1 << 31),
        Just(1 << 24),
        Just(0),
        any::<u32>()
    ]
}

fn huge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(1 << 32),
        Just(99_999_999),
        Just(0),
        any::<u64>()
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<usize>().prop_map(Mutation::FlipBit),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<usize>().prop_map(Mutation::Delete),
        2 => (any::<usize>(), huge_u32()).prop_map(|(i, v)| Mutation::Huge32(i, v)),
        1 => (any::<usize>(), huge_u64()).prop_map(|(i, v)| Mutation::Huge64(i, v)),
    ]
}

/// One to four mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=4)
}

/// `bytes` after `edits`, in order.
pub fn apply(bytes: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        let len = out.len();
        match *edit {
            Mutation::FlipBit(i) if len > 0 => out[(i / 8) % len] ^= 1 << (i % 8),
            Mutation::Truncate(i) => out.truncate(i % (len + 1)),
            Mutation::Insert(i, b) => out.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                out.remove(i % len);
            }
            Mutation::Huge32(i, v) if len >= 4 => {
                let at = i % (len - 3);
                out[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            Mutation::Huge64(i, v) if len >= 8 => {
                let at = i % (len - 7);
                out[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// A global allocator refusing any single allocation above `LIMIT` bytes (see the module doc).
pub struct BoundedAlloc<const LIMIT: usize>;

// SAFETY: every call is forwarded to `System` unchanged, or answered with null (allowed: it means
// the allocation failed).
unsafe impl<const LIMIT: usize> GlobalAlloc for BoundedAlloc<LIMIT> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[test]
fn mutations_apply_at_any_position_of_any_length() {
    let edits = [
        Mutation::FlipBit(usize::MAX),
        Mutation::Huge32(usize::MAX, u32::MAX),
        Mutation::Huge64(7, u64::MAX),
        Mutation::Delete(usize::MAX),
        Mutation::Truncate(2),
        Mutation::Insert(3, 9),
    ];
    assert_eq!(apply(&[], &edits), vec![9]);
    let out = apply(&[0; 16], &edits[..3]);
    assert_eq!(out.len(), 16);
    assert_ne!(out, vec![0; 16]);
}
