//! Preparing: the files on disk.

use super::*;

/// The path of a tool the tests need; fails with a clear message when it
/// is not installed.
fn tool(names: &[&str], package: &str) -> PathBuf {
    find_tool(names, package)
        .unwrap_or_else(|e| panic!("these tests need {package}, which is not installed: {e}"))
}

/// Runs an mtools command on an image and returns its stdout.
fn mtools(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(tool(&[cmd], "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new(tool(&["qemu-img"], "qemu-utils (qemu-img)"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one(name: &str, plan: VolumePlan) -> BTreeMap<String, VolumePlan> {
    BTreeMap::from([(name.to_owned(), plan)])
}

fn prepare_one(name: &str, plan: VolumePlan) -> Result<ResolvedVolume, VolumeError> {
    let mut resolved = prepare(&one(name, plan), &PulledDisks::new())?;
    assert_eq!(resolved.len(), 1);
    Ok(resolved.remove(name).unwrap())
}

/// A hostDisk root in `tmp` with the directories of namespaces `default` and
/// `other`; returns `default`'s.
fn ns_dir(tmp: &Path) -> PathBuf {
    let root = tmp.join("root");
    fs::create_dir_all(root.join("other")).unwrap();
    fs::create_dir_all(root.join("default")).unwrap();
    root.join("default")
}

fn host_disk(ns_dir: &Path, path: impl Into<PathBuf>, create: Option<u64>) -> VolumePlan {
    VolumePlan::HostDisk {
        path: path.into(),
        create,
        ns_dir: ns_dir.to_owned(),
    }
}

/// The refusal of a hostDisk: its reason (as the VMI's status says it) and
/// message.
#[track_caller]
fn host_disk_refusal(result: Result<ResolvedVolume, VolumeError>) -> (&'static str, String) {
    match result {
        Err(e @ VolumeError::HostDisk { .. }) => {
            let VolumeError::HostDisk { field, .. } = &e else {
                unreachable!()
            };
            assert_eq!(field, "spec.volumes[name=root].hostDisk.path");
            (
                crate::create_plan::volume_reason(&e).as_str(),
                e.to_string(),
            )
        }
        other => panic!("expected a hostDisk refusal, got {other:?}"),
    }
}

/// The bytes available on the file system of `dir`, as the handler sees them.
fn free_space(dir: &Path) -> u64 {
    free_bytes(dir).unwrap()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn disk_or_create_makes_a_sparse_raw_image() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let path = ns.join("new/parent/data.img");
    let plan = host_disk(&ns, &path, Some(1 << 30));
    let r = prepare_one("data", plan.clone()).unwrap();
    assert_eq!(
        r,
        ResolvedVolume {
            path: path.clone(),
            format: ImageFormat::Raw
        }
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(listing(&ns.join("new/parent")), ["data.img"]);

    // Again: the image, and what the guest wrote, stay.
    fs::write(&path, b"guest data").unwrap();
    let r = prepare_one("data", plan).unwrap();
    assert_eq!(r.format, ImageFormat::Raw);
    assert_eq!(fs::read(&path).unwrap(), b"guest data");
    assert_eq!(listing(&ns.join("new/parent")), ["data.img"]);

    // The namespace's directory itself is made when missing (inside the root).
    fs::remove_dir_all(&ns).unwrap();
    prepare_one("data", host_disk(&ns, ns.join("d.img"), Some(1 << 20))).unwrap();
    assert_eq!(listing(&ns), ["d.img"]);
}

#[test]
fn a_missing_disk_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let path = ns.join("nope.img");
    let (reason, message) = host_disk_refusal(prepare_one("root", host_disk(&ns, &path, None)));
    assert_eq!(reason, "VolumeNotFound");
    assert!(
        message.ends_with("nope.img' does not exist on the node"),
        "{message}"
    );
    assert!(!path.exists());
    // A missing directory on the way, and a missing root, are missing too;
    // nothing is created for a Disk.
    let deep = ns.join("a/b.img");
    let (reason, message) = host_disk_refusal(prepare_one("root", host_disk(&ns, &deep, None)));
    assert_eq!(reason, "VolumeNotFound");
    assert!(message.contains("is missing"), "{message}");
    let gone = tmp.path().join("no-root/default");
    let (reason, _) = host_disk_refusal(prepare_one(
        "root",
        host_disk(&gone, gone.join("x.img"), Some(1 << 20)),
    ));
    assert_eq!(reason, "VolumeNotFound");
    assert_eq!(listing(&ns), Vec::<String>::new());
    assert!(!tmp.path().join("no-root").exists());
}

#[test]
fn existing_host_disks_are_probed() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let qcow = ns.join("root.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "16M"]);
    let raw = ns.join("root.img");
    fs::write(&raw, vec![0u8; 4096]).unwrap();
    let tiny = ns.join("tiny.img");
    fs::write(&tiny, b"QF").unwrap();
    let plans = BTreeMap::from([
        ("q".to_owned(), host_disk(&ns, &qcow, None)),
        // DiskOrCreate keeps an existing image, whatever its format.
        ("qc".to_owned(), host_disk(&ns, &qcow, Some(1 << 20))),
        ("r".to_owned(), host_disk(&ns, &raw, None)),
        ("t".to_owned(), host_disk(&ns, &tiny, None)),
    ]);
    let r = prepare(&plans, &PulledDisks::new()).unwrap();
    assert_eq!(
        r["q"],
        ResolvedVolume {
            path: qcow.clone(),
            format: ImageFormat::Qcow2
        }
    );
    assert_eq!(
        r["qc"],
        ResolvedVolume {
            path: qcow.clone(),
            format: ImageFormat::Qcow2
        }
    );
    assert_eq!(
        r["r"],
        ResolvedVolume {
            path: raw,
            format: ImageFormat::Raw
        }
    );
    assert_eq!(
        r["t"],
        ResolvedVolume {
            path: tiny,
            format: ImageFormat::Raw
        }
    );
    // DiskOrCreate left the existing image alone.
    assert_eq!(&fs::read(&qcow).unwrap()[..4], QCOW2_MAGIC);
}

#[test]
fn host_disks_that_point_elsewhere_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let base = tmp.path().join("root/other/base.img");
    fs::write(&base, b"secret").unwrap();
    let overlay = ns.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        base.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    assert_invalid(
        prepare_one("root", host_disk(&ns, overlay, None)),
        "spec.volumes[name=root].hostDisk.path",
        "backing file",
    );
    fs::create_dir(ns.join("dir")).unwrap();
    let (reason, message) =
        host_disk_refusal(prepare_one("root", host_disk(&ns, ns.join("dir"), Some(1))));
    assert_eq!(reason, "HostDiskNotRegularFile");
    assert!(message.contains("is a directory"), "{message}");
}

// ---- hostDisk: what the node refuses ------------------------------------

#[test]
fn a_symlink_into_another_namespace_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let other = tmp.path().join("root/other");
    fs::write(other.join("theirs.img"), b"their data").unwrap();
    // A link as the image, and a link as a directory on the way.
    std::os::unix::fs::symlink(other.join("theirs.img"), ns.join("mine.img")).unwrap();
    std::os::unix::fs::symlink(&other, ns.join("dir")).unwrap();
    for (path, create) in [
        (ns.join("mine.img"), None),
        (ns.join("mine.img"), Some(1 << 20)),
        (ns.join("dir/theirs.img"), None),
        (ns.join("dir/new.img"), Some(1 << 20)),
        (ns.join("dir/sub/new.img"), Some(1 << 20)),
    ] {
        let (reason, message) =
            host_disk_refusal(prepare_one("root", host_disk(&ns, &path, create)));
        assert_eq!(reason, "HostDiskSymlink", "{}: {message}", path.display());
        assert!(message.contains("symbolic link"), "{message}");
    }
    // Nothing was created in the other namespace's directory.
    assert_eq!(listing(&other), ["theirs.img"]);
    assert_eq!(fs::read(other.join("theirs.img")).unwrap(), b"their data");
    // A link as the namespace directory itself is refused too.
    let root2 = tmp.path().join("root2");
    fs::create_dir(&root2).unwrap();
    std::os::unix::fs::symlink(&other, root2.join("default")).unwrap();
    let ns2 = root2.join("default");
    let (reason, _) = host_disk_refusal(prepare_one(
        "root",
        host_disk(&ns2, ns2.join("theirs.img"), None),
    ));
    assert_eq!(reason, "HostDiskSymlink");
}

