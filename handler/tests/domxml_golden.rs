//! Golden tests of the domain XML: each `golden/<case>.yaml` is a
//! VirtualMachineInstance manifest and `golden/<case>.xml` the domain XML
//! ironvirt makes of it.
//!
//! A case picks its host with a comment line `# golden-host: <host>`, where
//! `<host>` is `qemu` (the default: TCG, no OVMF, q35), `kvm`, `qemu-ovmf` (OVMF
//! with Secure Boot files) or `qemu-ovmf-plain` (OVMF without them). Volumes
//! resolve to fixed paths, and each forwarded port `p` of a masquerade
//! interface to host port `10000 + p`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p ironvirt-handler --test domxml_golden`
//! rewrites the XML files. Not in CI: with `CI` set, `UPDATE_GOLDEN` fails
//! the test, so a pipeline can never bless its own output.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_handler::domxml::{
    DomainInputs, DomainOwner, DomainType, HostEnv, ImageFormat, KernelFiles, Ovmf, ResolvedVolume,
    domain_xml, parse_live, parse_owner,
};

const NODE: &str = "node-a";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The files in the golden directory with extension `ext`, sorted.
fn files(ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn host(name: &str) -> HostEnv {
    let ovmf = |secure: bool| Ovmf {
        code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        secure_code: secure.then(|| "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into()),
        vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        secure_vars_template: secure.then(|| "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into()),
    };
    let qemu = HostEnv {
        domain_type: DomainType::Qemu,
        ovmf: None,
        default_machine: "q35".into(),
        swtpm: true,
    };
    match name {
        "qemu" => qemu,
        "kvm" => HostEnv {
            domain_type: DomainType::Kvm,
            ..qemu
        },
        "qemu-ovmf" => HostEnv {
            ovmf: Some(ovmf(true)),
            ..qemu
        },
        "qemu-ovmf-plain" => HostEnv {
            ovmf: Some(ovmf(false)),
            ..qemu
        },
        other => panic!("unknown golden-host {other:?}"),
    }
}

/// The host a case asks for in its `# golden-host:` line.
fn host_of(yaml: &str) -> HostEnv {
    let name = yaml
        .lines()
        .find_map(|l| l.strip_prefix("# golden-host:"))
        .map_or("qemu", str::trim);
    host(name)
}

/// Fixed stand-ins for what the handler's volume and port code would decide.
fn inputs_of(vmi: &VirtualMachineInstance) -> DomainInputs {
    let uid = vmi.metadata.uid.clone().unwrap();
    let dir = format!("/var/lib/ironvirt/vmis/{uid}");
    let mut volumes = BTreeMap::new();
    for v in vmi.spec.volumes.iter().flatten() {
        let resolved = if let Some(h) = &v.host_disk {
            let format = if h.path.ends_with(".qcow2") {
                ImageFormat::Qcow2
            } else {
                ImageFormat::Raw
            };
            ResolvedVolume {
                path: h.path.clone().into(),
                format,
            }
        } else if v.cloud_init_no_cloud.is_some() {
            ResolvedVolume {
                path: format!("{dir}/{}.img", v.name).into(),
                format: ImageFormat::Raw,
            }
        } else {
            ResolvedVolume {
                path: format!("{dir}/{}.qcow2", v.name).into(),
                format: ImageFormat::Qcow2,
            }
        };
        volumes.insert(v.name.clone(), resolved);
    }
    DomainInputs {
        node: NODE.into(),
        volumes,
        pod_network: Some(format!("/run/ironvirt/net/{uid}/passt.sock").into()),
        nvram: format!("{dir}/nvram.fd").into(),
        console_socket: Some(format!("/run/ironvirt/console/{uid}.sock").into()),
        kernel_boot: kernel_files(vmi),
    }
}

/// A kernel boot's files in the node's image cache, by their paths in the image.
fn kernel_files(vmi: &VirtualMachineInstance) -> Option<KernelFiles> {
    let c = vmi
        .spec
        .domain
        .firmware
        .as_ref()?
        .kernel_boot
        .as_ref()?
        .container
        .as_ref()?;
    let cached = |p: &str| PathBuf::from(format!("/var/lib/ironvirt/image-cache/images{p}/disk"));
    Some(KernelFiles {
        kernel: cached(c.kernel_path.as_deref()?),
        initrd: c.initrd_path.as_deref().map(cached),
        cmdline: vmi
            .spec
            .domain
            .firmware
            .as_ref()?
            .kernel_boot
            .as_ref()?
            .kernel_args
            .clone(),
    })
}

/// Where `want` and `got` first differ, for the failure message.
fn first_difference(want: &str, got: &str) -> String {
    let (want_lines, got_lines): (Vec<&str>, Vec<&str>) =
        (want.lines().collect(), got.lines().collect());
    for i in 0..want_lines.len().max(got_lines.len()) {
        let w = want_lines.get(i).copied();
        let g = got_lines.get(i).copied();
        if w != g {
            return format!(
                "first difference at line {}:\n    golden: {}\n    actual: {}",
                i + 1,
                w.unwrap_or("<end of file>"),
                g.unwrap_or("<end of file>"),
            );
        }
    }
    "the files differ only in line endings".into()
}

/// Checks one case; an error message on failure.
fn check(case: &Path, update: bool) -> Result<(), String> {
    let name = case.display();
    let yaml = std::fs::read_to_string(case).unwrap();
    let vmi: VirtualMachineInstance =
        serde_yaml::from_str(&yaml).map_err(|e| format!("{name}: not a VMI: {e}"))?;
    let xml = domain_xml(&vmi, &host_of(&yaml), &inputs_of(&vmi))
        .map_err(|e| format!("{name}: domain_xml failed: {e}"))?;

    roxmltree::Document::parse(&xml).map_err(|e| format!("{name}: XML does not parse: {e}"))?;
    let owner = DomainOwner {
        namespace: vmi.metadata.namespace.clone().unwrap(),
        name: vmi.metadata.name.clone().unwrap(),
        uid: vmi.metadata.uid.clone().unwrap(),
        node: NODE.into(),
    };
    if parse_owner(&xml) != Some(owner) {
        return Err(format!("{name}: parse_owner does not read the owner back"));
    }
    let live = parse_live(&xml);
    if live.vnc_socket.is_some() || live.macs.iter().any(|(a, _)| !a.starts_with("ua-")) {
        return Err(format!("{name}: unexpected live facts {live:?}"));
    }

    let golden = case.with_extension("xml");
    if update {
        if std::fs::read_to_string(&golden).ok().as_deref() != Some(xml.as_str()) {
            std::fs::write(&golden, &xml).unwrap();
            eprintln!("updated {}", golden.display());
        }
        return Ok(());
    }
    let want = std::fs::read_to_string(&golden).map_err(|e| {
        format!(
            "{}: {e}; run UPDATE_GOLDEN=1 cargo test -p ironvirt-handler --test domxml_golden",
            golden.display()
        )
    })?;
    if want != xml {
        return Err(format!(
            "{} is stale; if the change is intended, run \
             UPDATE_GOLDEN=1 cargo test -p ironvirt-handler --test domxml_golden\n  {}",
            golden.display(),
            first_difference(&want, &xml)
        ));
    }
    Ok(())
}

/// Whether to rewrite the golden files: `UPDATE_GOLDEN=1`, refused in CI.
fn update_mode(update_golden: Option<&str>, ci: Option<&str>) -> Result<bool, String> {
    match (update_golden, ci) {
        (None, _) => Ok(false),
        (Some(_), Some(ci)) => Err(format!(
            "UPDATE_GOLDEN is set in CI (CI={ci:?}): golden files are updated on a \
             workstation and reviewed, never rewritten by the pipeline that checks them"
        )),
        (Some(v), None) => Ok(v == "1"),
    }
}

#[test]
fn golden_domain_xml() {
    let update = update_mode(
        std::env::var("UPDATE_GOLDEN").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cases = files("yaml");
    assert!(!cases.is_empty(), "no cases in {}", golden_dir().display());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case, update).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_golden_xml_has_its_case() {
    let orphans: Vec<PathBuf> = files("xml")
        .into_iter()
        .filter(|x| !x.with_extension("yaml").exists())
        .collect();
    assert!(orphans.is_empty(), "golden XML without a case: {orphans:?}");
}

#[test]
fn update_golden_is_refused_in_ci() {
    assert_eq!(update_mode(None, None), Ok(false));
    assert_eq!(update_mode(None, Some("true")), Ok(false));
    assert_eq!(update_mode(Some("1"), None), Ok(true));
    assert_eq!(update_mode(Some("0"), None), Ok(false));
    for ci in ["true", "1", ""] {
        let refused = update_mode(Some("1"), Some(ci)).unwrap_err();
        assert!(refused.contains("UPDATE_GOLDEN is set in CI"), "{refused}");
    }
}
