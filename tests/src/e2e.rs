//! Helpers of the end-to-end tests (tests/tests/e2e.rs): step timings, the
//! libvirt domains of a namespace, a VMI's files on the node, and what is left
//! in the cluster that mentions a namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironvirt_testbed::TestBed;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};

use crate::operator::TEST_NODE_LABEL;

/// `ironvirt-operator` for one test namespace, whose leader-election Lease
/// lives outside it (in `default`), as the operator's does in a cluster
/// (`ironvirt-system`): a test that deletes its namespace must not take the
/// operator's leadership with it. Killed when dropped.
pub struct NsOperator {
    child: Option<Child>,
    /// The leader-election Lease, in `default`.
    pub lease: String,
    pub log: PathBuf,
}

impl NsOperator {
    /// Starts the debug operator for `ns`, placing onto the nodes labelled for
    /// `ns`, with leader-election Lease `default/<lease>`.
    pub fn start(bed: &TestBed, ns: &str, lease: &str) -> NsOperator {
        Self::start_with(bed, ns, lease, &[])
    }

    /// [`NsOperator::start`] with more arguments (`--node-lease-timeout`, …).
    pub fn start_with(bed: &TestBed, ns: &str, lease: &str, args: &[&str]) -> NsOperator {
        let bin = crate::operator::target_dir()
            .join("debug")
            .join("ironvirt-operator");
        assert!(
            bin.is_file(),
            "{} is missing; run `cargo build --workspace`",
            bin.display()
        );
        let log = bed.info().logs_dir.join(format!("operator-{ns}.log"));
        let file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(bin)
            .env("KUBECONFIG", &bed.info().kubeconfig)
            .env("RUST_LOG", "info,ironvirt_operator=debug,kube_runtime=warn")
            .args(["--namespace", ns])
            .args(["--node-label-selector", &format!("{TEST_NODE_LABEL}={ns}")])
            .args(["--leader-election-namespace", "default"])
            .args(["--leader-election-name", lease])
            .args(["--identity", lease])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("operator log file"))
            .stderr(file)
            .spawn()
            .expect("start ironvirt-operator");
        NsOperator {
            child: Some(child),
            lease: lease.to_owned(),
            log,
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the operator and deletes its Lease.
    pub async fn remove(mut self, client: &Client) {
        self.kill();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
        let _ = leases.delete(&self.lease, &DeleteParams::default()).await;
    }

    /// SIGKILLs the operator (its Lease stays, as a crash leaves it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NsOperator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The timing of each step of a test, printed as it goes and at the end.
pub struct Timings {
    last: Instant,
    steps: Vec<(String, Duration)>,
}

impl Default for Timings {
    fn default() -> Self {
        Self::new()
    }
}

impl Timings {
    /// Starts timing the first step now.
    pub fn new() -> Timings {
        Timings {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Restarts the clock of the next step (time spent on setup is not counted).
    pub fn restart(&mut self) {
        self.last = Instant::now();
    }

    /// Ends the current step, named `step`, prints and records its duration,
    /// and starts the next one.
    pub fn done(&mut self, step: &str) {
        let took = self.last.elapsed();
        eprintln!("e2e timing: {step}: {:.1} s", took.as_secs_f64());
        self.steps.push((step.to_owned(), took));
        self.last = Instant::now();
    }

    /// All steps, one line each: `E2E-TIMING <seconds> <step>` (parsed by the
    /// recipe in docs/benchmarks.md).
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|(s, d)| format!("E2E-TIMING {:.2} {s}\n", d.as_secs_f64()))
            .collect()
    }
}

/// The names of every libvirt domain at `uri` whose name starts with
/// `prefix`. Unlike `handler::domains_of`, failing to reach libvirt is an
/// error, not "no domains": a test that wants none must not pass because
/// libvirt is down.
pub fn domains_with_prefix(uri: &str, prefix: &str) -> Result<Vec<String>, String> {
    let conn =
        virt::connect::Connect::open(Some(uri)).map_err(|e| format!("libvirt {uri}: {e}"))?;
    let domains = conn
        .list_all_domains(0)
        .map_err(|e| format!("listing the domains of {uri}: {e}"))?;
    let mut names = Vec::new();
    for d in domains {
        let name = d.name().map_err(|e| format!("a domain's name: {e}"))?;
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The libvirt domain name of VMI `name` in `ns`, as the handler names it.
pub fn domain_name(ns: &str, name: &str) -> String {
    ironvirt_crds::wire::domain_name(ns, name)
}

/// Every file under `dir`, recursively (nothing when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The handler's directory for VMI `uid`: `<state dir>/vmis/<uid>`.
pub fn vmi_dir(handler_state_dir: &Path, uid: &str) -> PathBuf {
    handler_state_dir.join("vmis").join(uid)
}

/// Leases, in any namespace, whose serialized form (name, namespace, holder,
/// labels, annotations, …) contains one of `needles`; as `namespace/name`.
pub async fn leases_mentioning(client: &Client, needles: &[String]) -> Result<Vec<String>, String> {
    let leases: Api<Lease> = Api::all(client.clone());
    let list = leases
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing Leases: {e}"))?;
    let mut found = Vec::new();
    for l in list {
        let text = serde_json::to_string(&l).map_err(|e| e.to_string())?;
        if needles.iter().any(|n| text.contains(n.as_str())) {
            found.push(format!(
                "{}/{}",
                l.metadata.namespace.unwrap_or_default(),
                l.metadata.name.unwrap_or_default()
            ));
        }
    }
    Ok(found)
}

/// Events, in any namespace, about an object in namespace `ns`; as `namespace/name: reason`.
pub async fn events_about(client: &Client, ns: &str) -> Result<Vec<String>, String> {
    let events: Api<Event> = Api::all(client.clone());
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.namespace={ns}")))
        .await
        .map_err(|e| format!("listing Events: {e}"))?;
    Ok(list
        .into_iter()
        .map(|e| {
            format!(
                "{}/{}: {}",
                e.metadata.namespace.unwrap_or_default(),
                e.metadata.name.unwrap_or_default(),
                e.reason.unwrap_or_default()
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_under_walks_subdirectories() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        std::fs::write(dir.join("a/b/disk.qcow2"), b"x").expect("write");
        std::fs::write(dir.join("top"), b"y").expect("write");
        let files = files_under(&dir);
        assert_eq!(files, vec![dir.join("a/b/disk.qcow2"), dir.join("top")]);
        assert!(files_under(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ironvirt-e2e-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
