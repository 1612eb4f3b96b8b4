//! Allocator settings for tensor work.
//!
//! Every candle op allocates its output; a training batch of the `small` SNN makes tensors of tens
//! of megabytes. glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with a fresh
//! `mmap` and returns them with `munmap`, so each such tensor costs a page fault per 4 KiB page
//! and the zeroing of every page: measured on 2 cores, a third of training time went to the kernel.
//! Threads other than the main one get their own arenas, made of 64 MiB heaps that are mapped and
//! unmapped as tensors come and go, with the same cost. [`keep_freed_memory`] turns all of that off:
//! one arena (small blocks still come from each thread's cache), large blocks from its heap, and
//! freed memory stays with the process for the next batch (resident memory stays at the peak of one
//! step). Measured on 2 cores: one training epoch 15.9 s -> 10.3 s; the default `ccsrp run` (whose
//! workers compute on their own threads) 10 min 45 s -> 8 min 16 s, kernel time 3 min 45 s -> 17 s.

/// Makes glibc's malloc serve every block from its heap and never trim it. Call once, early in
/// `main`, before threads start. A no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tunables; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
