//! `ironctl expand`: a VM with its instancetype and preference expanded into
//! its template, as `virtctl expand` prints it: `--vm NAME` asks the
//! subresource `virtualmachines/NAME/expand-spec`, `--file FILE` sends the
//! manifest to `expand-vm-spec` in the namespace. The server expands; the
//! pure parts here read the manifest and print the answer.

use std::io::Read;
use std::path::Path;

use http::Method;
use serde_json::Value;

use crate::args::{ExpandArgs, Global, OutputFormat};
use crate::client::{Ctx, SUBRESOURCE_PREFIX};
use crate::error::{Error, Result};
use crate::status::{Kind, Subject};

/// The largest manifest read (etcd's request limit: a bigger VM cannot exist).
const MAX_MANIFEST: u64 = 1536 * 1024;

/// A VirtualMachine manifest (YAML or JSON) as JSON; `source` names it in errors.
pub fn parse_manifest(text: &str, source: &str) -> Result<Value> {
    let value: Value = serde_yaml::from_str(text)
        .map_err(|e| Error::Usage(format!("{source}: not a YAML or JSON manifest: {e}")))?;
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "VirtualMachine" {
        return Err(Error::Usage(format!(
            "{source}: kind is {kind:?}; expand takes a VirtualMachine"
        )));
    }
    Ok(value)
}

/// The namespace to expand a manifest in: `-n` if given, else the manifest's,
/// else the context's. (A manifest of another namespace than `-n` is the
/// server's to refuse.)
pub fn manifest_namespace(global: &Global, manifest: &Value, context_ns: &str) -> String {
    global
        .namespace
        .clone()
        .or_else(|| {
            manifest
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| context_ns.to_owned())
}

/// The VM as the user asked to see it.
pub fn render(vm: &Value, format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Yaml => serde_yaml::to_string(vm).map_err(|e| Error::Local(e.to_string())),
        OutputFormat::Json => serde_json::to_string_pretty(vm)
            .map(|s| s + "\n")
            .map_err(|e| Error::Local(e.to_string())),
    }
}

fn read_manifest(path: &Path) -> Result<(String, String)> {
    let source = path.display().to_string();
    let mut text = String::new();
    let result = if source == "-" {
        std::io::stdin()
            .take(MAX_MANIFEST + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_MANIFEST + 1).read_to_string(&mut text))
    };
    result.map_err(|e| Error::Local(format!("reading {source}: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(Error::Usage(format!(
            "{source} is larger than {MAX_MANIFEST} bytes"
        )));
    }
    Ok((text, source))
}

/// `ironctl expand`.
pub async fn run(ctx: &Ctx, args: &ExpandArgs, global: &Global) -> Result<()> {
    let (reply, name, namespace) = match (&args.vm, &args.file) {
        (Some(name), None) => {
            let path = ctx.subresource_path("virtualmachines", name, "expand-spec");
            let subject = Subject {
                kind: Kind::Vm,
                name,
                namespace: &ctx.namespace,
            };
            let reply = ctx
                .expect_success(Method::GET, &path, None, &subject)
                .await?;
            (reply, name.clone(), ctx.namespace.clone())
        }
        (None, Some(file)) => {
            let (text, source) = read_manifest(file)?;
            let manifest = parse_manifest(&text, &source)?;
            let ns = manifest_namespace(global, &manifest, &ctx.namespace);
            let name = manifest
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let path = format!("{SUBRESOURCE_PREFIX}/namespaces/{ns}/expand-vm-spec");
            let subject = Subject {
                kind: Kind::Vm,
                name: &name,
                namespace: &ns,
            };
            let reply = ctx
                .expect_success(Method::PUT, &path, Some(&manifest), &subject)
                .await?;
            (reply, name, ns)
        }
        _ => {
            return Err(Error::Usage("give one of --vm NAME and --file FILE".into()));
        }
    };
    let vm: Value = serde_json::from_slice(&reply.body).map_err(|e| {
        Error::Api(format!(
            "the answer for VM {name} in namespace {namespace} is not JSON: {e}"
        ))
    })?;
    crate::out(&render(&vm, args.output)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn manifests_are_yaml_or_json_virtual_machines() {
        let yaml = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: v}\nspec:\n  instancetype: {name: u1.small}\n";
        let v = parse_manifest(yaml, "vm.yaml").unwrap();
        assert_eq!(v["spec"]["instancetype"]["name"], "u1.small");
        let v = parse_manifest(
            r#"{"kind": "VirtualMachine", "metadata": {"name": "v"}}"#,
            "j",
        )
        .unwrap();
        assert_eq!(v["metadata"]["name"], "v");
        let e = parse_manifest("kind: Pod\n", "pod.yaml").unwrap_err();
        assert_eq!(
            e.line(),
            "pod.yaml: kind is \"Pod\"; expand takes a VirtualMachine"
        );
        assert!(parse_manifest("a: [", "bad.yaml").is_err());
    }

    #[test]
    fn the_namespace_is_the_flags_then_the_manifests_then_the_contexts() {
        let with_ns = json!({"metadata": {"namespace": "m"}});
        let without = json!({"metadata": {}});
        let flag = Global {
            namespace: Some("f".into()),
            ..Default::default()
        };
        let none = Global::default();
        assert_eq!(manifest_namespace(&flag, &with_ns, "c"), "f");
        assert_eq!(manifest_namespace(&none, &with_ns, "c"), "m");
        assert_eq!(manifest_namespace(&none, &without, "c"), "c");
    }

    #[test]
    fn output_is_yaml_or_json() {
        let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "spec": {"template": {"spec": {"domain": {"cpu": {"sockets": 1}}}}}});
        let yaml = render(&vm, OutputFormat::Yaml).unwrap();
        assert!(yaml.starts_with("apiVersion: kubevirt.io/v1\n"), "{yaml}");
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, vm);
        let text = render(&vm, OutputFormat::Json).unwrap();
        assert!(text.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), vm);
    }
}
