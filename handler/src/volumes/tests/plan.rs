//! Planning: which file each volume needs and what goes into it.

use super::*;

#[test]
fn referenced_secrets_are_sorted_and_unique() {
    let vmi = vmi_with(
        "[{name: a, cloudInitNoCloud: {secretRef: {name: zeta}, networkDataSecretRef: {name: alpha}}},\
          {name: b, cloudInitNoCloud: {secretRef: {name: alpha}}},\
          {name: c, cloudInitNoCloud: {userData: hi, networkDataSecretRef: {name: mid}}},\
          {name: d, hostDisk: {path: /hd/default/x, type: Disk}}]",
    );
    assert_eq!(referenced_secrets(&vmi), ["alpha", "mid", "zeta"]);
}

#[test]
fn no_cloud_init_means_no_secrets() {
    assert!(referenced_secrets(&vmi_with("[{name: d, emptyDisk: {capacity: 1Gi}}]")).is_empty());
    let no_volumes = vmi_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: x, uid: {UID}}}\nspec: {{domain: {{}}}}\n"
    ));
    assert!(referenced_secrets(&no_volumes).is_empty());
    assert!(
        plan_on(&no_volumes, Path::new("/d"), &no_secrets())
            .unwrap()
            .is_empty()
    );
}

// ---- plan: hostDisk ----------------------------------------------------

#[test]
fn host_disk_of_type_disk_is_used_as_is() {
    assert_eq!(
        plan_one(
            "[{name: root, hostDisk: {path: /hd/default/images/a.img, type: Disk}}]",
            &no_secrets()
        )
        .unwrap(),
        VolumePlan::HostDisk {
            ns_dir: PathBuf::from(NS_DIR),
            path: PathBuf::from("/hd/default/images/a.img"),
            create: None
        }
    );
    // A capacity on a Disk means nothing.
    assert_eq!(
        plan_one(
            "[{name: root, hostDisk: {path: /hd/default/a.img, type: Disk, capacity: nonsense}}]",
            &no_secrets()
        )
        .unwrap(),
        VolumePlan::HostDisk {
            ns_dir: PathBuf::from(NS_DIR),
            path: PathBuf::from("/hd/default/a.img"),
            create: None
        }
    );
}

#[test]
fn host_disk_or_create_carries_its_capacity() {
    assert_eq!(
        plan_one(
            "[{name: data, hostDisk: {path: /hd/default/d/data.img, type: DiskOrCreate, capacity: 1Gi}}]",
            &no_secrets()
        )
        .unwrap(),
        VolumePlan::HostDisk {
            ns_dir: PathBuf::from(NS_DIR),
            path: PathBuf::from("/hd/default/d/data.img"),
            create: Some(1 << 30)
        }
    );
    assert_eq!(
        plan_one(
            "[{name: data, hostDisk: {path: /hd/default/d/data.img, type: DiskOrCreate, capacity: '5M'}}]",
            &no_secrets()
        )
        .unwrap(),
        VolumePlan::HostDisk {
            ns_dir: PathBuf::from(NS_DIR),
            path: PathBuf::from("/hd/default/d/data.img"),
            create: Some(5_000_000)
        }
    );
}

#[test]
fn host_disk_or_create_needs_a_good_capacity() {
    let field = "spec.volumes[1].hostDisk.capacity";
    let with = |hd: &str| {
        plan_on(
            &vmi_with(&format!(
                "[{{name: a, emptyDisk: {{capacity: 1Mi}}}}, {{name: b, hostDisk: {hd}}}]"
            )),
            Path::new("/d"),
            &no_secrets(),
        )
    };
    assert_invalid(
        with("{path: /hd/default/b.img, type: DiskOrCreate}"),
        field,
        "needs a capacity",
    );
    assert_invalid(
        with("{path: /hd/default/b.img, type: DiskOrCreate, capacity: lots}"),
        field,
        "\"lots\"",
    );
    assert_invalid(
        with("{path: /hd/default/b.img, type: DiskOrCreate, capacity: '0'}"),
        field,
        "positive",
    );
    assert_invalid(
        with("{path: /hd/default/b.img, type: DiskOrCreate, capacity: '-1Gi'}"),
        field,
        "positive",
    );
}

