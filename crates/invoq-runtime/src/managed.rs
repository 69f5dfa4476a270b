//! Lambda's managed runtimes (`python3.x`, `nodejs*.x`) on this host, without containers.
//!
//! A managed runtime is three things:
//! - an interpreter of the host, found once at start-up in the directories every sandbox
//!   sees (`/usr/local/bin`, `/usr/bin`: a namespace sandbox mounts `/usr` read-only);
//! - the official Runtime Interface Client for it (`awslambdaric` from PyPI,
//!   `aws-lambda-ric` from npm), installed once per runtime under the runtimes directory, by
//!   `invoq runtimes install` or at the first cold start, and shared by every function;
//! - the command Lambda's runtime runs: the RIC with the handler as its argument, started in
//!   the task root. The sandbox mounts the runtime's directory at `/var/runtime`.
//!
//! An install goes to a scratch directory renamed into place, so a crash or a second process
//! installing the same runtime never leaves a half-installed runtime behind a valid name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The managed runtimes invoq can run, where the host has their interpreter.
pub const MANAGED_RUNTIMES: [&str; 8] = [
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "nodejs18.x",
    "nodejs20.x",
    "nodejs22.x",
];

/// Where interpreters are looked for: on every sandbox's `PATH`, and under `/usr`.
const INTERPRETER_DIRS: [&str; 2] = ["/usr/local/bin", "/usr/bin"];
/// The file an install writes last; a runtime directory without it is not installed.
const INSTALLED_MARKER: &str = "invoq-runtime.json";
/// Scratch directories of installs older than this were interrupted: their process is gone.
const STALE_INSTALL: Duration = Duration::from_secs(3600);
/// An install that takes longer than this is stopped (a registry that never answers).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of an installer's error output an error message keeps.
const INSTALLER_OUTPUT_TAIL: usize = 2048;

/// Why a managed runtime cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManagedRuntimeError {
    #[error("{0} is not a managed runtime invoq knows: use one of {list}", list = MANAGED_RUNTIMES.join(", "))]
    Unknown(String),
    /// The host has no interpreter for it.
    #[error("runtime {runtime} is not available on this host: {reason}")]
    Unavailable { runtime: String, reason: String },
    /// Its Runtime Interface Client could not be installed.
    #[error("cannot install the runtime interface client of {runtime}: {reason}")]
    Install { runtime: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Language {
    Python { minor: u32 },
    Node { major: u32 },
}

/// One of [`MANAGED_RUNTIMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagedRuntime {
    pub name: &'static str,
    language: Language,
}

impl ManagedRuntime {
    /// The managed runtime of this `Runtime` value, if it is one.
    pub fn named(name: &str) -> Option<Self> {
        let name = MANAGED_RUNTIMES.into_iter().find(|known| *known == name)?;
        let language = match name.strip_prefix("python3.") {
            Some(minor) => Language::Python {
                minor: minor.parse().ok()?,
            },
            None => Language::Node {
                major: name
                    .strip_prefix("nodejs")?
                    .strip_suffix(".x")?
                    .parse()
                    .ok()?,
            },
        };
        Some(ManagedRuntime { name, language })
    }

    /// The Runtime Interface Client it installs, pinned: awslambdaric 4.2 needs Python 3.10
    /// or later, 4.0.4 is the last for 3.9; aws-lambda-ric 4 needs Node.js 22, 3.3.0 runs on
    /// 18 to 22.
    fn client_package(self) -> &'static str {
        match self.language {
            Language::Python { minor: 9 } => "awslambdaric==4.0.4",
            Language::Python { .. } => "awslambdaric==4.2.2",
            Language::Node { .. } => "aws-lambda-ric@3.3.0",
        }
    }

    /// Finds this runtime's interpreter among the host's.
    async fn find_interpreter(self) -> Result<PathBuf, String> {
        let mut seen = Vec::new();
        for dir in INTERPRETER_DIRS {
            let candidate = match self.language {
                Language::Python { minor } => Path::new(dir).join(format!("python3.{minor}")),
                Language::Node { .. } => Path::new(dir).join("node"),
            };
            let Ok(real) = std::fs::canonicalize(&candidate) else {
                continue;
            };
            // A namespace sandbox sees the host's /usr only: an interpreter linked from
            // elsewhere (pyenv, nvm) would be missing inside it.
            if !real.starts_with("/usr") {
                seen.push(format!(
                    "{} is {}, outside /usr",
                    candidate.display(),
                    real.display()
                ));
                continue;
            }
            let Language::Node { major } = self.language else {
                return Ok(candidate);
            };
            match node_major_version(&candidate).await {
                Ok(found) if found == major => return Ok(candidate),
                Ok(found) => seen.push(format!("{} is Node.js {found}", candidate.display())),
                Err(reason) => seen.push(format!("{}: {reason}", candidate.display())),
            }
        }
        let wanted = match self.language {
            Language::Python { minor } => format!("no python3.{minor} interpreter"),
            Language::Node { major } => format!("no Node.js {major} (node)"),
        };
        let mut reason = format!("{wanted} in {}", INTERPRETER_DIRS.join(" or "));
        if !seen.is_empty() {
            reason.push_str(&format!(" ({})", seen.join("; ")));
        }
        Err(reason)
    }
}

