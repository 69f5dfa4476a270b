//! The `invoq` binary. `invoq serve` runs every service in one process on embedded defaults;
//! `invoq frontend | runtime | queue | worker | router | pollers` run one service each and find
//! the others by address (`INVOQ_*_ADDR`). Both modes build the same service objects: only
//! the handles they receive differ (in-process objects, or gRPC clients and SQS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use aws_config::SdkConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use invoq_destinations::Destination;
use invoq_domain::Location;
use invoq_frontend::server::HttpLimits;
use invoq_frontend::{AccessKeys, Frontend};
use invoq_pollers::{Pollers, SqsSourceChecker};
use invoq_proto::bearer::{GrpcToken, RequireToken};
use invoq_proto::v1::queue_server::QueueServer;
use invoq_proto::v1::registry_server::RegistryServer;
use invoq_proto::v1::runtime_server::RuntimeServer;
use invoq_queue::grpc::{QueueGrpcClient, QueueGrpcServer};
use invoq_queue::{
    EmbeddedQueue, EmbeddedQueueOptions, EventQueue, PayloadBucket, SqsQueue, SqsQueueOptions,
};
use invoq_registry::grpc::{RegistryGrpcClient, RegistryGrpcServer};
use invoq_registry::{LocalRegistry, Registry};
use invoq_router::{Router, RouterConfig};
use invoq_runtime::grpc::{RuntimeGrpcClient, RuntimeGrpcServer};
use invoq_runtime::{
    DEFAULT_SANDBOX_UID_BASE, FunctionCredentials, LocalRuntime, RuntimeService, SandboxIsolation,
    SandboxOptions,
};
use invoq_worker::policy::RetryPolicy;
use invoq_worker::{Worker, WorkerConfig};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

/// mimalloc rather than glibc's malloc: every event allocates on several threads (HTTP,
/// queue writer, worker, router), and glibc's arenas showed up in profiles with about 5% of
/// the CPU (`invoq bench`, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "invoq",
    version,
    about = "AWS Lambda's invocation machinery, self-hosted"
)]
struct Cli {
    #[command(flatten)]
    grpc: GrpcTokenArgs,
    #[command(subcommand)]
    command: Command,
}

/// The shared secret of the gRPC services (every invoq process of a deployment gets the same).
#[derive(Debug, Args)]
struct GrpcTokenArgs {
    /// Bearer token every gRPC call between invoq services carries and every service but
    /// health checks requires; needed to serve gRPC off loopback.
    #[arg(long, env = "INVOQ_GRPC_TOKEN", global = true, hide_env_values = true)]
    grpc_token: Option<String>,
    /// A file whose first line is the gRPC token (instead of --grpc-token).
    #[arg(long, env = "INVOQ_GRPC_TOKEN_FILE", global = true)]
    grpc_token_file: Option<PathBuf>,
}

