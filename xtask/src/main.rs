//! invoq's one task runner: `cargo xtask <task>`. CI calls the same tasks a developer runs.
//!
//! - `test`: installs moto server into `.venv` (the stand-in for SQS, SNS and EventBridge),
//!   builds the example functions the tests deploy, then runs every test;
//! - `ci`: formatting check, clippy with warnings as errors, then `test`.

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
}

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
            test()
        }
    }
}

fn test() -> anyhow::Result<()> {
    let moto_server = ensure_moto()?;
    let moto_server = moto_server.to_str().context("non-UTF-8 path")?.to_owned();
    // Tests deploy this binary as a `bootstrap`; cargo does not build other packages'
    // binaries for integration tests, so build it first.
    cargo(&["build", "--package", "rust-echo"], &[])?;
    let env = [("INVOQ_MOTO_SERVER", moto_server.as_str())];
    if nextest_available() {
        cargo(&["nextest", "run", "--workspace", "--no-fail-fast"], &env)
    } else {
        cargo(&["test", "--workspace", "--no-fail-fast"], &env)
    }
}

/// The moto server the destination tests start, installed from PyPI into `.venv` once.
fn ensure_moto() -> anyhow::Result<PathBuf> {
    let venv = PathBuf::from(".venv");
    let moto_server = venv.join("bin/moto_server");
    if moto_server.exists() {
        return Ok(std::fs::canonicalize(moto_server)?);
    }
    eprintln!("$ python3 -m venv .venv && .venv/bin/pip install moto[server]");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "moto[server]==5.*"]))?;
    Ok(std::fs::canonicalize(moto_server)?)
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
