//! A real DynamoDB-protocol server for integration tests: `moto_server` on loopback.
//!
//! moto is started through a small `sh` wrapper whose stdin is a pipe from the test
//! process. The wrapper starts moto in the background, prints its PID, and waits on
//! `read`; when the pipe closes (on [`Moto::stop`], on drop, or when the test process
//! exits for any reason, even SIGKILL) it kills moto by that PID and waits for it. So no
//! server outlives its test binary.
//!
//! - [`Moto::shared`]: one server per test binary, started on first use and never
//!   stopped explicitly (the process exit closes the pipe).
//! - [`Moto::start_owned`]: a dedicated server a test may stop mid-test.
//!
//! Clients are built per call and never cached: an SDK client's connection pool belongs
//! to the tokio runtime it first ran on, and every `#[tokio::test]` has its own runtime.
//!
//! Needs `moto_server` on PATH (`pip install "moto[server]"`); a missing one panics, so
//! the store tests never skip silently.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use tokio::sync::OnceCell;

pub const REGION: &str = "us-east-1";
const INSTALL_HINT: &str =
    "moto_server is required for the store tests: pip install \"moto[server]\"";
/// moto answers within 1 s here; a loaded CI machine gets generous slack.
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Runs moto in the background, reports its PID, kills it when stdin closes, and removes
/// its log.
const WRAPPER: &str = r#"moto_server -H 127.0.0.1 -p "$1" </dev/null >/dev/null 2>"$2" &
pid=$!
echo "$pid"
read line
kill "$pid" 2>/dev/null
wait "$pid"
rm -f "$2"
"#;

static SHARED: OnceCell<Moto> = OnceCell::const_new();
static TABLES: AtomicU64 = AtomicU64::new(0);

pub struct Moto {
    addr: SocketAddr,
    /// moto's own PID (the wrapper's child), for liveness checks.
    pid: u32,
    log: PathBuf,
    process: Mutex<Option<Wrapper>>,
}

struct Wrapper {
    child: Child,
    /// Closing this tells the wrapper to kill moto.
    stdin: ChildStdin,
}

