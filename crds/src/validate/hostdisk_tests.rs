#![allow(clippy::unwrap_used)]
use super::*;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicUsize, Ordering};

fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn policy() -> VolumePolicy {
    VolumePolicy::with_host_disk_root("/var/lib/ironvirt/hostdisks")
}

fn host_disk(path: &str) -> VirtualMachineInstanceSpec {
    spec(&format!(
        "domain: {{}}\nvolumes: [{{name: root, hostDisk: {{path: '{path}', type: Disk}}}}]"
    ))
}

/// The (field, message) of each error.
fn errs(e: &[FieldError]) -> Vec<(String, String)> {
    e.iter()
        .map(|e| (e.field.clone(), e.message.clone()))
        .collect()
}

#[test]
fn a_path_in_the_namespace_directory_is_accepted() {
    for p in [
        "/var/lib/ironvirt/hostdisks/ns1/disk.img",
        "/var/lib/ironvirt/hostdisks/ns1/a/b/c.qcow2",
    ] {
        assert_eq!(
            errs(&check_volumes(&host_disk(p), "ns1", &policy(), "spec")),
            vec![],
            "{p}"
        );
    }
}

#[test]
fn hostdisk_while_off_is_refused_as_the_feature_gate_would() {
    let e = check_volumes(
        &host_disk("/var/lib/ironvirt/hostdisks/ns1/disk.img"),
        "ns1",
        &VolumePolicy::default(),
        "spec",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "spec.volumes[0].hostDisk");
    assert_eq!(e[0].reason, super::super::Reason::Forbidden);
    assert!(
        e[0].message
            .contains("hostDisk is disabled on this cluster")
    );
    assert!(e[0].message.contains("HostDisk feature gate"));
}

#[test]
fn paths_outside_the_namespace_directory_are_refused() {
    let cases = [
        (
            "/etc/shadow",
            "is not inside /var/lib/ironvirt/hostdisks/ns1/",
        ),
        ("/dev/null", "is not inside"),
        // Another namespace's directory.
        ("/var/lib/ironvirt/hostdisks/ns2/disk.img", "is not inside"),
        // A string prefix is not a directory prefix.
        ("/var/lib/ironvirt/hostdisks/ns10/disk.img", "is not inside"),
        ("/var/lib/ironvirt/hostdisks/ns1", "is not inside"),
        ("/var/lib/ironvirt/hostdisks/ns1/../ns2/disk.img", "'..'"),
        ("/var/lib/ironvirt/hostdisks/ns1/./disk.img", "'.'"),
        (
            "/var/lib/ironvirt/hostdisks/ns1//disk.img",
            "empty component",
        ),
        ("/var/lib/ironvirt/hostdisks/ns1/", "empty component"),
        ("/var/lib/ironvirt/hostdisks/ns1/..", "'..'"),
        ("disk.img", "is not an absolute path"),
    ];
    for (p, want) in cases {
        let e = check_volumes(&host_disk(p), "ns1", &policy(), "spec");
        assert_eq!(e.len(), 1, "{p}: {e:?}");
        assert_eq!(e[0].field, "spec.volumes[0].hostDisk.path", "{p}");
        assert!(e[0].message.contains(want), "{p}: {}", e[0].message);
    }
}

#[test]
fn a_namespace_that_names_no_directory_is_refused() {
    for ns in ["", ".", "..", "a/b"] {
        let e = check_volumes(
            &host_disk("/var/lib/ironvirt/hostdisks/x/disk.img"),
            ns,
            &policy(),
            "spec",
        );
        assert_eq!(e.len(), 1, "{ns:?}: {e:?}");
    }
}