async fn node_major_version(node: &Path) -> Result<u32, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(node)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "`node --version` did not answer".to_owned())?
    .map_err(|error| error.to_string())?;
    let version = String::from_utf8_lossy(&output.stdout);
    version
        .trim()
        .strip_prefix('v')
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| format!("unexpected `node --version` output {:?}", version.trim()))
}

/// Whether an installer's own output reaches the terminal (`invoq runtimes install`, with
/// pip's and npm's progress) or is kept for the error message only (a first cold start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutput {
    Terminal,
    Captured,
}

/// A managed runtime ready to start: its interpreter and its installed client.
#[derive(Clone, Debug)]
pub(crate) struct InstalledRuntime {
    runtime: ManagedRuntime,
    interpreter: PathBuf,
    /// The runtime directory on the host.
    pub(crate) dir: PathBuf,
}

impl InstalledRuntime {
    /// The program and arguments that start the runtime, with `runtime_dir` where the
    /// runtime directory appears to the process, as Lambda's runtimes start: the RIC with
    /// the handler as its last argument.
    pub(crate) fn command(
        &self,
        runtime_dir: &Path,
        handler: &str,
        memory_size_mb: u32,
    ) -> (PathBuf, Vec<String>) {
        let args = match self.runtime.language {
            Language::Python { .. } => vec!["-m".into(), "awslambdaric".into(), handler.into()],
            Language::Node { .. } => {
                // As Lambda's Node.js bootstrap does: V8 collects before the heap reaches
                // the sandbox's memory limit, instead of the kernel killing the process.
                let old_space_mb = (memory_size_mb * 9 / 10).max(16);
                let client = runtime_dir.join("node_modules/aws-lambda-ric/bin/index.mjs");
                vec![
                    "--expose-gc".into(),
                    "--max-http-header-size=81920".into(),
                    format!("--max-old-space-size={old_space_mb}"),
                    client.display().to_string(),
                    handler.into(),
                ]
            }
        };
        (self.interpreter.clone(), args)
    }

    /// The variables Lambda sets for this runtime's language, with the task root and the
    /// runtime directory where the process sees them.
    pub(crate) fn environment(
        &self,
        task_root: &Path,
        runtime_dir: &Path,
    ) -> Vec<(&'static str, String)> {
        let task = task_root.display();
        let runtime = runtime_dir.display();
        let library_path =
            format!("/lib64:/usr/lib64:{runtime}:{runtime}/lib:{task}:{task}/lib:/opt/lib");
        match self.runtime.language {
            Language::Python { .. } => vec![
                ("PYTHONPATH", runtime.to_string()),
                ("LD_LIBRARY_PATH", library_path),
            ],
            Language::Node { major } => vec![
                (
                    "NODE_PATH",
                    format!(
                        "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                         {runtime}/node_modules:{runtime}:{task}"
                    ),
                ),
                ("LD_LIBRARY_PATH", library_path),
            ],
        }
    }
}

/// One managed runtime as this host sees it (`invoq runtimes list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub name: &'static str,
    /// The interpreter, or why there is none.
    pub interpreter: Result<PathBuf, String>,
    pub installed: bool,
    pub client: &'static str,
}

/// The host's managed runtimes and their installs under one directory.
pub struct ManagedRuntimes {
    dir: PathBuf,
    interpreters: BTreeMap<&'static str, Result<PathBuf, String>>,
    /// One install at a time in this process; other processes are kept apart by the rename.
    installing: tokio::sync::Mutex<()>,
}

impl ManagedRuntimes {
    /// Finds the host's interpreters, and clears installs a crash left half done.
    pub async fn scan(dir: PathBuf) -> Self {
        let mut interpreters = BTreeMap::new();
        for name in MANAGED_RUNTIMES {
            let runtime = ManagedRuntime::named(name).expect("listed runtimes parse");
            interpreters.insert(name, runtime.find_interpreter().await);
        }
        remove_stale_installs(&dir);
        ManagedRuntimes {
            dir,
            interpreters,
            installing: tokio::sync::Mutex::new(()),
        }
    }

