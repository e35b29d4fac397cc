//! The install manifests (`deploy/`): rendered with the test bed's kubectl
//! (kustomize), checked against what the components expect, and applied with
//! `kubectl apply --dry-run=server` so that kube-apiserver validates every
//! object. And the operator's certificate manager against the real API.

use std::collections::BTreeMap;

use rustls::client::danger::ServerCertVerifier as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironvirt_apiserver_subresources::admission::{
    WebhookClient, WebhookEndpoint, webhook_configurations,
};
use ironvirt_tests::TestBed;
use ironvirt_tests::kubectl::{kubectl, kubectl_with, repo_root};
use ironvirt_tests::operator::Operator;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "ironvirt-system";

async fn bed() -> TestBed {
    TestBed::shared()
        .await
        .expect("test bed (run through `make test`)")
}

/// `kubectl kustomize <dir>` (relative to deploy/), as JSON objects.
fn render(bed: &TestBed, dir: &str) -> (String, Vec<Value>) {
    let path = repo_root().join("deploy").join(dir);
    let out = kubectl(bed, &["kustomize", &path.to_string_lossy()]);
    assert!(out.success, "kustomize {dir}: {}", out.stderr);
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&out.stdout) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if !v.is_null() {
            objects.push(v);
        }
    }
    (out.stdout, objects)
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n} in the rendered manifests"))
}

fn to_yaml(objects: &[&Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The namespace must exist for namespaced objects to pass a dry run.
fn ensure_namespace(bed: &TestBed) {
    let out = kubectl(
        bed,
        &["get", "namespace", NS, "--ignore-not-found", "-o", "name"],
    );
    if out.stdout.trim().is_empty() {
        let out = kubectl(bed, &["create", "namespace", NS]);
        assert!(
            out.success || out.stderr.contains("AlreadyExists"),
            "creating {NS}: {}",
            out.stderr
        );
    }
}

/// Applies `yaml` with a server-side dry run; asserts every object was accepted.
fn dry_run_apply(bed: &TestBed, yaml: &str, expected: usize) {
    let t = Instant::now();
    let out = kubectl_with(
        bed,
        None,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(yaml),
    );
    assert!(
        out.success,
        "dry-run apply failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let accepted = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(
        accepted, expected,
        "every object is accepted:\n{}\n{}",
        out.stdout, out.stderr
    );
    eprintln!(
        "dry-run apply: {accepted} objects accepted in {} ms",
        t.elapsed().as_millis()
    );
}

#[tokio::test]
async fn the_base_is_accepted_by_kube_apiserver() {
    let bed = bed().await;
    let (yaml, objects) = render(&bed, "");
    ensure_namespace(&bed);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &objects {
        *kinds.entry(kind(o)).or_default() += 1;
    }
    eprintln!("rendered {} objects: {kinds:?}", objects.len());
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "DaemonSet",
        "Service",
        "APIService",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains_key(k), "no {k} rendered");
    }
    assert_eq!(kinds["CustomResourceDefinition"], 10);
    // The common cluster instancetypes and preferences.
    assert!(kinds["VirtualMachineClusterInstancetype"] >= 10);
    assert!(kinds["VirtualMachineClusterPreference"] >= 5);
    dry_run_apply(&bed, &yaml, objects.len());
}

