//! Helpers shared by the benchmark binaries (each includes this file with `#[path]`).
#![allow(dead_code)]

pub mod image;

/// Resident set size of process `pid` in MB, from /proc (0 when unreadable).
pub fn rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:") / 1024.0
}

/// Peak resident set size (VmHWM) of process `pid` in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:") / 1024.0
}

/// A `/proc/PID/status` field given in kB (`RssAnon:`, `RssFile:`), in MB.
pub fn status_mb(pid: u32, key: &str) -> f64 {
    status_kb(pid, key) / 1024.0
}

fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}