#[test]
fn paths_outside_the_namespace_dir_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let other = tmp.path().join("root/other");
    fs::write(other.join("theirs.img"), b"their data").unwrap();
    for path in [
        ns.join("../other/theirs.img"),
        ns.join("../other/new.img"),
        other.join("theirs.img"),
        PathBuf::from("/etc/shadow"),
        PathBuf::from("/dev/null"),
    ] {
        for create in [None, Some(1 << 20)] {
            let (reason, message) =
                host_disk_refusal(prepare_one("root", host_disk(&ns, &path, create)));
            assert_eq!(
                reason,
                "HostDiskOutsideRoot",
                "{}: {message}",
                path.display()
            );
        }
    }
    assert_eq!(listing(&other), ["theirs.img"]);
    assert_eq!(listing(&ns), Vec::<String>::new());
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    // A FIFO: refused without blocking on it.
    nix::unistd::mkfifo(&ns.join("fifo.img"), Mode::from_bits_truncate(0o600)).unwrap();
    let (reason, message) = host_disk_refusal(prepare_one(
        "root",
        host_disk(&ns, ns.join("fifo.img"), Some(1 << 20)),
    ));
    assert_eq!(reason, "HostDiskNotRegularFile");
    assert!(message.contains("a FIFO"), "{message}");
    // A character device like /dev/null (1, 3): only root may make one.
    let dev = ns.join("null.img");
    match mknod(
        &dev,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 3),
    ) {
        Ok(()) => {
            for create in [None, Some(1 << 20)] {
                let (reason, message) =
                    host_disk_refusal(prepare_one("root", host_disk(&ns, &dev, create)));
                assert_eq!(reason, "HostDiskNotRegularFile");
                assert!(message.contains("a character device"), "{message}");
            }
            // And what opens an image refuses it too.
            assert!(matches!(
                open_beneath(&ns, &dev),
                Err(HostDiskError::NotRegular { .. })
            ));
        }
        Err(e) => eprintln!("skipping the device-node case: mknod needs root ({e})"),
    }
}

