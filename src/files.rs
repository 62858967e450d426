//! Where a campaign's input files come from: the work tree (the file system) or a git revision.
//!
//! Every reader of plan inputs — the spec loader (campaign file, paths it names), the audience
//! reader (CSV, exclude and suppression lists) and the template loader — asks a [`Files`] instead
//! of `std::fs`, so one campaign can be planned as it is now and as it was at a revision with the
//! same code. Paths stay the work-tree paths they would be (absolute, resolved against the
//! campaign's directory); [`Files::Git`] maps them into the repository.
//!
//! Invariants: opening a file yields a stream ([`Input`]); nothing here reads a whole audience
//! into memory. [`Files::WorkTree`] behaves exactly as `std::fs` did before (it is the default).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use crate::git::{GitBlob, GitRev};

/// Where files are read from.
#[derive(Debug, Clone, Default)]
pub enum Files {
    /// The file system as it is.
    #[default]
    WorkTree,
    /// The repository at one commit.
    Git(Arc<GitRev>),
}

/// An open input file: a stream.
#[derive(Debug)]
pub enum Input {
    File(File),
    Git(GitBlob),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::File(f) => f.read(buf),
            Input::Git(g) => g.read(buf),
        }
    }
}

impl Files {
    /// Open `path` for streaming.
    pub fn open(&self, path: &Path) -> io::Result<Input> {
        match self {
            Files::WorkTree => File::open(path).map(Input::File),
            Files::Git(g) => g.stream(path).map(Input::Git),
        }
    }

    /// Read `path` whole as UTF-8 (campaign files, templates, settings).
    pub fn read_to_string(&self, path: &Path) -> io::Result<String> {
        match self {
            Files::WorkTree => std::fs::read_to_string(path),
            Files::Git(g) => String::from_utf8(g.read(path)?).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            }),
        }
    }

    /// Is there a regular file at `path`?
    pub fn is_file(&self, path: &Path) -> bool {
        match self {
            Files::WorkTree => path.is_file(),
            Files::Git(g) => g.is_file(path),
        }
    }

    /// The size of `path` in bytes, if known (used only to reserve memory).
    pub fn size_hint(&self, path: &Path) -> Option<u64> {
        match self {
            Files::WorkTree => std::fs::metadata(path).ok().map(|m| m.len()),
            Files::Git(g) => g.size(path).ok(),
        }
    }

    /// `None` for the work tree; the revision otherwise.
    pub fn revision(&self) -> Option<&GitRev> {
        match self {
            Files::WorkTree => None,
            Files::Git(g) => Some(g),
        }
    }
}
