//! `crdgen`: writes deploy/crds/*.yaml from the Rust types, or with `--check`
//! fails when the committed files differ from what the code generates.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds"));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--out" => dir = args.next().context("--out needs a directory")?.into(),
            other => anyhow::bail!("unknown argument {other}; usage: crdgen [--check] [--out DIR]"),
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut stale = Vec::new();
    for crd in ironvirt_crds::crds() {
        let path = dir.join(ironvirt_crds::crd_file_name(&crd));
        let yaml = ironvirt_crds::crd_yaml(&crd)?;
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated CRDs are stale: {}; run `cargo run -p ironvirt-crds --bin crdgen`",
            stale.join(", ")
        );
    }
    Ok(())
}