#[test]
fn opening_an_image_follows_no_link() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let other = tmp.path().join("root/other");
    fs::write(other.join("theirs.img"), b"their data").unwrap();
    fs::write(ns.join("mine.img"), b"mine").unwrap();
    // What the walk saw is swapped for links before the open: refused.
    std::os::unix::fs::symlink(other.join("theirs.img"), ns.join("link.img")).unwrap();
    std::os::unix::fs::symlink(&other, ns.join("dir")).unwrap();
    for path in [ns.join("link.img"), ns.join("dir/theirs.img")] {
        match open_beneath(&ns, &path) {
            Err(HostDiskError::Symlink { .. }) => {}
            other => panic!(
                "{}: expected a symlink refusal, got {other:?}",
                path.display()
            ),
        }
    }
    assert!(matches!(
        open_beneath(&ns, &other.join("theirs.img")),
        Err(HostDiskError::Outside { .. })
    ));
    assert!(matches!(
        open_beneath(&ns, &ns.join("gone.img")),
        Err(HostDiskError::Missing { .. })
    ));
    let mut f = open_beneath(&ns, &ns.join("mine.img")).unwrap();
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    assert_eq!(text, "mine");
}

// ---- free space ----------------------------------------------------------

#[test]
fn images_larger_than_the_free_space_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = ns_dir(tmp.path());
    let free = free_space(tmp.path());
    let too_big = free.saturating_add(1 << 40);

    // emptyDisk: nothing is made.
    let dir = vmi_dir(tmp.path(), UID);
    let e = prepare_one(
        "scratch",
        VolumePlan::EmptyDisk {
            path: dir.join("scratch.qcow2"),
            bytes: too_big,
        },
    )
    .unwrap_err();
    assert_eq!(
        crate::create_plan::volume_reason(&e).as_str(),
        "InsufficientStorage"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "spec.volumes[name=scratch].emptyDisk.capacity: emptyDisk scratch asks for {}; {} has ",
            size_text(too_big),
            dir.display()
        )),
        "{text}"
    );
    assert!(text.ends_with(" free"), "{text}");
    assert_eq!(listing(&dir), Vec::<String>::new());

    // DiskOrCreate: neither the image nor its directories' content.
    let path = ns.join("new/data.img");
    let e = prepare_one("data", host_disk(&ns, &path, Some(too_big))).unwrap_err();
    assert_eq!(
        crate::create_plan::volume_reason(&e).as_str(),
        "InsufficientStorage"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("spec.volumes[name=data].hostDisk.capacity: hostDisk data asks for "),
        "{text}"
    );
    assert!(!path.exists());

    // An existing image is kept whatever its capacity says.
    fs::write(&path, b"data").unwrap();
    prepare_one("data", host_disk(&ns, &path, Some(too_big))).unwrap();
}

