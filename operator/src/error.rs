/// Errors of one reconcile. Each maps to a short stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A short label for the errors-by-reason metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Serialize(_) => "serialize",
            Error::MissingField(_) => "invalid_object",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
