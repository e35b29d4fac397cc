//! What tests get from the test bed: the shared control plane of this test run,
//! clients as admin or as any user, throwaway namespaces, the guest, and dumps
//! of state and logs when a test fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::controlplane::{client_from_kubeconfig, kubeconfig_yaml};
use crate::error::{Error, Result, io};
use crate::guest::Guest;
use crate::layout::{ClusterInfo, Layout};
use crate::pki::Pki;
use crate::process::tail;

/// Label on every namespace a test creates.
pub const TEST_NAMESPACE_LABEL: &str = "ironvirt.io/test";

/// The test bed of this test run, started by `make test` (hack/test.sh).
#[derive(Clone)]
pub struct TestBed {
    layout: Layout,
    info: ClusterInfo,
    admin: Client,
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed")
            .field("layout", &self.layout)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestBed {
    /// The test bed of this test run (one per run, found through
    /// `$IRONVIRT_STATE`). Each call makes fresh clients: a kube `Client` lives
    /// on the tokio runtime that made it, and every `#[tokio::test]` has its own.
    pub async fn shared() -> Result<TestBed> {
        TestBed::connect(Layout::from_env()).await
    }

    /// Connects to the test bed running in `layout`.
    pub async fn connect(layout: Layout) -> Result<TestBed> {
        let info =
            ClusterInfo::load(&layout).map_err(|_| Error::NotRunning(layout.cluster_info()))?;
        let admin = client_from_kubeconfig(&info.kubeconfig).await?;
        Ok(TestBed {
            layout,
            info,
            admin,
        })
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A client with the admin identity (group system:masters).
    pub fn admin(&self) -> Client {
        self.admin.clone()
    }

    /// Mints a client certificate for `user` in `groups` and writes a kubeconfig
    /// that uses it. Returns the kubeconfig's path.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        write_user_kubeconfig(&self.layout, &self.info, user, groups)
    }

    /// A client authenticated as `user` in `groups` (CN = user, O = groups).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let path = self.user_kubeconfig(user, groups)?;
        client_from_kubeconfig(&path).await
    }

    /// The test guest.
    pub fn guest(&self) -> Result<Guest> {
        let dir = self
            .info
            .guest_dir
            .clone()
            .or_else(|| std::env::var_os("IRONVIRT_GUEST_DIR").map(PathBuf::from))
            .ok_or_else(|| Error::Missing {
                what: "the test guest",
                path: PathBuf::from("$IRONVIRT_GUEST_DIR"),
                hint: "build it with `make guest`, or run the tests through `make test`",
            })?;
        Guest::at(&dir)
    }

    /// The libvirt URI of the node, when the test bed runs libvirt.
    pub fn libvirt_uri(&self) -> Option<&str> {
        self.info.libvirt_uri.as_deref()
    }