#[test]
fn host_disk_paths_outside_the_namespace_dir_are_refused() {
    let field = "spec.volumes[0].hostDisk.path";
    for (path, words) in [
        ("images/a.img", "not an absolute path"),
        ("./a.img", "not an absolute path"),
        ("''", "not an absolute path"),
        ("/etc/shadow", "not inside /hd/default/"),
        ("/hd/other/a.img", "not inside /hd/default/"),
        ("/hd/defaultx/a.img", "not inside /hd/default/"),
        ("/hd/default", "not inside /hd/default/"),
        ("/hd/default/../other/a.img", "'..'"),
        ("/hd/default/images/..", "'..'"),
        ("/hd/default/./a.img", "'.'"),
        ("/hd/default//a.img", "empty component"),
        ("/", "empty component"),
    ] {
        let message = assert_policy(
            plan_one(
                &format!("[{{name: root, hostDisk: {{path: {path}, type: Disk}}}}]"),
                &no_secrets(),
            ),
            PolicyViolation::HostDiskOutsideRoot,
        );
        assert!(message.starts_with(field), "{path}: {message}");
        assert!(
            message.contains(words),
            "{path}: {message:?} lacks {words:?}"
        );
    }
    // Inside the directory, but not a path a file can have.
    assert_invalid(
        plan_one(
            "[{name: root, hostDisk: {path: \"/hd/default/a\\0b\", type: Disk}}]",
            &no_secrets(),
        ),
        field,
        "NUL",
    );
}

#[test]
fn host_disk_is_refused_while_host_disk_is_off() {
    for spec in [
        "{path: /hd/default/a.img, type: Disk}",
        "{path: /var/lib/ironvirt/images/a.img, type: Disk}",
        "{path: /hd/default/new.img, type: DiskOrCreate, capacity: 1Gi}",
    ] {
        let message = assert_policy(
            plan(
                &vmi_with(&format!("[{{name: root, hostDisk: {spec}}}]")),
                Path::new("/d"),
                &VolumePolicy::default(),
                &no_secrets(),
            ),
            PolicyViolation::HostDiskDisabled,
        );
        assert!(
            message.starts_with("spec.volumes[0].hostDisk hostDisk is disabled"),
            "{message}"
        );
    }
}

#[test]
fn capacities_above_the_limits_are_refused() {
    for (volumes, field) in [
        (
            "[{name: s, emptyDisk: {capacity: 2Ti}}]",
            "spec.volumes[0].emptyDisk.capacity",
        ),
        (
            "[{name: s, emptyDisk: {capacity: 1Ei}}]",
            "spec.volumes[0].emptyDisk.capacity",
        ),
        (
            "[{name: d, hostDisk: {path: /hd/default/d.img, type: DiskOrCreate, capacity: 1025Gi}}]",
            "spec.volumes[0].hostDisk.capacity",
        ),
        // Each within 1Ti, together above 4Ti.
        (
            "[{name: a, emptyDisk: {capacity: 1Ti}}, {name: b, emptyDisk: {capacity: 1Ti}},\
              {name: c, emptyDisk: {capacity: 1Ti}}, {name: d, emptyDisk: {capacity: 1Ti}},\
              {name: e, hostDisk: {path: /hd/default/e.img, type: DiskOrCreate, capacity: 1Gi}}]",
            "spec.volumes",
        ),
    ] {
        let message = assert_policy(
            plan_on(&vmi_with(volumes), Path::new("/d"), &no_secrets()),
            PolicyViolation::VolumeTooLarge,
        );
        assert!(message.starts_with(field), "{message}");
        assert!(message.contains("more than the maximum"), "{message}");
    }
    // At the limits, and without limits, the plan goes through.
    plan_on(
        &vmi_with("[{name: s, emptyDisk: {capacity: 1Ti}}]"),
        Path::new("/d"),
        &no_secrets(),
    )
    .unwrap();
    let unlimited = VolumePolicy {
        max_volume_bytes: None,
        max_vmi_bytes: None,
        ..policy()
    };
    plan(
        &vmi_with("[{name: s, emptyDisk: {capacity: 1Ei}}]"),
        Path::new("/d"),
        &unlimited,
        &no_secrets(),
    )
    .unwrap();
}

