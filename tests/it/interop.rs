//! Interop with the official Volcengine Python SDK (`volcengine` on PyPI): (a) requests signed by
//! the SDK's `SignerV4.sign_only` are accepted by imcast's mock; (b) the SDK's signer re-derives
//! exactly the Authorization imcast's client produced.
//!
//! The SDK lives in a venv cached across runs (`$IMCAST_INTEROP_VENV`, default
//! `target/tmp/interop-venv`). Without python3 the test FAILS under `CI=true`; elsewhere it
//! prints a loud SKIPPED line (visible even though the test passes) and returns. If pip cannot
//! install the SDK (registry unreachable) the test FAILS.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{OutputWithin, CHILD_LIMIT};
use imcast::mock::{self, MockConfig};
use imcast::provider::*;
use serde_json::{json, Value};

/// The SDK release the signing vectors were generated with.
const SDK_SPEC: &str = "volcengine==1.0.229";

fn venv_dir() -> PathBuf {
    std::env::var_os("IMCAST_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop-venv"))
}

/// Run `cmd` to its end (at most 10 minutes: pip may download).
fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output_within(2 * CHILD_LIMIT)
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// A python with the SDK installed, or None when python3 is absent.
fn sdk_python() -> Option<PathBuf> {
    if !crate::common::require_tool(
        "python3",
        "imcast was NOT checked against the official Volcengine SDK",
    ) {
        return None;
    }
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let marker = venv.join(".imcast-sdk");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(SDK_SPEC) && python.exists() {
        return Some(python);
    }
    if !python.exists() {
        let out = run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        assert!(
            out.status.success(),
            "python3 -m venv {} failed (install the python3-venv package): {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(Command::new(&python).args(["-m", "pip", "install", "--quiet", SDK_SPEC]));
    assert!(
        out.status.success(),
        "INTEROP TEST FAILED: pip could not install {SDK_SPEC} into {} — is the Python package registry reachable? \
         This test does not pass silently without the SDK.\n{}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, SDK_SPEC).expect("write the venv marker");
    Some(python)
}

fn script() -> PathBuf {
    crate::common::root().join("tests/interop/sdk_interop.py")
}

fn python_json(python: &Path, args: &[&str]) -> Value {
    let out = run(Command::new(python).arg(script()).args(args));
    assert!(
        out.status.success(),
        "sdk_interop.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sdk_interop.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn official_python_sdk_interoperates_with_imcast() {
    let Some(python) = sdk_python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt
        .block_on(mock::start(MockConfig::default()))
        .expect("mock");
    let hostport = m.addr.to_string();

    // (a) The SDK signs, the mock verifies.
    let bodies = [
        (
            "BatchSendMessage",
            json!({"AppId": 1, "Sender": 2, "Receiver": [3, 9007199254740993u64], "MsgType": 10001, "Content": "{\"text\":\"你好 😀\"}"}),
        ),
        (
            "SendMessage",
            json!({"AppId": 1, "Sender": 2, "ConversationShortId": 7221856821303361536u64, "MsgType": 10001, "Content": "{\"text\":\"hi\"}", "ClientMsgId": "k1"}),
        ),
        (
            "P2PSendMessage",
            json!({"AppId": 1, "Sender": 2, "ConversationShortId": 5, "MsgType": 10013, "Content": "{}", "ReceiverUserId": [3]}),
        ),
    ];
    for (action, body) in &bodies {
        let f = dir.path().join(format!("{action}.json"));
        std::fs::write(&f, serde_json::to_string(body).expect("json")).expect("write body");
        let v = python_json(
            &python,
            &[
                "send",
                &hostport,
                &m.access_key,
                &m.secret_key,
                action,
                f.to_str().expect("utf-8 path"),
            ],
        );
        assert_eq!(
            v["status"], 200,
            "{action}: the mock rejected an SDK-signed request: {v}"
        );
        assert!(v["response"]["ResponseMetadata"]["Error"].is_null(), "{v}");
        assert!(v["response"]["Result"].is_object(), "{v}");
    }
    let stats = m.stats();
    assert_eq!(stats.delivered, 4, "{stats:?}");
    assert!(stats.rejected.is_empty(), "{stats:?}");

    // A wrong secret in the SDK is rejected the same way.
    let f = dir.path().join("BatchSendMessage.json");
    let v = python_json(
        &python,
        &[
            "send",
            &hostport,
            &m.access_key,
            "not-the-secret",
            "BatchSendMessage",
            f.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(v["status"], 401);
    assert_eq!(
        v["response"]["ResponseMetadata"]["Error"]["Code"],
        "SignatureDoesNotMatch"
    );
    rt.block_on(m.shutdown());

    // (b) imcast signs, the SDK re-derives the signature.
    for token in [None, Some("STS2eyJ0ZXN0Ijp0cnVlfQ==")] {
        let creds = Credentials::new(
            "AKLTinteropAK",
            "interop/secret+key==",
            token.map(str::to_string),
        );
        let url = url::Url::parse("https://rtc.volcengineapi.com").expect("url");
        let c = Client::new(ClientConfig::new(url, "cn-north-1", creds)).expect("client");
        for (action, body) in &bodies {
            let imcast::provider::client::SignedRequest {
                url,
                headers,
                body: bytes,
            } = c.signed_request(action, body).expect("signed");
            let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            let req = json!({"method": "POST", "path": url.path(), "query": query, "headers": headers, "body": bytes});
            let f = dir.path().join("imcast-request.json");
            std::fs::write(&f, serde_json::to_vec(&req).expect("json")).expect("write");
            let mut args = vec!["verify", f.to_str().expect("utf-8"), "interop/secret+key=="];
            if let Some(t) = token {
                args.push(t);
            }
            let v = python_json(&python, &args);
            assert_eq!(
                v["match"],
                true,
                "{action} (token: {}): SDK and imcast disagree: {v}",
                token.is_some()
            );
        }
    }
}
