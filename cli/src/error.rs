//! ironctl's errors. Each one displays as the single line printed on stderr.

/// What can go wrong; the text is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not fit together, or values that do not parse.
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig is missing, unreadable or unusable.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The API answered with an error, already described for the user.
    #[error("{0}")]
    Api(String),
    /// kube-apiserver could not be reached.
    #[error("cannot reach the Kubernetes API server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    /// A console or VNC session ended other than by the user.
    #[error("{0}")]
    Session(String),
    /// Local files, terminals and sockets.
    #[error("{0}")]
    Local(String),
    /// A program ironctl ran (ssh, scp) exited with this code, having said
    /// why itself.
    #[error("exit status {0}")]
    Exit(i32),
}

impl Error {
    /// The error as one line (no newlines, whatever a server sent).
    pub fn line(&self) -> String {
        crate::status::one_line(&self.to_string())
    }
}

/// Result with ironctl's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
