//! The RFB client against a real VNC server: QEMU's, of the test guest booted
//! from its disk under libvirt. The screenshot must show the guest's console,
//! and must not disconnect a VNC viewer that is already connected.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use ironvirt_apiserver_subresources::rfb;
use ironvirt_tests::TestBed;
use ironvirt_tests::domain::{Boot, Console, DomainGuard, guest_xml, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use virt::connect::Connect;

const MARKER_TIMEOUT: Duration = Duration::from_secs(90);
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The VNC socket from domain XML: `<graphics type='vnc' socket='/…' ...`
/// (the test guests, like ironvirt's domains, have no TCP VNC listener).
fn vnc_socket(xml: &str) -> Option<String> {
    let graphics = &xml[xml.find("<graphics type='vnc'")?..];
    let graphics = &graphics[..graphics.find('>')?];
    let socket = &graphics[graphics.find(" socket='")? + " socket='".len()..];
    Some(socket[..socket.find('\'')?].to_owned()).filter(|s| s.starts_with('/'))
}

/// A VNC viewer's session, connected as a shared client (RFB 3.8, no
/// password) up to ServerInit.
async fn user_session(socket: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut version = [0u8; 12];
        s.read_exact(&mut version).await.unwrap();
        assert_eq!(&version, b"RFB 003.008\n", "QEMU's RFB version");
        s.write_all(b"RFB 003.008\n").await.unwrap();
        let count = s.read_u8().await.unwrap();
        let mut types = vec![0u8; usize::from(count)];
        s.read_exact(&mut types).await.unwrap();
        assert!(types.contains(&1), "security types {types:?}");
        s.write_all(&[1]).await.unwrap();
        assert_eq!(s.read_u32().await.unwrap(), 0, "security result");
        s.write_all(&[1]).await.unwrap(); // shared
        let mut init = [0u8; 20];
        s.read_exact(&mut init).await.unwrap();
        let name_len = s.read_u32().await.unwrap();
        let mut name = vec![0u8; usize::try_from(name_len).unwrap()];
        s.read_exact(&mut name).await.unwrap();
    })
    .await
    .expect("VNC viewer handshake timed out");
    s
}

/// The viewer's session still gets framebuffer updates: the screenshot did
/// not disconnect it.
async fn assert_still_served(s: &mut UnixStream) {
    // FramebufferUpdateRequest, non-incremental, for the top-left 8x8.
    s.write_all(&[3, 0, 0, 0, 0, 0, 0, 8, 0, 8])
        .await
        .expect("the VNC viewer's session was closed");
    let message = tokio::time::timeout(Duration::from_secs(10), s.read_u8())
        .await
        .expect("no reply on the VNC viewer's session")
        .expect("the VNC viewer's session was closed by the screenshot");
    assert_eq!(message, 0, "expected a FramebufferUpdate");
}

#[test]
fn vnc_socket_is_read_from_domain_xml() {
    let xml = "<domain><devices><graphics type='vnc' socket='/var/lib/libvirt/qemu/domain-1-x/vnc.sock'>\
               <listen type='socket' socket='/var/lib/libvirt/qemu/domain-1-x/vnc.sock'/></graphics></devices></domain>";
    assert_eq!(
        vnc_socket(xml).as_deref(),
        Some("/var/lib/libvirt/qemu/domain-1-x/vnc.sock")
    );
    assert_eq!(
        vnc_socket("<graphics type='vnc'><listen type='socket'/></graphics>"),
        None
    );
    assert_eq!(vnc_socket("<graphics type='spice' socket='/x'/>"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn screenshot_of_a_disk_booted_guest_shows_its_console() {
    let bed = TestBed::shared().await.expect("test bed");
    let uri = bed
        .libvirt_uri()
        .expect("the test bed runs without libvirt; start it with `make test`")
        .to_owned();
    let guest = bed.guest().expect("guest artifacts");
    let name = unique_name("ironvirt-test-vnc");
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

    let runtime = tokio::runtime::Handle::current();
    let name2 = name.clone();
    let shot = tokio::task::spawn_blocking(move || {
        let conn = Connect::open(Some(&uri)).expect("connect to libvirt");
        let xml = guest_xml(&name2, &Boot::Disk { qcow2: &overlay });
        let dom = DomainGuard::start(&conn, &name2, &xml).expect("define and start");
        let mut console = Console::open(&uri, &name2).expect("open console");
        console
            .expect(ironvirt_testbed::guest::MARKER, MARKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let live = dom.domain.xml_desc(0).expect("domain XML");
        assert!(
            !live.contains(" port='59"),
            "the guest has a TCP VNC listener:\n{live}"
        );
        let socket =
            vnc_socket(&live).unwrap_or_else(|| panic!("no VNC socket in the domain XML:\n{live}"));
        let shot = runtime.block_on(async {
            let mut user = user_session(&socket).await;
            let stream = UnixStream::connect(&socket)
                .await
                .unwrap_or_else(|e| panic!("connect to VNC socket {socket}: {e}"));
            let shot = rfb::screenshot(stream, SCREENSHOT_TIMEOUT).await;
            assert_still_served(&mut user).await;
            shot
        });
        drop(console);
        drop(dom); // destroy and undefine
        shot
    })
    .await
    .expect("libvirt thread")
    .unwrap_or_else(|e| panic!("screenshot: {e}"));

    let path = bed.info().logs_dir.join(format!("{name}.png"));
    std::fs::write(&path, &shot.png).expect("save the screenshot");
    println!(
        "screenshot {}x{} ({} bytes of PNG): {}",
        shot.width,
        shot.height,
        shot.png.len(),
        path.display()
    );

    let decoder = png::Decoder::new(shot.png.as_slice());
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG image");
    assert_eq!(
        (info.width, info.height),
        (u32::from(shot.width), u32::from(shot.height))
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert!(
        shot.width >= 320 && shot.height >= 200,
        "implausible screen size {}x{}",
        shot.width,
        shot.height
    );

    // Not blank: the guest's boot log and the marker are on tty0.
    let mut colours: HashMap<&[u8], usize> = HashMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(3) {
        *colours.entry(px).or_default() += 1;
    }
    let total = usize::from(shot.width) * usize::from(shot.height);
    let (background, bg_count) = colours
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (*c, *n))
        .expect("pixels");
    let share = (total - bg_count) as f64 / total as f64;
    println!(
        "background {background:?}, {} colours, {:.1}% of pixels differ from it",
        colours.len(),
        share * 100.0
    );
    assert!(
        share > 0.01,
        "the screenshot looks blank: only {:.2}% of pixels differ from the background; see {}",
        share * 100.0,
        path.display()
    );
}