#[test]
fn every_policy_violation_is_listed_with_the_first_as_reason() {
    let message = assert_policy(
        plan_on(
            &vmi_with(
                "[{name: a, hostDisk: {path: /etc/shadow, type: Disk}},\
                  {name: b, emptyDisk: {capacity: 2Ti}}]",
            ),
            Path::new("/d"),
            &no_secrets(),
        ),
        PolicyViolation::HostDiskOutsideRoot,
    );
    assert!(
        message.contains("spec.volumes[0].hostDisk.path"),
        "{message}"
    );
    assert!(
        message.contains("spec.volumes[1].emptyDisk.capacity"),
        "{message}"
    );
}

// ---- plan: emptyDisk ---------------------------------------------------

#[test]
fn empty_disk_lives_in_the_vmi_dir() {
    let plans = plan_on(
        &vmi_with("[{name: scratch, emptyDisk: {capacity: 2Gi}}, {name: small, emptyDisk: {capacity: '1000'}}]"),
        Path::new("/state/vmis/u"),
        &no_secrets(),
    )
    .unwrap();
    assert_eq!(
        plans["scratch"],
        VolumePlan::EmptyDisk {
            path: PathBuf::from("/state/vmis/u/scratch.qcow2"),
            bytes: 2 << 30
        }
    );
    assert_eq!(
        plans["small"],
        VolumePlan::EmptyDisk {
            path: PathBuf::from("/state/vmis/u/small.qcow2"),
            bytes: 1000
        }
    );
}

#[test]
fn empty_disk_needs_a_positive_capacity() {
    let field = "spec.volumes[0].emptyDisk.capacity";
    assert_invalid(
        plan_one("[{name: s, emptyDisk: {capacity: big}}]", &no_secrets()),
        field,
        "\"big\"",
    );
    assert_invalid(
        plan_one("[{name: s, emptyDisk: {capacity: '0'}}]", &no_secrets()),
        field,
        "positive",
    );
    assert_invalid(
        plan_one("[{name: s, emptyDisk: {capacity: 1Qi}}]", &no_secrets()),
        field,
        "\"1Qi\"",
    );
}

// ---- plan: cloudInitNoCloud --------------------------------------------

#[test]
fn cloud_init_inline_user_data_and_meta_data() {
    let plan = plan_one(
        "[{name: cloudinit, cloudInitNoCloud: {userData: \"#!/bin/sh\\necho hi\\n\"}}]",
        &no_secrets(),
    )
    .unwrap();
    assert_eq!(
        plan,
        VolumePlan::CloudInit {
            path: PathBuf::from("/state/vmis/u/cloudinit.cidata.img"),
            files: CloudInitFiles {
                kind: CloudInitKind::NoCloud,
                user_data: b"#!/bin/sh\necho hi\n".to_vec(),
                meta_data: format!("instance-id: {UID}\nlocal-hostname: testvm\n"),
                network_config: None,
            }
        }
    );
}

