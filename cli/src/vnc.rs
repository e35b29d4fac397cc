//! `ironctl vnc VMI`: a local VNC proxy on 127.0.0.1 for one viewer, relayed
//! over the `vnc` subresource websocket; `ironctl vnc screenshot`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{ScreenshotArgs, VncArgs};
use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::status::{Kind, Subject};

/// The PNG file signature.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A VNC viewer ironctl knows how to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// virt-viewer's remote-viewer.
    RemoteViewer,
    /// TigerVNC's (or another) vncviewer.
    VncViewer,
}

impl Viewer {
    pub fn program(self) -> &'static str {
        match self {
            Viewer::RemoteViewer => "remote-viewer",
            Viewer::VncViewer => "vncviewer",
        }
    }

    /// The arguments that point it at 127.0.0.1:`port`.
    pub fn args(self, port: u16) -> Vec<String> {
        match self {
            Viewer::RemoteViewer => vec![format!("vnc://127.0.0.1:{port}")],
            // host::port is a port number, where host:N would be display N.
            Viewer::VncViewer => vec![format!("127.0.0.1::{port}")],
        }
    }
}

/// The first viewer found on `path` (a PATH value), in order of preference.
pub fn find_viewer(path: Option<&std::ffi::OsStr>) -> Option<(Viewer, PathBuf)> {
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    [Viewer::RemoteViewer, Viewer::VncViewer]
        .into_iter()
        .find_map(|v| {
            dirs.iter()
                .map(|d| d.join(v.program()))
                .find(|p| is_executable(p))
                .map(|p| (v, p))
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `--proxy-only` prints.
pub fn port_json(port: u16) -> String {
    serde_json::json!({ "port": port }).to_string()
}

/// Runs `ironctl vnc VMI`.
pub async fn proxy(ctx: &Ctx, args: &VncArgs, vmi: &str) -> Result<()> {
    let subject = Subject {
        kind: Kind::Vmi,
        name: vmi,
        namespace: &ctx.namespace,
    };
    // Errors about access and the VMI before anything listens or starts; the
    // websocket itself opens when the viewer connects.
    crate::vmi::check_access(ctx, "get", "virtualmachineinstances", "vnc", vmi).await?;
    crate::vmi::wait_running(ctx, vmi, Duration::ZERO).await?;
    let signal_err = |e: std::io::Error| Error::Local(format!("cannot watch for signals: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| Error::Local(format!("cannot listen on 127.0.0.1:{}: {e}", args.port)))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Local(format!("the proxy's address: {e}")))?
        .port();
    let mut viewer = None;
    if args.proxy_only {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", port_json(port));
        let _ = out.flush();
    } else {
        match find_viewer(std::env::var_os("PATH").as_deref()) {
            Some((kind, program)) => {
                eprintln!("VNC proxy on 127.0.0.1:{port}; starting {}", kind.program());
                let child = tokio::process::Command::new(&program)
                    .args(kind.args(port))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(false)
                    .spawn()
                    .map_err(|e| {
                        Error::Local(format!("cannot start {}: {e}", program.display()))
                    })?;
                viewer = Some(child);
            }
            None => eprintln!(
                "VNC proxy on 127.0.0.1:{port}: connect a VNC viewer there (no remote-viewer or \
                 vncviewer found on PATH)"
            ),
        }
    }
    // One viewer; the proxy ends with it.
    let tcp = tokio::select! {
        accepted = listener.accept() => accepted
            .map_err(|e| Error::Local(format!("accepting the VNC viewer: {e}")))?
            .0,
        status = async {
            match viewer.as_mut() {
                Some(v) => v.wait().await,
                None => std::future::pending().await,
            }
        } => {
            return match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(Error::Local(format!("the VNC viewer exited before connecting ({s})"))),
                Err(e) => Err(Error::Local(format!("waiting for the VNC viewer: {e}"))),
            };
        }
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    drop(listener);
    let _ = tcp.set_nodelay(true);
    let mut path = ctx.subresource_path("virtualmachineinstances", vmi, "vnc");
    if args.preserve_session {
        path.push_str("?preserveSession=true");
    }
    let ws = ctx.open_stream(&path, &subject).await?;
    let result = tokio::select! {
        ended = {
            let (rd, wr) = tcp.into_split();
            crate::relay::relay(rd, wr, ws)
        } => ended.why().map_or(Ok(()), Err),
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    };
    if let Some(mut v) = viewer {
        // The viewer usually exits with its connection; do not leave it behind
        // waiting on a dead one.
        let _ = tokio::time::timeout(Duration::from_secs(5), v.wait()).await;
    }
    result.map_err(|why| Error::Session(format!("the VNC connection to {vmi} ended: {why}")))
}

/// Checks that `body` (with `content_type`) is a PNG image.
pub fn check_png(content_type: Option<&str>, body: &[u8]) -> std::result::Result<(), String> {
    if body.starts_with(PNG_SIGNATURE) {
        return Ok(());
    }
    Err(format!(
        "the server did not send a PNG image (content type {}, {} bytes)",
        content_type.unwrap_or("none"),
        body.len()
    ))
}

/// Runs `ironctl vnc screenshot`.
pub async fn screenshot(ctx: &Ctx, args: &ScreenshotArgs) -> Result<()> {
    let to_stdout = args.file == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "refusing to write PNG data to a terminal: redirect standard output, or give -f FILE"
                .into(),
        ));
    }
    let subject = Subject {
        kind: Kind::Vmi,
        name: &args.vmi,
        namespace: &ctx.namespace,
    };
    let mut path = ctx.subresource_path("virtualmachineinstances", &args.vmi, "vnc/screenshot");
    if args.move_cursor {
        path.push_str("?moveCursor=true");
    }
    let reply = ctx
        .expect_success(Method::GET, &path, None, &subject)
        .await?;
    check_png(reply.content_type.as_deref(), &reply.body).map_err(Error::Api)?;
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(&reply.body)
            .and_then(|()| out.flush())
            .map_err(|e| Error::Local(format!("writing the screenshot to standard output: {e}")))
    } else {
        std::fs::write(&args.file, &reply.body)
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", args.file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_arguments() {
        assert_eq!(Viewer::RemoteViewer.args(5901), ["vnc://127.0.0.1:5901"]);
        assert_eq!(Viewer::VncViewer.args(5901), ["127.0.0.1::5901"]);
    }

    #[test]
    fn finds_remote_viewer_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ironctl-viewers-{}", std::process::id()));
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(find_viewer(Some(&path)), None);
        let mk = |p: PathBuf, mode: u32| {
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mk(b.join("remote-viewer"), 0o644); // not executable: skipped
        mk(a.join("vncviewer"), 0o755);
        assert_eq!(
            find_viewer(Some(&path)),
            Some((Viewer::VncViewer, a.join("vncviewer")))
        );
        mk(b.join("remote-viewer"), 0o755);
        assert_eq!(
            find_viewer(Some(&path)),
            Some((Viewer::RemoteViewer, b.join("remote-viewer")))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn proxy_only_prints_json() {
        assert_eq!(port_json(40123), r#"{"port":40123}"#);
    }

    #[test]
    fn pngs_are_recognised() {
        assert!(check_png(Some("image/png"), b"\x89PNG\r\n\x1a\n....").is_ok());
        let e = check_png(Some("application/json"), b"{\"kind\":\"Status\"}").unwrap_err();
        assert_eq!(
            e,
            "the server did not send a PNG image (content type application/json, 17 bytes)"
        );
    }
}
