//! The `invoq` binary. `invoq serve` runs every service in one process on embedded defaults;
//! `invoq frontend` and `invoq runtime` run one service each and find each other over gRPC.
//! Both modes build the same service objects: only the runtime handle the frontend receives
//! differs (the in-process `LocalRuntime` or a gRPC client).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use invoq_domain::Location;
use invoq_frontend::Frontend;
use invoq_pollers::{Pollers, SqsSourceChecker};
use invoq_queue::grpc::QueueGrpcServer;
use invoq_queue::{EmbeddedQueue, EmbeddedQueueOptions, EventQueue};
use invoq_router::{AsyncInvoker, Router, RouterConfig};
use invoq_runtime::grpc::{RuntimeGrpcClient, RuntimeGrpcServer};
use invoq_runtime::{LocalRuntime, RuntimeError, RuntimeService};
use invoq_worker::policy::RetryPolicy;
use invoq_worker::{AsyncTarget, FunctionDirectory, Worker, WorkerConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "invoq",
    version,
    about = "AWS Lambda's invocation machinery, self-hosted"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process (embedded defaults).
    Serve {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        common: CommonArgs,
        /// Also serve the runtime and the queue over gRPC here, for services running elsewhere.
        #[arg(long, env = "INVOQ_GRPC_ADDR")]
        grpc_addr: Option<SocketAddr>,
        #[command(flatten)]
        asynchronous: AsyncArgs,
    },
    /// Run only the Lambda-compatible HTTP API, using a runtime service at --runtime-addr.
    Frontend {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        common: CommonArgs,
        /// The runtime service's gRPC address.
        #[arg(
            long,
            env = "INVOQ_RUNTIME_ADDR",
            default_value = "http://127.0.0.1:9102"
        )]
        runtime_addr: String,
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
    /// Run only the runtime service (function processes and builtins), over gRPC.
    Runtime {
        #[command(flatten)]
        common: CommonArgs,
        /// Where to serve gRPC.
        #[arg(long, env = "INVOQ_GRPC_ADDR", default_value = "127.0.0.1:9102")]
        grpc_addr: SocketAddr,
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
}

#[derive(Debug, Subcommand)]
enum ParkedAction {
    /// Print the parked outcomes (JSON).
    List,
    /// Send every parked outcome back to the router.
    Redrive,
}

#[derive(Debug, Args)]
struct AsyncArgs {
    /// Destination adapters: `file` (JSON lines in <data-dir>/destinations) or `aws` (SQS,
    /// SNS, EventBridge through the standard AWS environment: AWS, LocalStack, moto).
    #[arg(long, env = "INVOQ_DESTINATIONS", default_value = "file")]
    destinations: String,
    /// Where queued events live: embedded (on disk in the data dir) or memory.
    #[arg(long, env = "INVOQ_QUEUE", default_value = "embedded")]
    queue: QueueBackend,
    /// Event invokes are refused with 429 past this many queued events.
    #[arg(long, env = "INVOQ_QUEUE_DEPTH_LIMIT", default_value_t = 1_000_000)]
    queue_depth_limit: u64,
    /// Multiplies every wait of the async path (retry delays, backoff, event-age limits).
    #[arg(long, env = "INVOQ_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
    /// Queued events run at the same time, at most.
    #[arg(long, env = "INVOQ_WORKER_CONCURRENCY", default_value_t = 64)]
    worker_concurrency: usize,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum QueueBackend {
    Embedded,
    Memory,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Where invoq keeps its state.
    #[arg(long, env = "INVOQ_DATA_DIR", default_value = "./.invoq")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            http,
            common,
            grpc_addr,
            asynchronous,
        } => {
            let runtime: Arc<dyn RuntimeService> = Arc::new(open_runtime(&common.data_dir)?);
            let queue = open_queue(&asynchronous, &common.data_dir)?;
            if let Some(grpc_addr) = grpc_addr {
                let listener = bind(grpc_addr, "grpc").await?;
                tokio::spawn(serve_grpc(listener, runtime.clone(), Some(queue.clone())));
            }
            let frontend = open_frontend(
                &http,
                &common.data_dir,
                runtime.clone(),
                Some(queue.clone()),
            )?;
            let worker_config = WorkerConfig {
                concurrency: asynchronous.worker_concurrency,
                retry_policy: RetryPolicy {
                    time_scale: asynchronous.time_scale,
                },
            };
            let directory = Arc::new(RegistryDirectory(frontend.clone()));
            let worker = Worker::new(
                queue.clone(),
                runtime.clone(),
                directory.clone(),
                worker_config,
            );
            let worker_metrics = worker.metrics();
            frontend.add_metrics(Box::new(move || worker_metrics.render()));
            tokio::spawn(worker.run());
            // One AWS environment for the destination adapters and the SQS pollers.
            let aws_config = invoq_adapters::aws::sdk_config_from_env().await;
            frontend.set_event_source_checker(Arc::new(SqsSourceChecker::new(aws_config.clone())));
            let pollers = Pollers::new(aws_config.clone(), runtime, directory, queue.clone());
            tokio::spawn(pollers.run(frontend.subscribe_mappings()));
            let destinations = invoq_adapters::from_setting(
                &asynchronous.destinations,
                &common.data_dir,
                &aws_config,
            )?;
            let router_config = RouterConfig {
                time_scale: asynchronous.time_scale,
                ..RouterConfig::default()
            };
            let invoker = Arc::new(RegistryInvoker(frontend.clone()));
            let router = Router::new(queue, destinations, invoker, router_config);
            let router_metrics = router.metrics();
            frontend.add_metrics(Box::new(move || router_metrics.render()));
            tokio::spawn(router.run());
            serve_http(http.http_addr, frontend).await
        }
        Command::Parked {
            action,
            endpoint_url,
        } => {
            let client = reqwest::Client::new();
            let base = endpoint_url.trim_end_matches('/');
            let response = match action {
                ParkedAction::List => client
                    .get(format!("{base}/invoq/queues/parked?MaxItems=10000"))
                    .send(),
                ParkedAction::Redrive => client.post(format!("{base}/invoq/parked/redrive")).send(),
            }
            .await
            .with_context(|| format!("cannot reach invoq at {base}"))?;
            let status = response.status();
            let body = response.text().await?;
            println!("{body}");
            anyhow::ensure!(status.is_success(), "invoq answered {status}");
            Ok(())
        }
        Command::Frontend {
            http,
            common,
            runtime_addr,
        } => {
            let runtime = RuntimeGrpcClient::connect_lazy(&runtime_addr)
                .with_context(|| format!("runtime address {runtime_addr}"))?;
            let frontend = open_frontend(&http, &common.data_dir, Arc::new(runtime), None)?;
            serve_http(http.http_addr, frontend).await
        }
        Command::Runtime { common, grpc_addr } => {
            let runtime = Arc::new(open_runtime(&common.data_dir)?);
            let listener = bind(grpc_addr, "grpc").await?;
            serve_grpc(listener, runtime, None).await
        }
    }
}

