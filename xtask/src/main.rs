//! invoq's one task runner: `cargo xtask <task>`. CI calls the same tasks a developer runs.
//!
//! - `test`: installs the AWS stand-ins (moto server into `.venv`, LocalStack's runtime into
//!   `.venv-localstack`), builds the example functions the tests deploy, installs the
//!   managed runtimes (`invoq runtimes install --all`), runs every test
//!   against moto, then the AWS-facing suites again against LocalStack;
//! - `ci`: formatting check, clippy with warnings as errors, the docker-compose.yml check,
//!   then `test`;
//! - `localstack`: LocalStack on 127.0.0.1:4566 without Docker, in the foreground.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "invoq's task runner")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the example functions, then run the whole test suite.
    Test,
    /// What CI runs: cargo fmt --check, clippy -D warnings, then the test suite.
    Ci,
    /// The SIGKILL chaos runs (tests/api/chaos.rs: `invoq serve` and the split services, on
    /// the embedded queue and on SQS) for longer than CI's short ones, with their kills,
    /// accepted, lost and duplicated events and recovery times. SQS runs use the stand-in
    /// `INVOQ_AWS_STANDIN` names (moto unless `localstack`).
    Chaos {
        /// Seconds of load and kills, per run.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Event invokes per second on the embedded queue.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Event invokes per second on SQS.
        #[arg(long, default_value_t = 20)]
        sqs_rate: u64,
    },
    /// Run LocalStack (SQS, SNS, EventBridge) from PyPI on 127.0.0.1, without Docker.
    Localstack {
        #[arg(long, default_value_t = 4566)]
        port: u16,
    },
}

/// The suites that talk to SQS, SNS or EventBridge, as a nextest filter: they run against
/// moto and again against LocalStack.
const AWS_FACING_TESTS: &str = "binary(conformance) | test(/^(adapters|destinations|event_sources|scale_out)::/) | test(/^chaos::.*_sqs$/)";

fn main() -> anyhow::Result<()> {
    std::env::set_current_dir(workspace_root()).context("cannot enter the workspace root")?;
    match Cli::parse().task {
        Task::Test => test(),
        Task::Ci => {
            cargo(&["fmt", "--all", "--", "--check"], &[])?;
            cargo(
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
            check_compose()?;
            test()
        }
        Task::Chaos {
            seconds,
            rate,
            sqs_rate,
        } => cargo(
            &[
                "test",
                "--package",
                "invoq",
                "--test",
                "api",
                "chaos::",
                "--",
                "--nocapture",
                "--test-threads",
                "1",
            ],
            &[
                ("INVOQ_CHAOS_SECONDS", &seconds.to_string()),
                ("INVOQ_CHAOS_RATE", &rate.to_string()),
                ("INVOQ_CHAOS_SQS_RATE", &sqs_rate.to_string()),
                ("INVOQ_MOTO_SERVER", &path_string(ensure_moto()?)?),
                (
                    "INVOQ_LOCALSTACK_PYTHON",
                    &path_string(ensure_localstack()?)?,
                ),
            ],
        ),
        Task::Localstack { port } => {
            let python = ensure_localstack()?;
            let state = PathBuf::from(".invoq/localstack");
            std::fs::create_dir_all(&state)?;
            let state = std::fs::canonicalize(state)?;
            eprintln!(
                "LocalStack on http://127.0.0.1:{port} (state in {})",
                state.display()
            );
            run(&mut invoq_testkit::localstack_command(
                &python, port, &state,
            ))
        }
    }
}

fn test() -> anyhow::Result<()> {
    let moto_server = path_string(ensure_moto()?)?;
    let localstack_python = path_string(ensure_localstack()?)?;
    // Tests deploy this binary as a `bootstrap`; cargo does not build other packages'
    // binaries for integration tests, so build it first.
    cargo(&["build", "--package", "rust-echo"], &[])?;
    let runtimes_dir = path_string(install_managed_runtimes()?)?;
    let mut env = vec![
        ("INVOQ_MOTO_SERVER", moto_server.as_str()),
        ("INVOQ_LOCALSTACK_PYTHON", localstack_python.as_str()),
        ("INVOQ_RUNTIMES_DIR", runtimes_dir.as_str()),
    ];
    if !nextest_available() {
        return cargo(&["test", "--workspace", "--no-fail-fast"], &env);
    }
    cargo(&["nextest", "run", "--workspace", "--no-fail-fast"], &env)?;
    eprintln!("again against LocalStack: {AWS_FACING_TESTS}");
    env.push(("INVOQ_AWS_STANDIN", "localstack"));
    cargo(
        &[
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "-E",
            AWS_FACING_TESTS,
        ],
        &env,
    )
}

/// Validates docker-compose.yml and the Dockerfile without a Docker engine: docker-compose
/// (v1, from Debian) checks the schema, deploy/check-compose.py the invoq commands in it.
fn check_compose() -> anyhow::Result<()> {
    let have_compose = || {
        Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !have_compose() {
        eprintln!("$ apt-get install docker-compose");
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "--no-install-recommends",
            "docker-compose",
        ]))?;
    }
    cargo(&["build", "--package", "invoq"], &[])?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    // Debian's Python: docker-compose brought PyYAML into it.
    run(Command::new("/usr/bin/python3")
        .arg("deploy/check-compose.py")
        .arg(PathBuf::from(target).join("debug/invoq")))
}

