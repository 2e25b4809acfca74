//! Keeping the resident set close to the working set.
//!
//! libtorch's static initialisers register thousands of operators before `main` runs, touching
//! much of `libtorch_cpu.so`'s code, which is never executed again. Those pages stay mapped, and
//! counted in the process's RSS, for as long as it lives. Once `serve` listens we unmap them
//! (`MADV_DONTNEED` on libtorch's clean, read-only mappings); the forecasts that follow map back
//! exactly the pages the forecast path uses.
//!
//! `MADV_DONTNEED` only drops this process's page-table entries. The pages stay in the page cache,
//! so mapping them back is a minor fault and the next process to start finds libtorch still in
//! memory. (`MADV_PAGEOUT` would evict them from the page cache too: the next cold start then
//! reads them back from disk and pays for it.) On a private mapping `MADV_DONTNEED` also
//! discards pages the process wrote, such as relocated pointers, so only mappings without a single
//! private (anonymous) page are touched. (Figures: BENCHMARKS.md,
//! "Releasing libtorch's start-up pages".)
//!
//! The heap itself is jemalloc's ([`crate::allocator`]), which returns freed pages on its own.
//!
//! oneDNN, which runs libtorch's LSTM on CPU, keeps a compiled kernel and its buffers for every
//! input shape it has seen, up to 1024 of them. Under dynamic batching every batch size from 1 to
//! the maximum is a shape of its own, so the cache grows with every batch size it meets;
//! [`limit_onednn_kernel_cache`] bounds it (figures: BENCHMARKS.md, "oneDNN kernel cache").

use std::sync::Once;

/// Kernels oneDNN keeps (its `ONEDNN_PRIMITIVE_CACHE_CAPACITY`) unless the environment says
/// otherwise: enough for every padded batch size's kernels up to the largest batch
/// (`engine::padded_batch`), with room for the weight reorders. Why this figure: BENCHMARKS.md,
/// "oneDNN kernel cache".
pub const ONEDNN_KERNEL_CACHE_DEFAULT: usize = 48;

/// Sets oneDNN's kernel cache capacity to [`ONEDNN_KERNEL_CACHE_DEFAULT`] unless the operator has
/// set `ONEDNN_PRIMITIVE_CACHE_CAPACITY`. oneDNN reads it when it compiles its first kernel, so
/// `main` calls this first. `set_var` races with any other thread reading the environment, so it
/// is only called while this is the process's one thread; otherwise the default stays oneDNN's
/// and the returned warning says so.
pub fn limit_onednn_kernel_cache() -> Option<String> {
    const VARIABLE: &str = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";
    if std::env::var_os(VARIABLE).is_some() {
        return None;
    }
    match threads_in_process() {
        Some(1) => {
            std::env::set_var(VARIABLE, ONEDNN_KERNEL_CACHE_DEFAULT.to_string());
            None
        }
        threads => Some(format!(
            "{VARIABLE} left unset: {} threads were running when it could be set; set it to {ONEDNN_KERNEL_CACHE_DEFAULT} in the environment to bound oneDNN's kernel cache",
            threads.map_or("an unknown number of".to_string(), |n| n.to_string())
        )),
    }
}

/// Threads of this process (`/proc/self/task`), where Linux tells.
fn threads_in_process() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|tasks| tasks.count())
}

/// What [`release_libtorch_startup_pages`] asked the kernel to reclaim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    pub bytes: usize,
}

/// Libraries whose mappings are released: libtorch and what ships in its `lib/`.
fn is_libtorch_library(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    ["libtorch", "libc10", "libgomp", "libcupti", "libcudart"]
        .iter()
        .any(|prefix| file.starts_with(prefix))
}

/// A mapping as `/proc/self/smaps` describes it, reduced to what decides whether it can be
/// released.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    writable: bool,
    path: String,
    /// Private pages this process wrote (relocations, copy-on-write); they exist nowhere else.
    anonymous_kib: u64,
}

impl Mapping {
    fn is_releasable(&self) -> bool {
        !self.writable && self.anonymous_kib == 0 && is_libtorch_library(&self.path)
    }
}

/// Parses `/proc/self/smaps`: a header line per mapping (`start-end perms offset dev inode
/// [path]`) followed by `Key: value kB` lines.
fn parse_smaps(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Anonymous:") {
            if let Some(mapping) = mappings.last_mut() {
                let kib = kib.trim().trim_end_matches("kB").trim();
                // Unreadable counts as written: such a mapping is never released.
                mapping.anonymous_kib = kib.parse().unwrap_or(u64::MAX);
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if end <= start || permissions.len() != 4 {
            continue;
        }
        mappings.push(Mapping {
            start,
            len: end - start,
            writable: permissions.contains('w'),
            path: fields.nth(3).unwrap_or("").to_string(),
            anonymous_kib: u64::MAX,
        });
    }
    mappings
}

