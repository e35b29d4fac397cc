//! containerDisk volumes: a qcow2 overlay, private to the VMI, on the node's
//! cached copy of the image's disk ([`crate::images`]). The guest's writes
//! go to the overlay and are lost with the VMI, as in KubeVirt; the cached
//! disk is shared by every VMI of the image and never written.

use ironvirt_crds::vmi::ContainerDiskSource;

use super::kernel_boot::spec_policy;
use super::*;
use crate::images::{CachedDisk, ImageRef, PullPolicy, Wanted};

/// What a containerDisk needs: the image to pull, and the overlay to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerDiskPlan {
    pub image: ImageRef,
    pub policy: PullPolicy,
    pub wanted: Wanted,
    /// `imagePullSecret`: a Secret of the VMI's namespace.
    pub pull_secret: Option<String>,
    /// The VMI's overlay on the cached disk.
    pub overlay: PathBuf,
}

pub(super) fn plan_container_disk(
    c: &ContainerDiskSource,
    field: &str,
    dir: &Path,
    name: &str,
) -> Result<VolumePlan, VolumeError> {
    let image = ImageRef::parse(&c.image).map_err(|e| invalid(format!("{field}.image"), e))?;
    let policy = PullPolicy::of(c.image_pull_policy.map(spec_policy), &image)
        .map_err(|e| invalid(format!("{field}.imagePullPolicy"), e))?;
    let wanted = Wanted::of(c.path.as_deref()).map_err(|e| invalid(format!("{field}.path"), e))?;
    Ok(VolumePlan::ContainerDisk(ContainerDiskPlan {
        image,
        policy,
        wanted,
        pull_secret: c.image_pull_secret.clone().filter(|s| !s.is_empty()),
        overlay: dir.join(format!("{name}.overlay.qcow2")),
    }))
}

/// Makes the VMI's overlay on `base` once; an existing overlay holds the
/// running VMI's writes and is kept.
pub(super) fn prepare_container_disk(
    name: &str,
    plan: &ContainerDiskPlan,
    base: &CachedDisk,
) -> Result<ResolvedVolume, VolumeError> {
    let path = &plan.overlay;
    let dir = vmi_dir_of(path)?;
    ensure_vmi_dir(dir)?;
    if path.is_file() {
        tracing::debug!(volume = name, path = %path.display(), "containerDisk overlay exists");
        return Ok(resolved(path, ImageFormat::Qcow2));
    }
    let qemu_img = find_tool(&["qemu-img"], "qemu-utils (qemu-img)")?;
    let format = match base.format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
    };
    let tmp = TempPath::file(tmp_name(path));
    run(Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base.path)
        .arg(tmp.path()))?;
    sync_file(tmp.path())?;
    if publish_no_clobber(tmp, path)? {
        tracing::info!(
            volume = name,
            image = %plan.image,
            digest = %base.digest,
            path = %path.display(),
            "created containerDisk overlay"
        );
    }
    Ok(resolved(path, ImageFormat::Qcow2))
}
