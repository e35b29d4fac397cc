use std::path::PathBuf;

use crate::nodes::NodeError;
use crate::pki::PkiError;
use crate::process::ProcessError;

/// Everything that can go wrong while driving the test bed. Each message says
/// what is missing or broken and, where it can, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found at {path}; {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} exited while starting; last lines of {log}:\n{tail}")]
    Exited {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} was not ready after {secs} s; last lines of {log}:\n{tail}")]
    Timeout {
        name: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("the test bed is not running (no {0}); start it with `make run` or `make test`")]
    NotRunning(PathBuf),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("HTTPS client for {server}: {source}")]
    HttpsClient {
        server: String,
        source: kube::config::KubeconfigError,
    },
    #[error("unexpected JSON: {0}")]
    Json(serde_json::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("HTTP request: {0}")]
    Http(#[from] http::Error),
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("no free TCP port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
    #[error("interrupted while starting; everything started was stopped again")]
    Interrupted,
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("manifest {file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("timed out after {secs} s waiting for {what}")]
    Wait { what: String, secs: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