    /// The runtimes this host's interpreters can serve.
    pub fn offered(&self) -> Vec<&'static str> {
        MANAGED_RUNTIMES
            .into_iter()
            .filter(|name| self.interpreters.get(name).is_some_and(Result::is_ok))
            .collect()
    }

    pub fn status(&self) -> Vec<RuntimeStatus> {
        MANAGED_RUNTIMES
            .into_iter()
            .map(|name| {
                let runtime = ManagedRuntime::named(name).expect("listed runtimes parse");
                RuntimeStatus {
                    name,
                    interpreter: self.interpreters[name].clone(),
                    installed: is_installed(&self.dir.join(name)),
                    client: runtime.client_package(),
                }
            })
            .collect()
    }

    /// Whether this host can run `name`, without installing anything.
    pub fn check(&self, name: &str) -> Result<ManagedRuntime, ManagedRuntimeError> {
        let runtime =
            ManagedRuntime::named(name).ok_or_else(|| ManagedRuntimeError::Unknown(name.into()))?;
        match &self.interpreters[runtime.name] {
            Ok(_) => Ok(runtime),
            Err(reason) => Err(ManagedRuntimeError::Unavailable {
                runtime: name.to_owned(),
                reason: reason.clone(),
            }),
        }
    }

    /// The runtime ready to start, installing its client first if this host does not hold
    /// it yet.
    pub(crate) async fn ready(
        &self,
        name: &str,
        output: InstallOutput,
    ) -> Result<InstalledRuntime, ManagedRuntimeError> {
        let runtime = self.check(name)?;
        let interpreter = self.interpreters[runtime.name]
            .clone()
            .expect("checked above");
        let dir = self.dir.join(runtime.name);
        if !is_installed(&dir) {
            let _installing = self.installing.lock().await;
            if !is_installed(&dir) {
                self.install(runtime, &interpreter, output)
                    .await
                    .map_err(|reason| ManagedRuntimeError::Install {
                        runtime: name.to_owned(),
                        reason,
                    })?;
            }
        }
        Ok(InstalledRuntime {
            runtime,
            interpreter,
            dir,
        })
    }

    /// Installs `name`'s client (or finds it installed) and returns its directory.
    pub async fn install_runtime(
        &self,
        name: &str,
        output: InstallOutput,
    ) -> Result<PathBuf, ManagedRuntimeError> {
        Ok(self.ready(name, output).await?.dir)
    }

    async fn install(
        &self,
        runtime: ManagedRuntime,
        interpreter: &Path,
        output: InstallOutput,
    ) -> Result<(), String> {
        let package = runtime.client_package();
        tracing::info!(runtime = runtime.name, package, dir = %self.dir.display(), "installing a runtime interface client");
        std::fs::create_dir_all(&self.dir)
            .map_err(|error| format!("{}: {error}", self.dir.display()))?;
        let scratch = self.dir.join(format!(
            ".install-{}-{}",
            runtime.name,
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&scratch).map_err(|error| format!("{}: {error}", scratch.display()))?;
        let installed = self
            .install_into(runtime, interpreter, &scratch, output)
            .await;
        let placed = installed.and_then(|()| {
            let marker = serde_json::json!({
                "runtime": runtime.name,
                "client": package,
                "interpreter": interpreter,
            });
            std::fs::write(scratch.join(INSTALLED_MARKER), marker.to_string())
                .map_err(|error| error.to_string())?;
            match std::fs::rename(&scratch, self.dir.join(runtime.name)) {
                Ok(()) => Ok(()),
                // Another process installed it first: theirs is as good.
                Err(_) if is_installed(&self.dir.join(runtime.name)) => Ok(()),
                Err(error) => Err(format!("cannot move the install into place: {error}")),
            }
        });
        if scratch.exists() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        placed?;
        tracing::info!(
            runtime = runtime.name,
            package,
            "runtime interface client installed"
        );
        Ok(())
    }

    async fn install_into(
        &self,
        runtime: ManagedRuntime,
        interpreter: &Path,
        scratch: &Path,
        output: InstallOutput,
    ) -> Result<(), String> {
        let package = runtime.client_package();
        match runtime.language {
            Language::Python { .. } => {
                // The interpreter's own pip picks the wheel of its ABI; binary wheels only,
                // so no compiler is needed. PIP_* variables (an index mirror) apply.
                let mut pip = Command::new(interpreter);
                pip.args(["-m", "pip", "install", "--target"])
                    .arg(scratch)
                    .args([
                        "--only-binary=:all:",
                        "--no-input",
                        "--disable-pip-version-check",
                        "--no-warn-script-location",
                        package,
                    ])
                    .env("PIP_ROOT_USER_ACTION", "ignore");
                run_installer(pip, output).await.map_err(|reason| {
                    format!(
                        "`{} -m pip install {package}` failed: {reason}",
                        interpreter.display()
                    )
                })
            }
            Language::Node { .. } => {
                // npm builds the client's addon from the sources it ships (its install
                // scripts need cmake, autotools, make, a C++ compiler and the Node.js
                // headers); only the client itself is kept, not node-gyp and the rest of
                // the build's tree. npm_config_* variables (a registry mirror) apply.
                let npm = interpreter.with_file_name("npm");
                let build = scratch.join("build");
                std::fs::create_dir(&build).map_err(|error| error.to_string())?;
                let mut install = Command::new(&npm);
                install
                    .args(["install", "--prefix"])
                    .arg(&build)
                    .args([
                        "--no-audit",
                        "--no-fund",
                        "--no-save",
                        "--omit=dev",
                        package,
                    ])
                    .env("npm_config_ignore_scripts", "false")
                    .current_dir(&build);
                run_installer(install, output).await.map_err(|reason| {
                    format!("`{} install {package}` failed: {reason}", npm.display())
                })?;
                let built = build.join("node_modules/aws-lambda-ric");
                if !built.join("dist/rapid-client.node").is_file() {
                    return Err(format!(
                        "npm installed {package} without building its addon \
                         (dist/rapid-client.node): its install scripts need cmake, autoconf, \
                         automake, libtool, make and g++"
                    ));
                }
                // The addon's sources (curl, aws-lambda-cpp: about 150 MB once built) are
                // of no use at run time.
                let client = scratch.join("node_modules/aws-lambda-ric");
                std::fs::create_dir_all(scratch.join("node_modules"))
                    .and_then(|()| std::fs::rename(&built, &client))
                    .and_then(|()| std::fs::remove_dir_all(client.join("deps")))
                    .and_then(|()| std::fs::remove_dir_all(&build))
                    .map_err(|error| format!("cannot keep the built client: {error}"))
            }
        }
    }
}