impl GrpcTokenArgs {
    fn token(&self) -> anyhow::Result<Option<GrpcToken>> {
        let secret = match (&self.grpc_token, &self.grpc_token_file) {
            (Some(token), _) if !token.is_empty() => token.clone(),
            (_, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the gRPC token in {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            _ => return Ok(None),
        };
        Ok(Some(GrpcToken::new(&secret).context("--grpc-token")?))
    }
}

/// The gRPC token, read once from the command line (every client and server takes it).
static GRPC_TOKEN: std::sync::OnceLock<Option<GrpcToken>> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process (embedded defaults).
    Serve {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        common: CommonArgs,
        /// Also serve the runtime, the queue and the registry over gRPC here, for services
        /// running elsewhere.
        #[arg(long, env = "INVOQ_GRPC_ADDR")]
        grpc_addr: Option<SocketAddr>,
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        asynchronous: AsyncArgs,
        #[command(flatten)]
        destinations: DestinationArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Run only the Lambda-compatible HTTP API, and the registry over gRPC.
    Frontend {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        common: CommonArgs,
        /// Where to serve the registry (functions, async settings, mappings) over gRPC.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9101")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        runtime: RuntimeAddr,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Run only the runtime service (function processes and builtins), over gRPC.
    Runtime {
        #[command(flatten)]
        common: CommonArgs,
        /// Where to serve gRPC.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9102")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Run only the event queue (embedded, memory or SQS backend), over gRPC.
    Queue {
        #[command(flatten)]
        common: CommonArgs,
        /// Where to serve gRPC.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9103")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Run only the retry worker: lease events, run them, settle them.
    Worker {
        /// Where to serve gRPC health checks.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9104")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        registry: RegistryAddr,
        #[command(flatten)]
        runtime: RuntimeAddr,
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        asynchronous: AsyncArgs,
    },
    /// Run only the destination router: deliver outcomes to destinations and DLQs.
    Router {
        #[command(flatten)]
        common: CommonArgs,
        /// Where to serve gRPC health checks.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9105")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        registry: RegistryAddr,
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        asynchronous: AsyncArgs,
        #[command(flatten)]
        destinations: DestinationArgs,
    },
    /// Run only the event source mapping pollers (SQS).
    Pollers {
        /// Where to serve gRPC health checks.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9106")]
        grpc_addr: SocketAddr,
        #[command(flatten)]
        registry: RegistryAddr,
        #[command(flatten)]
        runtime: RuntimeAddr,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Load-test the invoke paths (see BENCHMARKS.md): per-event stage latencies, lost and
    /// duplicated events, JSON and HTML reports.
    Bench(Box<invoq_bench::BenchArgs>),
    /// The bare HTTP server of `invoq bench`'s baseline: 202 to every request.
    #[command(hide = true)]
    Baseline {
        #[arg(long, default_value = "127.0.0.1:9001")]
        http_addr: SocketAddr,
    },
    /// Ask a service's grpc.health.v1 endpoint whether it serves; exits non-zero if not.
    Health {
        /// The service's gRPC address, e.g. http://127.0.0.1:9102.
        address: String,
        /// The service name to ask about; empty asks about the whole process.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// List the managed runtimes (python3.x, nodejs*.x) this host can run, or install their
    /// runtime interface clients ahead of the first cold start.
    Runtimes {
        #[command(subcommand)]
        action: RuntimesAction,
        /// Where invoq keeps its state.
        #[arg(
            long,
            global = true,
            env = "INVOQ_DATA_DIR",
            default_value = "./.invoq"
        )]
        data_dir: PathBuf,
        /// Where managed runtimes' interface clients are installed (default:
        /// <data-dir>/runtimes).
        #[arg(long, global = true, env = "INVOQ_RUNTIMES_DIR")]
        runtimes_dir: Option<PathBuf>,
    },
    /// List or redrive outcomes the router could not deliver, on a running invoq.
    Parked {
        #[command(subcommand)]
        action: ParkedAction,
        /// The running invoq's API.
        #[arg(
            long,
            global = true,
            env = "INVOQ_ENDPOINT_URL",
            default_value = "http://127.0.0.1:9001"
        )]
        endpoint_url: String,
    },
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// Where to serve the Lambda REST API.
    #[arg(long, env = "INVOQ_HTTP_ADDR", default_value = "127.0.0.1:9001")]
    http_addr: SocketAddr,
    /// Account id used in ARNs.
    #[arg(long, env = "INVOQ_ACCOUNT_ID", default_value = "000000000000")]
    account_id: String,
    /// Region used in ARNs.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// SigV4 authentication of the API: auto (on unless --http-addr is a loopback
    /// address), on, or off (logged as a warning).
    #[arg(long, env = "INVOQ_AUTH", value_enum, default_value = "auto")]
    auth: AuthSetting,
    /// A file of access keys requests may be signed with, one ACCESS_KEY_ID:SECRET per line.
    #[arg(long, env = "INVOQ_ACCESS_KEYS_FILE")]
    access_keys_file: Option<PathBuf>,
    /// Access keys as ID:SECRET pairs separated by commas (beside the file's).
    #[arg(long, env = "INVOQ_ACCESS_KEYS", hide_env_values = true)]
    access_keys: Option<String>,
    /// Connections served at once; past it new ones get 503 and are closed.
    #[arg(long, env = "INVOQ_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    http_max_connections: usize,
    /// Seconds a client has to send a request's headers (idle keep-alive included).
    #[arg(long, env = "INVOQ_HTTP_HEADER_TIMEOUT", default_value_t = 10.0)]
    http_header_timeout: f64,
    /// MiB of request bodies received at once, across all connections; past it requests
    /// wait a second, then get 429.
    #[arg(long, env = "INVOQ_HTTP_BODY_BUDGET_MB", default_value_t = 160)]
    http_body_budget_mb: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthSetting {
    Auto,
    On,
    Off,
}

impl HttpArgs {
    /// The keys requests must be signed with, or `None` when authentication is off. Refuses
    /// to run a non-loopback API with no keys.
    fn access_keys(&self) -> anyhow::Result<Option<Arc<AccessKeys>>> {
        let on = match self.auth {
            AuthSetting::On => true,
            AuthSetting::Auto => !self.http_addr.ip().is_loopback(),
            AuthSetting::Off => {
                tracing::warn!(
                    addr = %self.http_addr,
                    "authentication is off (--auth off): anyone who reaches the API can run code"
                );
                false
            }
        };
        if !on {
            return Ok(None);
        }
        let mut text = String::new();
        if let Some(path) = &self.access_keys_file {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the access keys in {}", path.display()))?;
            text.push('\n');
        }
        text.push_str(self.access_keys.as_deref().unwrap_or_default());
        let keys = AccessKeys::parse(&text).context("invalid access keys")?;
        anyhow::ensure!(
            !keys.is_empty(),
            "the API on {} needs SigV4 authentication (it is not a loopback address, or --auth \
             on) but no access keys are configured: set INVOQ_ACCESS_KEYS or \
             --access-keys-file, or pass --auth off to run it open",
            self.http_addr
        );
        Ok(Some(Arc::new(keys)))
    }
}

/// How function processes are isolated (ARCHITECTURE.md, "Sandboxes").
#[derive(Debug, Args)]
struct SandboxArgs {
    /// auto: Linux namespaces, a uid per sandbox and a root of its own where invoq runs as
    /// root and the kernel allows it, the process fallback (with a warning) elsewhere;
    /// namespaces: those or refuse to start; process: a clean environment and limits only.
    #[arg(long = "sandbox", env = "INVOQ_SANDBOX", default_value = "auto")]
    isolation: SandboxIsolation,
    /// AWS credentials every function gets, ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN].
    /// Functions never inherit invoq's own.
    #[arg(long, env = "INVOQ_FUNCTION_CREDENTIALS", hide_env_values = true)]
    function_credentials: Option<FunctionCredentials>,
    /// The first uid sandboxes run as; each live sandbox takes the next free one.
    #[arg(long, env = "INVOQ_SANDBOX_UID_BASE", default_value_t = DEFAULT_SANDBOX_UID_BASE)]
    sandbox_uid_base: u32,
    #[command(flatten)]
    runtimes: RuntimesDir,
}

impl SandboxArgs {
    fn options(&self) -> SandboxOptions {
        SandboxOptions {
            isolation: self.isolation,
            function_credentials: self.function_credentials.clone(),
            uid_base: self.sandbox_uid_base,
            runtimes_dir: self.runtimes.runtimes_dir.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct RuntimesDir {
    /// Where managed runtimes' interface clients are installed (default:
    /// <data-dir>/runtimes).
    #[arg(long, env = "INVOQ_RUNTIMES_DIR")]
    runtimes_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RuntimesAction {
    /// Print each managed runtime: its interpreter here (or why there is none), its client
    /// and whether it is installed.
    List,
    /// Install the runtime interface client of each named runtime (pip or npm, with their
    /// progress); already installed ones are left as they are.
    Install {
        /// Runtimes to install, e.g. python3.11 nodejs20.x.
        #[arg(required_unless_present = "all")]
        runtimes: Vec<String>,
        /// Every runtime this host has the interpreter for.
        #[arg(long, conflicts_with = "runtimes")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ParkedAction {
    /// Print the parked outcomes (JSON).
    List,
    /// Send every parked outcome back to the router.
    Redrive,
}

#[derive(Debug, Args)]
struct RuntimeAddr {
    /// The runtime service's gRPC address.
    #[arg(
        long,
        env = "INVOQ_RUNTIME_ADDR",
        default_value = "http://127.0.0.1:9102"
    )]
    runtime_addr: String,
}

impl RuntimeAddr {
    fn connect(&self) -> anyhow::Result<Arc<dyn RuntimeService>> {
        let client = RuntimeGrpcClient::connect_lazy(&self.runtime_addr, grpc_token())
            .with_context(|| format!("runtime address {}", self.runtime_addr))?;
        Ok(Arc::new(client))
    }
}

#[derive(Debug, Args)]
struct RegistryAddr {
    /// The frontend's registry (gRPC) address.
    #[arg(
        long,
        env = "INVOQ_REGISTRY_ADDR",
        default_value = "http://127.0.0.1:9101"
    )]
    registry_addr: String,
}

impl RegistryAddr {
    fn connect(&self) -> anyhow::Result<RegistryGrpcClient> {
        RegistryGrpcClient::connect_lazy(&self.registry_addr, grpc_token())
            .with_context(|| format!("registry address {}", self.registry_addr))
    }
}

#[derive(Debug, Args)]
struct QueueArgs {
    /// Where queued events live: embedded (on disk in the data dir), memory, or sqs (SQS FIFO
    /// queues through the standard AWS environment). Services other than `serve` and `queue`
    /// use SQS directly when it is `sqs`, and the queue service at --queue-addr otherwise.
    #[arg(long, env = "INVOQ_QUEUE", default_value = "embedded")]
    queue: QueueBackend,
    /// The queue service's gRPC address.
    #[arg(
        long,
        env = "INVOQ_QUEUE_ADDR",
        default_value = "http://127.0.0.1:9103"
    )]
    queue_addr: String,
    /// Event invokes are refused with 429 past this many queued events.
    #[arg(long, env = "INVOQ_QUEUE_DEPTH_LIMIT", default_value_t = 1_000_000)]
    queue_depth_limit: u64,
    /// Embedded backend: MiB of database pages kept in memory.
    #[arg(long, env = "INVOQ_QUEUE_CACHE_MB", default_value_t = 32)]
    queue_cache_mb: usize,
    /// SQS backend: queues are named <prefix><queue>.fifo.
    #[arg(long, env = "INVOQ_SQS_QUEUE_PREFIX", default_value = "invoq-")]
    sqs_queue_prefix: String,
    /// SQS backend: largest message, and the MaximumMessageSize of the queues invoq creates
    /// (up to 1048576 where SQS allows it). Event invokes too large for it get 413.
    #[arg(long, env = "INVOQ_SQS_MAX_MESSAGE_BYTES", default_value_t = invoq_queue::SQS_DEFAULT_MAX_MESSAGE_BYTES)]
    sqs_max_message_bytes: usize,
    /// SQS backend: an S3 bucket for bodies larger than a message (the extended-client
    /// pattern). Without one, Event invokes too large for a message get 413.
    #[arg(long, env = "INVOQ_SQS_PAYLOAD_BUCKET")]
    sqs_payload_bucket: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum QueueBackend {
    Embedded,
    Memory,
    Sqs,
}

impl QueueArgs {
    /// The queue this process owns (`serve`, `queue`).
    fn open(&self, data_dir: &Path, aws: &SdkConfig) -> anyhow::Result<Arc<dyn EventQueue>> {
        let options = EmbeddedQueueOptions {
            max_depth: self.queue_depth_limit,
            cache_bytes: self.queue_cache_mb << 20,
        };
        let queue: Arc<dyn EventQueue> =
            match self.queue {
                QueueBackend::Embedded => {
                    let path = data_dir.join("queue.redb");
                    Arc::new(EmbeddedQueue::open(&path, options).with_context(|| {
                        format!("cannot open the event queue {}", path.display())
                    })?)
                }
                QueueBackend::Memory => Arc::new(EmbeddedQueue::in_memory(options)?),
                QueueBackend::Sqs => self.sqs(aws)?,
            };
        Ok(queue)
    }

    /// The queue as a service that does not own it sees it: SQS itself, or the queue service.
    fn connect(&self, aws: &SdkConfig) -> anyhow::Result<Arc<dyn EventQueue>> {
        match self.queue {
            QueueBackend::Sqs => self.sqs(aws),
            QueueBackend::Embedded | QueueBackend::Memory => {
                let client = QueueGrpcClient::connect_lazy(&self.queue_addr, grpc_token())
                    .with_context(|| format!("queue address {}", self.queue_addr))?;
                Ok(Arc::new(client))
            }
        }
    }

    fn sqs(&self, aws: &SdkConfig) -> anyhow::Result<Arc<dyn EventQueue>> {
        let options = SqsQueueOptions {
            prefix: self.sqs_queue_prefix.clone(),
            max_depth: self.queue_depth_limit,
            max_message_bytes: self.sqs_max_message_bytes,
            ..SqsQueueOptions::default()
        };
        let mut queue = SqsQueue::new(aws_sdk_sqs::Client::new(aws), options)?;
        if let Some(bucket) = &self.sqs_payload_bucket {
            let s3 = invoq_aws::s3_client(aws);
            queue = queue.with_payload_bucket(PayloadBucket::new(s3, bucket.clone()));
        }
        Ok(Arc::new(queue))
    }
}

#[derive(Debug, Args)]
struct AsyncArgs {
    /// Multiplies every wait of the async path (retry delays, backoff, event-age limits).
    #[arg(long, env = "INVOQ_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
    /// Queued events run at the same time, at most (`invoq serve`: 0 runs no worker, so
    /// events wait in the queue, e.g. for workers elsewhere).
    #[arg(long, env = "INVOQ_WORKER_CONCURRENCY", default_value_t = 256)]
    worker_concurrency: usize,
}

impl AsyncArgs {
    fn validated(&self) -> anyhow::Result<&Self> {
        anyhow::ensure!(
            self.time_scale > 0.0 && self.time_scale.is_finite(),
            "INVOQ_TIME_SCALE must be a positive number, not {}",
            self.time_scale
        );
        Ok(self)
    }

    fn worker(
        &self,
        queue: Arc<dyn EventQueue>,
        runtime: Arc<dyn RuntimeService>,
        registry: Arc<dyn Registry>,
    ) -> Arc<Worker> {
        let config = WorkerConfig {
            concurrency: self.worker_concurrency,
            retry_policy: RetryPolicy {
                time_scale: self.time_scale,
            },
        };
        Worker::new(queue, runtime, registry, config)
    }

    fn router(
        &self,
        queue: Arc<dyn EventQueue>,
        destinations: Arc<dyn Destination>,
        registry: Arc<dyn Registry>,
    ) -> Arc<Router> {
        let config = RouterConfig {
            time_scale: self.time_scale,
            ..RouterConfig::default()
        };
        Router::new(queue, destinations, registry, config)
    }
}

#[derive(Debug, Args)]
struct DestinationArgs {
    /// Destination adapters: `file` (JSON lines in <data-dir>/destinations) or `aws` (SQS,
    /// SNS, EventBridge through the standard AWS environment: AWS, LocalStack, moto).
    #[arg(long, env = "INVOQ_DESTINATIONS", default_value = "file")]
    destinations: String,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Where invoq keeps its state.
    #[arg(long, env = "INVOQ_DATA_DIR", default_value = "./.invoq")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers (and `invoq bench`, which reads the timeline).
    match std::env::var("INVOQ_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).init(),
        Ok("text") | Err(_) => logs.init(),
        Ok(other) => anyhow::bail!("INVOQ_LOG_FORMAT must be text or json, not {other}"),
    }
    // One AWS environment for the adapters, the pollers and the SQS queue backend.
    let aws = || invoq_aws::sdk_config_from_env();
    let cli = Cli::parse();
    let _ = GRPC_TOKEN.set(cli.grpc.token()?);
    match cli.command {
        Command::Serve {
            http,
            common,
            grpc_addr,
            queue,
            asynchronous,
            destinations,
            sandbox,
        } => {
            let access_keys = http.access_keys()?;
            let asynchronous = asynchronous.validated()?;
            let aws = aws().await;
            let runtime: Arc<dyn RuntimeService> =
                Arc::new(open_runtime(&common.data_dir, &sandbox).await?);
            let queue = queue.open(&common.data_dir, &aws)?;
            let local = open_registry(&http, &common.data_dir, runtime.clone(), queue.clone())?;
            let frontend = Frontend::new(local.clone(), runtime.clone(), queue.clone());
            frontend.set_event_source_checker(Arc::new(SqsSourceChecker::new(aws.clone())));
            let registry: Arc<dyn Registry> = local;
            // One metrics registry for every service in this process, served at /metrics.
            let mut metrics = MetricsRegistry::default();
            frontend.register_metrics(&mut metrics);
            if let Some(grpc_addr) = grpc_addr {
                ensure_grpc_exposure(grpc_addr)?;
                let listener = bind(grpc_addr, "grpc").await?;
                let services = GrpcServices {
                    runtime: Some(runtime.clone()),
                    queue: Some(queue.clone()),
                    registry: Some(registry.clone()),
                };
                tokio::spawn(services.serve(listener));
            }
            // No worker at all with a concurrency of 0: events wait in the queue for one.
            if asynchronous.worker_concurrency > 0 {
                let worker = asynchronous.worker(queue.clone(), runtime.clone(), registry.clone());
                worker.metrics().register(&mut metrics);
                tokio::spawn(worker.run());
            }
            let pollers = Pollers::new(aws.clone(), runtime, registry.clone(), queue.clone());
            tokio::spawn(pollers.run(registry.watch_mappings()));
            let destinations = open_destinations(&destinations, &common.data_dir, &aws)?;
            let router = asynchronous.router(queue, destinations, registry);
            router.metrics().register(&mut metrics);
            tokio::spawn(router.run());
            serve_http(&http, frontend, access_keys, metrics).await
        }
        Command::Frontend {
            http,
            common,
            grpc_addr,
            runtime,
            queue,
        } => {
            let access_keys = http.access_keys()?;
            let aws = aws().await;
            let queue = queue.connect(&aws)?;
            let runtime = runtime.connect()?;
            let local = open_registry(&http, &common.data_dir, runtime.clone(), queue.clone())?;
            let frontend = Frontend::new(local.clone(), runtime, queue);
            frontend.set_event_source_checker(Arc::new(SqsSourceChecker::new(aws)));
            ensure_grpc_exposure(grpc_addr)?;
            let listener = bind(grpc_addr, "grpc").await?;
            let services = GrpcServices {
                registry: Some(local),
                ..GrpcServices::default()
            };
            tokio::spawn(services.serve(listener));
            let mut metrics = MetricsRegistry::default();
            frontend.register_metrics(&mut metrics);
            serve_http(&http, frontend, access_keys, metrics).await
        }
        Command::Runtime {
            common,
            grpc_addr,
            sandbox,
        } => {
            ensure_grpc_exposure(grpc_addr)?;
            let runtime = Arc::new(open_runtime(&common.data_dir, &sandbox).await?);
            let listener = bind(grpc_addr, "grpc").await?;
            let services = GrpcServices {
                runtime: Some(runtime),
                ..GrpcServices::default()
            };
            services.serve(listener).await
        }
        Command::Queue {
            common,
            grpc_addr,
            queue,
        } => {
            let queue = queue.open(&common.data_dir, &aws().await)?;
            ensure_grpc_exposure(grpc_addr)?;
            let listener = bind(grpc_addr, "grpc").await?;
            let services = GrpcServices {
                queue: Some(queue),
                ..GrpcServices::default()
            };
            services.serve(listener).await
        }
        Command::Worker {
            grpc_addr,
            registry,
            runtime,
            queue,
            asynchronous,
        } => {
            let asynchronous = asynchronous.validated()?;
            let queue = queue.connect(&aws().await)?;
            let registry: Arc<dyn Registry> = Arc::new(registry.connect()?);
            let worker = asynchronous.worker(queue, runtime.connect()?, registry);
            run_beside_health(grpc_addr, worker.run()).await
        }
        Command::Router {
            common,
            grpc_addr,
            registry,
            queue,
            asynchronous,
            destinations,
        } => {
            let asynchronous = asynchronous.validated()?;
            let aws = aws().await;
            let queue = queue.connect(&aws)?;
            let destinations = open_destinations(&destinations, &common.data_dir, &aws)?;
            let registry: Arc<dyn Registry> = Arc::new(registry.connect()?);
            let router = asynchronous.router(queue, destinations, registry);
            run_beside_health(grpc_addr, router.run()).await
        }
        Command::Pollers {
            grpc_addr,
            registry,
            runtime,
            queue,
        } => {
            let aws = aws().await;
            let queue = queue.connect(&aws)?;
            let registry: Arc<dyn Registry> = Arc::new(registry.connect()?);
            let mappings = registry.watch_mappings();
            let pollers = Pollers::new(aws, runtime.connect()?, registry, queue);
            run_beside_health(grpc_addr, pollers.run(mappings)).await
        }
        Command::Bench(args) => {
            invoq_bench::run(*args).await?;
            Ok(())
        }
        Command::Baseline { http_addr } => {
            let listener = bind(http_addr, "http").await?;
            axum::serve(listener, invoq_bench::baseline::router())
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context("baseline server failed")
        }
        Command::Health { address, service } => {
            let channel = tonic::transport::Endpoint::from_shared(address.clone())?
                .connect_timeout(std::time::Duration::from_secs(2))
                .connect()
                .await
                .with_context(|| format!("cannot reach {address}"))?;
            let response = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .context("health check failed")?
                .into_inner();
            let status = response.status();
            println!("{}", status.as_str_name());
            anyhow::ensure!(
                status == tonic_health::pb::health_check_response::ServingStatus::Serving,
                "not serving"
            );
            Ok(())
        }
        Command::Runtimes {
            action,
            data_dir,
            runtimes_dir,
        } => manage_runtimes(action, runtimes_dir.unwrap_or(data_dir.join("runtimes"))).await,
        Command::Parked {
            action,
            endpoint_url,
        } => {
            let client = reqwest::Client::new();
            let base = endpoint_url.trim_end_matches('/');
            let request = match action {
                ParkedAction::List => {
                    client.get(format!("{base}/invoq/queues/parked?MaxItems=10000"))
                }
                ParkedAction::Redrive => client.post(format!("{base}/invoq/parked/redrive")),
            };
            // Signed with the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, so it works
            // against an invoq that authenticates (and is ignored by one that does not).
            let mut request = request.build()?;
            invoq_bench::sign::Signer::from_env()
                .sign(&mut request)
                .context("cannot sign the request")?;
            let response = client
                .execute(request)
                .await
                .with_context(|| format!("cannot reach invoq at {base}"))?;
            let status = response.status();
            let body = response.text().await?;
            println!("{body}");
            anyhow::ensure!(status.is_success(), "invoq answered {status}");
            Ok(())
        }
    }
}

/// `invoq runtimes list|install`.
async fn manage_runtimes(action: RuntimesAction, dir: PathBuf) -> anyhow::Result<()> {
    use invoq_runtime::managed::{InstallOutput, ManagedRuntimes};
    let runtimes = ManagedRuntimes::scan(dir.clone()).await;
    match action {
        RuntimesAction::List => {
            for status in runtimes.status() {
                let state = match (&status.interpreter, status.installed) {
                    (Ok(interpreter), true) => format!("installed, {}", interpreter.display()),
                    (Ok(interpreter), false) => {
                        format!(
                            "available, {} (installs at first use)",
                            interpreter.display()
                        )
                    }
                    (Err(reason), _) => format!("unavailable: {reason}"),
                };
                println!("{:<12} {:<22} {state}", status.name, status.client);
            }
            Ok(())
        }
        RuntimesAction::Install {
            runtimes: mut names,
            all,
        } => {
            if all {
                names = runtimes.offered().into_iter().map(str::to_owned).collect();
                anyhow::ensure!(
                    !names.is_empty(),
                    "this host has no interpreter of a managed runtime: see `invoq runtimes list`"
                );
            }
            for name in names {
                let installed = runtimes
                    .install_runtime(&name, InstallOutput::Terminal)
                    .await?;
                println!("{name}: installed in {}", installed.display());
            }
            Ok(())
        }
    }
}

async fn open_runtime(data_dir: &Path, sandbox: &SandboxArgs) -> anyhow::Result<LocalRuntime> {
    let runtime = LocalRuntime::open(
        data_dir,
        invoq_runtime::DEFAULT_IDLE_TIMEOUT,
        sandbox.options(),
    )
    .await
    .with_context(|| format!("cannot open the runtime in {}", data_dir.display()))?;
    tracing::info!(
        namespaces = runtime.isolates_with_namespaces(),
        "function sandboxes ready"
    );
    Ok(runtime)
}

fn open_registry(
    http: &HttpArgs,
    data_dir: &Path,
    runtime: Arc<dyn RuntimeService>,
    queue: Arc<dyn EventQueue>,
) -> anyhow::Result<Arc<LocalRegistry>> {
    let location = Location {
        region: http.region.clone(),
        account_id: http.account_id.clone(),
    };
    LocalRegistry::open(location, data_dir, runtime, queue).with_context(|| {
        format!(
            "cannot open the function registry in {}",
            data_dir.display()
        )
    })
}

fn open_destinations(
    args: &DestinationArgs,
    data_dir: &Path,
    aws: &SdkConfig,
) -> anyhow::Result<Arc<dyn Destination>> {
    Ok(invoq_destinations::from_setting(
        &args.destinations,
        data_dir,
        aws,
    )?)
}

async fn serve_http(
    http: &HttpArgs,
    frontend: Arc<Frontend>,
    access_keys: Option<Arc<AccessKeys>>,
    metrics: MetricsRegistry,
) -> anyhow::Result<()> {
    let limits = HttpLimits {
        max_connections: http.http_max_connections.max(1),
        header_read_timeout: std::time::Duration::try_from_secs_f64(http.http_header_timeout)
            .context("--http-header-timeout must be a positive number of seconds")?,
        body_budget_bytes: http.http_body_budget_mb.max(1) * 1024 * 1024,
    };
    let listener = bind(http.http_addr, "http").await?;
    invoq_frontend::server::serve(
        listener,
        frontend.router(access_keys, Arc::new(metrics)),
        limits,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// The gRPC services one process serves, each with its grpc.health.v1 status.
#[derive(Default)]
struct GrpcServices {
    runtime: Option<Arc<dyn RuntimeService>>,
    queue: Option<Arc<dyn EventQueue>>,
    registry: Option<Arc<dyn Registry>>,
}

impl GrpcServices {
    async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        if self.runtime.is_some() {
            health
                .set_serving::<RuntimeServer<RuntimeGrpcServer>>()
                .await;
        }
        if let Some(queue) = &self.queue {
            health.set_serving::<QueueServer<QueueGrpcServer>>().await;
            tokio::spawn(report_queue_health(queue.clone(), health.clone()));
        }
        if self.registry.is_some() {
            health
                .set_serving::<RegistryServer<RegistryGrpcServer>>()
                .await;
        }
        // Every service but health requires the token, when there is one.
        let require = RequireToken(grpc_token());
        let runtime = self.runtime.map(RuntimeGrpcServer::new);
        let queue = self.queue.map(QueueGrpcServer::new);
        let registry = self.registry.map(RegistryGrpcServer::new);
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_optional_service(runtime.map(|s| InterceptedService::new(s, require.clone())))
            .add_optional_service(queue.map(|s| InterceptedService::new(s, require.clone())))
            .add_optional_service(registry.map(|s| InterceptedService::new(s, require.clone())))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown_signal(),
            )
            .await
            .context("grpc server failed")
    }
}

/// Keeps the queue service's health status (and the whole server's) in step with the
/// backend: NOT_SERVING while it cannot store, SERVING again once it can.
async fn report_queue_health(
    queue: Arc<dyn EventQueue>,
    health: tonic_health::server::HealthReporter,
) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = queue.is_healthy();
        if now == healthy {
            continue;
        }
        healthy = now;
        let status = if healthy {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status(
                <QueueServer<QueueGrpcServer> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
    }
}

/// The gRPC token of this process, if one is configured.
fn grpc_token() -> Option<GrpcToken> {
    GRPC_TOKEN.get().cloned().flatten()
}

/// A runtime, queue or registry service reachable off loopback runs code or holds events
/// for anyone who calls it: refuse to serve one there without the token.
fn ensure_grpc_exposure(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || grpc_token().is_some(),
        "gRPC services on {addr} (not a loopback address) need a shared token: set \
         INVOQ_GRPC_TOKEN or INVOQ_GRPC_TOKEN_FILE, the same for every invoq service"
    );
    Ok(())
}

/// Runs a consumer loop (worker, router, pollers) with a gRPC health service beside it, until
/// a shutdown signal. The health status ("" = the whole process) is SERVING while it runs.
async fn run_beside_health(
    grpc_addr: SocketAddr,
    work: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = bind(grpc_addr, "grpc").await?;
    let health = tokio::spawn(GrpcServices::default().serve(listener));
    tokio::select! {
        () = work => anyhow::bail!("the service stopped"),
        served = health => served.context("health service panicked")?,
    }
}

/// Binds a listener and announces its address on stdout (`invoq: <what> listening on <addr>`),
/// so scripts and tests that ask for port 0 learn the port.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    println!("invoq: {what} listening on {local}");
    tracing::info!(%local, "{what} listening");
    Ok(listener)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
