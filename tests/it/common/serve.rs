//! The real `lstm-forecast serve` binary as a child process: bound to `127.0.0.1:0`, with its
//! address read back from its own log, so no test ever races another for a port.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

pub struct ServeProcess {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    log: Arc<Mutex<String>>,
    /// Woken on every new log line.
    logged: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
}

impl ServeProcess {
    /// Starts `serve` with `args` (`--bind` is added) and `env`, and waits until it listens.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"));
        command
            .arg("serve")
            .args(args)
            .args(["--bind", "127.0.0.1:0"])
            .env("THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start lstm-forecast serve");
        let log = Arc::new(Mutex::new(String::new()));
        let logged = Arc::new(Notify::new());
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let reader = {
            let (log, logged) = (log.clone(), logged.clone());
            let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            tokio::spawn(async move {
                let mut address_tx = Some(address_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        if let Some(tx) = address_tx.take() {
                            let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                        }
                    }
                    log.lock().unwrap().push_str(&(line + "\n"));
                    logged.notify_waiters();
                }
                logged.notify_waiters();
            })
        };
        let address = tokio::time::timeout(Duration::from_secs(60), address_rx)
            .await
            .unwrap_or_else(|_| {
                panic!("serve did not listen within 60 s:\n{}", log.lock().unwrap())
            })
            .unwrap_or_else(|_| panic!("serve exited before listening:\n{}", log.lock().unwrap()));
        ServeProcess {
            child,
            base: format!("http://{address}"),
            log,
            logged,
            reader,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until its log holds `needle` (a condition, never a fixed sleep).
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let waited = tokio::time::timeout(within, async {
            loop {
                let notified = self.logged.notified();
                if self.log.lock().unwrap().contains(needle) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "serve never logged {needle:?} within {within:?}:\n{}",
            self.log()
        );
    }

    /// Its peak resident set (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.id().expect("still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// Sends SIGTERM (what ECS, Kubernetes and systemd send).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for it to exit; returns whether it exited 0, and its whole log.
    pub async fn wait(mut self, within: Duration) -> (bool, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("serve did not exit within {within:?}:\n{}", self.log()))
            .unwrap();
        // The log ends when the pipe closes: read it to the end rather than guess how long.
        (&mut self.reader).await.unwrap();
        (status.success(), self.log())
    }
}

/// The value of one Prometheus series (name and labels exactly as rendered), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The sum of every series of a Prometheus family (any labels), if it has any.
pub fn metric_sum(text: &str, family: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
