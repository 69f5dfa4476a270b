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
use invoq_runtime::grpc::{RuntimeGrpcClient, RuntimeGrpcServer};
use invoq_runtime::{LocalRuntime, RuntimeService};
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
        /// Also serve the runtime over gRPC here, for frontends running elsewhere.
        #[arg(long, env = "INVOQ_GRPC_ADDR")]
        grpc_addr: Option<SocketAddr>,
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
        } => {
            let runtime: Arc<dyn RuntimeService> = Arc::new(open_runtime(&common.data_dir)?);
            if let Some(grpc_addr) = grpc_addr {
                let listener = bind(grpc_addr, "grpc").await?;
                tokio::spawn(serve_runtime_grpc(listener, runtime.clone()));
            }
            serve_http(http, &common.data_dir, runtime).await
        }
        Command::Frontend {
            http,
            common,
            runtime_addr,
        } => {
            let runtime = RuntimeGrpcClient::connect_lazy(&runtime_addr)
                .with_context(|| format!("runtime address {runtime_addr}"))?;
            serve_http(http, &common.data_dir, Arc::new(runtime)).await
        }
        Command::Runtime { common, grpc_addr } => {
            let runtime = Arc::new(open_runtime(&common.data_dir)?);
            let listener = bind(grpc_addr, "grpc").await?;
            serve_runtime_grpc(listener, runtime).await
        }
    }
}

fn open_runtime(data_dir: &Path) -> anyhow::Result<LocalRuntime> {
    LocalRuntime::open(data_dir, invoq_runtime::DEFAULT_IDLE_TIMEOUT)
        .with_context(|| format!("cannot open the runtime in {}", data_dir.display()))
}

async fn serve_http(
    http: HttpArgs,
    data_dir: &Path,
    runtime: Arc<dyn RuntimeService>,
) -> anyhow::Result<()> {
    let location = Location {
        region: http.region,
        account_id: http.account_id,
    };
    let frontend = Frontend::open(location, data_dir, runtime).with_context(|| {
        format!(
            "cannot open the function registry in {}",
            data_dir.display()
        )
    })?;
    let listener = bind(http.http_addr, "http").await?;
    axum::serve(listener, frontend.router())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("http server failed")
}

async fn serve_runtime_grpc(
    listener: TcpListener,
    runtime: Arc<dyn RuntimeService>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(RuntimeGrpcServer::new(runtime))
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
