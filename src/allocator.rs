//! jemalloc as the malloc of the whole process, libtorch's included.
//!
//! libtorch allocates every tensor with `posix_memalign`. With glibc's malloc, the LSTM's
//! per-batch buffers (several MB for a batch of 64) raise glibc's dynamic mmap threshold, land on
//! the heap, and stay resident after they are freed: under sustained load the resident set
//! wanders and drifts upwards, and only a fixed mmap threshold holds it, at a large cost in
//! throughput. glibc also slows libtorch's static initialisers, which allocate hundreds of
//! thousands of small objects before `main`. (Figures: BENCHMARKS.md,
//! "glibc malloc against jemalloc".)
//!
//! jemalloc returns freed pages to the kernel on a clock ([`MALLOC_CONF`]'s decay times) from a
//! background thread, so memory follows the load without a trim on the request path. The
//! `override_allocator_on_supported_platforms` feature defines `malloc`, `free`,
//! `posix_memalign` and the rest in this executable, and the dynamic linker binds libtorch's calls
//! to them, so Rust and C++ share one allocator (mixing two would be undefined behaviour).
//!
//! Linux with glibc only, the platform the service ships on, and only with the `jemalloc` feature
//! (on by default; the fuzz build turns it off so AddressSanitizer can own malloc). Elsewhere the
//! system allocator stays and [`allocated_bytes`] answers `None`.

/// jemalloc's settings, read before `main` (jemalloc initialises on the first allocation of the
/// dynamic linker's start-up). `MALLOC_CONF` in the environment is applied after these, so an
/// operator can override any of them.
///
/// - `background_thread`: purging happens on jemalloc's own thread, never in a request's `free`.
/// - `narenas:2`: the default of four arenas per CPU keeps more partly used pages resident for
///   a process whose allocations come from a handful of threads.
/// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the kernel within about a
///   second (default ten), so a burst's memory does not outlive the burst for long.
#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
pub const MALLOC_CONF: &str =
    "background_thread:true,narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0";

#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
mod jemalloc {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    const CONF_LEN: usize = super::MALLOC_CONF.len() + 1;

    const fn nul_terminated() -> [u8; CONF_LEN] {
        let mut out = [0u8; CONF_LEN];
        let conf = super::MALLOC_CONF.as_bytes();
        let mut i = 0;
        while i < conf.len() {
            out[i] = conf[i];
            i += 1;
        }
        out
    }

    static CONF_BYTES: [u8; CONF_LEN] = nul_terminated();

    /// jemalloc's `malloc_conf` (a `const char *`), which it looks up by name at start-up.
    #[export_name = "malloc_conf"]
    #[used]
    static MALLOC_CONF_SYMBOL: &[u8; CONF_LEN] = &CONF_BYTES;
}

/// Bytes of live allocations, or `None` where jemalloc is not the allocator.
pub fn allocated_bytes() -> Option<u64> {
    #[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
    {
        // jemalloc caches its statistics; advancing the epoch refreshes them.
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        tikv_jemalloc_ctl::stats::allocated::read()
            .ok()
            .map(|bytes| bytes as u64)
    }
    #[cfg(not(all(feature = "jemalloc", target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Runs `work` and measures the most memory this thread held above its starting point while it
/// ran, within jemalloc's sampling of 64 KiB; `None` where jemalloc is not the allocator. What a
/// parser costs at its worst, not what it keeps.
pub fn thread_peak_during<R>(work: impl FnOnce() -> R) -> (R, Option<u64>) {
    #[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `thread.peak.reset` takes and returns nothing; `thread.peak.read` returns a
        // u64, as jemalloc 5.3's manual gives them.
        let reset = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.peak.reset".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let out = work();
        let peak = (reset == 0)
            .then(|| unsafe { tikv_jemalloc_ctl::raw::read::<u64>(b"thread.peak.read\0") }.ok())
            .flatten();
        (out, peak)
    }
    #[cfg(not(all(feature = "jemalloc", target_os = "linux", target_env = "gnu")))]
    {
        (work(), None)
    }
}

#[cfg(all(test, feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_settings_are_the_ones_in_effect() {
        // SAFETY: these option names are jemalloc's, with the types the docs give them.
        let narenas: u32 = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.narenas\0") }.unwrap();
        let background: bool =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.background_thread\0") }.unwrap();
        let dirty_decay: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.dirty_decay_ms\0") }.unwrap();
        if std::env::var_os("MALLOC_CONF").is_none() {
            assert_eq!(narenas, 2);
            assert!(background);
            assert_eq!(dirty_decay, 1000);
        }
    }

    #[test]
    fn tensors_that_libtorch_allocates_are_counted_by_jemalloc() {
        // libtorch (libc10.so) calls posix_memalign through the dynamic linker; had it bound
        // to glibc's, jemalloc would never see these bytes, and freeing them here would mix
        // two allocators.
        const FLOATS: i64 = 16 << 20;
        let before = allocated_bytes().unwrap();
        let tensor = tch::Tensor::zeros([FLOATS], (tch::Kind::Float, tch::Device::Cpu));
        let during = allocated_bytes().unwrap();
        drop(tensor);
        let bytes = FLOATS as u64 * 4;
        assert!(
            during >= before + bytes,
            "a 64 MB tensor did not reach jemalloc ({before} -> {during} bytes allocated)"
        );
    }
}
