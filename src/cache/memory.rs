//! The allocator, tuned for a sidecar: memory given back to the system after a snapshot load, and
//! large buffers as mappings of their own.
//!
//! A snapshot passes every value through NATS's read buffers, the consumer's message queue and
//! decoding before it lands in the mirror; glibc keeps the freed pages of that transit in its
//! heaps, so without a trim the sidecar's resident memory stays well above what its mirror holds
//! (about 40 MiB more at a million 100-byte values). A sidecar's memory is paid in every pod.

/// Returns the allocator's free pages to the system, on a blocking thread (a trim walks the
/// heaps). A no-op where the allocator is not glibc's.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel; it is
        // thread-safe and takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

/// Makes every allocation of 1 MiB or more a mapping of its own, for the whole process.
///
/// glibc raises that threshold by itself, up to 32 MiB, each time such a mapping is freed. A
/// listing's reply of a million keys (about 20 MB, built on the blocking pool) then comes from
/// a heap instead, and freeing it on the thread that serves every client consolidates that heap:
/// measured at 200–400 ms in which no other client was answered (`scripts/stall.sh`, v1 `keys`).
/// Buffers that large are rare: with a million keys mirrored, RSS (192 and 193 MiB) and cold start
/// (medians 3.29 and 3.26 s) measured the same with and without. A no-op where the allocator is
/// not glibc's.
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
