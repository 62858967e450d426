//! The credential scan: a campaign file must never hold a secret. Walks the YAML events (the
//! parser under serde-saphyr, re-exported by it as `granit_parser`) so every key and value is seen
//! with its line, whatever the structure — including keys serde would reject as unknown before
//! we could name them. Hand-written because no crate knows Volcengine's key shapes.
//!
//! Also [`key_places`]: where each key is written (`message.type` → line 9, column 3), so a
//! problem found after serde (a missing companion key, a value out of range that serde gave us
//! without a span) can still name its line and column.

use std::collections::BTreeMap;

use serde_saphyr::granit_parser::{Event, Parser};

use super::Problem;

/// Key names that mean "a credential is here" (compared case-insensitively, `-` as `_`).
const CREDENTIAL_KEYS: [&str; 12] = [
    "secret_key",
    "secretkey",
    "secret",
    "sk",
    "access_key",
    "accesskey",
    "access_key_id",
    "password",
    "passwd",
    "token",
    "session_token",
    "secret_access_key",
];

/// Does `v` look like a Volcengine access key id (`AKLT` + 10 or more letters/digits)?
pub fn looks_like_access_key(v: &str) -> bool {
    v.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w.len() >= 14 && w.starts_with("AKLT"))
}

fn is_credential_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase().replace('-', "_");
    CREDENTIAL_KEYS.contains(&k.as_str())
}

enum Frame {
    Map { expect_key: bool },
    Seq,
}

/// Every credential-looking key or value, with its line and column.
pub fn credentials(text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for ev in Parser::new_from_str(text) {
        let Ok((ev, span)) = ev else {
            // Syntax errors are reported by the serde pass with their location.
            break;
        };
        let line = Some(span.start.line() as u64);
        let column = Some(span.start.col() as u64 + 1);
        // Whether this node is a mapping key; afterwards flip the parent's expectation.
        let is_node = matches!(
            ev,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(_)
        );
        let is_key = matches!(stack.last(), Some(Frame::Map { expect_key: true }));
        if is_node {
            if let Some(Frame::Map { expect_key }) = stack.last_mut() {
                *expect_key = !*expect_key;
            }
        }
        match ev {
            Event::Scalar(v, ..) => {
                if is_key && is_credential_key(&v) {
                    out.push(Problem {
                        line,
                        column,
                        message: format!(
                            "key `{v}` looks like a credential: credentials never go in a campaign file; set VOLC_ACCESSKEY and VOLC_SECRETKEY (or VOLC_SECRETKEY_FILE) in the environment"
                        ),
                    });
                } else if looks_like_access_key(&v) {
                    out.push(Problem {
                        line,
                        column,
                        message: "a value here looks like a Volcengine access key id (AKLT…): credentials never go in a campaign file; set VOLC_ACCESSKEY in the environment".to_string(),
                    });
                }
            }
            Event::MappingStart(..) => stack.push(Frame::Map { expect_key: true }),
            Event::SequenceStart(..) => stack.push(Frame::Seq),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    out
}

/// Where each mapping key of a YAML document is written: dotted paths (`message.type`,
/// `audience.exclude[0].csv`) → 1-based line and column of the key.
#[derive(Debug, Default)]
pub struct Places(BTreeMap<String, (u64, u64)>);

impl Places {
    /// The place of exactly `path`.
    pub fn get(&self, path: &str) -> Option<(u64, u64)> {
        self.0.get(path).copied()
    }

    /// The place of `path`, else of its nearest written parent (`message.ext.s:x` → `message.ext`).
    pub fn find(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path;
        loop {
            if let Some(at) = self.0.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Node {
    Map {
        path: String,
        key: Option<String>,
        expect_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Every mapping key's place (see [`Places`]); what does not parse is simply not there.
pub fn key_places(text: &str) -> Places {
    let mut out = BTreeMap::new();
    let mut stack: Vec<Node> = Vec::new();
    for ev in Parser::new_from_str(text) {
        let Ok((ev, span)) = ev else {
            break;
        };
        let at = (span.start.line() as u64, span.start.col() as u64 + 1);
        let is_node = matches!(
            ev,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(_)
        );
        if !is_node {
            if matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
            }
            continue;
        }
        // A key is recorded; a value gets its path (and the parent expects the next key).
        let path = match stack.last_mut() {
            Some(Node::Map {
                path,
                key,
                expect_key,
            }) => {
                if *expect_key {
                    *expect_key = false;
                    if let Event::Scalar(v, ..) = &ev {
                        let p = join(path, v);
                        out.entry(p).or_insert(at);
                        *key = Some(v.to_string());
                        continue;
                    }
                    // A complex key: nothing to name it by.
                    *key = None;
                    "?".to_string()
                } else {
                    *expect_key = true;
                    match key.take() {
                        Some(k) => join(path, &k),
                        None => "?".to_string(),
                    }
                }
            }
            Some(Node::Seq { path, next }) => {
                *next += 1;
                format!("{path}[{}]", *next - 1)
            }
            None => String::new(),
        };
        match ev {
            Event::MappingStart(..) => stack.push(Node::Map {
                path,
                key: None,
                expect_key: true,
            }),
            Event::SequenceStart(..) => stack.push(Node::Seq { path, next: 0 }),
            _ => {}
        }
    }
    Places(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_places_follow_maps_and_lists() {
        let t = "name: x
message:
  type: text
  ext: { k: v }
audience:
  exclude:
    - { csv: a.csv }
    - ids: [1]
";
        let p = key_places(t);
        assert_eq!(p.find("name"), Some((1, 1)));
        assert_eq!(p.find("message.type"), Some((3, 3)));
        assert_eq!(p.find("message.ext.k"), Some((4, 10)));
        assert_eq!(
            p.find("message.ext.s:x"),
            Some((4, 3)),
            "falls back to the parent"
        );
        assert_eq!(p.find("audience.exclude[0].csv"), Some((7, 9)));
        assert_eq!(p.find("audience.exclude[1].ids"), Some((8, 7)));
        assert_eq!(p.find("audience.exclude[5]"), Some((6, 3)));
        assert_eq!(p.find("retry.max_attempts"), None);
    }

    #[test]
    fn finds_keys_and_values_with_lines() {
        let t = "a: 1\nprovider: { app_id: 1, Secret_Key: x }\nb:\n  - AKLTabcdefghij12\n";
        let p = credentials(t);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].line, Some(2));
        assert_eq!(p[1].line, Some(4));
    }

    #[test]
    fn ordinary_values_pass() {
        assert!(credentials("name: token-sale\ntext: 'AKLT short'\n").is_empty());
        assert!(!looks_like_access_key("AKLTshort"));
    }
}