fn open_runtime(data_dir: &Path) -> anyhow::Result<LocalRuntime> {
    LocalRuntime::open(data_dir, invoq_runtime::DEFAULT_IDLE_TIMEOUT)
        .with_context(|| format!("cannot open the runtime in {}", data_dir.display()))
}

fn open_frontend(
    http: &HttpArgs,
    data_dir: &Path,
    runtime: Arc<dyn RuntimeService>,
    queue: Option<Arc<dyn EventQueue>>,
) -> anyhow::Result<Arc<Frontend>> {
    let location = Location {
        region: http.region.clone(),
        account_id: http.account_id.clone(),
    };
    Frontend::open(location, data_dir, runtime, queue).with_context(|| {
        format!(
            "cannot open the function registry in {}",
            data_dir.display()
        )
    })
}

fn open_queue(args: &AsyncArgs, data_dir: &Path) -> anyhow::Result<Arc<dyn EventQueue>> {
    if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
        anyhow::bail!(
            "INVOQ_TIME_SCALE must be a positive number, not {}",
            args.time_scale
        );
    }
    let options = EmbeddedQueueOptions {
        max_depth: args.queue_depth_limit,
    };
    let queue = match args.queue {
        QueueBackend::Embedded => {
            let path = data_dir.join("queue.redb");
            EmbeddedQueue::open(&path, options)
                .with_context(|| format!("cannot open the event queue {}", path.display()))?
        }
        QueueBackend::Memory => EmbeddedQueue::in_memory(options)?,
    };
    Ok(Arc::new(queue))
}

/// Function destinations: the router invokes them asynchronously through the frontend.
struct RegistryInvoker(Arc<Frontend>);

#[async_trait::async_trait]
impl AsyncInvoker for RegistryInvoker {
    async fn invoke_event(&self, function_arn: &str, event: &str) -> Result<(), String> {
        self.0.invoke_event(function_arn, event).await
    }
}

/// The function registry, as the retry worker sees it.
struct RegistryDirectory(Arc<Frontend>);

#[async_trait::async_trait]
impl FunctionDirectory for RegistryDirectory {
    async fn resolve(&self, function_name: &str, qualifier: &str) -> Option<AsyncTarget> {
        let (spec, settings) = self.0.async_target(function_name, qualifier)?;
        Some(AsyncTarget { spec, settings })
    }

    async fn code(&self, code_sha256_hex: &str) -> Result<bytes::Bytes, RuntimeError> {
        self.0.code(code_sha256_hex)
    }
}

async fn serve_http(http_addr: SocketAddr, frontend: Arc<Frontend>) -> anyhow::Result<()> {
    let listener = bind(http_addr, "http").await?;
    axum::serve(listener, frontend.router())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("http server failed")
}

/// Serves the runtime, and the queue when this process owns one, over gRPC.
async fn serve_grpc(
    listener: TcpListener,
    runtime: Arc<dyn RuntimeService>,
    queue: Option<Arc<dyn EventQueue>>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(RuntimeGrpcServer::new(runtime))
        .add_optional_service(queue.map(QueueGrpcServer::new))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await
        .context("grpc server failed")
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
