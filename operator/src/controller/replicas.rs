//! The writes both replica controllers make to the objects they own: adopt
//! orphans (add the controller reference), release strays (remove it, guarded
//! by the resourceVersion read) and delete. Decided by [`crate::replicas`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::Context;
use crate::error::Result;

/// Adopts `adopt` and releases `release` (names among `objs`) for the owner
/// whose controller reference is `owner`; counts each write as
/// (controller, resource).
pub async fn adopt_and_release<K>(
    ctx: &Context,
    (controller, resource): (&'static str, &'static str),
    api: &Api<K>,
    owner: &OwnerReference,
    objs: &[K],
    adopt: &[String],
    release: &[String],
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for name in adopt {
        let Some(o) = objs.iter().find(|o| &o.name_any() == name) else {
            continue;
        };
        // Guarded by the version read (two owners with overlapping selectors
        // cannot both adopt), keeping any other owners' references.
        let mut refs = o.owner_references().to_vec();
        refs.push(owner.clone());
        let patch =
            json!({"metadata": {"ownerReferences": refs, "resourceVersion": o.resource_version()}});
        ctx.metrics.write(controller, resource, "owner");
        ignore_gone(
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    for name in release {
        let Some(o) = objs.iter().find(|o| &o.name_any() == name) else {
            continue;
        };
        let keep: Vec<_> = o
            .owner_references()
            .iter()
            .filter(|r| r.uid != owner.uid)
            .cloned()
            .collect();
        let patch =
            json!({"metadata": {"ownerReferences": keep, "resourceVersion": o.resource_version()}});
        ctx.metrics.write(controller, resource, "owner");
        ignore_gone(
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    Ok(())
}

/// Deletes `names`; one already gone counts as deleted.
pub async fn delete_all<K>(
    ctx: &Context,
    (controller, resource): (&'static str, &'static str),
    api: &Api<K>,
    names: &[String],
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for name in names {
        ctx.metrics.write(controller, resource, "delete");
        ignore_gone(api.delete(name, &DeleteParams::default()).await.map(|_| ()))?;
    }
    Ok(())
}

/// A write to an object that is gone (404) counts as done.
pub fn ignore_gone<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