#[test]
fn sizes_read_like_quantities() {
    assert_eq!(size_text(0), "0");
    assert_eq!(size_text(1000), "1000");
    assert_eq!(size_text(41760 << 20), "40.7Gi");
    assert_eq!(size_text(1 << 41), "2Ti");
    assert_eq!(size_text(5 << 30), "5Gi");
    assert_eq!(size_text((40 << 30) + (800 << 20)), "40.7Gi");
    assert_eq!(size_text((1 << 20) + 1), "1.0Mi");
    assert_eq!(size_text(1536), "1.5Ki");
    assert_eq!(size_text(u64::MAX), "15.9Ei");
}

#[test]
fn empty_disk_is_a_qcow2_made_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vmi_dir(tmp.path(), UID);
    let path = dir.join("scratch.qcow2");
    let plan = VolumePlan::EmptyDisk {
        path: path.clone(),
        bytes: 64 << 20,
    };
    let r = prepare_one("scratch", plan.clone()).unwrap();
    assert_eq!(
        r,
        ResolvedVolume {
            path: path.clone(),
            format: ImageFormat::Qcow2
        }
    );
    let header = fs::read(&path).unwrap();
    assert_eq!(&header[..4], b"QFI\xfb");
    // The virtual size, at offset 24 of the header.
    assert_eq!(
        u64::from_be_bytes(header[24..32].try_into().unwrap()),
        64 << 20
    );
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(listing(&dir), ["scratch.qcow2"]);

    let before = fs::metadata(&path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = prepare_one("scratch", plan).unwrap();
    assert_eq!(again, r);
    let after = fs::metadata(&path).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(listing(&dir), ["scratch.qcow2"]);
}

#[test]
fn empty_disk_that_is_not_qcow2_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scratch.qcow2");
    fs::write(&path, b"raw bytes").unwrap();
    let e = prepare_one(
        "scratch",
        VolumePlan::EmptyDisk {
            path: path.clone(),
            bytes: 1 << 20,
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, VolumeError::Io { reason, .. } if reason.contains("not a qcow2")),
        "{e:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"raw bytes");

    // A link in the VMI's directory is not followed.
    let target = tmp.path().join("elsewhere.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        target.to_str().unwrap(),
        "1M",
    ]);
    let link = tmp.path().join("linked.qcow2");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = prepare_one(
        "linked",
        VolumePlan::EmptyDisk {
            path: link,
            bytes: 1 << 20,
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, VolumeError::Io { reason, .. } if reason.contains("symbolic link")),
        "{e:?}"
    );
}

#[test]
fn tool_failures_carry_the_command_and_its_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.qcow2");
    let e = run(Command::new(tool(&["qemu-img"], "qemu-utils (qemu-img)"))
        .args(["create", "-f", "qcow2", "-q"])
        .arg(&path)
        .arg(u64::MAX.to_string()))
    .unwrap_err();
    let VolumeError::Io { what, reason } = &e else {
        panic!("{e:?}")
    };
    assert!(what.contains("qemu-img create -f qcow2 -q"), "{what}");
    assert!(what.ends_with(&u64::MAX.to_string()), "{what}");
    assert!(!reason.is_empty() && reason == reason.trim(), "{reason:?}");
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn a_missing_tool_says_what_to_install() {
    let e = find_tool(&["ironvirt-no-such-tool"], "some-package").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("ironvirt-no-such-tool"), "{text}");
    assert!(text.contains("/usr/sbin, /sbin"), "{text}");
    assert!(text.contains("install some-package"), "{text}");
    // mkfs.vfat is found even when PATH lacks the sbin directories.
    assert!(
        find_tool(&["mkfs.vfat", "mkfs.fat"], "dosfstools")
            .unwrap()
            .is_absolute()
    );
}

#[test]
fn cidata_size_grows_from_one_mib() {
    let files = |user: usize| CloudInitFiles {
        kind: CloudInitKind::NoCloud,
        user_data: vec![0; user],
        meta_data: "instance-id: x\n".to_owned(),
        network_config: None,
    };
    assert_eq!(cidata_kib(&files(0)), 1024);
    assert_eq!(cidata_kib(&files(100_000)), 1024);
    let big = cidata_kib(&files(10 << 20));
    assert!(big > 10 * 1024 + 512, "{big} KiB");
    assert!(big < 14 * 1024, "{big} KiB");
}

