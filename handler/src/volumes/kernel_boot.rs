//! `firmware.kernelBoot.container`: a kernel and initrd taken from a
//! container image through the node's image cache ([`crate::images`]), as
//! containerDisks are, and booted directly (`<os><kernel>`). QEMU only reads
//! them, so the VMI gets no copy: the domain names the cached files.

use ironvirt_crds::vmi::{KernelBoot, PullPolicy as SpecPullPolicy};

use super::*;
use crate::images::{ImageRef, PullPolicy, Wanted};

/// What a kernel boot needs from its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBootPlan {
    pub image: ImageRef,
    pub policy: PullPolicy,
    /// `imagePullSecret`: a Secret of the VMI's namespace.
    pub pull_secret: Option<String>,
    /// `kernelPath`.
    pub kernel: Wanted,
    /// `initrdPath`, when given.
    pub initrd: Option<Wanted>,
    /// `kernelArgs`, when given.
    pub cmdline: Option<String>,
}

/// The kernel boot of `vmi`, when its firmware asks for one from a
/// container. Pure. A `kernelBoot` with only `kernelArgs` (admission refuses
/// it) is refused here too, as is an initrd without a kernel.
pub fn plan_kernel_boot(
    vmi: &VirtualMachineInstance,
) -> Result<Option<KernelBootPlan>, VolumeError> {
    const FIELD: &str = "spec.domain.firmware.kernelBoot";
    let Some(KernelBoot {
        kernel_args,
        container,
    }) = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_deref())
    else {
        return Ok(None);
    };
    let cmdline = kernel_args.clone().filter(|a| !a.is_empty());
    let Some(c) = container else {
        return match cmdline {
            Some(_) => Err(invalid(
                format!("{FIELD}.kernelArgs"),
                "kernelArgs needs kernelBoot.container: the arguments are for the kernel it gives",
            )),
            None => Ok(None),
        };
    };
    if let Some(a) = &cmdline
        && a.chars().any(char::is_control)
    {
        return Err(invalid(
            format!("{FIELD}.kernelArgs"),
            "must not contain control characters",
        ));
    }
    let field = format!("{FIELD}.container");
    let image = ImageRef::parse(&c.image).map_err(|e| invalid(format!("{field}.image"), e))?;
    let policy = PullPolicy::of(c.image_pull_policy.map(spec_policy), &image)
        .map_err(|e| invalid(format!("{field}.imagePullPolicy"), e))?;
    let path = |name: &str, p: &Option<String>| -> Result<Option<Wanted>, VolumeError> {
        p.as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| Wanted::boot_file(p).map_err(|e| invalid(format!("{field}.{name}"), e)))
            .transpose()
    };
    let initrd = path("initrdPath", &c.initrd_path)?;
    let Some(kernel) = path("kernelPath", &c.kernel_path)? else {
        return Err(invalid(
            format!("{field}.kernelPath"),
            "is required: ironvirt boots the image's kernel (an initrd alone cannot boot)",
        ));
    };
    Ok(Some(KernelBootPlan {
        image,
        policy,
        pull_secret: c.image_pull_secret.clone().filter(|s| !s.is_empty()),
        kernel,
        initrd,
        cmdline,
    }))
}

/// The spec's pull policy, as the image puller names it.
pub(super) fn spec_policy(p: SpecPullPolicy) -> &'static str {
    match p {
        SpecPullPolicy::Always => "Always",
        SpecPullPolicy::IfNotPresent => "IfNotPresent",
        SpecPullPolicy::Never => "Never",
    }
}
