use super::*;

fn vmi(spec_extra: serde_json::Value, status: serde_json::Value) -> VirtualMachineInstance {
    let mut spec = serde_json::json!({
        "domain": {"devices": {"autoattachPodInterface": false}, "memory": {"guest": "128Mi"}},
        "volumes": [{"name": "root", "containerDisk": {"image": "r/x:1"}}],
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "v", "namespace": "ns", "uid": "vmi-uid"},
        "spec": spec, "status": status,
    }))
    .unwrap()
}

fn migrating(state: serde_json::Value, node: &str) -> VirtualMachineInstance {
    vmi(
        serde_json::json!({}),
        serde_json::json!({"phase": "Running", "nodeName": node, "migrationState": state}),
    )
}

#[test]
fn containerdisk_vmis_without_network_migrate_others_say_why_not() {
    assert_eq!(
        live_migratable(&vmi(serde_json::json!({}), serde_json::json!({}))),
        None
    );
    let pod = vmi(
        serde_json::json!({"domain": {"devices": {}}}),
        serde_json::json!({}),
    );
    assert_eq!(
        live_migratable(&pod).map(|r| r.0),
        Some("InterfaceNotLiveMigratable")
    );
    let host = vmi(
        serde_json::json!({"volumes": [{"name": "d", "hostDisk": {"path": "/x", "type": "Disk"}}]}),
        serde_json::json!({}),
    );
    let (reason, message) = live_migratable(&host).unwrap();
    assert_eq!(reason, "DisksNotLiveMigratable");
    assert!(message.contains("hostDisk d"), "{message}");
}

#[test]
fn the_source_starts_once_the_target_is_ready_and_aborts_on_request() {
    let base = serde_json::json!({"migrationUid": "m", "sourceNode": "n1", "targetNode": "n2"});
    let v = migrating(base.clone(), "n1");
    assert_eq!(source_step(&v, "n1", false), SourceStep::Nothing);
    let mut ready = base.clone();
    ready["targetNodeDomainReadyTimestamp"] = serde_json::json!("2026-12-03T10:00:00Z");
    ready["targetNodeAddress"] = serde_json::json!("10.213.0.12");
    let v = migrating(ready.clone(), "n1");
    assert_eq!(
        source_step(&v, "n1", false),
        SourceStep::Start {
            uid: "m".into(),
            address: "10.213.0.12".into()
        }
    );
    assert_eq!(source_step(&v, "n1", true), SourceStep::Nothing);
    assert_eq!(source_step(&v, "n2", false), SourceStep::Nothing);
    let mut started = ready.clone();
    started["startTimestamp"] = serde_json::json!("2026-12-03T10:00:01Z");
    // Started, but this handler runs nothing: it restarted meanwhile.
    let v = migrating(started.clone(), "n1");
    assert_eq!(
        source_step(&v, "n1", false),
        SourceStep::Interrupted { uid: "m".into() }
    );
    let mut abort = started.clone();
    abort["abortRequested"] = serde_json::json!(true);
    let v = migrating(abort, "n1");
    assert_eq!(
        source_step(&v, "n1", true),
        SourceStep::Abort { uid: "m".into() }
    );
    let mut early = ready;
    early["abortRequested"] = serde_json::json!(true);
    let v = migrating(early, "n1");
    assert_eq!(
        source_step(&v, "n1", false),
        SourceStep::AbortedBeforeStart { uid: "m".into() }
    );
    let mut done = started;
    done["completed"] = serde_json::json!(true);
    assert_eq!(
        source_step(&migrating(done, "n1"), "n1", false),
        SourceStep::Nothing
    );
}

#[test]
fn the_target_prepares_once_and_cleans_up_after_a_failure() {
    let base = serde_json::json!({"migrationUid": "m", "sourceNode": "n1", "targetNode": "n2"});
    let v = migrating(base.clone(), "n1");
    assert_eq!(
        target_step(&v, "n2"),
        TargetStep::Prepare { uid: "m".into() }
    );
    assert_eq!(target_step(&v, "n3"), TargetStep::Nothing);
    let mut ready = base.clone();
    ready["targetNodeDomainReadyTimestamp"] = serde_json::json!("2026-12-03T10:00:00Z");
    assert_eq!(
        target_step(&migrating(ready, "n1"), "n2"),
        TargetStep::Nothing
    );
    let mut failed = base.clone();
    failed["failed"] = serde_json::json!(true);
    assert_eq!(
        target_step(&migrating(failed.clone(), "n1"), "n2"),
        TargetStep::Cleanup
    );
    // A VMI that failed back here earlier and now runs here keeps its files.
    assert_eq!(
        target_step(&migrating(failed, "n2"), "n2"),
        TargetStep::Nothing
    );
}

#[test]
fn a_migrated_vmi_is_not_lost_on_its_source() {
    let done = serde_json::json!({"migrationUid": "m", "sourceNode": "n1", "targetNode": "n2",
        "startTimestamp": "2026-12-03T10:00:01Z", "completed": true});
    assert!(migrated_away(&migrating(done.clone(), "n1"), "n1"));
    assert!(!migrated_away(&migrating(done.clone(), "n1"), "n2"));
    let mut failed = done;
    failed["completed"] = serde_json::json!(false);
    failed["failed"] = serde_json::json!(true);
    assert!(!migrated_away(&migrating(failed, "n1"), "n1"));
    assert!(!migrated_away(
        &vmi(serde_json::json!({}), serde_json::json!({})),
        "n1"
    ));
}

#[test]
fn writable_disks_in_the_vmi_directory_are_copied() {
    let xml = r#"<domain><devices>
      <disk type="file" device="disk"><source file="/s/vmis/u/root.qcow2"/><target dev="vda"/></disk>
      <disk type="file" device="disk"><source file="/s/vmis/u/scratch.qcow2"/><target dev="vdb"/></disk>
      <disk type="file" device="cdrom"><source file="/s/vmis/u/cloudinit.iso"/><target dev="sda"/><readonly/></disk>
      <disk type="file" device="disk"><source file="/shared/img.qcow2"/><target dev="vdc"/></disk>
    </devices></domain>"#;
    assert_eq!(
        disks_to_copy(xml, std::path::Path::new("/s/vmis/u")),
        ["vda", "vdb"]
    );
}

#[test]
fn patches_test_the_migration_uid_first() {
    let p = state_patch("m", &[("completed", serde_json::json!(true))]);
    assert_eq!(p[0]["op"], "test");
    assert_eq!(p[0]["path"], "/status/migrationState/migrationUid");
    assert_eq!(p[1]["path"], "/status/migrationState/completed");
    let parsed: Result<json_patch::Patch, _> = serde_json::from_value(p);
    assert!(parsed.is_ok());
}

#[test]
fn completion_timeout_grows_per_gib() {
    assert_eq!(completion_timeout(0), Duration::from_secs(150));
    assert_eq!(completion_timeout(1 << 30), Duration::from_secs(150));
    assert_eq!(completion_timeout((1 << 30) + 1), Duration::from_secs(300));
}

#[test]
fn the_target_uri_is_tls_with_the_nodes_client_certificate() {
    assert_eq!(
        target_uri("10.213.0.12", None),
        "qemu+tls://10.213.0.12/system"
    );
    assert_eq!(
        target_uri(
            "10.213.0.12",
            Some(std::path::Path::new("/etc/libvirt/pki"))
        ),
        "qemu+tls://10.213.0.12/system?pkipath=/etc/libvirt/pki"
    );
    assert_eq!(target_uri("fd00::5", None), "qemu+tls://[fd00::5]/system");
}