fn cidata_plan(dir: &Path, user_data: &[u8], network: Option<&[u8]>) -> VolumePlan {
    VolumePlan::CloudInit {
        path: dir.join("cloudinit.cidata.img"),
        files: CloudInitFiles {
            kind: CloudInitKind::NoCloud,
            user_data: user_data.to_vec(),
            meta_data: format!("instance-id: {UID}\nlocal-hostname: testvm\n"),
            network_config: network.map(<[u8]>::to_vec),
        },
    }
}

/// The volume label in the boot sector of a FAT image (offset 43 on
/// FAT12/16, 71 on FAT32) and the FAT type.
fn boot_sector_label(img: &Path) -> (String, String) {
    let bytes = fs::read(img).unwrap();
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[r]).trim_end().to_owned();
    if text(82..90) == "FAT32" {
        (text(71..82), "FAT32".to_owned())
    } else {
        (text(43..54), text(54..62))
    }
}

#[test]
fn cloud_init_disk_is_a_cidata_vfat_with_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vmi_dir(tmp.path(), UID);
    let plan = cidata_plan(&dir, b"#!/bin/sh\necho hello\n", Some(b"version: 2\n"));
    let r = prepare_one("cloudinit", plan).unwrap();
    let img = dir.join("cloudinit.cidata.img");
    assert_eq!(
        r,
        ResolvedVolume {
            path: img.clone(),
            format: ImageFormat::Raw
        }
    );
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(listing(&dir), ["cloudinit.cidata.img"]);
    assert_eq!(fs::metadata(&img).unwrap().len(), 1024 * 1024);

    let i = img.to_str().unwrap();
    let names = mtools("mdir", &["-i", i, "-b", "::"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["::/meta-data", "::/network-config", "::/user-data"]);
    assert_eq!(
        mtools("mtype", &["-i", i, "::user-data"]),
        "#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        mtools("mtype", &["-i", i, "::meta-data"]),
        format!("instance-id: {UID}\nlocal-hostname: testvm\n")
    );
    assert_eq!(
        mtools("mtype", &["-i", i, "::network-config"]),
        "version: 2\n"
    );
    assert!(mtools("mlabel", &["-i", i, "-s", "::"]).contains("Volume label is CIDATA"));
    assert_eq!(
        boot_sector_label(&img),
        ("CIDATA".to_owned(), "FAT12".to_owned())
    );
}

#[test]
fn config_drive_is_an_iso9660_labelled_config_2_in_openstack_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vmi_dir(tmp.path(), UID);
    let meta = format!("{{\n  \"uuid\": \"{UID}\"\n}}\n");
    let plan = VolumePlan::CloudInit {
        path: dir.join("ci.config-2.iso"),
        files: CloudInitFiles {
            kind: CloudInitKind::ConfigDrive,
            user_data: b"#cloud-config\n".to_vec(),
            meta_data: meta.clone(),
            network_config: Some(b"{}".to_vec()),
        },
    };
    let r = prepare_one("ci", plan).unwrap();
    assert_eq!(r.format, ImageFormat::Raw);
    assert_eq!(listing(&dir), ["ci.config-2.iso"]);
    let iso = fs::read(&r.path).unwrap();
    // The primary volume descriptor (sector 16): type 1, "CD001", the
    // volume identifier at offset 40.
    let pvd = &iso[16 * 2048..17 * 2048];
    assert_eq!(&pvd[..6], b"\x01CD001");
    assert_eq!(String::from_utf8_lossy(&pvd[40..72]).trim_end(), "config-2");
    // The files, by their Rock Ridge names, as isoinfo lists them.
    let isoinfo = find_tool(&["isoinfo"], "genisoimage").unwrap();
    let out = Command::new(&isoinfo)
        .args(["-R", "-f", "-i"])
        .arg(&r.path)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<&str> = names.lines().filter(|l| l.contains('_')).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "/openstack/latest/meta_data.json",
            "/openstack/latest/network_data.json",
            "/openstack/latest/user_data"
        ]
    );
    let read = |file: &str| {
        let out = Command::new(&isoinfo)
            .args(["-R", "-x", file, "-i"])
            .arg(&r.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(read("/openstack/latest/meta_data.json"), meta);
    assert_eq!(read("/openstack/latest/user_data"), "#cloud-config\n");
}

#[test]
fn cloud_init_disk_is_rebuilt_each_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vmi");
    let img = dir.join("cloudinit.cidata.img");
    prepare_one("cloudinit", cidata_plan(&dir, b"first", Some(b"net"))).unwrap();
    let first = fs::metadata(&img).unwrap();

    prepare_one("cloudinit", cidata_plan(&dir, b"second", None)).unwrap();
    let second = fs::metadata(&img).unwrap();
    assert_ne!(
        first.ino(),
        second.ino(),
        "replaced by rename, not rewritten in place"
    );
    let i = img.to_str().unwrap();
    assert_eq!(mtools("mtype", &["-i", i, "::user-data"]), "second");
    let names = mtools("mdir", &["-i", i, "-b", "::"]);
    assert!(!names.contains("network-config"), "{names}");
    assert_eq!(listing(&dir), ["cloudinit.cidata.img"]);
}

