//! Live migration: `ironctl migrate VM` asks the subresource API for a
//! migration (`PUT …/virtualmachines/VM/migrate` with KubeVirt's
//! MigrateOptions, as virtctl does), and `ironctl migrate-cancel VM` deletes
//! the VM's unfinished VirtualMachineInstanceMigration, found by the label
//! `kubevirt.io/vmi-name` (as virtctl does). The bodies, the label query and
//! the choice of migration are pure functions.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{Value, json};

use ironvirt_crds::migration::VMI_NAME_LABEL;

use crate::args::{MigrateArgs, MigrateCancelArgs};
use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::status::{Kind, Subject, describe};

/// `KEY=VALUE` pairs as a node selector. An empty key, a pair without `=` or
/// a key given twice with different values is a usage error.
pub fn node_selector(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut selector = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--added-node-selector takes KEY=VALUE, got {pair:?}"
                ))
            })?;
        if let Some(before) = selector.insert(key.to_owned(), value.to_owned())
            && before != value
        {
            return Err(Error::Usage(format!(
                "--added-node-selector gives {key} twice: {before:?} and {value:?}"
            )));
        }
    }
    Ok(selector)
}

/// The migrate body: `{"addedNodeSelector": {…}?, "dryRun": ["All"]?}`.
pub fn migrate_body(selector: &BTreeMap<String, String>, dry_run: bool) -> Value {
    let mut body = json!({});
    if !selector.is_empty() {
        body["addedNodeSelector"] = json!(selector);
    }
    if dry_run {
        body["dryRun"] = json!(["All"]);
    }
    body
}

/// `%XX` for every byte but unreserved characters (RFC 3986).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The path listing the migrations of VMI `vmi` in `namespace`.
pub fn migrations_path(namespace: &str, vmi: &str) -> String {
    format!(
        "/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstancemigrations?labelSelector={}",
        query_escape(&format!("{VMI_NAME_LABEL}={vmi}"))
    )
}

/// The name of the first migration of `vmi` in a migration list that has not
/// reached Succeeded or Failed (as virtctl chooses).
pub fn unfinished(list: &Value, vmi: &str) -> Option<String> {
    list["items"]
        .as_array()?
        .iter()
        .filter(|m| m.pointer("/spec/vmiName").and_then(Value::as_str) == Some(vmi))
        .find(|m| {
            !matches!(
                m.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        })
        .and_then(|m| m.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_owned)
}

/// The message after a migrate.
pub fn migrate_done(name: &str, dry_run: bool) -> String {
    let suffix = if dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    format!("VM {name} was scheduled to migrate{suffix}")
}

/// `ironctl migrate`.
pub async fn migrate(ctx: &Ctx, args: &MigrateArgs) -> Result<()> {
    let body = migrate_body(&node_selector(&args.added_node_selector)?, args.dry_run);
    let subject = Subject {
        kind: Kind::Vm,
        name: &args.vm,
        namespace: &ctx.namespace,
    };
    let path = ctx.subresource_path("virtualmachines", &args.vm, "migrate");
    ctx.expect_success(Method::PUT, &path, Some(&body), &subject)
        .await?;
    crate::outln(&migrate_done(&args.vm, args.dry_run))
}

/// `ironctl migrate-cancel`: deletes the VM's unfinished migration.
pub async fn cancel(ctx: &Ctx, args: &MigrateCancelArgs) -> Result<()> {
    let vm = args.vm.as_str();
    let subject = Subject {
        kind: Kind::Vm,
        name: vm,
        namespace: &ctx.namespace,
    };
    let reply = ctx
        .request(Method::GET, &migrations_path(&ctx.namespace, vm), None)
        .await?;
    if reply.code == 404 {
        return Err(Error::Api(
            "the cluster does not serve kubevirt.io/v1 virtualmachineinstancemigrations: is \
             ironvirt (or KubeVirt) installed with its VirtualMachineInstanceMigration CRD?"
                .into(),
        ));
    }
    if !reply.is_success() {
        return Err(Error::Api(describe(&subject, &reply.failure())));
    }
    let list: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| Error::Api(format!("the migration list does not parse: {e}")))?;
    let Some(name) = unfinished(&list, vm) else {
        return Err(Error::Api(format!("no unfinished migration for VMI {vm}")));
    };
    let path = format!(
        "/apis/kubevirt.io/v1/namespaces/{}/virtualmachineinstancemigrations/{name}",
        ctx.namespace
    );
    ctx.expect_success(Method::DELETE, &path, None, &subject)
        .await?;
    crate::outln(&format!(
        "VM {vm} was scheduled to migrate-cancel (migration {name} deleted)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn node_selectors_are_key_value_pairs() {
        let s = node_selector(&pairs(&["kubernetes.io/hostname=node-2", "zone = a"])).unwrap();
        assert_eq!(
            s,
            BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), "node-2".to_owned()),
                ("zone".to_owned(), "a".to_owned()),
            ])
        );
        // An empty value is a value (label values may be empty).
        assert_eq!(node_selector(&pairs(&["k="])).unwrap()["k"], "");
        for bad in ["novalue", "=v", ""] {
            let e = node_selector(&pairs(&[bad])).unwrap_err();
            assert_eq!(
                e.line(),
                format!("--added-node-selector takes KEY=VALUE, got {bad:?}")
            );
        }
        assert!(node_selector(&pairs(&["k=a", "k=a"])).is_ok());
        assert!(node_selector(&pairs(&["k=a", "k=b"])).is_err());
    }

    #[test]
    fn migrate_bodies_are_kubevirts_migrate_options() {
        assert_eq!(migrate_body(&BTreeMap::new(), false), json!({}));
        let s = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        assert_eq!(
            migrate_body(&s, true),
            json!({"addedNodeSelector": {"k": "v"}, "dryRun": ["All"]})
        );
        assert_eq!(
            migrate_done("v", true),
            "VM v was scheduled to migrate (dry run: nothing changed)"
        );
    }

    #[test]
    fn migrations_are_listed_by_the_vmi_label() {
        assert_eq!(
            migrations_path("ns", "vm-1"),
            "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstancemigrations?labelSelector=kubevirt.io%2Fvmi-name%3Dvm-1"
        );
    }

    #[test]
    fn the_unfinished_migration_is_cancelled() {
        let m = |name: &str, vmi: &str, phase: Option<&str>| {
            json!({"metadata": {"name": name}, "spec": {"vmiName": vmi},
                "status": phase.map(|p| json!({"phase": p}))})
        };
        let list = json!({"items": [
            m("done", "v", Some("Succeeded")),
            m("failed", "v", Some("Failed")),
            m("other-vm", "w", Some("Running")),
            m("active", "v", Some("Scheduling")),
        ]});
        assert_eq!(unfinished(&list, "v").as_deref(), Some("active"));
        // No phase yet is unfinished too.
        let list = json!({"items": [m("new", "v", None)]});
        assert_eq!(unfinished(&list, "v").as_deref(), Some("new"));
        let list = json!({"items": [m("done", "v", Some("Succeeded"))]});
        assert_eq!(unfinished(&list, "v"), None);
        assert_eq!(unfinished(&json!({}), "v"), None);
    }
}
