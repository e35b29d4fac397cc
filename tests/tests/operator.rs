//! The operator against the real control plane, with simulated nodes standing
//! in for handlers (a Node, a renewed handler Lease and a stand-in that moves
//! placed VMIs along), so that capacity and node loss can be staged: run
//! strategies, placement, node loss, replica sets, deletion and leader
//! election. The real handler's tests are in `handler.rs` and `e2e.rs`.

use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::printable;
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Behavior, FakeNode, Operator, eventually};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn vm_json(ns: &str, name: &str, strategy: &str, memory: &str) -> VirtualMachine {
    let image = ironvirt_tests::hostdisk::guest_image(ns);
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "domain": {"memory": {"guest": memory}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                    "volumes": [{"name": "root", "hostDisk": {"path": image, "type": "Disk"}}],
                },
            },
        },
    }))
    .expect("vm")
}

async fn wait_status(vms: &Api<VirtualMachine>, name: &str, want: &str) -> anyhow::Result<()> {
    let res = eventually(T, &format!("VM {name} to be {want}"), || async {
        (printable(vms, name).await.as_deref() == Some(want)).then_some(())
    })
    .await;
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "{e}; it is {:?}",
            printable(vms, name).await
        )),
    }
}

async fn vmi_uid(vmis: &Api<VirtualMachineInstance>, name: &str) -> Option<String> {
    vmis.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.metadata.uid)
}

async fn patch_strategy(vms: &Api<VirtualMachine>, name: &str, strategy: &str) {
    let p = json!({"spec": {"runStrategy": strategy}});
    vms.patch(name, &PatchParams::default(), &Patch::Merge(&p))
        .await
        .expect("patch runStrategy");
}