#[test]
fn config_drive_keeps_user_data_and_puts_its_keys_in_meta_data_json() {
    let vmi = vmi_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: testvm, namespace: default, uid: {UID}}}\n\
         spec:\n  domain: {{}}\n\
         \x20 volumes: [{{name: ci, cloudInitConfigDrive: {{userData: \"#cloud-config\\n\", networkDataSecretRef: {{name: net}}}}}}]\n\
         \x20 accessCredentials:\n\
         \x20 - sshPublicKey: {{source: {{secret: {{secretName: drive}}}}, propagationMethod: {{configDrive: {{}}}}}}\n\
         \x20 - sshPublicKey: {{source: {{secret: {{secretName: cloud}}}}, propagationMethod: {{noCloud: {{}}}}}}\n"
    ));
    assert_eq!(referenced_secrets(&vmi), ["cloud", "drive", "net"]);
    let secrets = secrets(&[
        ("drive", "k", b"ssh-ed25519 AAAA d@x\nssh-rsa BBBB e@x\n"),
        ("cloud", "k", b"ssh-ed25519 CCCC c@x\n"),
        ("net", "networkdata", b"{\"links\": []}"),
    ]);
    let plans = plan_on(&vmi, Path::new("/state/vmis/u"), &secrets).unwrap();
    let Some(VolumePlan::CloudInit { path, files }) = plans.get("ci") else {
        panic!("{plans:?}");
    };
    assert_eq!(path, Path::new("/state/vmis/u/ci.config-2.iso"));
    assert_eq!(files.kind, CloudInitKind::ConfigDrive);
    // The user-data is the volume's own; only configDrive keys are in meta_data.json.
    assert_eq!(files.user_data, b"#cloud-config\n");
    assert_eq!(
        files.network_config.as_deref(),
        Some(&b"{\"links\": []}"[..])
    );
    let meta: serde_json::Value = serde_json::from_str(&files.meta_data).unwrap();
    assert_eq!(meta["uuid"], UID);
    assert_eq!(meta["hostname"], "testvm");
    assert_eq!(
        meta["public_keys"],
        serde_json::json!({"0": "ssh-ed25519 AAAA d@x", "1": "ssh-rsa BBBB e@x"})
    );
    // Without keys there is no public_keys member.
    let files = cloud_init(
        "[{name: ci, cloudInitConfigDrive: {userData: x}}]",
        &no_secrets(),
    );
    let meta: serde_json::Value = serde_json::from_str(&files.meta_data).unwrap();
    assert!(meta.get("public_keys").is_none(), "{meta}");
}

#[test]
fn cloud_init_hostname_comes_from_the_spec_when_set() {
    let vmi = vmi_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: testvm, uid: {UID}}}\n\
         spec: {{domain: {{}}, hostname: guest-1, volumes: [{{name: ci, cloudInitNoCloud: {{}}}}]}}\n"
    ));
    let plans = plan_on(&vmi, Path::new("/d"), &no_secrets()).unwrap();
    let VolumePlan::CloudInit { files, .. } = &plans["ci"] else {
        panic!("{plans:?}")
    };
    assert_eq!(
        files.meta_data,
        format!("instance-id: {UID}\nlocal-hostname: guest-1\n")
    );
}

#[test]
fn cloud_init_rejects_a_hostname_that_is_not_a_dns_label() {
    for bad in ["\"Guest\"", "\"a\\ninstance-id: x\"", "\"-a\"", "\"a.b\""] {
        let vmi = vmi_yaml(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: testvm, uid: {UID}}}\n\
             spec: {{domain: {{}}, hostname: {bad}, volumes: [{{name: ci, cloudInitNoCloud: {{}}}}]}}\n"
        ));
        assert_invalid(
            plan_on(&vmi, Path::new("/d"), &no_secrets()),
            "spec.hostname",
            "DNS label",
        );
    }
}

#[test]
fn cloud_init_without_user_data_has_empty_user_data() {
    let files = cloud_init("[{name: ci, cloudInitNoCloud: {}}]", &no_secrets());
    assert!(files.user_data.is_empty());
    assert_eq!(files.network_config, None);
}

#[test]
fn cloud_init_user_data_base64() {
    // "#cloud-config\n" wrapped over two lines, as base64 tools do.
    let files = cloud_init(
        "[{name: ci, cloudInitNoCloud: {userDataBase64: \"I2Nsb3Vk\\nLWNvbmZpZwo=\"}}]",
        &no_secrets(),
    );
    assert_eq!(files.user_data, b"#cloud-config\n");
}

