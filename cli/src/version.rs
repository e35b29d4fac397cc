//! `ironctl version`: the client's version, the subresource API server's
//! (through kube-apiserver), and kube-apiserver's.

use http::Method;
use serde_json::Value;

use crate::args::VersionArgs;
use crate::client::{Ctx, SUBRESOURCE_PREFIX};
use crate::error::{Error, Result};
use crate::status::{Failure, Kind, Subject, describe};

/// The client's version line.
pub fn client_line() -> String {
    format!(
        "Client Version: ironctl v{} (kubevirt.io/v1, subresources.kubevirt.io/v1)",
        env!("CARGO_PKG_VERSION")
    )
}

/// The gitVersion of a /version answer.
pub fn git_version(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("gitVersion")?
        .as_str()
        .map(str::to_owned)
}

/// Prints the versions; fails when a server's cannot be read.
pub async fn run(ctx: Option<&Ctx>, args: &VersionArgs) -> Result<()> {
    crate::outln(&client_line())?;
    let Some(ctx) = ctx.filter(|_| !args.client) else {
        return Ok(());
    };
    let subject = Subject {
        kind: Kind::Vmi,
        name: "",
        namespace: &ctx.namespace,
    };
    let reply = ctx
        .request(Method::GET, &format!("{SUBRESOURCE_PREFIX}/version"), None)
        .await?;
    if !reply.is_success() {
        return Err(Error::Api(format!(
            "the server's version: {}",
            describe(&subject, &Failure::parse(reply.code, &reply.body))
        )));
    }
    let server = git_version(&reply.body)
        .ok_or_else(|| Error::Api("the server's version answer has no gitVersion".into()))?;
    crate::outln(&format!("Server Version: {server}"))?;
    let reply = ctx.request(Method::GET, "/version", None).await?;
    match git_version(&reply.body).filter(|_| reply.is_success()) {
        Some(v) => crate::outln(&format!("Kubernetes Version: {v}"))?,
        None => {
            return Err(Error::Api(format!(
                "kube-apiserver's version: {}",
                describe(&subject, &Failure::parse(reply.code, &reply.body))
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_git_version() {
        assert_eq!(
            git_version(br#"{"major":"1","minor":"8","gitVersion":"v1.8.0+ironvirt.0.1.0"}"#),
            Some("v1.8.0+ironvirt.0.1.0".into())
        );
        assert_eq!(git_version(b"not json"), None);
        assert!(client_line().starts_with("Client Version: ironctl v"));
    }
}
