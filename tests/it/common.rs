//! Helpers shared by the integration tests: the built binary, temp dirs, path redaction.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `imcast` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imcast"))
}

/// The repository root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp dir holding a campaign file and its side files.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file (creating parent dirs) and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write fixture");
        p
    }

    /// Replace the temp dir (also canonicalized) with `[DIR]`.
    pub fn redact(&self, s: &str) -> String {
        let raw = self.dir.path().display().to_string();
        let canon = std::fs::canonicalize(self.dir.path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| raw.clone());
        s.replace(&canon, "[DIR]").replace(&raw, "[DIR]")
    }

    /// Run the built binary in this dir.
    pub fn imcast(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .output()
            .expect("run imcast")
    }
}

/// A minimal valid campaign head; append `audience:`/`message:` etc.
pub const HEAD: &str =
    "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n";

/// The exact wire body of a planned call: the request the sender builds
/// (`send::adapters::build_request`), serialized as the client sends it and `preview` prints it.
pub fn wire_body(c: &imcast::spec::Campaign, call: &imcast::plan::PlannedCall) -> String {
    let req = imcast::send::adapters::build_request(c, call, &call.receivers, None);
    let bytes = imcast::provider::client::request_body(req.action(), &req).expect("body builds");
    String::from_utf8(bytes).expect("utf-8 body")
}