#[test]
fn cloud_init_bad_base64_names_the_field() {
    assert_invalid(
        plan_one(
            "[{name: ci, cloudInitNoCloud: {userDataBase64: 'not base64!'}}]",
            &no_secrets(),
        ),
        "spec.volumes[0].cloudInitNoCloud.userDataBase64",
        "base64",
    );
    assert_invalid(
        plan_one(
            "[{name: ci, cloudInitNoCloud: {userData: x, networkDataBase64: 'bad*'}}]",
            &no_secrets(),
        ),
        "spec.volumes[0].cloudInitNoCloud.networkDataBase64",
        "base64",
    );
}

#[test]
fn cloud_init_user_data_from_a_secret() {
    let vol = "[{name: ci, cloudInitNoCloud: {secretRef: {name: my-secret}}}]";
    let files = cloud_init(
        vol,
        &secrets(&[("my-secret", "userdata", b"from userdata")]),
    );
    assert_eq!(files.user_data, b"from userdata");
    let files = cloud_init(
        vol,
        &secrets(&[("my-secret", "userData", b"from userData")]),
    );
    assert_eq!(files.user_data, b"from userData");
    // `userdata` wins over `userData`.
    let both = secrets(&[
        ("my-secret", "userData", b"camel"),
        ("my-secret", "userdata", b"lower"),
    ]);
    assert_eq!(cloud_init(vol, &both).user_data, b"lower");
}

#[test]
fn cloud_init_missing_secret_or_key_names_the_field_and_key() {
    let vol = "[{name: ci, cloudInitNoCloud: {secretRef: {name: my-secret}}}]";
    let field = "spec.volumes[0].cloudInitNoCloud.secretRef";
    assert_invalid(
        plan_one(vol, &no_secrets()),
        field,
        "Secret \"my-secret\" not found",
    );
    let wrong = secrets(&[("my-secret", "user-data", b"x")]);
    assert_invalid(
        plan_one(vol, &wrong),
        field,
        "no key \"userdata\" or \"userData\"",
    );
}

#[test]
fn cloud_init_network_config_sources() {
    let inline = cloud_init(
        "[{name: ci, cloudInitNoCloud: {networkData: \"version: 2\\n\"}}]",
        &no_secrets(),
    );
    assert_eq!(inline.network_config.as_deref(), Some(&b"version: 2\n"[..]));

    let b64 = cloud_init(
        "[{name: ci, cloudInitNoCloud: {networkDataBase64: dmVyc2lvbjogMgo=}}]",
        &no_secrets(),
    );
    assert_eq!(b64.network_config.as_deref(), Some(&b"version: 2\n"[..]));

    let vol = "[{name: ci, cloudInitNoCloud: {userData: u, networkDataSecretRef: {name: net}}}]";
    let lower = cloud_init(vol, &secrets(&[("net", "networkdata", b"lower")]));
    assert_eq!(lower.network_config.as_deref(), Some(&b"lower"[..]));
    assert_eq!(lower.user_data, b"u");
    let camel = cloud_init(vol, &secrets(&[("net", "networkData", b"camel")]));
    assert_eq!(camel.network_config.as_deref(), Some(&b"camel"[..]));

    let field = "spec.volumes[0].cloudInitNoCloud.networkDataSecretRef";
    assert_invalid(
        plan_one(vol, &no_secrets()),
        field,
        "Secret \"net\" not found",
    );
    assert_invalid(
        plan_one(vol, &secrets(&[("net", "userdata", b"x")])),
        field,
        "no key \"networkdata\" or \"networkData\"",
    );

    // Empty network data means no network-config file, as in KubeVirt.
    let empty = cloud_init(
        "[{name: ci, cloudInitNoCloud: {networkData: ''}}]",
        &no_secrets(),
    );
    assert_eq!(empty.network_config, None);
}