/// The managed runtimes the tests run (every one this host has the interpreter for),
/// installed once into `<target>/invoq-runtimes` by `invoq runtimes install --all`. npm
/// builds the Node.js client's addon from source, with cmake and autotools from Debian.
fn install_managed_runtimes() -> anyhow::Result<PathBuf> {
    let missing: Vec<&str> = ["cmake", "autoconf", "automake", "libtoolize", "make", "g++"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "$ apt-get install cmake autoconf automake libtool make g++ (missing: {missing:?})"
        );
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "--no-install-recommends",
            "cmake",
            "autoconf",
            "automake",
            "libtool",
            "make",
            "g++",
        ]))?;
    }
    cargo(&["build", "--package", "invoq"], &[])?;
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()));
    let dir = std::env::current_dir()?
        .join(&target)
        .join("invoq-runtimes");
    run(Command::new(target.join("debug/invoq"))
        .args(["runtimes", "install", "--all", "--runtimes-dir"])
        .arg(&dir))?;
    Ok(dir)
}

fn path_string(path: PathBuf) -> anyhow::Result<String> {
    Ok(path.to_str().context("non-UTF-8 path")?.to_owned())
}

/// The moto server the destination tests start, and the AWS CLI the end-to-end scripts use,
/// installed from PyPI into `.venv` once.
fn ensure_moto() -> anyhow::Result<PathBuf> {
    let venv = PathBuf::from(".venv");
    let moto_server = venv.join("bin/moto_server");
    if moto_server.exists() && venv.join("bin/aws").exists() {
        return Ok(std::fs::canonicalize(moto_server)?);
    }
    eprintln!("$ python3 -m venv .venv && .venv/bin/pip install moto[server] awscli");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "moto[server]==5.*",
        "awscli==1.*",
    ]))?;
    Ok(std::fs::canonicalize(moto_server)?)
}

/// LocalStack's runtime from PyPI in `.venv-localstack`, installed once (recipe in
/// ../shared/TEST-SERVERS.md): it needs Python 3.13, and a certificate made here because its
/// own certificate code breaks with current pyOpenSSL. Returns the venv's Python.
fn ensure_localstack() -> anyhow::Result<PathBuf> {
    let venv = PathBuf::from(".venv-localstack");
    let python = venv.join("bin/python");
    let certificate = venv.join("server.pem");
    // Not canonicalized: the venv's python is a symlink, and only through the venv's own path
    // does it see the venv's packages.
    let absolute = std::env::current_dir()?.join(&python);
    if python.exists() && certificate.exists() {
        return Ok(absolute);
    }
    let base = python313().context(
        "LocalStack needs Python 3.13: install it (e.g. `pyenv install 3.13`) or put python3.13 on PATH",
    )?;
    eprintln!(
        "$ {} -m venv .venv-localstack && pip install localstack-core",
        base.display()
    );
    run(Command::new(&base).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "localstack-core[runtime]==2026.3.0",
        "cbor2<6",
        "service_identity",
    ]))?;
    let key = venv.join("server.key");
    let cert = venv.join("server.crt");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null()))?;
    let pem = [std::fs::read(&key)?, std::fs::read(&cert)?].concat();
    std::fs::write(&certificate, pem)?;
    Ok(absolute)
}

/// A Python 3.13 interpreter: pyenv's, else `python3.13` on PATH.
fn python313() -> Option<PathBuf> {
    let pyenv_root = Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let from_pyenv = pyenv_root.and_then(|root| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("3.13"))
            })
            .map(|path| path.join("bin/python3"))
            .filter(|python| python.exists())
            .collect();
        versions.sort();
        versions.pop()
    });
    from_pyenv.or_else(|| {
        Command::new("python3.13")
            .arg("--version")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|_| PathBuf::from("python3.13"))
    })
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}

fn nextest_available() -> bool {
    Command::new(cargo_binary())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo_binary())
        .args(args)
        .envs(env.iter().copied())
        // Tests and examples must never reach for real AWS credentials or instance metadata.
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn cargo_binary() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .into()
}