#[test]
fn capacities_above_the_limits_are_refused_with_the_limit() {
    let s = spec(
        "domain: {}\nvolumes: [{name: a, emptyDisk: {capacity: 1Ei}}, {name: b, emptyDisk: {capacity: 1Gi}}]",
    );
    let e = check_volumes(&s, "ns1", &policy(), "spec.template.spec");
    assert_eq!(
        errs(&e),
        vec![
            (
                "spec.template.spec.volumes[0].emptyDisk.capacity".to_owned(),
                "'1Ei' is more than the maximum of 1Ti per volume on this cluster".to_owned()
            ),
            (
                "spec.template.spec.volumes".to_owned(),
                "the emptyDisk and DiskOrCreate capacities add up to 1073741825Gi, more than the maximum of 4Ti per VMI on this cluster".to_owned()
            ),
        ]
    );
    // Five volumes of 1Ti: each allowed, their sum not.
    let five = (0..5)
        .map(|i| format!("{{name: v{i}, emptyDisk: {{capacity: 1Ti}}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let e = check_volumes(
        &spec(&format!("domain: {{}}\nvolumes: [{five}]")),
        "ns1",
        &policy(),
        "spec",
    );
    assert_eq!(fields(&e), ["spec.volumes"], "{e:?}");
    assert!(e[0].message.contains("add up to 5Ti"), "{e:?}");
    // DiskOrCreate counts; a Disk's capacity does not (nothing is created).
    let s = spec(
        "domain: {}\nvolumes: [{name: a, hostDisk: {path: /var/lib/ironvirt/hostdisks/ns1/a, type: DiskOrCreate, capacity: 2Ti}}, {name: b, hostDisk: {path: /var/lib/ironvirt/hostdisks/ns1/b, type: Disk, capacity: 2Ti}}]",
    );
    let e = check_volumes(&s, "ns1", &policy(), "spec");
    assert_eq!(fields(&e), ["spec.volumes[0].hostDisk.capacity"], "{e:?}");
    // No limits, no errors; unparsable capacities are vmi_spec's to report.
    let unlimited = VolumePolicy {
        max_volume_bytes: None,
        max_vmi_bytes: None,
        ..policy()
    };
    let s = spec(
        "domain: {}\nvolumes: [{name: a, emptyDisk: {capacity: 1Ei}}, {name: b, emptyDisk: {capacity: lots}}]",
    );
    assert!(check_volumes(&s, "ns1", &unlimited, "spec").is_empty());
}

#[test]
fn vm_and_vmirs_templates_are_checked() {
    let vm: VirtualMachineSpec = serde_yaml::from_str(
        "template: {spec: {domain: {}, volumes: [{name: r, hostDisk: {path: /etc/shadow, type: Disk}}]}}",
    )
    .unwrap();
    let e = check_vm_volumes(&vm, "ns1", &policy());
    assert_eq!(fields(&e), ["spec.template.spec.volumes[0].hostDisk.path"]);
    let rs: VirtualMachineInstanceReplicaSetSpec = serde_yaml::from_str(
        "selector: {matchLabels: {a: b}}\ntemplate: {spec: {domain: {}, volumes: [{name: r, emptyDisk: {capacity: 2Ti}}]}}",
    )
    .unwrap();
    let e = check_vmirs_volumes(&rs, "ns1", &policy());
    assert_eq!(
        fields(&e),
        ["spec.template.spec.volumes[0].emptyDisk.capacity"]
    );
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn human_bytes_reads_like_a_quantity() {
    assert_eq!(human_bytes(1 << 40), "1Ti");
    assert_eq!(human_bytes(3 << 20), "3Mi");
    assert_eq!(human_bytes(1000), "1000");
    assert_eq!(human_bytes(0), "0");
}

// ---- resolve_beneath -------------------------------------------------------

/// A directory removed when dropped: `<tmp>/root/{ns1,ns2}`.
struct Tree(PathBuf);

impl Tree {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ironvirt-hostdisk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("root/ns1")).unwrap();
        std::fs::create_dir_all(dir.join("root/ns2")).unwrap();
        std::fs::write(dir.join("root/ns2/secret.img"), b"other tenant").unwrap();
        std::fs::write(dir.join("root/ns1/disk.img"), b"mine").unwrap();
        Tree(dir)
    }
    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
    fn ns1(&self) -> PathBuf {
        self.root().join("ns1")
    }
    fn at(&self, rel: &str) -> PathBuf {
        self.ns1().join(rel)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_regular_file_is_accepted() {
    let t = Tree::new();
    let r = resolve_beneath(&t.ns1(), &t.at("disk.img"), false).unwrap();
    assert_eq!(
        r,
        ResolvedHostDisk::File {
            path: t.at("disk.img"),
            bytes: 4
        }
    );
    // DiskOrCreate of an existing file: the file, nothing to create.
    let r = resolve_beneath(&t.ns1(), &t.at("disk.img"), true).unwrap();
    assert!(matches!(r, ResolvedHostDisk::File { .. }), "{r:?}");
}

#[test]
fn a_symlink_into_another_namespace_is_refused() {
    let t = Tree::new();
    symlink(t.root().join("ns2/secret.img"), t.at("link.img")).unwrap();
    let e = resolve_beneath(&t.ns1(), &t.at("link.img"), false).unwrap_err();
    assert!(matches!(e, HostDiskError::Symlink { .. }), "{e:?}");
    assert!(e.to_string().contains("is a symbolic link"), "{e}");
    assert!(e.to_string().contains("link.img"), "{e}");
    // A linked directory on the way.
    symlink(t.root().join("ns2"), t.at("dir")).unwrap();
    let e = resolve_beneath(&t.ns1(), &t.at("dir/secret.img"), false).unwrap_err();
    assert!(
        matches!(e, HostDiskError::Symlink { ref at, .. } if *at == t.at("dir")),
        "{e:?}"
    );
    // A symlink to a device node.
    symlink("/dev/null", t.at("null")).unwrap();
    let e = resolve_beneath(&t.ns1(), &t.at("null"), true).unwrap_err();
    assert!(matches!(e, HostDiskError::Symlink { .. }), "{e:?}");
}

#[test]
fn a_linked_namespace_directory_or_root_is_refused() {
    let t = Tree::new();
    symlink(t.root().join("ns2"), t.root().join("ns3")).unwrap();
    let ns3 = t.root().join("ns3");
    let e = resolve_beneath(&ns3, &ns3.join("secret.img"), false).unwrap_err();
    assert!(
        matches!(e, HostDiskError::Symlink { ref at, .. } if *at == ns3),
        "{e:?}"
    );
    symlink(t.root(), t.0.join("linkroot")).unwrap();
    let ns = t.0.join("linkroot/ns1");
    let e = resolve_beneath(&ns, &ns.join("disk.img"), false).unwrap_err();
    assert!(matches!(e, HostDiskError::Symlink { .. }), "{e:?}");
}

#[test]
fn dot_dot_escapes_and_outside_paths_are_refused_before_any_walk() {
    let t = Tree::new();
    let escape = PathBuf::from(format!("{}/../ns2/secret.img", t.ns1().display()));
    let e = resolve_beneath(&t.ns1(), &escape, false).unwrap_err();
    assert!(matches!(e, HostDiskError::BadComponent { .. }), "{e:?}");
    let e = resolve_beneath(&t.ns1(), Path::new("/dev/null"), false).unwrap_err();
    assert!(matches!(e, HostDiskError::Outside { .. }), "{e:?}");
    assert!(e.to_string().contains("/dev/null"), "{e}");
    let e = resolve_beneath(&t.ns1(), &t.root().join("ns2/secret.img"), false).unwrap_err();
    assert!(matches!(e, HostDiskError::Outside { .. }), "{e:?}");
}

#[test]
fn only_regular_files_are_images() {
    let t = Tree::new();
    std::fs::create_dir(t.at("adir")).unwrap();
    let e = resolve_beneath(&t.ns1(), &t.at("adir"), true).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    let _listener = std::os::unix::net::UnixListener::bind(t.at("sock")).unwrap();
    let e = resolve_beneath(&t.ns1(), &t.at("sock"), false).unwrap_err();
    assert!(
        matches!(
            e,
            HostDiskError::NotRegular {
                kind: "a socket",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("must be a regular file"), "{e}");
    // A file where a directory must be.
    let e = resolve_beneath(&t.ns1(), &t.at("disk.img/x"), true).unwrap_err();
    assert!(matches!(e, HostDiskError::NotADirectory { .. }), "{e:?}");
}

#[test]
fn a_missing_image_is_an_error_for_disk_and_a_plan_for_disk_or_create() {
    let t = Tree::new();
    let e = resolve_beneath(&t.ns1(), &t.at("new.img"), false).unwrap_err();
    assert!(e.is_missing(), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let r = resolve_beneath(&t.ns1(), &t.at("new.img"), true).unwrap();
    assert_eq!(
        r,
        ResolvedHostDisk::Create {
            path: t.at("new.img"),
            dirs: vec![]
        }
    );
    let r = resolve_beneath(&t.ns1(), &t.at("a/b/new.img"), true).unwrap();
    assert_eq!(
        r,
        ResolvedHostDisk::Create {
            path: t.at("a/b/new.img"),
            dirs: vec![t.at("a"), t.at("a/b")]
        }
    );
    let e = resolve_beneath(&t.ns1(), &t.at("a/new.img"), false).unwrap_err();
    assert!(e.is_missing(), "{e:?}");
    // A missing namespace directory is made first; a missing root is not.
    let ns4 = t.root().join("ns4");
    let r = resolve_beneath(&ns4, &ns4.join("d.img"), true).unwrap();
    assert_eq!(
        r,
        ResolvedHostDisk::Create {
            path: ns4.join("d.img"),
            dirs: vec![ns4.clone()]
        }
    );
    let ns = t.0.join("noroot/ns1");
    let e = resolve_beneath(&ns, &ns.join("d.img"), true).unwrap_err();
    assert!(e.is_missing(), "{e:?}");
}
