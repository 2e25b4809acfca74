//! Helpers shared by the benchmark binaries (each includes this file with `#[path]`).
#![allow(dead_code)]

pub mod image;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Spawns `command` (a `serve` bound to port 0, logging at info), waits for its `listening on`
/// line and returns the child and the address it listens on. The log keeps being drained, so the
/// child never blocks on a full pipe.
pub fn spawn_serve(mut command: Command) -> (Child, String) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, address)
}

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
