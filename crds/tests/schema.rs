//! The generated CRDs: committed YAML is current, every field is described,
//! and the schema carries the invariants KubeVirt users expect.
#![allow(clippy::unwrap_used)]

use ironvirt_crds::{crd_file_name, crd_yaml, crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn committed_crd_yaml_is_current() {
    for crd in crds() {
        let path = deploy_dir().join(crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p ironvirt-crds --bin crdgen`",
                path.display()
            )
        });
        assert!(
            committed == crd_yaml(&crd).unwrap(),
            "{} is stale; run `cargo run -p ironvirt-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

fn walk<'a>(path: String, s: &'a JSONSchemaProps, out: &mut Vec<(String, &'a JSONSchemaProps)>) {
    out.push((path.clone(), s));
    for (name, child) in s.properties.iter().flatten() {
        walk(format!("{path}.{name}"), child, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &s.items {
        walk(format!("{path}[]"), items, out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(add)) = &s.additional_properties {
        walk(format!("{path}{{}}"), add, out);
    }
}

fn schema_of(kind: &str) -> JSONSchemaProps {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap()
}

#[test]
fn every_field_has_a_description() {
    let mut missing = Vec::new();
    for crd in crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = schema_of(&kind);
        let mut nodes = Vec::new();
        walk(kind.clone(), &schema, &mut nodes);
        for (path, node) in nodes {
            // Array items and map values are described by their parent; the
            // top-level apiVersion/kind/metadata are Kubernetes' own.
            let structural = path.ends_with("[]") || path.ends_with("{}");
            let standard = [".apiVersion", ".kind", ".metadata"]
                .iter()
                .any(|s| path == format!("{kind}{s}"));
            if !structural && !standard && node.description.as_deref().unwrap_or("").is_empty() {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

#[test]
fn closed_sets_are_enums() {
    let vm = schema_of("VirtualMachine");
    let rs = &vm.properties.as_ref().unwrap()["spec"]
        .properties
        .as_ref()
        .unwrap()["runStrategy"];
    let values: Vec<String> = rs
        .enum_
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.0.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        values,
        ["Always", "RerunOnFailure", "Once", "Manual", "Halted"]
    );
}

#[test]
fn schema_has_no_unsigned_formats_and_no_null_enum_values() {
    for crd in crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = schema_of(&kind);
        let mut nodes = Vec::new();
        walk(kind, &schema, &mut nodes);
        for (path, node) in nodes {
            if let Some(f) = &node.format {
                assert!(!f.starts_with("uint"), "{path} has format {f}");
            }
            for v in node.enum_.iter().flatten() {
                assert!(!v.0.is_null(), "{path} lists null in its enum");
            }
        }
    }
}

#[test]
fn names_columns_and_subresources_match_kubevirt() {
    for crd in crds() {
        let names = &crd.spec.names;
        let cats = names.categories.clone().unwrap_or_default();
        let short = names.short_names.clone().unwrap_or_default();
        if crd.spec.group == ironvirt_crds::instancetype::GROUP {
            // KubeVirt's: the namespaced kinds in "all", no columns, no status.
            let (scope, want_cats, want_short): (&str, &[&str], &[&str]) = match names.kind.as_str()
            {
                "VirtualMachineInstancetype" => (
                    "Namespaced",
                    &["all"],
                    &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
                ),
                "VirtualMachineClusterInstancetype" => (
                    "Cluster",
                    &[],
                    &[
                        "vmclusterinstancetype",
                        "vmclusterinstancetypes",
                        "vmcf",
                        "vmcfs",
                    ],
                ),
                "VirtualMachinePreference" => (
                    "Namespaced",
                    &["all"],
                    &["vmpref", "vmprefs", "vmp", "vmps"],
                ),
                "VirtualMachineClusterPreference" => ("Cluster", &[], &["vmcp", "vmcps"]),
                other => panic!("unexpected kind {other}"),
            };
            assert_eq!(crd.spec.scope, scope, "{}", names.kind);
            assert_eq!(cats, want_cats, "{}", names.kind);
            assert_eq!(short, want_short, "{}", names.kind);
            let versions: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(versions, ["v1beta1"], "{}", names.kind);
            continue;
        }
        assert_eq!(cats, ["all", "kubevirt"], "{}", names.kind);
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        match names.kind.as_str() {
            "VirtualMachineInstance" => {
                assert_eq!(columns, ["Age", "Phase", "IP", "NodeName", "Ready"]);
                assert_eq!(short, ["vmi", "vmis"]);
            }
            "VirtualMachine" => {
                assert_eq!(columns, ["Age", "Status", "Ready"]);
                assert_eq!(short, ["vm", "vms"]);
            }
            "VirtualMachineInstanceReplicaSet" => {
                assert_eq!(columns, ["Desired", "Current", "Ready", "Age"]);
                assert_eq!(short, ["vmirs", "vmirss"]);
                let scale = v.subresources.as_ref().unwrap().scale.as_ref().unwrap();
                assert_eq!(scale.spec_replicas_path, ".spec.replicas");
                assert_eq!(scale.status_replicas_path, ".status.replicas");
                assert_eq!(
                    scale.label_selector_path.as_deref(),
                    Some(".status.labelSelector")
                );
            }
            "VirtualMachineInstancePreset" => assert_eq!(short, ["vmipreset", "vmipresets"]),
            "VirtualMachineInstanceMigration" => {
                assert_eq!(columns, ["Phase", "VMI", "Age"]);
                assert_eq!(short, ["vmim", "vmims"]);
            }
            "VirtualMachinePool" => {
                assert_eq!(columns, ["Desired", "Current", "Ready", "Age"]);
                assert_eq!(short, ["vmpool", "vmpools"]);
                let scale = v.subresources.as_ref().unwrap().scale.as_ref().unwrap();
                assert_eq!(scale.spec_replicas_path, ".spec.replicas");
                assert_eq!(
                    scale.label_selector_path.as_deref(),
                    Some(".status.labelSelector")
                );
                // v1beta1 stored, v1alpha1 served with the same schema.
                let versions: Vec<(&str, bool, bool)> = crd
                    .spec
                    .versions
                    .iter()
                    .map(|v| (v.name.as_str(), v.served, v.storage))
                    .collect();
                assert_eq!(
                    versions,
                    [("v1beta1", true, true), ("v1alpha1", true, false)]
                );
                assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
            }
            other => panic!("unexpected kind {other}"),
        }
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }
}

#[test]
fn the_compatibility_table_lists_every_refusal_and_warning() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility-fields.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let messages = ironvirt_crds::validate::unsupported::ALL
        .iter()
        .chain(ironvirt_crds::validate::warnings::ALL.iter());
    for m in messages {
        assert!(doc.contains(m), "{} does not mention: {m}", path.display());
    }
}
