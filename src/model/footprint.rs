//! Keeping the resident set close to the working set.
//!
//! libtorch's static initialisers register thousands of operators before `main` runs, touching
//! about 60 MB of `libtorch_cpu.so` code that is never executed again. Those clean, file-backed
//! pages stay resident (and count against a container's memory) until the kernel is under
//! pressure. Once a model is loaded we ask the kernel to reclaim them now (`MADV_PAGEOUT`); the
//! warm-up forecast that follows faults back exactly the pages the forecast path uses.
//!
//! oneDNN, which runs libtorch's LSTM on CPU, keeps a compiled kernel and its buffers for every
//! input shape it has seen, up to 1024 of them. Under dynamic batching every batch size from 1 to
//! the maximum is a shape of its own, so the cache alone grows by about 20 MB;
//! [`limit_onednn_kernel_cache`] bounds it.
//!
//! Reclaiming is advice: the kernel skips pages another process also maps, and an error (an old
//! kernel without `MADV_PAGEOUT`) only means the pages stay where they were.

use std::sync::Once;

/// Kernels oneDNN keeps (its `ONEDNN_PRIMITIVE_CACHE_CAPACITY`) unless the environment says
/// otherwise. Under load the batch sizes cluster around a few values, which 16 entries hold; a
/// size that falls out costs one kernel compilation when it comes back.
pub const ONEDNN_KERNEL_CACHE_DEFAULT: usize = 16;

/// Sets oneDNN's kernel cache capacity to [`ONEDNN_KERNEL_CACHE_DEFAULT`] unless the operator has
/// set `ONEDNN_PRIMITIVE_CACHE_CAPACITY`. oneDNN reads it when it compiles its first kernel, so
/// call this at the start of `main`, before any thread exists (`set_var` is not thread-safe).
pub fn limit_onednn_kernel_cache() {
    const VARIABLE: &str = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";
    if std::env::var_os(VARIABLE).is_none() {
        std::env::set_var(VARIABLE, ONEDNN_KERNEL_CACHE_DEFAULT.to_string());
    }
}

/// What [`release_libtorch_startup_pages`] asked the kernel to reclaim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    pub bytes: usize,
}

/// Libraries whose read-only mappings are reclaimed: libtorch and what ships in its `lib/`.
fn is_libtorch_library(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    ["libtorch", "libc10", "libgomp", "libcupti", "libcudart"]
        .iter()
        .any(|prefix| file.starts_with(prefix))
}

/// One `/proc/self/maps` line reduced to what matters here: the range of a read-only mapping of a
/// libtorch library. Writable mappings hold relocated data and are left alone.
fn reclaimable_range(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let permissions = fields.next()?;
    let path = fields.nth(3)?;
    if permissions.contains('w') || !is_libtorch_library(path) {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end - start))
}

/// Asks the kernel to reclaim libtorch's resident read-only pages. Call it after loading a model
/// and before its warm-up forecast.
#[cfg(target_os = "linux")]
pub fn release_libtorch_startup_pages() -> std::io::Result<Released> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = Released::default();
    for (start, len) in maps.lines().filter_map(reclaimable_range) {
        // SAFETY: the range is one of this process's own file mappings, read from
        // /proc/self/maps; MADV_PAGEOUT never changes contents, only where they live.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released.mappings += 1;
        released.bytes += len;
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_libtorch_startup_pages() -> std::io::Result<Released> {
    Ok(Released::default())
}

/// [`release_libtorch_startup_pages`] once per process: the startup pages are only worth
/// reclaiming after the first load, and a later reload must not evict the live model's hot code.
pub fn release_libtorch_startup_pages_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match release_libtorch_startup_pages() {
        Ok(released) => tracing::debug!(
            mappings = released.mappings,
            mib = released.bytes >> 20,
            "asked the kernel to reclaim libtorch's startup pages"
        ),
        Err(e) => tracing::debug!(error = %e, "libtorch's startup pages stay resident"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_mappings_of_libtorch_libraries_are_reclaimable() {
        let code = "7f00a000-7f00c000 r-xp 00001000 08:01 42 /opt/libtorch/lib/libtorch_cpu.so";
        let data = "7f00c000-7f00d000 rw-p 00003000 08:01 42 /opt/libtorch/lib/libtorch_cpu.so";
        let libc = "7f10a000-7f10c000 r-xp 00001000 08:01 43 /usr/lib/libc.so.6";
        let heap = "55d000-55e000 rw-p 00000000 00:00 0 [heap]";
        let anonymous = "7f20a000-7f20c000 r--p 00000000 00:00 0";
        assert_eq!(reclaimable_range(code), Some((0x7f00a000, 0x2000)));
        assert_eq!(reclaimable_range(data), None);
        assert_eq!(reclaimable_range(libc), None);
        assert_eq!(reclaimable_range(heap), None);
        assert_eq!(reclaimable_range(anonymous), None);
    }

    #[test]
    fn libtorch_libraries_are_recognised_by_file_name_not_directory() {
        assert!(is_libtorch_library("/x/lib/libc10.so"));
        assert!(is_libtorch_library("/x/lib/libgomp.so.1"));
        assert!(!is_libtorch_library(
            "/opt/libtorch/lib/../../usr/libssl.so"
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reclaiming_covers_the_linked_libtorch() {
        let released = release_libtorch_startup_pages().expect("madvise(MADV_PAGEOUT)");
        assert!(released.mappings >= 2, "{released:?}");
        assert!(released.bytes > 10 << 20, "{released:?}");
    }
}
