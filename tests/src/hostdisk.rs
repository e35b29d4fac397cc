//! hostDisk in the test bed: hack/lib.sh starts ironvirt-api with
//! `--host-disk-root` [`ROOT`], so a VMI's images must lie in
//! `<ROOT>/<its namespace>/`. The examples and the tests name the guest image
//! as in namespace `default` ([`EXAMPLE_DIR`], which `make run`/`make test`
//! fill) or by its installed path ([`crate::api::GUEST_IMAGE`]); the helpers
//! here move such paths into a test namespace's directory and hard-link the
//! guest image there (a copy when a link is impossible).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::GUEST_IMAGE;

/// The test bed's hostDisk root (hack/lib.sh `HOSTDISK_ROOT`).
pub const ROOT: &str = "/var/lib/ironvirt/hostdisks";
/// Where the examples' images lie: namespace `default`'s directory.
pub const EXAMPLE_DIR: &str = "/var/lib/ironvirt/hostdisks/default/";
/// The directory the guest image is installed in (hack/lib.sh `GUEST_IMAGE`).
const IMAGES_DIR: &str = "/var/lib/ironvirt/images/";
/// The guest image's file name.
const GUEST_FILE: &str = "busybox.qcow2";

/// `<ROOT>/<ns>`.
pub fn namespace_dir(ns: &str) -> PathBuf {
    Path::new(ROOT).join(ns)
}

/// The guest image in `ns`'s directory, placed there when missing (a hard
/// link to [`GUEST_IMAGE`], else a copy). Panics when it cannot be placed.
pub fn guest_image(ns: &str) -> String {
    let dir = namespace_dir(ns);
    let path = dir.join(GUEST_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating the hostDisk directory {}: {e}", dir.display()));
        if std::fs::hard_link(GUEST_IMAGE, &path).is_err() {
            std::fs::copy(GUEST_IMAGE, &path).unwrap_or_else(|e| {
                panic!(
                    "placing the guest image {GUEST_IMAGE} at {}: {e}",
                    path.display()
                )
            });
        }
    }
    path.to_string_lossy().into_owned()
}

/// `path` moved into `ns`'s directory when it is one of the examples'
/// (`<ROOT>/default/…`) or an installed image (`/var/lib/ironvirt/images/…`);
/// the guest image is placed there. Other paths are returned unchanged.
pub fn confine_path(path: &str, ns: &str) -> String {
    let Some(rest) = path
        .strip_prefix(EXAMPLE_DIR)
        .or_else(|| path.strip_prefix(IMAGES_DIR))
    else {
        return path.to_owned();
    };
    if rest == GUEST_FILE {
        return guest_image(ns);
    }
    namespace_dir(ns).join(rest).to_string_lossy().into_owned()
}

/// `object` (any manifest as JSON) with every `hostDisk.path` confined to
/// `ns`'s directory by [`confine_path`].
pub fn confine(object: &mut Value, ns: &str) {
    match object {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "hostDisk"
                    && let Some(Value::String(p)) = v.get_mut("path")
                {
                    *p = confine_path(p, ns);
                } else {
                    confine(v, ns);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| confine(v, ns)),
        _ => {}
    }
}

/// A manifest's text (YAML or JSON, or ironctl's `path:` flags) with the
/// examples' and installed images' directories replaced by `ns`'s; the guest
/// image is placed there when the text names it.
pub fn confine_text(text: &str, ns: &str) -> String {
    if !(text.contains(EXAMPLE_DIR) || text.contains(IMAGES_DIR)) {
        return text.to_owned();
    }
    if text.contains(GUEST_FILE) {
        guest_image(ns);
    }
    let dir = format!("{}/", namespace_dir(ns).display());
    text.replace(EXAMPLE_DIR, &dir).replace(IMAGES_DIR, &dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_directories_move() {
        assert_eq!(
            confine_path("/var/lib/ironvirt/hostdisks/default/a/b.img", "t1"),
            "/var/lib/ironvirt/hostdisks/t1/a/b.img"
        );
        assert_eq!(
            confine_path("/var/lib/ironvirt/images/x.img", "t1"),
            "/var/lib/ironvirt/hostdisks/t1/x.img"
        );
        assert_eq!(confine_path("/etc/shadow", "t1"), "/etc/shadow");
        let mut v = serde_json::json!({"spec": {"volumes": [{"hostDisk": {"path": "/var/lib/ironvirt/images/s.img"}}, {"hostDisk": {"path": "/dev/null"}}]}});
        confine(&mut v, "t1");
        assert_eq!(
            v["spec"]["volumes"][0]["hostDisk"]["path"],
            "/var/lib/ironvirt/hostdisks/t1/s.img"
        );
        assert_eq!(v["spec"]["volumes"][1]["hostDisk"]["path"], "/dev/null");
        assert_eq!(
            confine_text("path: /var/lib/ironvirt/images/s.img", "t1"),
            "path: /var/lib/ironvirt/hostdisks/t1/s.img"
        );
    }
}
