//! Recovery from storage failures: a full disk under the embedded queue answers 503 (never a
//! 202 it cannot keep), loses nothing it had accepted, and accepts again by itself once
//! space is free, without a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

use crate::harness::{Invoq, create_builtin, status_and_type};

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns it.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn event(client: &aws_sdk_lambda::Client, n: u32) -> Result<u16, (u16, String)> {
    match client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(format!(r#"{{"n":{n}}}"#)))
        .send()
        .await
    {
        Ok(output) => Ok(output.status_code() as u16),
        Err(error) => {
            let (status, kind) = status_and_type(&error);
            Err((status.unwrap_or(0), kind.unwrap_or_default()))
        }
    }
}

async fn queued(invoq: &Invoq) -> u64 {
    let body: serde_json::Value = reqwest::get(format!(
        "{}/invoq/queues/invocations?MaxItems=1",
        invoq.http_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    body["Depth"].as_u64().unwrap()
}

#[tokio::test]
async fn a_full_disk_answers_503_loses_nothing_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let data = disk.path().join("data");
    // No worker: accepted events stay queued, so the test can count them.
    let invoq = Invoq::serve_with(&data, &[("INVOQ_WORKER_CONCURRENCY", "0")]);
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;
    for n in 0..5 {
        assert_eq!(event(&client, n).await, Ok(202));
    }

    let filler = disk.fill();
    let mut refused = 0;
    let mut accepted_while_full = 0;
    for n in 5..40 {
        match event(&client, n).await {
            Ok(202) => accepted_while_full += 1,
            Err((503, kind)) => {
                assert_eq!(kind, "ServiceException");
                refused += 1;
            }
            other => panic!("unexpected answer while the disk is full: {other:?}"),
        }
    }
    assert!(refused > 0, "a full disk must refuse events");

    std::fs::remove_file(filler).unwrap();
    let mut recovered = false;
    for n in 40..140 {
        if event(&client, n).await == Ok(202) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "events are accepted again once there is space");
    // Every 202 is still there: the five from before, any taken while full, the new one.
    assert_eq!(queued(&invoq).await, 5 + accepted_while_full + 1);
}
