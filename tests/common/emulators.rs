//! Real emulators on 127.0.0.1, started and stopped by the tests: moto (S3) and cargo-lambda's
//! Lambda Runtime API. `make test` installs them (scripts/python-tools.sh); run alone, the tests
//! look in $LSTM_FORECAST_TOOLS, else $LSTM_FORECAST_CACHE/tools-venv (default ~/.cache/lstm-forecast).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

pub fn tools_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("LSTM_FORECAST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("LSTM_FORECAST_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/lstm-forecast")
                })
                .join("tools-venv")
        });
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make test` (it installs the emulators with scripts/python-tools.sh)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 60 s");
}

/// A process group killed on drop, so children it spawned die with it.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// moto_server: S3 (and CloudWatch) on a free loopback port.
pub struct Moto {
    pub endpoint: String,
    _process: Group,
}

impl Moto {
    /// A moto of this test's own, for tests that need isolation (the same bucket or registry as
    /// another test).
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// One moto for the whole test binary, for tests that need no isolation: each uses its own
    /// bucket, namespace or dimensions. A static is never dropped, so this moto is tied to the
    /// test process instead: the kernel kills it when the thread that started it exits
    /// (`PR_SET_PDEATHSIG`), and that thread lives as long as the process.
    pub fn shared() -> &'static Moto {
        static SHARED: std::sync::OnceLock<Moto> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let (started, moto) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                started.send(Moto::spawn(true)).unwrap();
                loop {
                    std::thread::park();
                }
            });
            moto.recv().unwrap()
        })
    }

    fn spawn(dies_with_this_thread: bool) -> Self {
        let port = free_port();
        let mut command = Command::new(tools_bin("moto_server"));
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if dies_with_this_thread {
            // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("start moto_server");
        wait_for_port(port, "moto_server", &mut child);
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: Group(child),
        }
    }

    /// Environment for a process (or SDK) that should talk to this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new(REGION))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn cloudwatch(&self) -> aws_sdk_cloudwatch::Client {
        let config = aws_sdk_cloudwatch::Config::builder()
            .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_cloudwatch::config::Region::new(REGION))
            .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        aws_sdk_cloudwatch::Client::from_conf(config)
    }

    pub async fn create_bucket(&self, bucket: &str) -> aws_sdk_s3::Client {
        let s3 = self.s3().await;
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
        s3
    }
}

/// cargo-lambda's Lambda Runtime API emulator (`cargo lambda watch --only-lambda-apis`).
pub struct LambdaEmulator {
    pub port: u16,
    _process: Group,
}

impl LambdaEmulator {
    pub fn start() -> Self {
        let port = free_port();
        let mut child = Command::new(tools_bin("cargo-lambda"))
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start cargo lambda watch");
        wait_for_port(port, "cargo lambda watch", &mut child);
        LambdaEmulator {
            port,
            _process: Group(child),
        }
    }

    /// `AWS_LAMBDA_RUNTIME_API` for a function attached to this emulator.
    pub fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}/.rt", self.port)
    }

    /// Invokes the function through the Invoke API; returns the HTTP status and the payload.
    pub async fn invoke(&self, event: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/2015-03-31/functions/_/invocations",
                self.port
            ))
            .json(event)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("invoke");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let payload = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        (status, payload)
    }
}

/// Our binary, running as a Lambda function against an emulator.
pub struct Function {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The threads copying stdout and stderr into `log`; they end when the process closes them.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Function {
    pub fn start(emulator: &LambdaEmulator, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lstm-forecast"));
        command
            .arg("lambda")
            .env("AWS_LAMBDA_RUNTIME_API", emulator.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start the function");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            }));
        }
        Function {
            child,
            log,
            readers,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its log once it holds `needle`: an invocation's answer can arrive before the reader
    /// threads have copied its last lines out of the pipes.
    pub fn log_once_it_holds(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit (init failures), returning its success and its log.
    pub fn wait_exit(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its pipes are closed: the readers finish with its last words.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return (status.success(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the function did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn event(name: &str) -> serde_json::Value {
    let path = super::repo_path(&format!("tests/fixtures/events/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Runs the CLI against this moto; returns success and stdout + stderr.
pub fn cli(moto: &Moto, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(args)
        .envs(moto.env())
        .env("THREADS", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// What the template's log subscription and Firehose stream do with the function's forecast log:
/// the `expected` log lines that carry a forecast record (`{"forecast_record": ...}`) written
/// after byte `since` of its log, delivered as one JSON Lines object per origin hour under
/// `PREFIX/forecasts/origin=HOUR/`, as Firehose's message extraction and dynamic partitioning
/// (`.forecast_record.origin[0:13]`) write them. (Neither CloudWatch Logs subscriptions nor Firehose
/// run offline; the lines are the function's real output, and the object is what `evaluate` reads
/// in AWS.) Waits for the lines: the log is read from the function's pipes as it comes.
pub async fn deliver_forecast_log(
    function: &Function,
    since: usize,
    expected: usize,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) {
    let records = |log: &str| -> Vec<String> {
        log[since..]
            .lines()
            .filter(|l| l.starts_with("{\"forecast_record\""))
            .map(str::to_owned)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = records(&function.log());
    while lines.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = records(&function.log());
    }
    assert_eq!(
        lines.len(),
        expected,
        "logged forecasts:\n{}",
        function.log()
    );
    let mut by_origin_hour: std::collections::BTreeMap<String, String> = Default::default();
    for line in lines {
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        let hour = parsed["forecast_record"]["origin"].as_str().unwrap()[0..13].to_string();
        let delivery = by_origin_hour.entry(hour).or_default();
        delivery.push_str(&line);
        delivery.push('\n');
    }
    static DELIVERY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for (hour, body) in by_origin_hour {
        let n = DELIVERY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s3.put_object()
            .bucket(bucket)
            .key(format!("{prefix}/forecasts/origin={hour}/firehose-delivery-{n}"))
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
}