/// Runs an installer to its end; the error is its exit and the tail of its error output.
async fn run_installer(mut command: Command, output: InstallOutput) -> Result<(), String> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    match output {
        InstallOutput::Terminal => command.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
        InstallOutput::Captured => command.stdout(Stdio::null()).stderr(Stdio::piped()),
    };
    let mut child = command.spawn().map_err(|error| error.to_string())?;
    let stderr = child.stderr.take();
    let read_errors = async move {
        let mut text = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut text).await;
        }
        text
    };
    let finished = tokio::time::timeout(INSTALL_TIMEOUT, async {
        tokio::join!(child.wait(), read_errors)
    })
    .await;
    let Ok((status, errors)) = finished else {
        return Err(format!(
            "still running after {} s",
            INSTALL_TIMEOUT.as_secs()
        ));
    };
    let status = status.map_err(|error| error.to_string())?;
    if status.success() {
        return Ok(());
    }
    let errors = String::from_utf8_lossy(&errors);
    let errors = errors.trim();
    let tail =
        &errors[errors.floor_char_boundary(errors.len().saturating_sub(INSTALLER_OUTPUT_TAIL))..];
    Err(if tail.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {tail}")
    })
}

fn is_installed(dir: &Path) -> bool {
    dir.join(INSTALLED_MARKER).is_file()
}

fn remove_stale_installs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified.elapsed().unwrap_or_default() > STALE_INSTALL);
        if stale && entry.file_name().to_string_lossy().starts_with(".install-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_parse_into_their_language() {
        assert_eq!(
            ManagedRuntime::named("python3.12").map(|runtime| runtime.language),
            Some(Language::Python { minor: 12 })
        );
        assert_eq!(
            ManagedRuntime::named("nodejs20.x").map(|runtime| runtime.language),
            Some(Language::Node { major: 20 })
        );
        for name in ["python3.8", "python3.12/../x", "nodejs16.x", "java21", ""] {
            assert_eq!(ManagedRuntime::named(name), None, "{name}");
        }
        for name in MANAGED_RUNTIMES {
            assert!(ManagedRuntime::named(name).is_some(), "{name}");
        }
    }

    #[tokio::test]
    async fn an_unknown_or_missing_runtime_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let runtimes = ManagedRuntimes::scan(dir.path().to_path_buf()).await;
        assert_eq!(
            runtimes.check("ruby3.3").unwrap_err(),
            ManagedRuntimeError::Unknown("ruby3.3".into())
        );
        // No host has every Python minor version at once: the missing ones say where
        // invoq looked.
        let missing = MANAGED_RUNTIMES
            .into_iter()
            .filter_map(|name| runtimes.check(name).err())
            .next()
            .expect("some runtime is missing");
        let message = missing.to_string();
        assert!(
            message.contains("is not available on this host")
                && message.contains("/usr/local/bin or /usr/bin"),
            "{message}"
        );
    }
}
