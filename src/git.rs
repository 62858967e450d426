//! Reading files as they were at a git revision, for `imcast plan --diff REV`.
//!
//! Owns: finding the repository a path is in, resolving a revision to one commit (so every file
//! is read from the same commit even if a branch moves meanwhile), and reading blobs from it with
//! `git cat-file` — small files whole, audiences streamed from the child's stdout.
//!
//! Invariants: git is always run as a child process with an argument vector (never through a
//! shell, never with a string built for a shell); a revision cannot start with `-` (it would read
//! as an option); paths are given to git relative to the repository root with `/` separators and
//! must lie inside the repository. Nothing here checks anything out, writes to the repository or
//! touches the index: it only reads objects. Hand-written rather than a git library because the
//! `git` the user already has is the one that knows their repository (its config, alternates,
//! partial clones) and two commands are all that is needed.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Problems opening a repository at a revision.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git ({0}); `--diff` reads the revision with git, so git must be installed and on PATH")]
    Spawn(io::Error),
    #[error("{dir} is not inside a git repository; `--diff REV` compares the campaign with a git revision, so it must be in a git work tree")]
    NotARepo { dir: PathBuf },
    #[error("unknown revision `{rev}` in the repository {top}{hint}")]
    UnknownRev {
        rev: String,
        top: PathBuf,
        hint: String,
    },
    #[error("revision `{0}` starts with `-`; name a branch, tag or commit")]
    BadRev(String),
    #[error("git failed: {0}")]
    Failed(String),
}

/// One repository at one commit.
#[derive(Debug, Clone)]
pub struct GitRev {
    top: PathBuf,
    rev: String,
    commit: String,
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    // The caller's pager, editor or terminal prompts have no business here.
    c.env("GIT_TERMINAL_PROMPT", "0").stdin(Stdio::null());
    c
}

/// `path` made absolute and free of `.`/`..` without requiring it to exist: the longest existing
/// ancestor is canonicalized (symlinks resolved) and the rest appended. A file deleted from the
/// work tree still has such a path.
pub fn logical_path(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                norm.pop();
            }
            other => norm.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut base = norm.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(base) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (base.parent(), base.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_os_string());
                base = p;
            }
            _ => return norm,
        }
    }
}

impl GitRev {
    /// The repository holding `near` (a path that need not exist) at `rev`, resolved to a commit.
    pub fn open(near: &Path, rev: &str) -> Result<GitRev, GitError> {
        if rev.starts_with('-') {
            return Err(GitError::BadRev(rev.to_string()));
        }
        let near = logical_path(near);
        // The nearest existing directory at or above `near`.
        let dir = near
            .ancestors()
            .find(|d| d.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let out = git(&dir)
            .args(["rev-parse", "--show-toplevel"])
            .output()
            .map_err(GitError::Spawn)?;
        if !out.status.success() {
            return Err(GitError::NotARepo { dir });
        }
        let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if top.is_empty() {
            return Err(GitError::NotARepo { dir });
        }
        let top = std::fs::canonicalize(&top).unwrap_or_else(|_| PathBuf::from(top));
        let out = git(&top)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{rev}^{{commit}}"))
            .output()
            .map_err(GitError::Spawn)?;
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || commit.is_empty() {
            let hint = if rev.contains('/') {
                " (a remote branch must be fetched first; in CI check out with the full history, e.g. actions/checkout with `fetch-depth: 0`)"
            } else {
                ""
            };
            return Err(GitError::UnknownRev {
                rev: rev.to_string(),
                top,
                hint: hint.to_string(),
            });
        }
        Ok(GitRev {
            top,
            rev: rev.to_string(),
            commit,
        })
    }

    /// The revision as the user named it.
    pub fn rev(&self) -> &str {
        &self.rev
    }

    /// The full commit id it resolved to.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The repository's work tree root (canonical).
    pub fn top(&self) -> &Path {
        &self.top
    }

    /// `path` relative to the repository root, `/`-separated; an error if it is outside.
    pub fn relative(&self, path: &Path) -> io::Result<String> {
        let abs = logical_path(path);
        let rel = abs.strip_prefix(&self.top).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is outside the git repository {}, so it has no version at {}",
                    abs.display(),
                    self.top.display(),
                    self.rev
                ),
            )
        })?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(parts.join("/"))
    }

    fn object(&self, rel: &str) -> String {
        format!("{}:{rel}", self.commit)
    }

    fn not_found(&self, rel: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{rel}` does not exist at {}", self.rev),
        )
    }

    /// The object type at `path` (`blob`, `tree`), or `None` if nothing is there.
    fn kind(&self, path: &Path) -> io::Result<Option<String>> {
        let rel = self.relative(path)?;
        let out = git(&self.top)
            .args(["cat-file", "-t"])
            .arg(self.object(&rel))
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    /// Is there a file at `path` in this revision?
    pub fn is_file(&self, path: &Path) -> bool {
        matches!(self.kind(path), Ok(Some(k)) if k == "blob")
    }

    /// The size in bytes of the file at `path`.
    pub fn size(&self, path: &Path) -> io::Result<u64> {
        let rel = self.relative(path)?;
        let out = git(&self.top)
            .args(["cat-file", "-s"])
            .arg(self.object(&rel))
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(self.not_found(&rel));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("git cat-file -s: {e}")))
    }

    /// The whole file at `path` (templates, campaign files: small).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut r = self.stream(path)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// The file at `path` as a stream from `git cat-file --filters` (audiences: never read whole).
    pub fn stream(&self, path: &Path) -> io::Result<GitBlob> {
        let rel = self.relative(path)?;
        if !self.is_file(path) {
            return Err(self.not_found(&rel));
        }
        // `--filters`: the bytes a checkout would write (end-of-line conversion, smudge filters such
        // as Git LFS), so both sides of a comparison read files the same way.
        let mut child = git(&self.top)
            .args(["cat-file", "--filters"])
            .arg(self.object(&rel))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("git cat-file: no stdout"))?;
        Ok(GitBlob {
            child,
            stdout,
            rel,
            done: false,
        })
    }
}

/// A file streaming out of `git cat-file`. At the end of the stream the child is reaped and a
/// failure becomes a read error (a truncated blob is never taken for the whole file); dropped
/// early, the child is killed and reaped.
#[derive(Debug)]
pub struct GitBlob {
    child: Child,
    stdout: ChildStdout,
    rel: String,
    done: bool,
}

impl Read for GitBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.done = true;
            let status = self.child.wait()?;
            if !status.success() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(io::Error::other(format!(
                    "git cat-file {}: {} {}",
                    self.rel,
                    status,
                    err.trim()
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for GitBlob {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_paths_need_not_exist() {
        let d = tempfile::tempdir().expect("tempdir");
        let canon = std::fs::canonicalize(d.path()).expect("canonical");
        std::fs::create_dir(d.path().join("a")).expect("mkdir");
        let p = logical_path(&d.path().join("a/./gone/../deleted.yaml"));
        assert_eq!(p, canon.join("a/deleted.yaml"));
        let p = logical_path(&d.path().join("missing/dir/x.csv"));
        assert_eq!(p, canon.join("missing/dir/x.csv"));
    }

    #[test]
    fn revisions_that_read_as_options_are_refused() {
        let e = GitRev::open(Path::new("."), "--output=/tmp/x").expect_err("refused");
        assert!(matches!(e, GitError::BadRev(_)), "{e}");
    }
}