#[test]
fn cloud_init_disk_grows_with_its_content() {
    let tmp = tempfile::tempdir().unwrap();
    // Three MiB that do not compress into fewer clusters.
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = prepare_one("cloudinit", cidata_plan(tmp.path(), &big, None)).unwrap();
    let i = r.path.to_str().unwrap();
    let out = Command::new(tool(&["mtype"], "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", i, "::user-data"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big, "user-data differs");
    assert_eq!(boot_sector_label(&r.path).0, "CIDATA");
}

#[test]
fn empty_user_data_still_makes_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let r = prepare_one("cloudinit", cidata_plan(tmp.path(), b"", None)).unwrap();
    let i = r.path.to_str().unwrap();
    assert_eq!(mtools("mtype", &["-i", i, "::user-data"]), "");
    assert!(mtools("mdir", &["-i", i, "-b", "::"]).contains("::/user-data"));
}

#[test]
fn prepare_does_the_whole_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vmi_dir(tmp.path(), UID);
    let root = ns_dir(tmp.path()).join("images/root.img");
    let vmi = vmi_with(&format!(
        "[{{name: root, hostDisk: {{path: {}, type: DiskOrCreate, capacity: 8Mi}}}},\
          {{name: scratch, emptyDisk: {{capacity: 8Mi}}}},\
          {{name: cloudinit, cloudInitNoCloud: {{secretRef: {{name: s}}}}}}]",
        root.display()
    ));
    let plans = plan(
        &vmi,
        &dir,
        &VolumePolicy::with_host_disk_root(tmp.path().join("root")),
        &secrets(&[("s", "userdata", b"#cloud-config\n")]),
    )
    .unwrap();
    let r = prepare(&plans, &PulledDisks::new()).unwrap();
    assert_eq!(
        r["root"],
        ResolvedVolume {
            path: root,
            format: ImageFormat::Raw
        }
    );
    assert_eq!(
        r["scratch"],
        ResolvedVolume {
            path: dir.join("scratch.qcow2"),
            format: ImageFormat::Qcow2
        }
    );
    assert_eq!(
        r["cloudinit"],
        ResolvedVolume {
            path: dir.join("cloudinit.cidata.img"),
            format: ImageFormat::Raw
        }
    );
    assert_eq!(listing(&dir), ["cloudinit.cidata.img", "scratch.qcow2"]);
    assert_eq!(prepare(&plans, &PulledDisks::new()).unwrap(), r);
    assert_eq!(listing(&dir), ["cloudinit.cidata.img", "scratch.qcow2"]);
}

// ---- cleanup -----------------------------------------------------------

#[test]
fn cleanup_removes_the_dir_and_tolerates_a_missing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vmi_dir(tmp.path(), UID);
    prepare_one(
        "scratch",
        VolumePlan::EmptyDisk {
            path: dir.join("scratch.qcow2"),
            bytes: 1 << 20,
        },
    )
    .unwrap();
    // A link inside is removed, not followed.
    let outside = tmp.path().join("outside");
    fs::write(&outside, b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
    cleanup(&dir).unwrap();
    assert!(!dir.exists());
    assert_eq!(fs::read(&outside).unwrap(), b"keep");
    cleanup(&dir).unwrap();
    assert!(tmp.path().join("vmis").exists());
}
