//! The node half of the test bed: through the `virt` crate, boot the test guest
//! under QEMU (TCG), talk to its serial console, shut it down and clean up.

use std::process::Command;
use std::time::Duration;

use ironvirt_tests::TestBed;
use ironvirt_tests::domain::{Boot, Console, DomainGuard, guest_xml, unique_name};
use virt::connect::Connect;

const MARKER_TIMEOUT: Duration = Duration::from_secs(90);

async fn bed() -> (TestBed, String) {
    let bed = TestBed::shared().await.expect("test bed");
    let uri = bed
        .libvirt_uri()
        .expect("the test bed runs without libvirt; start it with `make test`")
        .to_owned();
    (bed, uri)
}

fn domain_exists(uri: &str, name: &str) -> bool {
    let out = Command::new("virsh")
        .args(["-c", uri, "list", "--all", "--name"])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_boot_console_roundtrip_and_clean_shutdown() {
    let (bed, uri) = bed().await;
    let guest = bed.guest().expect("guest artifacts");
    let name = unique_name("ironvirt-test-kernel");
    let uri2 = uri.clone();
    let name2 = name.clone();
    tokio::task::spawn_blocking(move || {
        let conn = Connect::open(Some(&uri2)).expect("connect to libvirt");
        let xml = guest_xml(
            &name2,
            &Boot::Kernel {
                kernel: &guest.kernel,
                initramfs: &guest.initramfs,
                cmdline: ironvirt_testbed::guest::CMDLINE,
            },
        );
        let dom = DomainGuard::start(&conn, &name2, &xml).expect("define and start");
        let mut console = Console::open(&uri2, &name2).expect("open console");
        console
            .expect(ironvirt_testbed::guest::MARKER, MARKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        console.send("echo ok-$((6*7))\r").unwrap();
        console
            .expect("ok-42", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        // ACPI shutdown: the guest's acpid powers off cleanly.
        dom.domain.shutdown().expect("ACPI shutdown");
        assert!(
            dom.wait_inactive(Duration::from_secs(60)),
            "guest did not power off on ACPI shutdown; console (tail):\n{}",
            console.recent()
        );
        // The guest said why it powered off (the rest of the console is still buffered).
        console
            .expect("acpi power button", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(console);
        drop(dom); // destroy (no-op when off) and undefine
        conn
    })
    .await
    .expect("libvirt thread");
    assert!(!domain_exists(&uri, &name), "domain {name} left over");
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_boot_from_qcow2() {
    let (bed, uri) = bed().await;
    let guest = bed.guest().expect("guest artifacts");
    let name = unique_name("ironvirt-test-disk");
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy-on-write overlay: QEMU locks images it writes, and the cache stays pristine.
    let overlay = dir.path().join("root.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&guest.disk)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let uri2 = uri.clone();
    let name2 = name.clone();
    tokio::task::spawn_blocking(move || {
        let conn = Connect::open(Some(&uri2)).expect("connect to libvirt");
        let xml = guest_xml(&name2, &Boot::Disk { qcow2: &overlay });
        let dom = DomainGuard::start(&conn, &name2, &xml).expect("define and start");
        let mut console = Console::open(&uri2, &name2).expect("open console");
        console
            .expect(ironvirt_testbed::guest::MARKER, MARKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        dom.domain.destroy().expect("destroy");
        drop(console);
        drop(dom);
    })
    .await
    .expect("libvirt thread");
    assert!(!domain_exists(&uri, &name), "domain {name} left over");
}