#[tokio::test]
async fn the_base_matches_what_the_components_expect() {
    let bed = bed().await;
    let (_, objects) = render(&bed, "");

    // Every namespaced object says where it goes (no kustomize `namespace:`).
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "APIService",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "VirtualMachineClusterInstancetype",
        "VirtualMachineClusterPreference",
    ];
    for o in &objects {
        if !cluster_scoped.contains(&kind(o)) {
            assert!(
                o["metadata"]["namespace"].is_string(),
                "{} {} has no namespace",
                kind(o),
                name(o)
            );
        }
    }

    // The webhook configurations are exactly ironvirt-api's, by Service, without caBundle.
    let (validating, mutating) = webhook_configurations(&WebhookClient {
        endpoint: WebhookEndpoint::Service {
            namespace: NS.into(),
            name: "ironvirt-api".into(),
            port: Some(443),
        },
        ca_bundle: Vec::new(),
    });
    let strip = |mut v: Value| {
        if let Some(hooks) = v["webhooks"].as_array_mut() {
            for h in hooks {
                if let Some(cc) = h["clientConfig"].as_object_mut() {
                    cc.remove("caBundle");
                }
            }
        }
        if let Some(m) = v.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    };
    let rendered_v = find(
        &objects,
        "ValidatingWebhookConfiguration",
        "ironvirt-validator",
    );
    let rendered_m = find(&objects, "MutatingWebhookConfiguration", "ironvirt-mutator");
    assert_eq!(
        strip(rendered_v.clone()),
        strip(serde_json::to_value(&validating).expect("json")),
        "deploy/base/api/webhooks.yaml differs from ironvirt-api's webhook_configurations()"
    );
    assert_eq!(
        strip(rendered_m.clone()),
        strip(serde_json::to_value(&mutating).expect("json"))
    );
    for hook in rendered_v["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(rendered_m["webhooks"].as_array().into_iter().flatten())
    {
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["timeoutSeconds"], 10);
    }

    // APIService → Service :443 → container port 8443, where ironvirt-api listens.
    let apisvc = find(&objects, "APIService", "v1.subresources.kubevirt.io");
    assert_eq!(
        apisvc["spec"]["service"],
        json!({"namespace": NS, "name": "ironvirt-api", "port": 443})
    );
    assert!(apisvc["spec"].get("caBundle").is_none());
    let svc = find(&objects, "Service", "ironvirt-api");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");
    let api = find(&objects, "Deployment", "ironvirt-api");
    assert_eq!(api["spec"]["replicas"], 2);
    let c = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--listen=0.0.0.0:8443"), "{args:?}");
    assert_eq!(c["image"], "ghcr.io/ironvirt/ironvirt-api:0.1.0");
    assert_eq!(
        svc["spec"]["selector"],
        api["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .map(|n| json!({"app.kubernetes.io/name": n}))
            .unwrap_or_default()
    );

    // The operator: 2 replicas, leader election from the downward API, probes, certificates.
    let op = find(&objects, "Deployment", "ironvirt-operator");
    assert_eq!(op["spec"]["replicas"], 2);
    let c = &op["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/ironvirt/ironvirt-operator:0.1.0");
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a == "--manage-certs")
    );

    // PDBs select the pods of both Deployments.
    for d in ["ironvirt-operator", "ironvirt-api"] {
        let pdb = find(&objects, "PodDisruptionBudget", d);
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            find(&objects, "Deployment", d)["spec"]["selector"]["matchLabels"]
        );
    }

    // Non-root, read-only, no capabilities, wherever possible.
    for d in ["ironvirt-operator", "ironvirt-api"] {
        let spec = &find(&objects, "Deployment", d)["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{d}");
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{d}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{d}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{d}");
    }

    // The handler: host network, privileged (it makes the VMIs' network
    // namespaces, veths and nftables rules in the node's namespaces), the
    // netns mounts shared with the node, node name from the pod spec.
    let ds = find(&objects, "DaemonSet", "ironvirt-handler");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "ghcr.io/ironvirt/ironvirt-handler:0.1.0");
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == "/run/netns" && m["mountPropagation"] == "Bidirectional"),
        "{c}"
    );
    assert!(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(!args.iter().any(|a| a.starts_with("--register-node")));
    assert!(args.contains(&"--allowed-client-cn=ironvirt-api"));
    let paths: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(paths.contains(&"/run/libvirt") && paths.contains(&"/var/lib/ironvirt"));

    // One identity per node: the handler reads no Secret (it asks
    // ironvirt-api, which reads them for it), writes only its own Lease (the
    // policy), and is not privileged for the webhooks.
    let rules = |role: &Value| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in role["rules"].as_array().into_iter().flatten() {
            for res in r["resources"].as_array().into_iter().flatten() {
                for verb in r["verbs"].as_array().into_iter().flatten() {
                    out.push((
                        res.as_str().unwrap_or_default().to_owned(),
                        verb.as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        out
    };
    let handler_rules = rules(find(&objects, "ClusterRole", "ironvirt-handler"));
    assert!(
        !handler_rules.iter().any(|(r, _)| r == "secrets"),
        "{handler_rules:?}"
    );
    assert!(handler_rules.contains(&("virtualmachineinstances/secrets".into(), "get".into())));
    let lease_rules = rules(find(&objects, "Role", "ironvirt-handler"));
    assert!(
        !lease_rules.iter().any(|(_, v)| v == "delete"),
        "{lease_rules:?}"
    );
    assert!(
        rules(find(&objects, "ClusterRole", "ironvirt-api"))
            .contains(&("secrets".into(), "get".into()))
    );

    // Migrations (issue #18): the operator carries them out (watch, finalizer,
    // status) and creates those that evacuate a drained node, but deletes
    // none; ironvirt-api creates them
    // for virtualmachines/migrate and lists them for the webhook; the
    // handlers never touch them. Users: view reads them, edit and admin also
    // create and cancel (delete) them and may use virtualmachines/migrate.
    let vmim = |rules: &[(String, String)]| -> Vec<String> {
        let mut verbs: Vec<String> = rules
            .iter()
            .filter(|(r, _)| r.starts_with("virtualmachineinstancemigrations"))
            .map(|(r, v)| format!("{r}:{v}"))
            .collect();
        verbs.sort();
        verbs
    };
    assert_eq!(
        vmim(&rules(find(&objects, "ClusterRole", "ironvirt-operator"))),
        [
            "virtualmachineinstancemigrations/finalizers:update",
            "virtualmachineinstancemigrations/status:get",
            "virtualmachineinstancemigrations/status:patch",
            "virtualmachineinstancemigrations/status:update",
            "virtualmachineinstancemigrations:create",
            "virtualmachineinstancemigrations:get",
            "virtualmachineinstancemigrations:list",
            "virtualmachineinstancemigrations:patch",
            "virtualmachineinstancemigrations:update",
            "virtualmachineinstancemigrations:watch",
        ]
    );
    assert_eq!(
        vmim(&rules(find(&objects, "ClusterRole", "ironvirt-api"))),
        [
            "virtualmachineinstancemigrations:create",
            "virtualmachineinstancemigrations:list"
        ]
    );
    assert!(vmim(&handler_rules).is_empty(), "{handler_rules:?}");
    let view = rules(find(&objects, "ClusterRole", "kubevirt.io:view"));
    assert_eq!(
        vmim(&view),
        [
            "virtualmachineinstancemigrations:get",
            "virtualmachineinstancemigrations:list",
            "virtualmachineinstancemigrations:watch"
        ]
    );
    assert!(!view.iter().any(|(r, _)| r == "virtualmachines/migrate"));
    for role in ["kubevirt.io:edit", "kubevirt.io:admin"] {
        let r = rules(find(&objects, "ClusterRole", role));
        assert!(
            r.contains(&("virtualmachines/migrate".into(), "update".into())),
            "{role}"
        );
        for verb in ["create", "delete", "list"] {
            assert!(
                r.contains(&("virtualmachineinstancemigrations".into(), verb.into())),
                "{role} {verb}"
            );
        }
    }
    let policy = find(
        &objects,
        "ValidatingAdmissionPolicy",
        "ironvirt-handler-own-lease",
    );
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let binding = find(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "ironvirt-handler-own-lease",
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    let api_args = find(&objects, "Deployment", "ironvirt-api")["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let privileged = api_args
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--privileged-users="))
        .expect("ironvirt-api names its privileged users");
    assert!(!privileged.contains("ironvirt-handler"), "{privileged}");
    // Every handler mounts the one shared certificate (name ironvirt-handler).
    assert!(
        api_args
            .iter()
            .any(|a| a.as_str() == Some("--shared-handler-certificate")),
        "{api_args:?}"
    );

    // ServiceAccounts are the ones ironvirt-api's webhook trusts by default
    // (--privileged-users), and the API's delegated-auth bindings are there.
    for sa in ["ironvirt-operator", "ironvirt-handler", "ironvirt-api"] {
        let o = find(&objects, "ServiceAccount", sa);
        assert_eq!(o["metadata"]["namespace"], NS);
    }
    let crb = find(
        &objects,
        "ClusterRoleBinding",
        "ironvirt-api:system:auth-delegator",
    );
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");
    let rb = find(
        &objects,
        "RoleBinding",
        "ironvirt-api:extension-apiserver-authentication-reader",
    );
    assert_eq!(rb["metadata"]["namespace"], "kube-system");
    assert_eq!(
        rb["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
}

#[tokio::test]
async fn the_cert_manager_overlay_renders_and_its_objects_are_accepted() {
    let bed = bed().await;
    let (_, objects) = render(&bed, "overlays/cert-manager");
    ensure_namespace(&bed);
    let (cert_manager, core): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(|o| {
        o["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    });
    assert_eq!(
        cert_manager
            .iter()
            .filter(|o| kind(o) == "Certificate")
            .count(),
        4
    );
    // No certificate manager in the operator, and no RBAC for it.
    let op = find(&objects, "Deployment", "ironvirt-operator");
    let args = &op["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        !args
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a == "--manage-certs")
    );
    assert!(!objects.iter().any(|o| name(o) == "ironvirt-operator-certs"));
    for (k, n) in [
        ("APIService", "v1.subresources.kubevirt.io"),
        ("ValidatingWebhookConfiguration", "ironvirt-validator"),
        ("MutatingWebhookConfiguration", "ironvirt-mutator"),
    ] {
        assert_eq!(
            find(&objects, k, n)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "ironvirt-system/ironvirt-api-tls"
        );
    }
    // ironvirt-api's client pair comes from its own Certificate's Secret.
    let api = find(&objects, "Deployment", "ironvirt-api");
    let sources = &api["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"];
    assert_eq!(sources[1]["secret"]["name"], "ironvirt-api-client-tls");
    let secrets: Vec<&str> = cert_manager
        .iter()
        .filter_map(|o| o["spec"]["secretName"].as_str())
        .collect();
    for s in [
        "ironvirt-ca",
        "ironvirt-api-tls",
        "ironvirt-api-client-tls",
        "ironvirt-handler-tls",
    ] {
        assert!(secrets.contains(&s), "no Certificate for {s}");
    }

    // cert-manager's CRDs are not in the test bed: apply the rest for real (dry run),
    // and the Certificates only when cert-manager is installed.
    let has_cert_manager = kubectl(
        &bed,
        &[
            "get",
            "crd",
            "certificates.cert-manager.io",
            "--ignore-not-found",
            "-o",
            "name",
        ],
    )
    .stdout
    .contains("certificates.cert-manager.io");
    let to_apply: Vec<&Value> = if has_cert_manager {
        objects.iter().collect()
    } else {
        eprintln!(
            "cert-manager is not installed: its {} objects are only rendered",
            cert_manager.len()
        );
        core
    };
    dry_run_apply(&bed, &to_yaml(&to_apply), to_apply.len());
}

/// Waits until `check` returns Some, or panics after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn data(s: &Secret, key: &str) -> Vec<u8> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

fn roots(bundle: &[u8]) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &bundle[..]) {
        roots.add(c.expect("bundle PEM")).expect("CA certificate");
    }
    Arc::new(roots)
}

fn chain(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM")
}

/// Verifies a serving certificate for `server_name` against `bundle`, as
/// kube-apiserver and ironvirt-api do.
fn verify_server(bundle: &[u8], cert: &[u8], server_name: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(bundle), provider)
            .build()
            .expect("verifier");
    let certs = chain(cert);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    verifier
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("{server_name}: {e}"));
}

/// Verifies a client certificate against `bundle`, as the handlers do.
fn verify_client(bundle: &[u8], cert: &[u8]) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(bundle), provider)
            .build()
            .expect("verifier");
    let certs = chain(cert);
    verifier
        .verify_client_cert(&certs[0], &certs[1..], rustls::pki_types::UnixTime::now())
        .expect("client certificate");
}

/// Deletes cluster-scoped test objects even when the test panics.
struct ClusterCleanup<'a> {
    bed: &'a TestBed,
    objects: Vec<String>,
}

impl Drop for ClusterCleanup<'_> {
    fn drop(&mut self) {
        let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
        args.extend(self.objects.iter().map(String::as_str));
        let _ = kubectl(self.bed, &args);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_issues_certificates_and_patches_ca_bundles() {
    let bed = &bed().await;
    bed.with_namespace("deploy-certs", |ns| async move {
        let client = bed.admin();
        // Cluster-scoped targets named after the namespace, never the bed's own.
        let apisvc_name = format!("v1.{ns}.certs-test.ironvirt.io");
        let hook_name = format!("{ns}-certs-test");
        let _cleanup = ClusterCleanup {
            bed,
            objects: vec![
                format!("apiservice/{apisvc_name}"),
                format!("validatingwebhookconfiguration/{hook_name}"),
                format!("mutatingwebhookconfiguration/{hook_name}"),
            ],
        };
        // Rules for a group nobody serves: the webhooks never intercept anything.
        let hook = |path: &str| {
            json!({
                "name": format!("{path}.{ns}.certs-test.ironvirt.io"),
                "clientConfig": {"service": {"namespace": ns, "name": "ironvirt-api", "path": format!("/{path}")}},
                "rules": [{"apiGroups": ["certs-test.ironvirt.io"], "apiVersions": ["v1"],
                           "operations": ["CREATE"], "resources": ["nothing"]}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
            })
        };
        let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": hook_name},
            "webhooks": [hook("a"), hook("b")],
        }))?;
        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": hook_name},
            "webhooks": [hook("m")],
        }))?;
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        vwcs.create(&PostParams::default(), &vwc).await?;
        mwcs.create(&PostParams::default(), &mwc).await?;
        // A workload that mounts the API Secret, to be rolled on changes.
        let deploy: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "ironvirt-api"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                "template": {"metadata": {"labels": {"app": "x"}},
                    "spec": {"containers": [{"name": "x", "image": "example.invalid/x"}]}}},
        }))?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &deploy).await?;

        let args = |apisvc: &str| -> Vec<String> {
            [
                "--manage-certs".to_owned(),
                format!("--cert-namespace={ns}"),
                format!("--cert-apiservice={apisvc}"),
                format!("--cert-validating-webhook={hook_name}"),
                format!("--cert-mutating-webhook={hook_name}"),
                "--cert-api-deployment=ironvirt-api".to_owned(),
                "--cert-handler-daemonset=".to_owned(),
                "--cert-resync=1s".to_owned(),
                "--lease-duration=3s".to_owned(),
                "--renew-interval=1s".to_owned(),
            ]
            .into()
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let t = Instant::now();
        let owned = args("");
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut op = Operator::start(bed, &ns, "certs-a", &refs);
        let get_all = || async {
            let ca = secrets.get_opt("ironvirt-ca").await.ok()??;
            let api = secrets.get_opt("ironvirt-api-tls").await.ok()??;
            let handler = secrets.get_opt("ironvirt-handler-tls").await.ok()??;
            Some((ca, api, handler))
        };
        let (ca, api, handler) = eventually("the three Secrets", Duration::from_secs(60), get_all).await;
        eprintln!("certificates issued {} ms after the operator started", t.elapsed().as_millis());
        for (s, keys) in [
            (&ca, &["tls.crt", "tls.key", "ca.crt"][..]),
            (&api, &["tls.crt", "tls.key", "ca.crt", "client.crt", "client.key"][..]),
            (&handler, &["tls.crt", "tls.key", "ca.crt"][..]),
        ] {
            assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
            for k in keys {
                assert!(!data(s, k).is_empty(), "{:?} has no {k}", s.metadata.name);
            }
        }
        let bundle = data(&ca, "ca.crt");
        assert_eq!(data(&api, "ca.crt"), bundle);
        assert_eq!(data(&handler, "ca.crt"), bundle);
        verify_server(&bundle, &data(&api, "tls.crt"), &format!("ironvirt-api.{ns}.svc"));
        verify_server(&bundle, &data(&handler, "tls.crt"), "ironvirt-handler");
        verify_client(&bundle, &data(&api, "client.crt"));

        let webhooks_done = || async {
            let v = vwcs.get(&hook_name).await.ok()?;
            let m = mwcs.get(&hook_name).await.ok()?;
            let all = v.webhooks.iter().flatten().map(|w| &w.client_config)
                .chain(m.webhooks.iter().flatten().map(|w| &w.client_config))
                .all(|cc| cc.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle.as_slice()));
            all.then_some(())
        };
        eventually("the webhook caBundles", Duration::from_secs(30), webhooks_done).await;
        let fingerprint = eventually("the restart annotation", Duration::from_secs(30), || async {
            let d = deployments.get("ironvirt-api").await.ok()?;
            d.spec?.template.metadata?.annotations?.get("ironvirt.io/tls-fingerprint").cloned()
        })
        .await;
        assert_eq!(fingerprint.len(), 16);

        // A second run changes nothing.
        op.terminate(Duration::from_secs(10));
        let versions = |s: &[&Secret]| -> Vec<Option<String>> {
            s.iter().map(|s| s.metadata.resource_version.clone()).collect()
        };
        let before = versions(&[&ca, &api, &handler]);

        // Now with an APIService too (created last and removed at once: an
        // APIService whose Service does not exist is unavailable, which
        // kubectl's discovery reports while it exists).
        let apiservices: Api<APIService> = Api::all(client.clone());
        let apisvc: APIService = serde_json::from_value(json!({
            "metadata": {"name": apisvc_name},
            "spec": {"group": format!("{ns}.certs-test.ironvirt.io"), "version": "v1",
                "groupPriorityMinimum": 100, "versionPriority": 1,
                "service": {"namespace": ns, "name": "ironvirt-api", "port": 443}},
        }))?;
        // The handler Secret is lost: it comes back from the same CA.
        secrets.delete("ironvirt-handler-tls", &DeleteParams::default()).await?;
        apiservices.create(&PostParams::default(), &apisvc).await?;
        let owned = args(&apisvc_name);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut op = Operator::start(bed, &ns, "certs-b", &refs);
        let patched = eventually("the APIService caBundle", Duration::from_secs(30), || async {
            let a = apiservices.get(&apisvc_name).await.ok()?;
            a.spec?.ca_bundle.filter(|b| !b.0.is_empty())
        })
        .await;
        apiservices.delete(&apisvc_name, &DeleteParams::default()).await?;
        assert_eq!(patched.0, bundle);
        let (ca2, api2, handler2) =
            eventually("the handler Secret again", Duration::from_secs(30), get_all).await;
        assert_eq!(versions(&[&ca2, &api2]), before[..2].to_vec(), "CA and API Secrets untouched");
        assert_ne!(data(&handler2, "tls.crt"), data(&handler, "tls.crt"));
        assert_eq!(data(&handler2, "ca.crt"), bundle);
        verify_server(&bundle, &data(&handler2, "tls.crt"), "ironvirt-handler");
        op.terminate(Duration::from_secs(10));

        Ok::<(), Box<dyn std::error::Error>>(())
    })
    .await;
}
