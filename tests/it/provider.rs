//! Provider client: the official signing vectors, signing properties, and the client against the
//! in-process mock for each action and each error class.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::{Clock, SleepFuture, SystemClock};
use imcast::mock::{self, MockConfig};
use imcast::provider::sign::{self, Received, SignInput};
use imcast::provider::*;
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = crate::common::root().join("tests/data/sign_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the official signing vectors are missing at {}: {e}. Copy them from ../shared/volcengine/sign_vectors.json",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).expect("sign_vectors.json is JSON");
    v["vectors"].as_array().expect("a vectors array").clone()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|p| {
                (
                    p[0].as_str().expect("name").to_string(),
                    p[1].as_str().expect("value").to_string(),
                )
            })
            .collect(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("value").to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn all_nine_official_vectors_reproduce_byte_for_byte() {
    let vs = vectors();
    assert_eq!(vs.len(), 9, "expected the 9 official vectors");
    for v in &vs {
        let name = v["name"].as_str().expect("name");
        let i = &v["inputs"];
        let o = &v["outputs"];
        let body = hex::decode(i["body_utf8_hex"].as_str().expect("hex")).expect("hex body");
        assert_eq!(body, i["body"].as_str().expect("body").as_bytes(), "{name}");
        let query = pairs(&i["query"]);
        let headers = pairs(&i["headers"]);
        let token = i["session_token"].as_str().expect("token");
        let s = sign::sign(&SignInput {
            access_key_id: i["access_key_id"].as_str().expect("ak"),
            secret_key: i["secret_access_key"].as_str().expect("sk"),
            session_token: Some(token).filter(|t| !t.is_empty()),
            method: i["method"].as_str().expect("method"),
            host: i["host"].as_str().expect("host"),
            path: i["path"].as_str().expect("path"),
            query: &query,
            headers: &headers,
            body: &body,
            x_date: i["x_date"].as_str().expect("x_date"),
            region: i["region"].as_str().expect("region"),
            service: i["service"].as_str().expect("service"),
        });
        let out = |k: &str| o[k].as_str().expect(k).to_string();
        assert_eq!(s.x_date, out("x_date"), "{name} x_date");
        assert_eq!(s.x_content_sha256, out("x_content_sha256"), "{name} body hash");
        assert_eq!(s.canonical_uri, out("canonical_uri"), "{name} uri");
        assert_eq!(s.canonical_query, out("canonical_query"), "{name} query");
        assert_eq!(s.canonical_request, out("canonical_request"), "{name} canonical request");
        assert_eq!(s.canonical_request_sha256, out("canonical_request_sha256"), "{name}");
        assert_eq!(s.credential_scope, out("credential_scope"), "{name} scope");
        assert_eq!(s.string_to_sign, out("string_to_sign"), "{name} string to sign");
        assert_eq!(s.signed_headers, out("signed_headers"), "{name} signed headers");
        assert_eq!(s.signature, out("signature"), "{name} signature");
        assert_eq!(s.authorization, out("authorization"), "{name} authorization");
        let mut got: Vec<(String, String)> = s.headers_out.clone();
        let mut want = pairs(&o["headers_out"]);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name} headers out");

        // The verifier accepts what the SDK signed.
        let auth = sign::parse_authorization(&s.authorization).expect("parses");
        let r = Received {
            method: i["method"].as_str().expect("method"),
            path: i["path"].as_str().expect("path"),
            query: &query,
            headers: &s.headers_out,
            body: &body,
        };
        sign::verify(&r, &auth, i["secret_access_key"].as_str().expect("sk"))
            .unwrap_or_else(|e| panic!("{name}: verifier rejects an SDK signature: {e}"));
    }
}

fn arb_query() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z0-9 _~+=&/中-]{1,8}", "[ -~中😀]{0,10}"), 0..5)
}

fn sign_req(
    body: &[u8],
    query: &[(String, String)],
    extra: &[(String, String)],
) -> sign::Signed {
    sign::sign(&SignInput {
        access_key_id: "AK",
        secret_key: "SK",
        session_token: None,
        method: "POST",
        host: "127.0.0.1:9000",
        path: "/",
        query,
        headers: extra,
        body,
        x_date: "20260101T000000Z",
        region: "cn-north-1",
        service: "rtc",
    })
}

fn verify_with(
    signed: &sign::Signed,
    body: &[u8],
    query: &[(String, String)],
    headers: &[(String, String)],
) -> Result<(), sign::VerifyError> {
    let auth = sign::parse_authorization(&signed.authorization).expect("parses");
    sign::verify(
        &Received {
            method: "POST",
            path: "/",
            query,
            headers,
            body,
        },
        &auth,
        "SK",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signing_is_deterministic(body in prop::collection::vec(any::<u8>(), 0..64), query in arb_query()) {
        let a = sign_req(&body, &query, &[]);
        let b = sign_req(&body, &query, &[]);
        prop_assert_eq!(&a, &b);
        prop_assert!(verify_with(&a, &body, &query, &a.headers_out).is_ok());
    }

    #[test]
    fn any_change_breaks_verification(
        body in prop::collection::vec(any::<u8>(), 1..64),
        query in arb_query(),
        flip in any::<prop::sample::Index>(),
        which in 0u8..4,
    ) {
        let extra = vec![("X-Campaign-Id".to_string(), "c1".to_string())];
        let s = sign_req(&body, &query, &extra);
        prop_assert!(verify_with(&s, &body, &query, &s.headers_out).is_ok());
        match which {
            0 => {
                // Body changed (the client's claimed hash kept): body hash mismatch.
                let mut b2 = body.clone();
                let i = flip.index(b2.len());
                b2[i] ^= 1;
                prop_assert!(verify_with(&s, &b2, &query, &s.headers_out).is_err());
            }
            1 => {
                // Body and claimed hash both changed consistently: signature mismatch.
                let mut b2 = body.clone();
                let i = flip.index(b2.len());
                b2[i] ^= 0x80;
                let mut h = s.headers_out.clone();
                for (k, v) in h.iter_mut() {
                    if k == "X-Content-Sha256" { *v = sign::sha256_hex(&b2); }
                }
                prop_assert_eq!(verify_with(&s, &b2, &query, &h), Err(sign::VerifyError::Signature));
            }
            2 => {
                let mut q2 = query.clone();
                q2.push(("Extra".to_string(), "1".to_string()));
                prop_assert_eq!(verify_with(&s, &body, &q2, &s.headers_out), Err(sign::VerifyError::Signature));
            }
            _ => {
                let mut h = s.headers_out.clone();
                for (k, v) in h.iter_mut() {
                    if k == "X-Campaign-Id" { v.push('x'); }
                }
                prop_assert_eq!(verify_with(&s, &body, &query, &h), Err(sign::VerifyError::Signature));
            }
        }
    }
}