/// Unmaps libtorch's clean read-only pages from this process (they stay in the page cache). Call
/// it once a model is loaded, when libtorch's one-off start-up work is done.
#[cfg(target_os = "linux")]
pub fn release_libtorch_startup_pages() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in parse_smaps(&smaps).iter().filter(|m| m.is_releasable()) {
        // SAFETY: the range is one of this process's own read-only file mappings with no private
        // page (checked just above), so dropping its pages loses nothing: the next access maps the
        // same file contents back.
        let rc = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.len,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released.mappings += 1;
        released.bytes += mapping.len;
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_libtorch_startup_pages() -> std::io::Result<Released> {
    Ok(Released::default())
}

/// [`release_libtorch_startup_pages`] once per process, on a thread of its own, once `serve`
/// listens. Pages that requests touch meanwhile are simply mapped again (minor faults). Once per
/// process because a later reload must not unmap the live model's hot code.
///
/// Not during the model load: the release reads `/proc/self/smaps`, which walks every page table,
/// then drops hundreds of megabytes of mappings, and the TLB shootdowns and refaults land on
/// whatever runs beside it, so overlapping the warm-up slows the warm-up and the cold start.
/// Beside the first request it costs nothing measurable, so it runs as soon as `serve` listens
/// rather than after a delay, which also keeps the peak lower. (Figures: BENCHMARKS.md,
/// "Releasing libtorch's start-up pages".)
///
/// Only `serve` calls it. The one-off commands exit before it would pay off, and a Lambda function
/// (2 GB by default) has no use for the pages back, while a release after its init would land
/// inside an invocation.
pub fn release_libtorch_startup_pages_in_background() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("release-pages".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                match release_libtorch_startup_pages() {
                    Ok(released) => tracing::debug!(
                        mappings = released.mappings,
                        mib = released.bytes >> 20,
                        micros = started.elapsed().as_micros() as u64,
                        "released libtorch's startup pages"
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "libtorch's startup pages stay resident")
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "libtorch's startup pages stay resident");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f00a000-7f00c000 r-xp 00001000 08:01 42                         /opt/libtorch/lib/libtorch_cpu.so
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
7f00c000-7f00d000 r--p 00003000 08:01 42                         /opt/libtorch/lib/libtorch_cpu.so
Size:                  4 kB
Anonymous:             4 kB
7f00d000-7f00e000 rw-p 00004000 08:01 42                         /opt/libtorch/lib/libtorch_cpu.so
Anonymous:             0 kB
7f10a000-7f10c000 r-xp 00001000 08:01 43                         /usr/lib/libc.so.6
Anonymous:             0 kB
55d000-55e000 rw-p 00000000 00:00 0                              [heap]
Anonymous:             4 kB
7f20a000-7f20c000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f30a000-7f30c000 r-xp 00001000 08:01 44                         /opt/libtorch/lib/libc10.so
";

    fn releasable(smaps: &str) -> Vec<(usize, usize)> {
        parse_smaps(smaps)
            .into_iter()
            .filter(Mapping::is_releasable)
            .map(|m| (m.start, m.len))
            .collect()
    }

    #[test]
    fn only_clean_read_only_mappings_of_libtorch_libraries_are_released() {
        // Code: released. Relocated read-only data (private pages), writable data, other
        // libraries, the heap, anonymous memory: kept. A mapping whose Anonymous line is missing
        // counts as written.
        assert_eq!(releasable(SMAPS), vec![(0x7f00a000, 0x2000)]);
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
    fn releasing_covers_the_linked_libtorch_and_forecasts_still_work() {
        let released = release_libtorch_startup_pages().expect("madvise(MADV_DONTNEED)");
        assert!(released.mappings >= 2, "{released:?}");
        assert!(released.bytes > 10 << 20, "{released:?}");
        let engine =
            crate::model::engine::TorchEngine::load(crate::source::BUNDLED_MODEL_PT, 24).unwrap();
        use crate::model::engine::Engine;
        let before = engine.forward(&vec![0.5; 168], 1, 168, 1).unwrap();
        release_libtorch_startup_pages().unwrap();
        let after = engine.forward(&vec![0.5; 168], 1, 168, 1).unwrap();
        assert_eq!(before, after);
    }
}
