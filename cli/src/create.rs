//! `ironctl create vm`: a VirtualMachine manifest from flags, built with the
//! API types of `ironvirt-crds`. The builder is pure; reading files and
//! picking a random name happen before it.

use std::collections::BTreeMap;

use base64::Engine;
use ironvirt_crds::domain::ResourceRequirements;
use ironvirt_crds::instancetype::Matcher;
use ironvirt_crds::vm::{RunStrategy, VirtualMachine, VirtualMachineSpec};
use ironvirt_crds::vmi::{
    CloudInitNoCloudSource, ContainerDiskSource, Cpu, Devices, Disk, DiskBus, DiskTarget,
    DomainSpec, HostDisk, HostDiskType, Memory, VirtualMachineInstanceSpec,
    VirtualMachineInstanceTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::args::CreateVmArgs;
use crate::error::{Error, Result};

/// The volume and disk of the cloud-init data.
pub const CLOUD_INIT_VOLUME: &str = "cloudinitdisk";
/// Characters of generated names (Kubernetes' generateName alphabet: no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Cloud-init user-data, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserData {
    /// From --cloud-init-user-data (base64, as virtctl takes it).
    Base64(String),
    /// From --cloud-init-user-data-file.
    Plain(String),
}

/// `vm-` and five random characters, as virtctl names VMs.
pub fn random_name() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())]))
        .collect();
    format!("vm-{suffix}")
}

/// Whether `s` is a DNS-1123 label (lowercase alphanumerics and '-', at most 63).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses `key:value,key:value` (a value may contain ':'), accepting only `allowed` keys.
pub fn parse_params(flag: &str, value: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in value.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = part.split_once(':') else {
            return Err(Error::Usage(format!(
                "--{flag}: {part:?} is not key:value (keys: {})",
                allowed.join(", ")
            )));
        };
        let k = k.trim().to_ascii_lowercase();
        if !allowed.contains(&k.as_str()) {
            return Err(Error::Usage(format!(
                "--{flag}: unknown parameter {k:?} (keys: {})",
                allowed.join(", ")
            )));
        }
        if out.insert(k.clone(), v.trim().to_owned()).is_some() {
            return Err(Error::Usage(format!("--{flag}: {k:?} is given twice")));
        }
    }
    Ok(out)
}

fn quantity(flag: &str, s: &str) -> Result<Quantity> {
    let q = Quantity(s.trim().to_owned());
    match ironvirt_crds::quantity::parse_quantity(&q, false) {
        Some(v) if v > 0 => Ok(q),
        _ => Err(Error::Usage(format!(
            "--{flag}: {s:?} is not a positive quantity such as 512Mi or 2Gi"
        ))),
    }
}

fn positive(flag: &str, key: &str, s: &str) -> Result<u32> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Usage(format!(
            "--{flag}: {key} must be a positive number, got {s:?}"
        ))),
    }
}

fn run_strategy(s: &str) -> Result<RunStrategy> {
    Ok(match s {
        "Always" => RunStrategy::Always,
        "RerunOnFailure" => RunStrategy::RerunOnFailure,
        "Once" => RunStrategy::Once,
        "Manual" => RunStrategy::Manual,
        "Halted" => RunStrategy::Halted,
        other => {
            return Err(Error::Usage(format!(
                "--run-strategy: {other:?} is not one of Always, RerunOnFailure, Once, Manual, Halted"
            )));
        }
    })
}

fn cpu(s: &str) -> Result<Cpu> {
    if let Ok(cores) = s.trim().parse::<u32>() {
        return Ok(Cpu {
            cores: Some(positive("cpu", "the number of cores", &cores.to_string())?),
            ..Default::default()
        });
    }
    let p = parse_params("cpu", s, &["cores", "sockets", "threads"])?;
    let get = |k: &str| p.get(k).map(|v| positive("cpu", k, v)).transpose();
    Ok(Cpu {
        cores: get("cores")?,
        sockets: get("sockets")?,
        threads: get("threads")?,
        ..Default::default()
    })
}

