//! Real emulators on 127.0.0.1, started and stopped by the tests: moto (S3, CloudFormation),
//! ministack (CloudWatch, and SNS/SQS for alarm notifications) and cargo-lambda's Lambda Runtime
//! API. `make test` installs them (scripts/python-tools.sh); run alone, the tests look in
//! $LSTM_FORECAST_TOOLS, else $LSTM_FORECAST_CACHE/tools-venv (default ~/.cache/lstm-forecast).
//!
//! Why two AWS emulators: aws-sdk-cloudwatch >= 1.100 speaks only Smithy RPC v2 CBOR, which moto
//! cannot answer (moto issue #9195); ministack can, and it evaluates alarms (with limits: see
//! [`Ministack`]). A process under test that needs both gets S3 on moto through `AWS_ENDPOINT_URL`
//! and CloudWatch on ministack through `AWS_ENDPOINT_URL_CLOUDWATCH`, which the SDK prefers
//! ([`Ministack::env_for_cloudwatch`]).

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

/// A loopback port free now and never handed out before in this test process. The port is
/// released before the emulator binds it, so two tests starting emulators at once could be given
/// the same one by the kernel: the second emulator would fail to bind, its wait would see the
/// first one listening, and its test would lose its emulator when the other test ended.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
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

/// Runs `start` on a thread that parks forever, and returns what it made: a process started there
/// with `PR_SET_PDEATHSIG` dies with that thread, so with the test process (a static's emulator is
/// never dropped).
fn on_a_thread_that_lives_forever<T: Send + 'static>(start: fn() -> T) -> T {
    let (started, made) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        started.send(start()).unwrap();
        loop {
            std::thread::park();
        }
    });
    made.recv().unwrap()
}

