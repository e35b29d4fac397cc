//! Step 1 of every subresource request: who is asking (the front proxy's
//! certificate and X-Remote-* headers, [`crate::auth`]) and may they (a
//! SubjectAccessReview for the asserted user, answered by kube-apiserver).

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::{ApiState, GROUP, VERSION, kube_error, status};
use crate::auth::{Peer, User};

/// Authenticates the request and authorizes `verb` on `resource/subresource`:
/// 401 without an allowed front-proxy certificate, 403 when the review
/// denies it.
pub(super) async fn authorize(
    state: &ApiState,
    req_peer: Option<&Peer>,
    headers: &HeaderMap,
    attrs: ResourceAttributes,
) -> Result<User, Response> {
    let peer = req_peer.cloned().unwrap_or_default();
    let user = state.auth.authenticate(&peer, headers).map_err(|e| {
        tracing::info!(error = %e, "unauthenticated request");
        status(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
    })?;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            uid: user.uid.clone(),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(attrs.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(state.client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| kube_error(&e))?;
    let allowed = answer.status.as_ref().is_some_and(|s| s.allowed);
    if !allowed {
        let resource = attrs.resource.clone().unwrap_or_default();
        // resource/subresource, or the resource alone (expand-vm-spec).
        let full = match attrs.subresource.as_deref() {
            Some(sub) if !sub.is_empty() => format!("{resource}/{sub}"),
            _ => resource.clone(),
        };
        let message = format!(
            "{resource} is forbidden: User \"{}\" cannot {} resource \"{full}\" in API group \"{}\" in the namespace \"{}\"",
            user.name,
            attrs.verb.clone().unwrap_or_default(),
            GROUP,
            attrs.namespace.clone().unwrap_or_default()
        );
        return Err(status(StatusCode::FORBIDDEN, "Forbidden", message));
    }
    Ok(user)
}

/// The attributes of `verb` on `resource/sub` of object `ns/name` in the
/// subresource API group.
pub(super) fn attrs(
    verb: &str,
    resource: &str,
    sub: &str,
    ns: &str,
    name: &str,
) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(GROUP.into()),
        version: Some(VERSION.into()),
        resource: Some(resource.into()),
        subresource: Some(sub.into()),
        verb: Some(verb.into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}