fn disk(name: &str, readonly: bool, boot_order: Option<u32>) -> Disk {
    Disk {
        name: name.to_owned(),
        disk: Some(DiskTarget {
            bus: Some(DiskBus::Virtio),
            readonly: readonly.then_some(true),
            ..Default::default()
        }),
        boot_order,
        ..Default::default()
    }
}

fn volume_name(flag: &str, given: Option<&String>, default: String) -> Result<String> {
    let name = given.cloned().unwrap_or(default);
    if is_dns_label(&name) {
        Ok(name)
    } else {
        Err(Error::Usage(format!(
            "--{flag}: volume name {name:?} is not a DNS label (lowercase letters, digits and '-', \
             at most 63); give name:…"
        )))
    }
}

fn boolean(flag: &str, key: &str, s: &str) -> Result<bool> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(Error::Usage(format!(
            "--{flag}: {key} is true or false, got {other:?}"
        ))),
    }
}

/// The guest memory without --memory or --instancetype.
const DEFAULT_MEMORY: &str = "512Mi";

/// `[KIND/]NAME` of --instancetype or --preference.
fn matcher(flag: &str, value: &str, preference: bool) -> Result<Matcher> {
    let (kind, name) = match value.split_once('/') {
        Some((k, n)) => (k, n),
        None => ("", value),
    };
    if !ironvirt_crds::instancetype::is_known_kind(kind, preference) {
        let kinds = if preference {
            "virtualmachineclusterpreference or virtualmachinepreference"
        } else {
            "virtualmachineclusterinstancetype or virtualmachineinstancetype"
        };
        return Err(Error::Usage(format!("--{flag}: {kind:?} is not {kinds}")));
    }
    if name.is_empty() {
        return Err(Error::Usage(format!("--{flag}: the name is missing")));
    }
    Ok(Matcher {
        name: name.to_owned(),
        kind: kind.to_owned(),
        ..Default::default()
    })
}