    /// Creates a namespace `<prefix>-<n>` for one test.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = format!(
            "{}-{}-{}",
            prefix,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.admin())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
    }

    /// Deletes a namespace and waits until it is gone (kube-controller-manager
    /// finalizes it).
    pub async fn delete_namespace(&self, name: &str, timeout: Duration) -> Result<()> {
        let api = Api::<Namespace>::all(self.admin());
        match api.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if api.get_opt(name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::Wait {
            what: format!("namespace {name} to be deleted"),
            secs: timeout.as_secs(),
        })
    }

    /// Runs `test` in a fresh namespace. On failure (an error or a panic) it
    /// prints the namespace's objects and the component logs; in every case it
    /// deletes the namespace and waits for the deletion to complete.
    pub async fn with_namespace<F, Fut, E>(&self, prefix: &str, test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: std::fmt::Debug,
    {
        let ns = match self.namespace(prefix).await {
            Ok(ns) => ns,
            Err(e) => panic!("could not create a test namespace: {e}"),
        };
        let outcome = AssertUnwindSafe(test(ns.clone())).catch_unwind().await;
        let failed = !matches!(outcome, Ok(Ok(())));
        if failed {
            eprintln!("{}", self.dump(&ns).await);
        }
        let mut cleanup = self.delete_namespace(&ns, Duration::from_secs(60)).await;
        if cleanup.is_err() {
            // A failed test may have stopped the components that release ironvirt's
            // finalizers: strip them so the namespace can go, and say so.
            eprintln!("namespace {ns} is stuck; removing ironvirt finalizers from what is left");
            self.strip_finalizers(&ns).await;
            cleanup = self.delete_namespace(&ns, Duration::from_secs(60)).await;
        }
        match outcome {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => panic!("test in namespace {ns} failed: {e:?}"),
            Ok(Ok(())) => {
                if let Err(e) = cleanup {
                    panic!("namespace {ns} was not cleaned up: {e}");
                }
            }
        }
    }

    /// Removes the finalizers of every kubevirt.io object in `ns` (test cleanup).
    pub async fn strip_finalizers(&self, ns: &str) {
        for kind in [
            "virtualmachineinstances.kubevirt.io",
            "virtualmachines.kubevirt.io",
            "virtualmachineinstancemigrations.kubevirt.io",
        ] {
            let list = tokio::process::Command::new(&self.info.kubectl)
                .arg("--kubeconfig")
                .arg(&self.info.kubeconfig)
                .args(["get", kind, "-n", ns, "-o", "name", "--ignore-not-found"])
                .output()
                .await;
            let Ok(list) = list else { continue };
            for obj in String::from_utf8_lossy(&list.stdout).lines() {
                let _ = tokio::process::Command::new(&self.info.kubectl)
                    .arg("--kubeconfig")
                    .arg(&self.info.kubeconfig)
                    .args([
                        "patch",
                        obj,
                        "-n",
                        ns,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ])
                    .output()
                    .await;
            }
        }
    }

    /// Every object in `ns` and the tail of every component log, as text.
    pub async fn dump(&self, ns: &str) -> String {
        let mut out = format!("===== state of namespace {ns} =====\n");
        let kubectl = |args: Vec<String>| {
            let kubectl = self.info.kubectl.clone();
            let kubeconfig = self.info.kubeconfig.clone();
            async move {
                tokio::process::Command::new(kubectl)
                    .arg("--kubeconfig")
                    .arg(kubeconfig)
                    .args(args)
                    .output()
                    .await
            }
        };
        let kinds = kubectl(vec![
            "api-resources".into(),
            "--namespaced".into(),
            "--verbs=list".into(),
            "-o".into(),
            "name".into(),
        ])
        .await;
        let kinds = kinds
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "all,events".into());
        match kubectl(vec![
            "get".into(),
            kinds,
            "-n".into(),
            ns.into(),
            "-o".into(),
            "yaml".into(),
            "--ignore-not-found".into(),
        ])
        .await
        {
            Ok(o) => {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => out.push_str(&format!("kubectl failed: {e}\n")),
        }
        if let Ok(entries) = std::fs::read_dir(&self.info.logs_dir) {
            let mut logs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            logs.sort();
            for log in logs {
                out.push_str(&format!("===== last lines of {} =====\n", log.display()));
                out.push_str(&tail(&log, 30));
                out.push('\n');
            }
        }
        out
    }
}

/// Mints a client certificate for `user` in `groups` with the test bed's CA and
/// writes `<state>/users/<user>-<n>.{crt,key,kubeconfig}`.
pub fn write_user_kubeconfig(
    layout: &Layout,
    info: &ClusterInfo,
    user: &str,
    groups: &[&str],
) -> Result<PathBuf> {
    let pki = Pki::new(&info.pki_dir);
    let pair = pki.mint_user(user, groups)?;
    let dir = layout.users();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = format!(
        "{safe}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let (crt, key) = pair.write(&dir, &stem)?;
    let path = dir.join(format!("{stem}.kubeconfig"));
    let yaml = kubeconfig_yaml(
        &info.api_url,
        &pki.crt(crate::pki::names::CA),
        &crt,
        &key,
        user,
    );
    std::fs::write(&path, yaml).map_err(io(&path))?;
    Ok(path)
}
