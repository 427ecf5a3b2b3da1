//! Fetches the web pages' third-party files from the npm registry, each package at a pinned
//! version checked against the registry's sha512 integrity, and puts the files the pages
//! load into OUT_DIR for `include_bytes!`:
//!
//! - the dashboard's chart library, uPlot (`WEIR_UPLOT_TARBALL`);
//! - the API docs page's Swagger UI, swagger-ui-dist (`WEIR_SWAGGER_UI_TARBALL`).
//!
//! Tarballs are cached under `$HOME/.cache/weir-assets/`, so later clean builds need no
//! network; the environment variable named for a package (`WEIR_UPLOT_TARBALL=/path/to/
//! uplot-1.6.32.tgz`) builds from a file instead. Either way the integrity is checked.

use base64::Engine;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One npm package and the files taken from it.
struct Package {
    name: &'static str,
    version: &'static str,
    /// `npm view <name>@<version> dist.integrity`
    integrity: &'static str,
    /// What it is for, in error messages.
    purpose: &'static str,
    /// The environment variable naming a local copy of the tarball.
    env: &'static str,
    /// (path inside the tarball, file name in OUT_DIR)
    files: &'static [(&'static str, &'static str)],
}

const PACKAGES: [Package; 2] = [
    Package {
        name: "uplot",
        version: "1.6.32",
        integrity: "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        purpose: "the dashboard's chart library",
        env: "WEIR_UPLOT_TARBALL",
        files: &[
            ("package/dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
            ("package/dist/uPlot.min.css", "uPlot.min.css"),
        ],
    },
    Package {
        name: "swagger-ui-dist",
        version: "5.36.0",
        integrity: "sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A==",
        purpose: "the API docs page's Swagger UI",
        env: "WEIR_SWAGGER_UI_TARBALL",
        files: &[
            ("package/swagger-ui-bundle.js", "swagger-ui-bundle.js"),
            ("package/swagger-ui.css", "swagger-ui.css"),
        ],
    },
];

impl Package {
    fn url(&self) -> String {
        format!(
            "https://registry.npmjs.org/{0}/-/{0}-{1}.tgz",
            self.name, self.version
        )
    }

    fn tarball_name(&self) -> String {
        format!("{}-{}.tgz", self.name, self.version)
    }

    fn fail(&self, message: String) -> ! {
        let (name, version, env) = (self.name, self.version, self.env);
        panic!(
            "\n\nweir-server build: {message}\n\
             {} ({name} {version}) comes from the npm registry:\n  {}\n\
             Download it by hand and set {env}=/path/to/{}, or place it at\n  \
             $HOME/.cache/weir-assets/{}\n\n",
            self.purpose,
            self.url(),
            self.tarball_name(),
            self.tarball_name(),
        )
    }

    fn verified(&self, bytes: Vec<u8>, from: &str) -> Vec<u8> {
        let digest = sha2::Sha512::digest(&bytes);
        let got = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        if got != self.integrity {
            self.fail(format!(
                "{from} does not match the pinned integrity {} (got {got})",
                self.integrity
            ));
        }
        bytes
    }

    /// The tarball: from the environment variable's file, the cache, or the registry.
    fn tarball(&self) -> Vec<u8> {
        if let Some(p) = std::env::var_os(self.env) {
            let p = PathBuf::from(p);
            let bytes = std::fs::read(&p).unwrap_or_else(|e| {
                self.fail(format!("cannot read {} {}: {e}", self.env, p.display()))
            });
            return self.verified(bytes, &p.display().to_string());
        }
        let cached = cache_dir().map(|d| d.join(self.tarball_name()));
        if let Some(c) = &cached
            && let Ok(bytes) = std::fs::read(c)
        {
            return self.verified(bytes, &c.display().to_string());
        }
        let url = self.url();
        let bytes = match download(&url) {
            Ok(b) => self.verified(b, &url),
            Err(e) => self.fail(e),
        };
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

    /// Write the package's files into `out`.
    fn extract(&self, bytes: &[u8], out: &Path) {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut found = 0;
        let entries = archive
            .entries()
            .unwrap_or_else(|e| self.fail(format!("the tarball is not a tar.gz: {e}")));
        for entry in entries {
            let mut entry =
                entry.unwrap_or_else(|e| self.fail(format!("reading the tarball: {e}")));
            let path = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some((_, name)) = self.files.iter().find(|(inside, _)| *inside == path) else {
                continue;
            };
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .unwrap_or_else(|e| self.fail(format!("reading {path}: {e}")));
            std::fs::write(out.join(name), data)
                .unwrap_or_else(|e| self.fail(format!("writing {name}: {e}")));
            found += 1;
        }
        if found != self.files.len() {
            self.fail(format!("the tarball lacks some of {:?}", self.files));
        }
    }

    /// Put the files into `out`, unless they are there from this very version already.
    fn provide(&self, out: &Path) {
        // The stamp names the integrity the files came from, so a new pin replaces them.
        let stamp = out.join(format!("{}.integrity", self.name));
        let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s == self.integrity)
            && self.files.iter().all(|(_, f)| out.join(f).exists());
        if current {
            return;
        }
        self.extract(&self.tarball(), out);
        std::fs::write(&stamp, self.integrity)
            .unwrap_or_else(|e| self.fail(format!("writing {}: {e}", stamp.display())));
    }
}

fn cache_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/weir-assets"))
}

/// Download with curl (or wget): they use the system's certificate store and proxy
/// settings, as the machine's other tools do.
fn download(url: &str) -> Result<Vec<u8>, String> {
    let attempts: [(&str, Vec<&str>); 2] = [
        (
            "curl",
            vec!["-fsSL", "--retry", "3", "--max-time", "120", url],
        ),
        (
            "wget",
            vec!["-q", "-O", "-", "--tries=3", "--timeout=120", url],
        ),
    ];
    let mut errors = Vec::new();
    for (tool, args) in attempts {
        match std::process::Command::new(tool).args(&args).output() {
            Ok(out) if out.status.success() && !out.stdout.is_empty() => return Ok(out.stdout),
            Ok(out) => errors.push(format!(
                "{tool} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => errors.push(format!("{tool}: {e}")),
        }
    }
    Err(format!("downloading {url} failed: {}", errors.join("; ")))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=assets");
    for p in &PACKAGES {
        println!("cargo:rerun-if-env-changed={}", p.env);
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("weir-server build: no OUT_DIR");
    };
    for p in &PACKAGES {
        p.provide(&out);
    }
}