/// Starts `command` in a process group of its own (see [`Group`]), output discarded, and waits
/// until it listens on `port`. `dies_with_this_thread`: the kernel kills it when the calling thread
/// exits (`PR_SET_PDEATHSIG`), for emulators shared by a whole test binary.
fn spawn_listening(
    mut command: Command,
    port: u16,
    what: &str,
    dies_with_this_thread: bool,
) -> Child {
    command
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
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    wait_for_port(port, what, &mut child);
    child
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

/// moto_server: S3 and CloudFormation on a free loopback port.
pub struct Moto {
    pub endpoint: String,
    _process: Group,
}

impl Moto {
    /// A moto of this test's own, for tests that need isolation (the same bucket or registry as
    /// another test).
    pub fn start() -> Self {
        Self::spawn(false, &[])
    }

    /// A moto of this test's own with moto settings from `env` (e.g. `S3_UPLOAD_PART_MIN_SIZE`).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self::spawn(false, env)
    }

    /// One moto for the whole test binary, for tests that need no isolation: each uses its own
    /// bucket, namespace or dimensions. A static is never dropped, so this moto is tied to the
    /// test process instead: the kernel kills it when the thread that started it exits
    /// (`PR_SET_PDEATHSIG`), and that thread lives as long as the process.
    pub fn shared() -> &'static Moto {
        static SHARED: std::sync::OnceLock<Moto> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| on_a_thread_that_lives_forever(|| Moto::spawn(true, &[])))
    }

    fn spawn(dies_with_this_thread: bool, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = Command::new(tools_bin("moto_server"));
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied());
        let child = spawn_listening(command, port, "moto_server", dies_with_this_thread);
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: Group(child),
        }
    }

    /// Environment for a process (or SDK) that should talk to this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        Self::env_at(&self.endpoint)
    }

    /// [`Moto::env`] for an endpoint in front of a moto (a proxy that injects faults).
    pub fn env_at(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", endpoint.to_owned()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// [`Moto::env`] with S3's own endpoint variable (`AWS_ENDPOINT_URL_S3`) in place of the
    /// shared one, for a process whose other AWS calls go elsewhere. Its host is `localhost`, a
    /// name: on an IP endpoint the SDK addresses buckets path-style by itself, so only a name shows
    /// that the process asks for path-style addressing (`bucket.localhost` does not resolve).
    pub fn env_for_s3_only(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        for (name, value) in env.iter_mut() {
            if *name == "AWS_ENDPOINT_URL" {
                *name = "AWS_ENDPOINT_URL_S3";
                *value = value.replace("127.0.0.1", "localhost");
            }
        }
        env
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        s3_at(&self.endpoint)
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

/// Every key under `prefix` in `bucket`, in key order.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("list s3://{bucket}/{prefix}: {e:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys
}

/// An object's text.
pub async fn read_text(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get s3://{bucket}/{key}: {e:?}"));
    let bytes = object.body.collect().await.unwrap().into_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// An S3 client for an emulator at `endpoint` (path-style: `bucket.127.0.0.1` does not resolve).
pub fn s3_at(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new(REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// ministack: CloudWatch, SNS and SQS on a free loopback port (`SERVICES` keeps the rest of its
/// services off; `DOCKER_HOST` points nowhere, so it never looks for a Docker daemon: nothing here
/// runs containers).
///
/// Its CloudWatch evaluates metric alarms, with limits (ministack 1.5.33) that a test must respect:
/// - an alarm is evaluated only when PutMetricData or PutMetricAlarm is called, never on a timer,
///   so no alarm changes state on its own while a test waits;
/// - the whole `Period x EvaluationPeriods` window before now is folded into one value of the
///   alarm's statistic: `DatapointsToAlarm`, `TreatMissingData` and
///   `EvaluateLowSampleCountPercentile` are stored, not used;
/// - dimensions are ignored during evaluation: every datum of the alarm's namespace and metric
///   counts, so a test that evaluates an alarm needs a ministack of its own ([`Ministack::start`]);
/// - only SNS actions fire (a Lambda action is stored, never invoked); a subscribed SQS queue has
///   the notification before PutMetricData answers;
/// - metric-math alarms (`Metrics`) are stored, not evaluated.
///
/// Queries (GetMetricStatistics, GetMetricData) match the exact dimension set, as CloudWatch does.
pub struct Ministack {
    pub endpoint: String,
    _process: Group,
}

impl Ministack {
    /// A ministack of this test's own: needed by any test that evaluates alarms (see above).
    pub fn start() -> Self {
        Self::spawn(false, "cloudwatch,sns,sqs")
    }

    /// A ministack of this test's own running S3, Lambda (functions as local processes, no
    /// Docker) and Step Functions, with Step Functions' waits and retry back-offs made instant
    /// (`SFN_WAIT_SCALE=0`): the state machine end to end.
    pub fn start_step_functions() -> Self {
        Self::spawn(false, "s3,lambda,stepfunctions")
    }

    /// One ministack for the whole test binary, for tests that only publish and query metrics,
    /// each under its own namespace or dimensions. Tied to the test process like [`Moto::shared`].
    pub fn shared() -> &'static Ministack {
        static SHARED: std::sync::OnceLock<Ministack> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            on_a_thread_that_lives_forever(|| Ministack::spawn(true, "cloudwatch,sns,sqs"))
        })
    }

    fn spawn(dies_with_this_thread: bool, services: &str) -> Self {
        let port = free_port();
        // Its pid file (`ministack-PORT.pid`, left behind when it is killed) goes to a directory
        // of its own, not into /tmp itself.
        let tmp = std::env::temp_dir().join("lstm-forecast-ministack");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut command = Command::new(tools_bin("ministack"));
        command
            .env("GATEWAY_PORT", port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("SERVICES", services)
            .env("LAMBDA_EXECUTOR", "local")
            .env("SFN_WAIT_SCALE", "0")
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env("LOG_LEVEL", "WARNING")
            .env("TMPDIR", &tmp);
        let child = spawn_listening(command, port, "ministack", dies_with_this_thread);
        Ministack {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: Group(child),
        }
    }

    /// What a process that talks to moto (`Moto::env`) also needs for its CloudWatch calls to reach
    /// this ministack: the SDK's per-service endpoint, which wins over `AWS_ENDPOINT_URL`.
    pub fn env_for_cloudwatch(&self) -> (&'static str, String) {
        ("AWS_ENDPOINT_URL_CLOUDWATCH", self.endpoint.clone())
    }

    /// Environment for a process that talks to this ministack only.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
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
        Self::start_at(&emulator.runtime_api(), env)
    }

    /// The function against any Runtime API (`AWS_LAMBDA_RUNTIME_API`), such as
    /// [`super::runtime_api::RuntimeApiDouble`]. A variable whose value is empty is removed from
    /// the environment instead of set.
    pub fn start_at(runtime_api: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lstm-forecast"));
        command
            .arg("lambda")
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
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

    /// For the shard bench's peak-RSS readings (benches/shards.rs); no test reads it.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Runs `command` to its end: whether it succeeded, and what it printed (stdout, then stderr).
pub fn outcome(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// Runs the CLI against this moto; returns success and stdout + stderr.
pub fn cli(moto: &Moto, args: &[&str]) -> (bool, String) {
    outcome(
        Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
            .args(args)
            .envs(moto.env())
            .env("THREADS", "1"),
    )
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
            .key(format!(
                "{prefix}/forecasts/origin={hour}/firehose-delivery-{n}"
            ))
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
}

/// Runs the tools venv's Python with `args` in the repository and parses what it prints as JSON:
/// the helpers under tests/ that read templates and drive SNS and SQS.
pub fn python_json(args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(tools_bin("python"))
        .args(args)
        .current_dir(super::repo_path(""))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