/// Builds the VirtualMachine `name` from the flags.
pub fn build_vm(
    args: &CreateVmArgs,
    name: &str,
    user_data: Option<UserData>,
) -> Result<VirtualMachine> {
    let instancetype = args
        .instancetype
        .as_deref()
        .map(|s| matcher("instancetype", s, false))
        .transpose()?;
    let preference = args
        .preference
        .as_deref()
        .map(|s| matcher("preference", s, true))
        .transpose()?;
    if instancetype.is_some() {
        for (flag, set) in [
            ("memory", args.memory.is_some()),
            ("cpu", args.cpu.is_some()),
        ] {
            if set {
                return Err(Error::Usage(format!(
                    "--{flag} conflicts with --instancetype: the instancetype gives the VM its vCPUs and memory"
                )));
            }
        }
    }
    if !is_dns_label(name) {
        return Err(Error::Usage(format!(
            "--name: {name:?} is not a valid VM name (lowercase letters, digits and '-', at most 63)"
        )));
    }
    let mut volumes = Vec::new();
    let mut disks = Vec::new();
    for (i, spec) in args.volume_containerdisk.iter().enumerate() {
        let flag = "volume-containerdisk";
        let p = parse_params(flag, spec, &["src", "name", "bootorder"])?;
        let image = p
            .get("src")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Usage(format!("--{flag}: src:IMAGE is required")))?;
        let vname = volume_name(flag, p.get("name"), format!("{name}-containerdisk-{i}"))?;
        let boot = p
            .get("bootorder")
            .map(|b| positive(flag, "bootorder", b))
            .transpose()?;
        disks.push(disk(&vname, false, boot));
        volumes.push(Volume {
            name: vname,
            container_disk: Some(ContainerDiskSource {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for (i, spec) in args.volume_hostdisk.iter().enumerate() {
        let flag = "volume-hostdisk";
        let p = parse_params(
            flag,
            spec,
            &["path", "name", "type", "capacity", "readonly", "bootorder"],
        )?;
        let path = p
            .get("path")
            .filter(|s| s.starts_with('/'))
            .ok_or_else(|| Error::Usage(format!("--{flag}: path:/ABSOLUTE/PATH is required")))?;
        let disk_type = match p.get("type").map(String::as_str) {
            None | Some("Disk") => HostDiskType::Disk,
            Some("DiskOrCreate") => HostDiskType::DiskOrCreate,
            Some(other) => {
                return Err(Error::Usage(format!(
                    "--{flag}: type {other:?} is not Disk or DiskOrCreate"
                )));
            }
        };
        let capacity = p.get("capacity").map(|c| quantity(flag, c)).transpose()?;
        if disk_type == HostDiskType::DiskOrCreate && capacity.is_none() {
            return Err(Error::Usage(format!(
                "--{flag}: type DiskOrCreate needs capacity:SIZE"
            )));
        }
        let readonly = p
            .get("readonly")
            .map(|r| boolean(flag, "readonly", r))
            .transpose()?
            .unwrap_or(false);
        let vname = volume_name(flag, p.get("name"), format!("{name}-hostdisk-{i}"))?;
        let boot = p
            .get("bootorder")
            .map(|b| positive(flag, "bootorder", b))
            .transpose()?;
        disks.push(disk(&vname, readonly, boot));
        volumes.push(Volume {
            name: vname,
            host_disk: Some(HostDisk {
                path: path.clone(),
                disk_type,
                capacity,
                shared: None,
            }),
            ..Default::default()
        });
    }
    if let Some(data) = user_data {
        let source = match data {
            UserData::Base64(b) => {
                let b = b.trim().to_owned();
                base64::engine::general_purpose::STANDARD
                    .decode(&b)
                    .map_err(|e| {
                        Error::Usage(format!(
                            "--cloud-init-user-data is not base64 ({e}); give a file with \
                             --cloud-init-user-data-file instead"
                        ))
                    })?;
                CloudInitNoCloudSource {
                    user_data_base64: Some(b),
                    ..Default::default()
                }
            }
            UserData::Plain(text) => CloudInitNoCloudSource {
                user_data: Some(text),
                ..Default::default()
            },
        };
        disks.push(disk(CLOUD_INIT_VOLUME, false, None));
        volumes.push(Volume {
            name: CLOUD_INIT_VOLUME.to_owned(),
            cloud_init_no_cloud: Some(source),
            ..Default::default()
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = volumes.iter().find(|v| !seen.insert(v.name.as_str())) {
        return Err(Error::Usage(format!(
            "two volumes are named {:?}: give each a different name:…",
            dup.name
        )));
    }
    let spec = VirtualMachineInstanceSpec {
        domain: DomainSpec {
            resources: Some(ResourceRequirements::default()),
            cpu: args.cpu.as_deref().map(cpu).transpose()?,
            memory: match &instancetype {
                Some(_) => None,
                None => Some(Memory {
                    guest: Some(quantity(
                        "memory",
                        args.memory.as_deref().unwrap_or(DEFAULT_MEMORY),
                    )?),
                    ..Default::default()
                }),
            },
            devices: Some(Devices {
                disks: (!disks.is_empty()).then_some(disks),
                ..Default::default()
            }),
            ..Default::default()
        },
        volumes: (!volumes.is_empty()).then_some(volumes),
        termination_grace_period_seconds: Some(args.termination_grace_period),
        ..Default::default()
    };
    let mut vm = VirtualMachine::new(
        name,
        VirtualMachineSpec {
            run_strategy: Some(run_strategy(&args.run_strategy)?),
            template: VirtualMachineInstanceTemplateSpec {
                metadata: None,
                spec: Some(spec),
            },
            instancetype: instancetype.map(Box::new),
            preference: preference.map(Box::new),
            ..Default::default()
        },
    );
    vm.status = None;
    Ok(vm)
}

/// The manifest as YAML.
pub fn to_yaml(vm: &VirtualMachine) -> Result<String> {
    serde_yaml::to_string(vm).map_err(|e| Error::Local(format!("writing YAML: {e}")))
}

/// Runs `ironctl create vm`: reads the user-data file, builds, prints.
pub fn run(args: &CreateVmArgs) -> Result<()> {
    let user_data = match (&args.cloud_init_user_data, &args.cloud_init_user_data_file) {
        (Some(b), _) => Some(UserData::Base64(b.clone())),
        (None, Some(path)) => Some(UserData::Plain(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?,
        )),
        (None, None) => None,
    };
    let name = args.name.clone().unwrap_or_else(random_name);
    let vm = build_vm(args, &name, user_data)?;
    crate::out(&to_yaml(&vm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> CreateVmArgs {
        use clap::{CommandFactory, FromArgMatches};
        let mut argv = vec!["ironctl", "create", "vm"];
        argv.extend_from_slice(extra);
        let m = crate::args::Cli::command()
            .try_get_matches_from(argv)
            .unwrap();
        match crate::args::Cli::from_arg_matches(&m).unwrap().command {
            crate::args::Command::Create(crate::args::CreateCommand::Vm(a)) => a,
            _ => unreachable!(),
        }
    }

    fn yaml(extra: &[&str], user_data: Option<UserData>) -> serde_yaml::Value {
        let vm = build_vm(&args(extra), "web", user_data).unwrap();
        serde_yaml::from_str(&to_yaml(&vm).unwrap()).unwrap()
    }

    #[test]
    fn defaults_match_virtctl() {
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        resources: {}
        memory:
          guest: 512Mi
        devices: {}
      terminationGracePeriodSeconds: 180
"#,
        )
        .unwrap();
        assert_eq!(yaml(&[], None), expected);
    }

    #[test]
    fn volumes_disks_and_cloud_init() {
        let got = yaml(
            &[
                "--memory=128Mi",
                "--cpu=2",
                "--run-strategy=Manual",
                "--termination-grace-period=10",
                "--volume-containerdisk=src:quay.io/x/cirros:v1.2,bootorder:1",
                "--volume-hostdisk=path:/var/lib/img.qcow2,name:root,readonly:true",
                "--volume-hostdisk=path:/var/lib/data.img,type:DiskOrCreate,capacity:1Gi",
            ],
            Some(UserData::Plain("#!/bin/sh\necho hi\n".into())),
        );
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: web
spec:
  runStrategy: Manual
  template:
    spec:
      domain:
        resources: {}
        cpu:
          cores: 2
        memory:
          guest: 128Mi
        devices:
          disks:
            - name: web-containerdisk-0
              disk: {bus: virtio}
              bootOrder: 1
            - name: root
              disk: {bus: virtio, readonly: true}
            - name: web-hostdisk-1
              disk: {bus: virtio}
            - name: cloudinitdisk
              disk: {bus: virtio}
      volumes:
        - name: web-containerdisk-0
          containerDisk: {image: "quay.io/x/cirros:v1.2"}
        - name: root
          hostDisk: {path: /var/lib/img.qcow2, type: Disk}
        - name: web-hostdisk-1
          hostDisk: {path: /var/lib/data.img, type: DiskOrCreate, capacity: 1Gi}
        - name: cloudinitdisk
          cloudInitNoCloud:
            userData: "#!/bin/sh\necho hi\n"
      terminationGracePeriodSeconds: 10
"##,
        )
        .unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn base64_user_data_is_checked() {
        let got = yaml(&[], Some(UserData::Base64("IyEvYmluL3NoCg==".into())));
        assert_eq!(
            got["spec"]["template"]["spec"]["volumes"][0]["cloudInitNoCloud"]["userDataBase64"],
            serde_yaml::Value::from("IyEvYmluL3NoCg==")
        );
        let e = build_vm(
            &args(&[]),
            "web",
            Some(UserData::Base64("#!/bin/sh".into())),
        )
        .unwrap_err();
        assert!(
            e.line().starts_with("--cloud-init-user-data is not base64"),
            "{}",
            e.line()
        );
    }

    #[test]
    fn cpu_topology() {
        let got = yaml(&["--cpu=cores:2,sockets:1,threads:2"], None);
        let cpu = &got["spec"]["template"]["spec"]["domain"]["cpu"];
        assert_eq!(cpu["cores"], serde_yaml::Value::from(2));
        assert_eq!(cpu["threads"], serde_yaml::Value::from(2));
        for bad in ["--cpu=0", "--cpu=cores:x", "--cpu=numa:1"] {
            assert!(build_vm(&args(&[bad]), "web", None).is_err(), "{bad}");
        }
    }

    #[test]
    fn instancetype_and_preference_replace_cpu_and_memory() {
        let got = yaml(
            &[
                "--instancetype=u1.small",
                "--preference=virtualmachinepreference/mine",
            ],
            None,
        );
        let spec = &got["spec"];
        assert_eq!(
            spec["instancetype"]["name"],
            serde_yaml::Value::from("u1.small")
        );
        assert!(spec["instancetype"].get("kind").is_none());
        assert_eq!(
            spec["preference"]["kind"],
            serde_yaml::Value::from("virtualmachinepreference")
        );
        assert!(spec["template"]["spec"]["domain"].get("memory").is_none());
    }

    #[test]
    fn clear_errors_for_bad_flags() {
        let err = |extra: &[&str]| build_vm(&args(extra), "web", None).unwrap_err().line();
        assert_eq!(
            err(&["--instancetype=u1.small", "--memory=1Gi"]),
            "--memory conflicts with --instancetype: the instancetype gives the VM its vCPUs and memory"
        );
        assert!(
            err(&["--instancetype=pods/x"]).contains("is not virtualmachineclusterinstancetype")
        );
        assert!(err(&["--preference=virtualmachinepreference/"]).contains("the name is missing"));
        assert!(err(&["--run-strategy=always"]).contains("is not one of Always"));
        assert!(err(&["--memory=lots"]).contains("is not a positive quantity"));
        assert!(err(&["--volume-containerdisk=quay.io/x:1"]).contains("unknown parameter"));
        assert!(err(&["--volume-containerdisk=name:x"]).contains("src:IMAGE is required"));
        assert!(err(&["--volume-hostdisk=path:relative"]).contains("path:/ABSOLUTE/PATH"));
        assert!(err(&["--volume-hostdisk=path:/a,type:DiskOrCreate"]).contains("needs capacity"));
        assert!(err(&["--volume-hostdisk=path:/a,readonly:yes"]).contains("true or false"));
        assert!(
            err(&[
                "--volume-hostdisk=path:/a,name:x",
                "--volume-hostdisk=path:/b,name:x"
            ])
            .contains("two volumes are named")
        );
        assert!(err(&["--volume-hostdisk=path:/a,name:Bad_Name"]).contains("not a DNS label"));
        let e = build_vm(&args(&[]), "Web", None).unwrap_err();
        assert!(e.line().contains("not a valid VM name"));
    }

    #[test]
    fn params() {
        let p = parse_params("f", "src:reg.io/img:tag,Name:x", &["src", "name"]).unwrap();
        assert_eq!(p["src"], "reg.io/img:tag");
        assert_eq!(p["name"], "x");
        assert!(parse_params("f", "src:a,src:b", &["src"]).is_err());
    }

    #[test]
    fn random_names_are_valid() {
        for _ in 0..50 {
            let n = random_name();
            assert!(is_dns_label(&n) && n.len() == 8, "{n}");
        }
    }
}
