//! Step 3 for `PUT …/virtualmachines/{name}/migrate`: a
//! VirtualMachineInstanceMigration of the VM's VMI, created with ironvirt-api's
//! own identity once the user is authorized for `update
//! virtualmachines/migrate` (as KubeVirt's virt-api does). The migration
//! webhooks then label it and check that nothing else is in flight; the
//! operator's migration controller carries it out.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ironvirt_crds::migration::VirtualMachineInstanceMigration;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use kube::api::{Api, PostParams};

use super::authz::{attrs, authorize};
use super::{ApiState, check_names, kube_error, not_found, status};
use crate::auth::Peer;
use crate::vmops::{self, MigrateOptions, OpError};

/// The largest migrate body read.
const MAX_OPTIONS_BODY: usize = 64 * 1024;

/// `PUT …/virtualmachines/{name}/migrate`: 202 once the migration is created
/// (or, with dryRun, would be); 404 without the VM, 409 when its VMI is not
/// running; the API's answer when the create is refused (the webhook's
/// in-flight message, for one).
pub(super) async fn migrate(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    let peer = req.extensions().get::<Peer>().cloned();
    let user = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("update", "virtualmachines", "migrate", &ns, &name),
    )
    .await?;
    let opts = options(req).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &ns);
    if vms
        .get_opt(&name)
        .await
        .map_err(|e| kube_error(&e))?
        .is_none()
    {
        return Err(not_found(&format!("virtualmachine \"{name}\"")));
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), &ns);
    let vmi = vmis.get_opt(&name).await.map_err(|e| kube_error(&e))?;
    let migration = vmops::plan_migration(&name, vmi.as_ref(), &opts).map_err(|e| match e {
        OpError::Conflict(m) => status(StatusCode::CONFLICT, "Conflict", m),
        OpError::BadRequest(m) => status(StatusCode::BAD_REQUEST, "BadRequest", m),
    })?;
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(state.client.clone(), &ns);
    let params = PostParams {
        dry_run: opts.is_dry_run(),
        ..PostParams::default()
    };
    let created = migrations.create(&params, &migration).await.map_err(|e| {
        tracing::info!(vm.namespace = %ns, vm.name = %name, user = %user.name, error = %e, "migration refused");
        kube_error(&e)
    })?;
    tracing::info!(
        vm.namespace = %ns,
        vm.name = %name,
        user = %user.name,
        vmim.name = created.metadata.name.as_deref().unwrap_or_default(),
        dry_run = opts.is_dry_run(),
        "migration created"
    );
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The MigrateOptions from the request body; an empty body means none.
async fn options(req: Request) -> Result<MigrateOptions, Response> {
    let body = axum::body::to_bytes(req.into_body(), MAX_OPTIONS_BODY)
        .await
        .map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("reading the body: {e}"),
            )
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(MigrateOptions::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the migrate options do not parse: {e}"),
        )
    })
}