impl Moto {
    /// The test binary's one shared server.
    pub async fn shared() -> &'static Moto {
        SHARED.get_or_init(Moto::launch).await
    }

    /// A dedicated server; stop it with [`Moto::stop`], or let drop do it.
    pub async fn start_owned() -> Moto {
        Moto::launch().await
    }

    async fn launch() -> Moto {
        let started = Instant::now();
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("opendify-moto-{}-{port}.log", std::process::id()));
        let mut child = Command::new("sh")
            .args(["-c", WRAPPER, "moto-wrapper"])
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh to start moto_server: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap_or_else(|e| panic!("moto wrapper wrote no PID: {e}"));
        let pid: u32 = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto wrapper wrote {first:?}, not a PID"));
        let moto = Moto {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            log,
            process: Mutex::new(Some(Wrapper { child, stdin })),
        };
        moto.wait_ready().await;
        eprintln!(
            "moto_server pid {pid} on {} ready in {:?}",
            moto.endpoint(),
            started.elapsed()
        );
        moto
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let log = self.log_text();
            if log.contains("not found") || log.contains("No module named") {
                panic!("{INSTALL_HINT}\n--- moto log ---\n{log}");
            }
            if !alive(self.pid) {
                panic!(
                    "moto_server exited during startup ({INSTALL_HINT})\n--- moto log ---\n{log}"
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "moto_server did not open {} within {START_DEADLINE:?}\n--- moto log ---\n{log}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let keep = text.len().saturating_sub(4000);
        text[text.floor_char_boundary(keep)..].to_string()
    }

    /// Stops the server: the wrapper kills moto by its PID and waits for it; this returns
    /// once the port refuses connections.
    pub async fn stop(&self) {
        let wrapper = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut wrapper) = wrapper else { return };
        drop(wrapper.stdin);
        let deadline = Instant::now() + STOP_DEADLINE;
        while matches!(wrapper.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = wrapper.child.kill();
        let _ = wrapper.child.wait();
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "moto on {} did not stop",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The environment a spawned `opendify` needs to reach this server through
    /// `aws_config` without touching IMDS or real credentials.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_DYNAMODB", self.endpoint()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    fn config(&self) -> aws_sdk_dynamodb::config::Builder {
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .endpoint_url(self.endpoint())
    }

    /// A client with the SDK's default timeouts, for setup and assertions.
    pub fn client(&self) -> Client {
        Client::from_conf(self.config().build())
    }

    /// A client with the store's timeout and retry budget, as production uses.
    pub fn store_client(&self) -> Client {
        Client::from_conf(opendify::store::dynamo::with_budget(self.config()).build())
    }

    /// A store on `table` as production builds it (budgeted client).
    pub fn store(&self, table: &str, ttl: Duration) -> opendify::store::DynamoStore {
        opendify::store::DynamoStore::new(self.store_client(), table.to_string(), ttl)
    }

    /// A store on `table` whose item writes (`PutItem`) reach this server `delay` late,
    /// through a relay on loopback; reads and conditional updates pass at once. For tests
    /// of what a client sees while a write is still on its way.
    pub async fn store_with_slow_writes(
        &self,
        table: &str,
        ttl: Duration,
        delay: Duration,
    ) -> opendify::store::DynamoStore {
        let relay = slow_write_relay(self.endpoint(), delay).await;
        let config = opendify::store::dynamo::with_budget(self.config().endpoint_url(relay));
        opendify::store::DynamoStore::new(Client::from_conf(config.build()), table.to_string(), ttl)
    }

    /// Creates a table with a unique name: `pk` (S) hash key, on-demand billing, TTL on
    /// `expires_at`.
    pub async fn fresh_table(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "opendify-test-{}-{}-{nanos}",
            std::process::id(),
            TABLES.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client();
        client
            .create_table()
            .table_name(&name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute definition"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key schema"),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateTable {name}: {}", dbg_err(&e)));
        client
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .expect("ttl specification"),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("UpdateTimeToLive {name}: {}", dbg_err(&e)));
        name
    }

    /// The stored item's attributes (consistent read), or None.
    pub async fn get_item_raw(
        &self,
        table: &str,
        pk: &str,
    ) -> Option<HashMap<String, AttributeValue>> {
        self.client()
            .get_item()
            .table_name(table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .consistent_read(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetItem: {}", dbg_err(&e)))
            .item
    }

    /// Every item of the table (to check what it holds).
    pub async fn scan_raw(&self, table: &str) -> Vec<HashMap<String, AttributeValue>> {
        self.client()
            .scan()
            .table_name(table)
            .consistent_read(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Scan: {}", dbg_err(&e)))
            .items
            .unwrap_or_default()
    }

    /// Writes an item as given, bypassing the store (to plant expired or odd items).
    pub async fn put_item_raw(&self, table: &str, item: HashMap<String, AttributeValue>) {
        self.client()
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutItem: {}", dbg_err(&e)));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let wrapper = self
            .process
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut wrapper) = wrapper {
            drop(wrapper.stdin);
            let deadline = Instant::now() + STOP_DEADLINE;
            while matches!(wrapper.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = wrapper.child.kill();
            let _ = wrapper.child.wait();
        }
    }
}

/// A numeric attribute's value, for assertions on `expires_at` / `updated_at`.
pub fn number(item: &HashMap<String, AttributeValue>, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .unwrap_or_else(|_| panic!("{name} = {n:?} is not an integer")),
        other => panic!("{name} is {other:?}, not a number"),
    }
}

fn dbg_err(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A port nothing listens on right now. moto binds it a moment later; the window for
/// another process to take it is small and a clash fails loudly at the first request.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Whether `pid` runs (a zombie counts as dead). Without /proc, assume it does and let
/// the start deadline decide.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// An HTTP relay to `upstream` that holds each `PutItem` for `delay`. Returns its URL.
async fn slow_write_relay(upstream: String, delay: Duration) -> String {
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, Method, Response, Uri};

    let client = reqwest::Client::new();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let put = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.ends_with(".PutItem"));
            if put {
                tokio::time::sleep(delay).await;
            }
            let mut req = client
                .request(method, format!("{upstream}{uri}"))
                .body(body);
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name, value);
                }
            }
            let answer = req.send().await.expect("moto answers the relay");
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.expect("moto's body");
            response
                .body(Body::from(bytes))
                .expect("a relayed response")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let url = format!("http://{}", listener.local_addr().expect("relay address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(handler)).await;
    });
    url
}