/// Deletes the test's namespace while the operator and nodes still run (so
/// finalizers are honoured, not stripped), checks the deletion completes, then
/// removes the simulated nodes.
async fn finish(bed: &TestBed, ns: &str, nodes: Vec<FakeNode>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    bed.delete_namespace(ns, Duration::from_secs(90))
        .await
        .map_err(|e| anyhow::anyhow!("namespace deletion with the operator running: {e}"))?;
    eprintln!("namespace {ns} deleted in {:?}", started.elapsed());
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

fn node_name(ns: &str, n: &str) -> String {
    format!("{ns}-{n}")
}

struct Env {
    client: Client,
    vms: Api<VirtualMachine>,
    vmis: Api<VirtualMachineInstance>,
}

fn env(bed: &TestBed, ns: &str) -> Env {
    let client = bed.admin();
    Env {
        vms: Api::namespaced(client.clone(), ns),
        vmis: Api::namespaced(client.clone(), ns),
        client,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn always_runs_and_deleting_the_vm_waits_for_its_vmi() {
    let bed = &bed().await;
    bed.with_namespace("op-always", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web", "Always", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web", "Running").await?;
        let vmi = e.vmis.get("web").await?;
        anyhow::ensure!(vmi.labels().get("kubevirt.io/vm").map(String::as_str) == Some("web"));
        anyhow::ensure!(vmi.labels().get("kubevirt.io/nodeName") == Some(&node.name));
        anyhow::ensure!(
            vmi.finalizers()
                .contains(&"kubevirt.io/foregroundDeleteVirtualMachine".to_owned())
        );
        let vm = e.vms.get("web").await?;
        anyhow::ensure!(
            vm.finalizers()
                .contains(&"kubevirt.io/virtualMachineControllerFinalize".to_owned())
        );
        let st = vm.status.unwrap();
        anyhow::ensure!(st.ready == Some(true) && st.created == Some(true), "{st:?}");

        e.vms.delete("web", &DeleteParams::default()).await?;
        eventually(T, "VM and VMI gone", || async {
            let vm = e.vms.get_opt("web").await.ok()?;
            let vmi = e.vmis.get_opt("web").await.ok()?;
            (vm.is_none() && vmi.is_none()).then_some(())
        })
        .await?;
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn halted_stops_and_starting_again_creates_a_new_vmi() {
    let bed = &bed().await;
    bed.with_namespace("op-halted", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web", "Halted", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web", "Stopped").await?;
        anyhow::ensure!(
            e.vmis.get_opt("web").await?.is_none(),
            "Halted created a VMI"
        );
        patch_strategy(&e.vms, "web", "Always").await;
        wait_status(&e.vms, "web", "Running").await?;
        let first = vmi_uid(&e.vmis, "web").await;
        patch_strategy(&e.vms, "web", "Halted").await;
        wait_status(&e.vms, "web", "Stopped").await?;
        anyhow::ensure!(e.vmis.get_opt("web").await?.is_none());
        patch_strategy(&e.vms, "web", "Always").await;
        wait_status(&e.vms, "web", "Running").await?;
        anyhow::ensure!(vmi_uid(&e.vmis, "web").await != first, "expected a new VMI");
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_acts_on_state_change_requests() {
    let bed = &bed().await;
    bed.with_namespace("op-manual", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web", "Manual", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web", "Stopped").await?;
        // What the subresource API's start writes.
        let start = json!({"status": {"stateChangeRequests": [{"action": "Start"}]}});
        e.vms
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&start))
            .await?;
        wait_status(&e.vms, "web", "Running").await?;
        let vm = e.vms.get("web").await?;
        anyhow::ensure!(
            vm.status.unwrap().state_change_requests.is_none(),
            "Start request not cleared"
        );
        let uid = vmi_uid(&e.vmis, "web").await.unwrap_or_default();
        let stop = json!({"status": {"stateChangeRequests": [{"action": "Stop", "uid": uid}]}});
        e.vms
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&stop))
            .await?;
        wait_status(&e.vms, "web", "Stopped").await?;
        anyhow::ensure!(e.vmis.get_opt("web").await?.is_none());
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_vmis_back_off_into_crash_loop_and_once_never_reruns() {
    let bed = &bed().await;
    bed.with_namespace("op-failing", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Fail,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "crashy", "RerunOnFailure", "128Mi"),
            )
            .await?;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "once", "Once", "128Mi"),
            )
            .await?;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "always", "Always", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "crashy", "CrashLoopBackOff").await?;
        // Always backs off the same way.
        wait_status(&e.vms, "always", "CrashLoopBackOff").await?;
        let sf = e
            .vms
            .get("always")
            .await?
            .status
            .and_then(|s| s.start_failure);
        anyhow::ensure!(
            sf.is_some_and(|f| f.consecutive_fail_count >= Some(1)),
            "Always: no startFailure"
        );
        let sf = e
            .vms
            .get("crashy")
            .await?
            .status
            .and_then(|s| s.start_failure);
        let sf = sf.ok_or_else(|| anyhow::anyhow!("no startFailure"))?;
        anyhow::ensure!(
            sf.consecutive_fail_count >= Some(1) && sf.retry_after_timestamp.is_some(),
            "{sf:?}"
        );
        // After the first backoff (10 s) a second VMI runs and fails: the count grows.
        eventually(T, "a second failure", || async {
            let sf = e.vms.get("crashy").await.ok()?.status?.start_failure?;
            (sf.consecutive_fail_count >= Some(2)).then_some(())
        })
        .await?;
        // Once: its VMI failed and stays; no second VMI.
        let first = eventually(T, "the Once VMI to fail", || async {
            let v = e.vmis.get_opt("once").await.ok()??;
            (v.status.as_ref()?.phase == Some(ironvirt_crds::VirtualMachineInstancePhase::Failed))
                .then_some(v.metadata.uid)
        })
        .await?;
        // The VM controller has seen the failure once the VM reads Stopped:
        // that reconcile would have deleted the VMI (Stopping) had it meant to
        // run another.
        wait_status(&e.vms, "once", "Stopped").await?;
        anyhow::ensure!(
            vmi_uid(&e.vmis, "once").await == first,
            "Once created another VMI"
        );
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unschedulable_until_capacity_appears() {
    let bed = &bed().await;
    bed.with_namespace("op-sched", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let small = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "small"),
            "1",
            "256Mi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(&PostParams::default(), &vm_json(&ns, "big", "Always", "1Gi"))
            .await?;
        wait_status(&e.vms, "big", "ErrorUnschedulable").await?;
        let vmi = e.vmis.get("big").await?;
        let st = vmi.status.unwrap_or_default();
        let cond = st
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        let msg = cond.and_then(|c| c.message).unwrap_or_default();
        anyhow::ensure!(msg.contains("Insufficient memory"), "{msg}");
        anyhow::ensure!(st.phase == Some(ironvirt_crds::VirtualMachineInstancePhase::Pending));
        // CPU, node selector and taint: each named in the VMI's condition.
        let mut cpu = vm_json(&ns, "cpu", "Always", "64Mi");
        cpu.spec.template.spec.as_mut().unwrap().domain.resources =
            Some(serde_json::from_value(json!({"requests": {"cpu": "64"}}))?);
        let mut sel = vm_json(&ns, "sel", "Always", "64Mi");
        sel.spec.template.spec.as_mut().unwrap().node_selector = Some([("disk".to_owned(), "nvme".to_owned())].into());
        e.vms.create(&PostParams::default(), &cpu).await?;
        e.vms.create(&PostParams::default(), &sel).await?;
        let reason = |name: &'static str, want: &'static str| {
            let vmis = e.vmis.clone();
            async move {
                eventually(T, &format!("{name} unschedulable with {want:?}"), || async {
                    let st = vmis.get(name).await.ok()?.status?;
                    let c = st.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
                    c.message?.contains(want).then_some(())
                })
                .await
            }
        };
        reason("cpu", "Insufficient cpu").await?;
        reason("sel", "didn't match the VMI's node selector").await?;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(e.client.clone());
        let taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}});
        nodes.patch(&small.name, &PatchParams::default(), &Patch::Merge(&taint)).await?;
        reason("cpu", "untolerated taint {dedicated: db}").await?;
        // A node with room appears: the VMI is placed there.
        let big = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "big"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        wait_status(&e.vms, "big", "Running").await?;
        let placed = e.vmis.get("big").await?.status.and_then(|s| s.node_name);
        anyhow::ensure!(placed.as_deref() == Some(big.name.as_str()), "{placed:?}");
        finish(bed, &ns, vec![small, big]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_node_fails_its_vmi_and_always_moves_elsewhere() {
    let bed = &bed().await;
    bed.with_namespace("op-lease", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &["--node-lease-timeout", "5s"]);
        let mut n1 = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web", "Always", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web", "Running").await?;
        let first = vmi_uid(&e.vmis, "web").await;
        let n2 = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n2"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        let on = e
            .vmis
            .get("web")
            .await?
            .status
            .and_then(|s| s.node_name)
            .unwrap_or_default();
        anyhow::ensure!(on == n1.name, "placed on {on}");
        n1.go_silent();
        eventually(T, "a new VMI on the other node", || async {
            let v = e.vmis.get_opt("web").await.ok()??;
            let st = v.status.as_ref()?;
            (v.metadata.uid != first
                && st.node_name.as_deref() == Some(n2.name.as_str())
                && st.phase == Some(ironvirt_crds::VirtualMachineInstancePhase::Running))
            .then_some(())
        })
        .await?;
        // The lost VMI was marked Failed/NodeUnresponsive on the way (an Event says so).
        let events = ironvirt_tests::kubectl::kubectl(
            bed,
            &[
                "get",
                "events",
                "-n",
                &ns,
                "-o",
                "jsonpath={.items[*].reason}",
            ],
        );
        anyhow::ensure!(
            events.stdout.contains("NodeUnresponsive"),
            "events: {}",
            events.stdout
        );
        finish(bed, &ns, vec![n1, n2]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_set_scales_adopts_releases_and_pauses() {
    let bed = &bed().await;
    bed.with_namespace("op-vmirs", |ns| async move {
        let e = env(bed, &ns);
        let _op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(e.client.clone(), &ns, &node_name(&ns, "n1"), "16", "16Gi", Behavior::Run).await;
        let rss: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(e.client.clone(), &ns);
        let rs: VirtualMachineInstanceReplicaSet = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "metadata": {"name": "rs"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "rs"}},
                "template": {"metadata": {"labels": {"app": "rs"}}, "spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
        }))?;
        rss.create(&PostParams::default(), &rs).await?;
        let status = |want: i32| {
            let rss = rss.clone();
            async move {
                eventually(T, &format!("{want} ready replicas"), || async {
                    let s = rss.get("rs").await.ok()?.status?;
                    (s.replicas == Some(want) && s.ready_replicas == Some(want)).then_some(s)
                })
                .await
            }
        };
        let s = status(0).await?;
        anyhow::ensure!(s.label_selector.as_deref() == Some("app=rs"));
        let scale = |n: i32| {
            let rss = rss.clone();
            async move {
                rss.patch("rs", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": n}})))
                    .await
                    .map(|_| ())
            }
        };
        scale(5).await?;
        status(5).await?;
        scale(2).await?;
        status(2).await?;
        let live = |e: &Env| {
            let vmis = e.vmis.clone();
            async move {
                let list = vmis.list(&Default::default()).await.ok()?;
                Some(list.items.into_iter().filter(|v| v.metadata.deletion_timestamp.is_none()).count())
            }
        };
        eventually(T, "two live VMIs", || async { (live(&e).await? == 2).then_some(()) }).await?;
        // An orphan with the label is adopted (and, being one too many, scaled away).
        let orphan: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "orphan", "labels": {"app": "rs"}}, "spec": {"domain": {"memory": {"guest": "64Mi"}}},
        }))?;
        e.vmis.create(&PostParams::default(), &orphan).await?;
        eventually(T, "two live VMIs after adopting the orphan", || async { (live(&e).await? == 2).then_some(()) }).await?;
        // Relabel one: it is released and replaced.
        let owned = e.vmis.list(&Default::default()).await?.items.into_iter().find(|v| v.metadata.deletion_timestamp.is_none()).unwrap();
        e.vmis.patch(&owned.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"app": "gone"}}}))).await?;
        eventually(T, "the relabelled VMI released", || async {
            let v = e.vmis.get(&owned.name_any()).await.ok()?;
            v.owner_references().is_empty().then_some(())
        })
        .await?;
        status(2).await?;
        // Paused: no reaction to scaling, and a condition says so.
        rss.patch("rs", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"paused": true, "replicas": 4}}))).await?;
        eventually(T, "ReplicaPaused", || async {
            let s = rss.get("rs").await.ok()?.status?;
            s.conditions?.iter().any(|c| c.type_ == "ReplicaPaused" && c.status == "True").then_some(())
        })
        .await?;
        // The reconcile that wrote ReplicaPaused made its creates before its
        // status: had it scaled, the replica set's VMIs would be there now.
        let selected = e.vmis.list(&ListParams::default().labels("app=rs")).await?.items;
        let n = selected.iter().filter(|v| v.metadata.deletion_timestamp.is_none()).count();
        anyhow::ensure!(n == 2, "paused yet scaled: {n} live VMIs labelled app=rs");
        anyhow::ensure!(rss.get("rs").await?.status.and_then(|s| s.replicas) == Some(2), "paused yet scaled");
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_template_reports_failure_without_a_hot_loop() {
    let bed = &bed().await;
    bed.with_namespace("op-invalid", |ns| async move {
        let e = env(bed, &ns);
        let op = Operator::start(bed, &ns, "a", &[]);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        // The admission webhooks refuse an invalid template outright...
        let mut invalid = vm_json(&ns, "invalid", "Always", "128Mi");
        invalid.spec.template.spec.as_mut().unwrap().volumes = None;
        let refused = e.vms.create(&PostParams::default(), &invalid).await;
        anyhow::ensure!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422
                && s.message.contains("spec.template.spec.domain.devices.disks[0].name")),
            "{refused:?}"
        );
        // ...but a valid template can still give an invalid VMI: here a preset
        // adds a memory request above the template's limit, and only the VMI
        // is refused. The VM reports it, without a hot loop.
        let presets: Api<ironvirt_crds::VirtualMachineInstancePreset> =
            Api::namespaced(e.client.clone(), &ns);
        presets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstancePreset",
                    "metadata": {"name": "big"},
                    "spec": {"selector": {"matchLabels": {"tier": "big"}},
                        "domain": {"resources": {"requests": {"memory": "1Gi"}}}},
                }))?,
            )
            .await?;
        let mut bad = serde_json::to_value(vm_json(&ns, "bad", "Always", "128Mi"))?;
        bad["spec"]["template"]["metadata"]["labels"]["tier"] = json!("big");
        bad["spec"]["template"]["spec"]["domain"]["resources"] =
            json!({"limits": {"memory": "512Mi"}});
        let bad: VirtualMachine = serde_json::from_value(bad)?;
        // ironvirt-api learns of the preset from a watch: wait until a VMI
        // like the VM's is refused.
        let probe = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "probe", "labels": {"tier": "big"}},
            "spec": bad.spec.template.spec,
        });
        let probe: VirtualMachineInstance = serde_json::from_value(probe)?;
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        eventually(T, "the preset in effect", || async {
            e.vmis.create(&dry, &probe).await.is_err().then_some(())
        })
        .await?;
        e.vms.create(&PostParams::default(), &bad).await?;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "good", "Always", "128Mi"),
            )
            .await?;
        let msg = eventually(T, "a Failure condition", || async {
            let st = e.vms.get("bad").await.ok()?.status?;
            let c = st
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Failure" && c.status == "True")?;
            c.message
        })
        .await?;
        anyhow::ensure!(
            msg.contains("spec.domain.resources.requests.memory")
                && msg.contains("is greater than spec.domain.resources.limits.memory"),
            "{msg}"
        );
        wait_status(&e.vms, "good", "Running").await?;
        // No hot loop: over 5 s the VM controller reconciles only a handful of times.
        let before = op
            .metric("ironvirt_operator_reconciles_total{controller=\"vm\"}")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = op
            .metric("ironvirt_operator_reconciles_total{controller=\"vm\"}")
            .await;
        anyhow::ensure!(
            after - before <= 6.0,
            "{} VM reconciles in 5 s",
            after - before
        );
        anyhow::ensure!(e.vmis.get_opt("bad").await?.is_none());
        finish(bed, &ns, vec![node]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_the_operator_converges_without_duplicates() {
    let bed = &bed().await;
    bed.with_namespace("op-restart", |ns| async move {
        let e = env(bed, &ns);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "16",
            "16Gi",
            Behavior::Run,
        )
        .await;
        let mut op = Operator::start(
            bed,
            &ns,
            "a",
            &["--lease-duration", "2s", "--renew-interval", "500ms"],
        );
        // Kill it at arbitrary points while VMs are being created and placed.
        for i in 0..8 {
            e.vms
                .create(
                    &PostParams::default(),
                    &vm_json(&ns, &format!("vm{i}"), "Always", "64Mi"),
                )
                .await?;
            if i % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(150 * i)).await;
                op.kill();
                op = Operator::start(
                    bed,
                    &ns,
                    &format!("r{i}"),
                    &["--lease-duration", "2s", "--renew-interval", "500ms"],
                );
            }
        }
        for i in 0..8 {
            wait_status(&e.vms, &format!("vm{i}"), "Running").await?;
        }
        let vmis = e.vmis.list(&Default::default()).await?.items;
        anyhow::ensure!(vmis.len() == 8, "{} VMIs for 8 VMs", vmis.len());
        let result = finish(bed, &ns, vec![node]).await;
        drop(op);
        result
    })
    .await;
}

