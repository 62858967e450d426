//! The credential scan: a campaign file must never hold a secret. Walks the YAML events (the
//! parser under serde-saphyr, re-exported by it as `granit_parser`) so every key and value is seen
//! with its line, whatever the structure — including keys serde would reject as unknown before
//! we could name them. Hand-written because no crate knows Volcengine's key shapes.

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

#[cfg(test)]
mod tests {
    use super::*;

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
