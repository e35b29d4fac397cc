//! KubeVirt's own `virtctl` against ironvirt, through kube-apiserver, as a
//! user with the `kubevirt.io:admin` role in one namespace: start a Halted VM,
//! open its serial console (in a terminal: tmux) and type into it, take a VNC
//! screenshot, stop it. `make test` builds virtctl (hack/build-virtctl.sh,
//! cached) and names it in IRONVIRT_VIRTCTL.

use std::path::PathBuf;
use std::time::Duration;

use ironvirt_crds::VirtualMachine;
use ironvirt_tests::api::{GUEST_MARKER as MARKER, bind, printable};
use ironvirt_tests::cli::{Tmux, guest_vm_manifest, kubectl_apply};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use kube::api::Api;

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(120);

fn virtctl_bin() -> PathBuf {
    let path = std::env::var_os("IRONVIRT_VIRTCTL").map(PathBuf::from).expect(
        "IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`",
    );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Runs virtctl with `args`; (exit code, stdout, stderr).
async fn virtctl(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(virtctl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .expect("run virtctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubevirts_virtctl_starts_consoles_screenshots_and_stops() {
    let bed = &bed().await;
    bed.with_namespace("vctl", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "vera", "kubevirt.io:admin").await;
        let kubeconfig = bed
            .user_kubeconfig("vera", &["dev"])
            .map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let manifest = guest_vm_manifest(bed, "vk", "Halted", &[]).await?;
        kubectl_apply(bed, &ns, &manifest, &[])?;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);

        // start: Halted → Always, a VMI runs. RBAC reaches the authorizer's
        // cache after a moment.
        eventually(Duration::from_secs(30), "virtctl start", || async {
            let (code, _, err) = virtctl(&kubeconfig, &ns, &["start", "vk"]).await;
            if code != 0 {
                eprintln!("virtctl start: {err}");
            }
            (code == 0).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "vk", "Running", BOOT).await?;

        // console in a terminal: the guest's marker, a typed command, ^] to leave.
        let tmux = Tmux::start(&ns)?;
        tmux.type_text(&format!(
            "{} --kubeconfig {} -n {ns} console vk; echo VIRTCTL-EXIT=$?",
            virtctl_bin().display(),
            kubeconfig.display()
        ))?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for(MARKER, BOOT).await?;
        tmux.keys(&["Enter"])?;
        tmux.type_text("echo virtctl-$((6*7))")?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for("virtctl-42", Duration::from_secs(30)).await?;
        tmux.keys(&["C-]"])?;
        tmux.wait_for("VIRTCTL-EXIT=0", Duration::from_secs(15))
            .await?;

        // vnc screenshot: a PNG of the guest's screen.
        let png = std::env::temp_dir().join(format!("{ns}-screen.png"));
        let png_arg = format!("--file={}", png.display());
        let (code, out, err) =
            virtctl(&kubeconfig, &ns, &["vnc", "screenshot", "vk", &png_arg]).await;
        assert_eq!(code, 0, "virtctl vnc screenshot: {out}{err}");
        let bytes = std::fs::read(&png).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&png);
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "not a PNG of a screen: {} bytes",
            bytes.len()
        );

        // stop: Always → Halted, the VMI goes, the VM shows Stopped.
        let (code, out, err) = virtctl(&kubeconfig, &ns, &["stop", "vk"]).await;
        assert_eq!(code, 0, "virtctl stop: {out}{err}");
        wait_gone(&admin, &ns, "vk", Duration::from_secs(60)).await?;
        eventually(Duration::from_secs(30), "VM Stopped", || async {
            (printable(&vms, "vk").await.as_deref() == Some("Stopped")).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;

        // A user without a role gets virtctl's error, not a session.
        let nobody = bed
            .user_kubeconfig("nobody", &["dev"])
            .map_err(|e| e.to_string())?;
        let (code, _, err) = virtctl(&nobody, &ns, &["start", "vk"]).await;
        assert_ne!(code, 0);
        assert!(err.contains("forbidden"), "{err}");

        let _ = vms.delete("vk", &Default::default()).await;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

/// The migrations of VMI `vmi` in `ns`, oldest first.
async fn migrations_of(
    client: &kube::Client,
    ns: &str,
    vmi: &str,
) -> Vec<ironvirt_crds::migration::VirtualMachineInstanceMigration> {
    let api: Api<ironvirt_crds::migration::VirtualMachineInstanceMigration> =
        Api::namespaced(client.clone(), ns);
    let mut items = api
        .list(&Default::default())
        .await
        .expect("list migrations")
        .items;
    items.retain(|m| m.spec.vmi_name == vmi);
    items.sort_by_key(|m| m.metadata.creation_timestamp.clone().map(|t| t.0));
    items
}

/// `virtctl migrate` and `migrate-cancel` (issue #18) as KubeVirt's virtctl
/// does them: the migrate subresource creates a labelled migration of the
/// running VMI, a second is refused while the first is in flight, the cancel
/// deletes the unfinished one; a stopped VM is 409, a viewer is forbidden.
///
/// The API surface alone: the VMI is an object whose status says Running on
/// a node (no handler, no operator, no guest), so that neither a migration
/// controller nor the handler's LiveMigratable verdict on the guest's disks
/// decides what happens to the migrations; tests/tests/migration.rs moves a
/// real guest.
#[tokio::test(flavor = "multi_thread")]
async fn kubevirts_virtctl_migrates_and_cancels() {
    use ironvirt_crds::migration::{
        MIGRATE_GENERATE_NAME, VMI_NAME_LABEL, VirtualMachineInstanceMigration,
    };
    let bed = &bed().await;
    bed.with_namespace("vmig", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "mira", "kubevirt.io:admin").await;
        bind(&admin, &ns, "vic", "kubevirt.io:view").await;
        let mira = bed
            .user_kubeconfig("mira", &["dev"])
            .map_err(|e| e.to_string())?;
        let vic = bed
            .user_kubeconfig("vic", &["dev"])
            .map_err(|e| e.to_string())?;

        // Two Halted VMs; "mv" gets a VMI that reports Running on a node.
        for name in ["mv", "halted"] {
            let manifest = guest_vm_manifest(bed, name, "Halted", &[]).await?;
            kubectl_apply(bed, &ns, &manifest, &[])?;
        }
        let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        let vmi: ironvirt_crds::VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "mv"},
            "spec": {"domain": {"memory": {"guest": "64Mi"},
                "devices": {"autoattachPodInterface": false}}},
        }))
        .map_err(|e| e.to_string())?;
        vmis.create(&Default::default(), &vmi)
            .await
            .map_err(|e| e.to_string())?;
        let running = serde_json::json!({"status": {"phase": "Running", "nodeName": format!("{ns}-n"),
            "conditions": [{"type": "LiveMigratable", "status": "True"}]}});
        vmis.patch_status("mv", &Default::default(), &kube::api::Patch::Merge(&running))
            .await
            .map_err(|e| e.to_string())?;
        let migrations: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), &ns);

        // migrate: a migration of the VMI, labelled, from the subresource.
        // RBAC reaches the authorizer's cache after a moment.
        eventually(Duration::from_secs(30), "virtctl migrate", || async {
            let (code, out, err) = virtctl(&mira, &ns, &["migrate", "mv"]).await;
            if code != 0 {
                eprintln!("virtctl migrate: {out}{err}");
            }
            (code == 0 && out.contains("VM mv was scheduled to migrate")).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let made = migrations_of(&admin, &ns, "mv").await;
        assert_eq!(made.len(), 1, "{made:?}");
        let first = &made[0];
        let first_uid = first.metadata.uid.clone().unwrap_or_default();
        assert_eq!(
            first.metadata.generate_name.as_deref(),
            Some(MIGRATE_GENERATE_NAME)
        );
        assert_eq!(
            first
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(VMI_NAME_LABEL))
                .map(String::as_str),
            Some("mv"),
            "{first:?}"
        );

        // A second one is refused while the first is in flight.
        let (code, out, err) = virtctl(&mira, &ns, &["migrate", "mv"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains(&format!(
                "in-flight migration detected. Active migration job ({first_uid}) is currently already in progress for VMI mv."
            )),
            "{out}{err}"
        );
        assert_eq!(migrations_of(&admin, &ns, "mv").await.len(), 1);
        // So is one created directly, and its spec cannot change.
        let direct: VirtualMachineInstanceMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "direct"}, "spec": {"vmiName": "mv"},
        }))
        .map_err(|e| e.to_string())?;
        let refused = migrations
            .create(&Default::default(), &direct)
            .await
            .expect_err("a second migration in flight");
        assert!(refused.to_string().contains("in-flight migration detected"), "{refused}");
        let name = first.metadata.name.clone().unwrap_or_default();
        let change = serde_json::json!({"spec": {"addedNodeSelector": {"k": "v"}}});
        let refused = migrations
            .patch(&name, &Default::default(), &kube::api::Patch::Merge(&change))
            .await
            .expect_err("the spec is immutable");
        assert!(refused.to_string().contains("spec is immutable after creation"), "{refused}");

        // A viewer may read migrations but neither ask for nor cancel one.
        let (code, out, err) = virtctl(&vic, &ns, &["migrate", "mv"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains("cannot update resource \"virtualmachines/migrate\""),
            "{err}"
        );
        let (code, out, err) = virtctl(&vic, &ns, &["migrate-cancel", "mv"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("forbidden") && err.contains("delete"), "{err}");

        // migrate-cancel deletes the unfinished one; then there is none.
        let (code, out, err) = virtctl(&mira, &ns, &["migrate-cancel", "mv"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("VM mv was scheduled to migrate-cancel"), "{out}");
        eventually(Duration::from_secs(30), "the cancelled migration gone", || async {
            migrations_of(&admin, &ns, "mv").await.is_empty().then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let (code, out, err) = virtctl(&mira, &ns, &["migrate-cancel", "mv"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("Found no migration to cancel for mv"), "{err}");

        // A VM that is not running cannot migrate.
        let (code, out, err) = virtctl(&mira, &ns, &["migrate", "halted"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains(
                "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"halted\": VM is not running"
            ),
            "{err}"
        );
        assert!(migrations_of(&admin, &ns, "halted").await.is_empty());

        // Clean up: no handler ran, so the VMI's finalizer goes by hand.
        let _ = migrations
            .delete_collection(&Default::default(), &Default::default())
            .await;
        let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
        let _ = vmis
            .patch("mv", &Default::default(), &kube::api::Patch::Merge(&unfinalize))
            .await;
        let _ = vmis.delete("mv", &Default::default()).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        for name in ["mv", "halted"] {
            let _ = vms.delete(name, &Default::default()).await;
        }
        wait_gone(&admin, &ns, "mv", Duration::from_secs(30)).await?;
        Ok::<(), String>(())
    })
    .await;
}
