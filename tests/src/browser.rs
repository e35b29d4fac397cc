//! A real browser for tests: Debian's Chromium, headless, driven over the
//! Chrome DevTools Protocol (a websocket of JSON commands). Only the handful
//! of commands the web console's tests need: navigate, evaluate, type keys,
//! screenshot. (A full CDP crate generates bindings for the whole protocol
//! and costs minutes of build time on these 2-core machines.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The Chromium binary: `IRONVIRT_CHROMIUM`, else `chromium` on the PATH.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("IRONVIRT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// One headless Chromium with one page.
pub struct Browser {
    child: tokio::process::Child,
    page: Ws,
    next_id: u64,
    /// Console messages and exceptions of the page, for failure reports.
    pub log: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (1280x900, a fresh profile) and attaches to its page.
    pub async fn launch() -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(chromium_bin())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromium_bin().display()))?;
        let stderr = child.stderr.take().ok_or("chromium has no stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return Ok(url.trim().to_owned());
                }
                seen.push(line);
            }
            Err(format!("chromium exited: {}", seen.join("\n")))
        })
        .await
        .map_err(|_| "chromium printed no DevTools address within 30 s".to_owned())??;
        // Keep draining stderr so that Chromium never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let authority = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or(format!("odd DevTools address {browser_ws}"))?
            .to_owned();
        let (browser, _) = tokio_tungstenite::connect_async(browser_ws.as_str())
            .await
            .map_err(|e| format!("connecting to the browser's DevTools: {e}"))?;
        let mut b = Browser {
            child,
            page: browser,
            next_id: 0,
            log: Vec::new(),
            _profile: profile,
        };
        let targets = b.call("Target.getTargets", json!({})).await?;
        let page_id = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .ok_or(format!("no page target in {targets}"))?
            .to_owned();
        let (page, _) =
            tokio_tungstenite::connect_async(format!("ws://{authority}/devtools/page/{page_id}"))
                .await
                .map_err(|e| format!("connecting to the page's DevTools: {e}"))?;
        b.page = page;
        b.call("Page.enable", json!({})).await?;
        b.call("Runtime.enable", json!({})).await?;
        Ok(b)
    }

    /// Sends one command and waits for its answer (events seen meanwhile go
    /// to the log when they are console output or exceptions).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page
            .send(Message::text(msg))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.page.next())
                .await
                .map_err(|_| format!("{method}: no answer within 60 s"))?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {e}")),
                None => return Err(format!("{method}: DevTools closed")),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = v["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| a["description"].to_string())
                    })
                    .collect();
                self.log.push(format!(
                    "console.{}: {}",
                    v["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => self.log.push(format!(
                "exception: {}",
                v["params"]["exceptionDetails"]["exception"]["description"]
            )),
            _ => {}
        }
        if self.log.len() > 500 {
            self.log.drain(..100);
        }
    }

    /// Loads `url` and waits until the document has loaded.
    pub async fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(e) = r["errorText"].as_str() {
            return Err(format!("navigating to the page: {e}"));
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }

    /// Evaluates a JavaScript expression (promises awaited) and returns its
    /// value; a thrown exception is an error.
    pub async fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!(
                "{expr}: {}",
                ex["exception"]["description"]
                    .as_str()
                    .unwrap_or(&ex.to_string())
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy, returning its value.
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(expr).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => v,
                Err(e) => Value::String(e),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{expr} not true within {timeout:?} (last: {last}); page log: {:?}",
                    self.log.iter().rev().take(20).collect::<Vec<_>>()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` as key presses into whatever has the focus (`\r` is Enter).
    pub async fn type_text(&mut self, text: &str) -> Result<(), String> {
        for c in text.chars() {
            self.press(c).await?;
        }
        Ok(())
    }

    /// One key press: keyDown (with its text) and keyUp for Enter, letters,
    /// digits and space; other characters as a `char` event only, since their
    /// ASCII codes double as virtual key codes of Home, Insert or the arrows.
    pub async fn press(&mut self, c: char) -> Result<(), String> {
        let text = c.to_string();
        let (key, code, vk) = match c {
            '\r' => ("Enter".to_owned(), "Enter".to_owned(), 13),
            ' ' => (text.clone(), "Space".to_owned(), 32),
            c if c.is_ascii_alphabetic() => (
                text.clone(),
                format!("Key{}", c.to_ascii_uppercase()),
                c.to_ascii_uppercase() as u32,
            ),
            c if c.is_ascii_digit() => (text.clone(), format!("Digit{c}"), c as u32),
            _ => {
                self.call(
                    "Input.dispatchKeyEvent",
                    json!({ "type": "char", "text": text }),
                )
                .await?;
                return Ok(());
            }
        };
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "key": key, "code": code, "text": text,
                    "unmodifiedText": text, "windowsVirtualKeyCode": vk }),
        )
        .await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk }),
        )
        .await?;
        Ok(())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())
    }

    /// Ends Chromium.
    pub async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