#[test]
fn cloud_init_needs_the_vmi_uid() {
    let vmi = vmi_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {name: testvm}\n\
         spec: {domain: {}, volumes: [{name: ci, cloudInitNoCloud: {}}]}\n",
    );
    assert_invalid(
        plan_on(&vmi, Path::new("/d"), &no_secrets()),
        "metadata.uid",
        "no uid",
    );
    let odd_uid = vmi_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {name: testvm, uid: '../x'}\n\
         spec: {domain: {}, volumes: [{name: ci, cloudInitNoCloud: {}}]}\n",
    );
    assert_invalid(
        plan_on(&odd_uid, Path::new("/d"), &no_secrets()),
        "metadata.uid",
        "not a uid",
    );
}

// ---- plan: unsupported and malformed volumes ---------------------------

#[test]
fn container_disk_plans_an_overlay_on_the_pulled_image() {
    let plans = plan_on(
        &vmi_with(
            "[{name: a, emptyDisk: {capacity: 1Gi}}, {name: root, containerDisk: {image: quay.io/x/y:v1, imagePullSecret: pull}}]",
        ),
        Path::new("/d"),
        &no_secrets(),
    )
    .unwrap();
    let Some(VolumePlan::ContainerDisk(cd)) = plans.get("root") else {
        panic!("{plans:?}");
    };
    assert_eq!(cd.image.to_string(), "quay.io/x/y:v1");
    assert_eq!(cd.policy, crate::images::PullPolicy::IfNotPresent);
    assert_eq!(cd.pull_secret.as_deref(), Some("pull"));
    assert_eq!(cd.overlay, Path::new("/d/root.overlay.qcow2"));
    // Bad fields are named.
    assert_invalid(
        plan_one(
            "[{name: v, containerDisk: {image: 'Quay.io/X'}}]",
            &no_secrets(),
        ),
        "spec.volumes[0].containerDisk.image",
        "lowercase",
    );
    assert_invalid(
        plan_one(
            "[{name: v, containerDisk: {image: quay.io/x/y, path: ../../etc/shadow}}]",
            &no_secrets(),
        ),
        "spec.volumes[0].containerDisk.path",
        "inside the image",
    );
}

#[test]
fn every_other_source_is_unsupported_by_its_field_name() {
    for source in [
        "persistentVolumeClaim",
        "dataVolume",
        "ephemeral",
        "configMap",
        "secret",
        "serviceAccount",
        "downwardAPI",
        "sysprep",
    ] {
        let reason = assert_unsupported(
            plan_one(&format!("[{{name: v, {source}: {{x: y}}}}]"), &no_secrets()),
            &format!("spec.volumes[0].{source}"),
        );
        assert!(reason.contains("not supported"), "{reason}");
    }
}

#[test]
fn a_volume_needs_exactly_one_source() {
    assert_invalid(
        plan_one("[{name: v}]", &no_secrets()),
        "spec.volumes[0]",
        "no volume source",
    );
    assert_invalid(
        plan_one(
            "[{name: v, emptyDisk: {capacity: 1Gi}, hostDisk: {path: /hd/default/a, type: Disk}}]",
            &no_secrets(),
        ),
        "spec.volumes[0]",
        "found emptyDisk and hostDisk",
    );
}

#[test]
fn volume_names_must_be_safe_file_names() {
    for bad in ["a/b", "../x", ".hidden", ".", "''", "\"a b\"", "\"a\\0\""] {
        assert_invalid(
            plan_one(
                &format!("[{{name: {bad}, emptyDisk: {{capacity: 1Gi}}}}]"),
                &no_secrets(),
            ),
            "spec.volumes[0].name",
            "not a valid volume name",
        );
    }
    let long = "a".repeat(64);
    assert_invalid(
        plan_one(
            &format!("[{{name: {long}, emptyDisk: {{capacity: 1Gi}}}}]"),
            &no_secrets(),
        ),
        "spec.volumes[0].name",
        "not a valid volume name",
    );
    for good in ["root", "data-1", "a_b", "v1.2", &"a".repeat(63)] {
        plan_one(
            &format!("[{{name: '{good}', emptyDisk: {{capacity: 1Gi}}}}]"),
            &no_secrets(),
        )
        .unwrap();
    }
}