/// How the leader goes in a hand-over case.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// SIGKILL, as a crash: the standby waits for the Lease to expire.
    Kill,
    /// SIGTERM: the leader stops cleanly (exit code 0) and releases the Lease.
    Terminate,
}

/// One leader-election case: two replicas, the leader goes, the standby leads
/// within `takeover` and acts.
struct Handover {
    ns: &'static str,
    /// The replicas' --lease-duration (they renew every second).
    lease_duration: &'static str,
    exit: Exit,
    takeover: Duration,
}

const HANDOVERS: [Handover; 2] = [
    Handover {
        ns: "op-leader",
        lease_duration: "4s",
        exit: Exit::Kill,
        takeover: Duration::from_secs(8),
    },
    // A long lease: only an explicit release lets the standby lead quickly.
    Handover {
        ns: "op-sigterm",
        lease_duration: "30s",
        exit: Exit::Terminate,
        takeover: Duration::from_secs(10),
    },
];

async fn handover(case: &Handover) {
    let bed = &bed().await;
    bed.with_namespace(case.ns, |ns| async move {
        let e = env(bed, &ns);
        let args = [
            "--lease-duration",
            case.lease_duration,
            "--renew-interval",
            "1s",
        ];
        let mut first = Operator::start(bed, &ns, "first", &args);
        let node = FakeNode::start(
            e.client.clone(),
            &ns,
            &node_name(&ns, "n1"),
            "4",
            "4Gi",
            Behavior::Run,
        )
        .await;
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web", "Always", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web", "Running").await?;
        let second = Operator::start(bed, &ns, "second", &args);
        // Ready means past the CRD wait and into the election.
        eventually(T, "the standby ready", || async {
            second.ready().await.then_some(())
        })
        .await?;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(e.client.clone(), &ns);
        let holder =
            |l: k8s_openapi::api::coordination::v1::Lease| l.spec.and_then(|s| s.holder_identity);
        anyhow::ensure!(holder(leases.get("ironvirt-operator").await?).as_deref() == Some("first"));
        match case.exit {
            Exit::Kill => first.kill(),
            Exit::Terminate => {
                let code = tokio::task::block_in_place(|| first.terminate(Duration::from_secs(15)));
                anyhow::ensure!(
                    code == Some(0),
                    "SIGTERM exit code {code:?}; log:\n{}",
                    first.log_text()
                );
            }
        }
        let gone = std::time::Instant::now();
        eventually(T, "the standby to lead", || async {
            (holder(leases.get("ironvirt-operator").await.ok()?).as_deref() == Some("second"))
                .then_some(())
        })
        .await?;
        let took = gone.elapsed();
        anyhow::ensure!(
            took < case.takeover,
            "takeover after {:?} took {took:?}",
            case.exit
        );
        // The new leader acts: a second VM runs, and no duplicate VMI appeared.
        e.vms
            .create(
                &PostParams::default(),
                &vm_json(&ns, "web2", "Always", "128Mi"),
            )
            .await?;
        wait_status(&e.vms, "web2", "Running").await?;
        let n = e.vmis.list(&Default::default()).await?.items.len();
        anyhow::ensure!(n == 2, "{n} VMIs for two VMs");
        let res = finish(bed, &ns, vec![node]).await;
        drop(second);
        res
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_when_the_leader_dies() {
    handover(&HANDOVERS[0]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_hands_the_lease_over_at_once() {
    handover(&HANDOVERS[1]).await;
}
