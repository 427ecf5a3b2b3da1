//! Fetches the dashboard's chart library, uPlot, from the npm registry at a pinned version,
//! checks it against the registry's sha512 integrity, and puts its minified script and
//! stylesheet into OUT_DIR for `include_bytes!`. The tarball is cached under
//! `$HOME/.cache/weir-assets/`, so later clean builds need no network;
//! `WEIR_UPLOT_TARBALL=/path/to/uplot-1.6.32.tgz` builds from a file instead.

use base64::Engine;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

const VERSION: &str = "1.6.32";
const URL: &str = "https://registry.npmjs.org/uplot/-/uplot-1.6.32.tgz";
/// `npm view uplot@1.6.32 dist.integrity`
const INTEGRITY: &str = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==";
const FILES: [&str; 2] = ["uPlot.iife.min.js", "uPlot.min.css"];

fn fail(message: String) -> ! {
    panic!(
        "\n\nweir-server build: {message}\n\
         The dashboard's chart library (uPlot {VERSION}) comes from the npm registry:\n  {URL}\n\
         Download it by hand and set WEIR_UPLOT_TARBALL=/path/to/uplot-{VERSION}.tgz, or place it at\n  \
         $HOME/.cache/weir-assets/uplot-{VERSION}.tgz\n\n"
    )
}

fn verified(bytes: Vec<u8>, from: &str) -> Vec<u8> {
    let digest = sha2::Sha512::digest(&bytes);
    let got = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    if got != INTEGRITY {
        fail(format!(
            "{from} does not match the pinned integrity {INTEGRITY} (got {got})"
        ));
    }
    bytes
}

fn cache_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/weir-assets"))
}

fn tarball() -> Vec<u8> {
    if let Some(p) = std::env::var_os("WEIR_UPLOT_TARBALL") {
        let p = PathBuf::from(p);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| {
            fail(format!(
                "cannot read WEIR_UPLOT_TARBALL {}: {e}",
                p.display()
            ))
        });
        return verified(bytes, &p.display().to_string());
    }
    let cached = cache_path().map(|d| d.join(format!("uplot-{VERSION}.tgz")));
    if let Some(c) = &cached
        && let Ok(bytes) = std::fs::read(c)
    {
        return verified(bytes, &c.display().to_string());
    }
    let bytes = verified(download(), URL);
    if let Some(c) = &cached {
        // A cache that cannot be written only costs a download next time.
        let _ = c
            .parent()
            .map(std::fs::create_dir_all)
            .and_then(|r| r.ok())
            .map(|_| std::fs::write(c, &bytes));
    }
    bytes
}

/// Download with curl (or wget): they use the system's certificate store and proxy
/// settings, as the machine's other tools do.
fn download() -> Vec<u8> {
    let attempts: [(&str, Vec<&str>); 2] = [
        (
            "curl",
            vec!["-fsSL", "--retry", "3", "--max-time", "120", URL],
        ),
        (
            "wget",
            vec!["-q", "-O", "-", "--tries=3", "--timeout=120", URL],
        ),
    ];
    let mut errors = Vec::new();
    for (tool, args) in attempts {
        match std::process::Command::new(tool).args(&args).output() {
            Ok(out) if out.status.success() && !out.stdout.is_empty() => return out.stdout,
            Ok(out) => errors.push(format!(
                "{tool} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => errors.push(format!("{tool}: {e}")),
        }
    }
    fail(format!("downloading {URL} failed: {}", errors.join("; ")))
}

fn extract(bytes: &[u8], out: &Path) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut found = 0;
    let entries = archive
        .entries()
        .unwrap_or_else(|e| fail(format!("the uPlot tarball is not a tar.gz: {e}")));
    for entry in entries {
        let mut entry = entry.unwrap_or_else(|e| fail(format!("reading the uPlot tarball: {e}")));
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(name) = path.strip_prefix("package/dist/") else {
            continue;
        };
        if FILES.contains(&name) {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .unwrap_or_else(|e| fail(format!("reading {path}: {e}")));
            std::fs::write(out.join(name), data)
                .unwrap_or_else(|e| fail(format!("writing {name}: {e}")));
            found += 1;
        }
    }
    if found != FILES.len() {
        fail(format!("the uPlot tarball lacks some of {FILES:?}"));
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=assets");
    println!("cargo:rerun-if-env-changed=WEIR_UPLOT_TARBALL");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("no OUT_DIR".into())));
    if FILES.iter().all(|f| out.join(f).exists()) {
        return;
    }
    extract(&tarball(), &out);
}
