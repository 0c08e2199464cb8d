//! How warren uses glibc's allocator: keep the buffers of busy connections
//! out of mmap, and give freed memory back once many clients have left.
//!
//! Measured with warren-bench (docs/benchmarks.md): with glibc's defaults a
//! stream of 64 KiB publishes spent a fifth of warren's CPU in page faults,
//! zeroing and unmapping (read buffers above the dynamic mmap threshold, or
//! at the top of the heap, trimmed and grown again per message); and after
//! 10k clients left, RSS stayed at its peak.

/// Buffers up to this size come from the heap, not from mmap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the top of the heap kept rather than returned at once
/// (`give_back_freed_memory` returns it when clients leave).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 16 << 20;

/// Call once, before the runtime starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// glibc keeps memory freed by departed clients in its arenas; a burst of
/// 10k clients would leave warren's RSS at its peak for good. malloc_trim
/// hands whole free pages back (a few milliseconds; the listener calls it
/// after many clients left).
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