#[test]
fn volume_names_must_be_unique() {
    assert_invalid(
        plan_on(
            &vmi_with(
                "[{name: a, emptyDisk: {capacity: 1Gi}}, {name: a, hostDisk: {path: /hd/default/a, type: Disk}}]",
            ),
            Path::new("/d"),
            &no_secrets(),
        ),
        "spec.volumes[1].name",
        "more than one volume",
    );
}

#[test]
fn a_full_vmi_plans_every_volume() {
    let plans = plan_on(
        &vmi_with(
            "[{name: root, hostDisk: {path: /hd/default/img/root.qcow2, type: Disk}},\
              {name: scratch, emptyDisk: {capacity: 1Gi}},\
              {name: cloudinit, cloudInitNoCloud: {userData: hello}}]",
        ),
        Path::new("/run/ironvirt/vmis/u"),
        &no_secrets(),
    )
    .unwrap();
    assert_eq!(
        plans.keys().collect::<Vec<_>>(),
        ["cloudinit", "root", "scratch"]
    );
    // Per-VMI files stay inside the VMI's directory.
    for p in plans.values() {
        if let VolumePlan::EmptyDisk { path, .. } | VolumePlan::CloudInit { path, .. } = p {
            assert_eq!(path.parent(), Some(Path::new("/run/ironvirt/vmis/u")));
        }
    }
}

// ---- prepare -----------------------------------------------------------

fn kernel_boot_of(kb: &str) -> Result<Option<KernelBootPlan>, VolumeError> {
    plan_kernel_boot(&vmi_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: testvm, namespace: default, uid: {UID}}}\n\
         spec: {{domain: {{firmware: {{kernelBoot: {kb}}}}}}}\n"
    )))
}

#[test]
fn a_kernel_boot_plans_its_image_files() {
    use crate::images::{PullPolicy, Wanted};
    let plan = kernel_boot_of(
        "{kernelArgs: console=ttyS0, container: {image: quay.io/kubevirt/k, kernelPath: /boot/vmlinuz-virt, initrdPath: /boot/initramfs-virt, imagePullSecret: pull}}",
    )
    .unwrap()
    .unwrap();
    assert_eq!(plan.image.to_string(), "quay.io/kubevirt/k");
    // No tag: Always, as KubeVirt defaults it.
    assert_eq!(plan.policy, PullPolicy::Always);
    assert_eq!(plan.kernel, Wanted::BootFile("boot/vmlinuz-virt".into()));
    assert_eq!(
        plan.initrd,
        Some(Wanted::BootFile("boot/initramfs-virt".into()))
    );
    assert_eq!(plan.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!(plan.pull_secret.as_deref(), Some("pull"));
    // No kernelBoot, or an empty one: nothing to boot.
    assert_eq!(kernel_boot_of("{}").unwrap(), None);
}

#[test]
fn a_kernel_boot_without_a_kernel_is_refused() {
    assert_invalid(
        kernel_boot_of("{kernelArgs: quiet}"),
        "spec.domain.firmware.kernelBoot.kernelArgs",
        "needs kernelBoot.container",
    );
    assert_invalid(
        kernel_boot_of("{container: {image: quay.io/x/k, initrdPath: /initrd}}"),
        "spec.domain.firmware.kernelBoot.container.kernelPath",
        "is required",
    );
    assert_invalid(
        kernel_boot_of("{container: {image: quay.io/x/k, kernelPath: /boot/../../etc/shadow}}"),
        "spec.domain.firmware.kernelBoot.container.kernelPath",
        "not a file path",
    );
    assert_invalid(
        kernel_boot_of("{kernelArgs: \"a\\nb\", container: {image: quay.io/x/k, kernelPath: /k}}"),
        "spec.domain.firmware.kernelBoot.kernelArgs",
        "control characters",
    );
}
