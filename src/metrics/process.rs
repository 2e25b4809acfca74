//! The process's own resources: its CPU use (the `CPUUtilization` metric, a share of the CPUs
//! the process may use over each sampling period, and Prometheus's standard
//! `process_cpu_seconds_total`) and its memory (resident set and jemalloc's live heap).

use std::sync::Mutex;
use std::time::Instant;

/// User plus system CPU time this process has used, in seconds (`getrusage`).
pub fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// CPU share between one sample and the next, in percent of `cpus` (so 100 means every CPU the
/// process may use was busy the whole period).
pub struct CpuShare {
    cpus: usize,
    last: Mutex<Option<(Instant, f64)>>,
}

impl CpuShare {
    pub fn new(cpus: usize) -> Self {
        CpuShare {
            cpus: cpus.max(1),
            last: Mutex::new(cpu_seconds().map(|s| (Instant::now(), s))),
        }
    }

    /// The share since the previous call (or since creation); `None` on the first reading or
    /// when the clock did not move.
    pub fn sample(&self) -> Option<f64> {
        let now = (Instant::now(), cpu_seconds()?);
        let previous = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(now)?;
        let wall = now.0.duration_since(previous.0).as_secs_f64();
        (wall > 0.0)
            .then(|| (100.0 * (now.1 - previous.1) / (wall * self.cpus as f64)).clamp(0.0, 100.0))
    }
}

/// Current resident set size of this process, from /proc (Linux); `None` elsewhere.
pub fn resident_set_bytes() -> Option<f64> {
    status_bytes("VmRSS:")
}

/// The largest resident set size this process has had (Linux); `None` elsewhere.
pub fn peak_resident_set_bytes() -> Option<f64> {
    status_bytes("VmHWM:")
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// Bytes of live allocations (jemalloc's count, libtorch's included); `None` under another
/// allocator.
pub fn live_heap_bytes() -> Option<f64> {
    crate::allocator::allocated_bytes().map(|bytes| bytes as f64)
}

/// The process's own readings, taken at scrape time: `process_cpu_seconds_total`,
/// `lstm_forecast_memory_rss_bytes` and `lstm_forecast_heap_allocated_bytes`. A gauge set on the
/// flush period would be up to a period old, and a leak hunt (or `make soak`'s idle checkpoints)
/// needs the memory of the moment it asks. Unlabeled, as Prometheus's own process metrics are.
pub struct ProcessCollector {
    descs: Vec<prometheus::core::Desc>,
}

enum Kind {
    Counter,
    Gauge,
}

struct ProcessReading {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    read: fn() -> Option<f64>,
}

const PROCESS_READINGS: [ProcessReading; 3] = [
    ProcessReading {
        name: "process_cpu_seconds_total",
        help: "Total user and system CPU time spent in seconds.",
        kind: Kind::Counter,
        read: cpu_seconds,
    },
    ProcessReading {
        name: "lstm_forecast_memory_rss_bytes",
        help: "Resident set size of the process (CloudWatch metric MemoryRss).",
        kind: Kind::Gauge,
        read: resident_set_bytes,
    },
    ProcessReading {
        name: "lstm_forecast_heap_allocated_bytes",
        help: "Bytes of live allocations, libtorch's included (jemalloc; CloudWatch metric HeapAllocated).",
        kind: Kind::Gauge,
        read: live_heap_bytes,
    },
];

impl ProcessCollector {
    pub fn new() -> Self {
        let descs = PROCESS_READINGS
            .iter()
            .map(|reading| {
                prometheus::core::Desc::new(
                    reading.name.into(),
                    reading.help.into(),
                    Vec::new(),
                    Default::default(),
                )
                .expect("a valid descriptor")
            })
            .collect();
        ProcessCollector { descs }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl prometheus::core::Collector for ProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        PROCESS_READINGS
            .iter()
            // Where a reading is unavailable (no /proc, not jemalloc) the family is absent, not 0.
            .filter_map(|reading| {
                let value = (reading.read)()?;
                let opts = prometheus::Opts::new(reading.name, reading.help);
                Some(match reading.kind {
                    Kind::Counter => {
                        let counter =
                            prometheus::Counter::with_opts(opts).expect("a valid counter");
                        counter.inc_by(value);
                        prometheus::core::Collector::collect(&counter)
                    }
                    Kind::Gauge => {
                        let gauge = prometheus::Gauge::with_opts(opts).expect("a valid gauge");
                        gauge.set(value);
                        prometheus::core::Collector::collect(&gauge)
                    }
                })
            })
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_as_a_share_of_the_cpus() {
        let share = CpuShare::new(2);
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        // One of two CPUs busy for the whole period: about 50%.
        let percent = share.sample().unwrap();
        assert!((20.0..=100.0).contains(&percent), "{percent}");
    }
}
