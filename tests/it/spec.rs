//! The campaign file: parsing, validation, and every error path (messages snapshotted).

use imcast::spec::{self, Deadline, LoadOptions, Source};

use crate::common::{Fixture, OutputWithin, HEAD};

fn load_err(f: &Fixture, text: &str) -> String {
    let p = f.write("c.yaml", text);
    let e = spec::load(&p, &LoadOptions::default()).expect_err("campaign should be rejected");
    f.redact(&e.to_string())
}

fn load_ok(f: &Fixture, text: &str, opts: &LoadOptions) -> spec::Campaign {
    let p = f.write("c.yaml", text);
    match spec::load(&p, opts) {
        Ok(c) => c,
        Err(e) => panic!("campaign should load: {e}"),
    }
}

const MSG: &str = "message: { type: text, text: hi }\n";

#[test]
fn full_campaign_parses_every_key() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n");
    f.write("x.csv", "user_id\n2\n");
    f.write("t.j2", "Hi {{ name }}");
    let c = load_ok(
        &f,
        r#"# yaml-language-server: $schema=imcast.schema.json
version: 1
name: spring-sale_2026
description: Spring
provider: { app_id: 666675, region: ap-southeast-1 }
action: batch
sender: 9223372036854775807
batch: { inbox_type: 0, is_normal_user: false }
audience:
  csv: a.csv
  id_column: user_id
  exclude: [ { csv: x.csv }, { ids: [3, 9007199254740993] } ]
  required: [name]
message:
  type: text
  template: t.j2
  ext: { campaign: "{{ campaign.name }}" }
  vars: { starts_at: "March 1", n: 3 }
schedule: { at: "2026-03-01T09:00:00+08:00" }
throttle: { limit: 1000, window: 5s }
retry: { max_attempts: 4 }
deadline: 2h
guard: { max_recipients: 10 }
breaker: { consecutive_failures: 2, window_calls: 10, max_failure_ratio: 0.25 }
"#,
        &LoadOptions::default(),
    );
    assert_eq!(c.name, "spring-sale_2026");
    assert_eq!(c.sender, i64::MAX as u64);
    assert_eq!(c.app_id, 666675);
    assert_eq!(
        c.endpoint.as_str(),
        "https://open-ap-singapore-1.volcengineapi.com/"
    );
    assert_eq!(c.message.msg_type, 10001);
    assert_eq!(c.retry_max_attempts, Some(4));
    assert_eq!(c.guard_max_recipients, Some(10));
    assert_eq!(c.breaker.consecutive_failures, Some(2));
    assert_eq!(c.breaker.window_calls, Some(10));
    assert_eq!(c.breaker.max_failure_ratio, Some(0.25));
    assert_eq!(
        c.deadline,
        Some(Deadline::After(std::time::Duration::from_secs(7200)))
    );
    let t = c.throttle.expect("throttle");
    assert_eq!((t.limit, t.window.as_secs()), (1000, 5));
    assert_eq!(c.audience.exclude.len(), 2);
    assert_eq!(
        c.audience.exclude[1],
        Source::Ids(vec![3, 9_007_199_254_740_993])
    );
    assert!(c.path.is_absolute());
    assert_eq!(c.dir, c.path.parent().expect("dir"));
}

#[test]
fn defaults_apply() {
    let f = Fixture::new();
    let c = load_ok(
        &f,
        &format!("{HEAD}audience: {{ ids: [1] }}\n{MSG}"),
        &LoadOptions::default(),
    );
    assert_eq!(c.endpoint.as_str(), "https://rtc.volcengineapi.com/");
    // What the file leaves out stays None; a run resolves it (imcast.toml, else the defaults).
    assert_eq!(c.retry_max_attempts, None);
    assert!(c.throttle.is_none());
    assert_eq!(c.breaker, imcast::config::BreakerFields::default());
    assert!(c.deadline.is_none());
    let s = imcast::run::Settings::resolve(
        &c,
        &imcast::config::AccountConfig::default(),
        &imcast::journal::RunFlags::default(),
        None,
    );
    assert_eq!(s.retry_max_attempts, 3);
    assert_eq!((s.pace.limit, s.pace.window.as_secs()), (12000, 60));
    assert_eq!(s.limit, s.pace);
    assert_eq!(s.breaker, imcast::config::BreakerSettings::default());
}

#[test]
fn deadline_at_a_time() {
    let f = Fixture::new();
    let c = load_ok(
        &f,
        &format!("{HEAD}audience: {{ ids: [1] }}\n{MSG}deadline: 2026-03-01T12:00:00+08:00\n"),
        &LoadOptions::default(),
    );
    assert_eq!(
        c.deadline,
        Some(Deadline::At(
            "2026-03-01T04:00:00Z".parse().expect("timestamp")
        ))
    );
}

#[test]
fn unknown_key_suggests_the_near_one() {
    let f = Fixture::new();
    let e = load_err(&f, &format!("{HEAD}audiance: {{ ids: [1] }}\n{MSG}"));
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:6:1: unknown key `audiance` — did you mean `audience`?; expected one of: version, name, description, provider, action, sender, batch, conversation, p2p, audience, message, schedule, throttle, retry, deadline, guard, breaker, rollout, holdout
    ");
}

#[test]
fn unknown_nested_key_and_variant() {
    let f = Fixture::new();
    let e = load_err(
        &f,
        &format!("{HEAD}audience: {{ ids: [1], id_colum: x }}\n{MSG}"),
    );
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:6:23: unknown key `id_colum` — did you mean `id_column`?; expected one of: csv, ids, id_column, exclude, required, timezone_column, default_timezone, allow_empty
    ");
    let e = load_err(
        &f,
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: conversaton\nsender: 1\n",
    );
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:4:9: unknown value `conversaton` — did you mean `conversation`?; expected one of: batch, conversation, p2p
    ");
}

#[test]
fn missing_key_and_bad_id() {
    let f = Fixture::new();
    let e = load_err(&f, &format!("{HEAD}{MSG}"));
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:6:1: missing required key `audience`
    ");
    let e = load_err(&f, &format!("{HEAD}audience: {{ ids: [1, -5] }}\n{MSG}"));
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:6:22: audience.ids[1]: `-5` is not an id: ids are whole numbers from 0 to 9223372036854775807 (no sign, decimals or quotes)
    ");
    let e = load_err(
        &f,
        &format!("{HEAD}audience: {{ ids: [18446744073709551616] }}\n{MSG}"),
    );
    assert!(e.contains("c.yaml:6:"), "{e}");
}

#[test]
fn every_semantic_problem_is_listed_at_once() {
    let f = Fixture::new();
    let e = load_err(
        &f,
        r#"version: 2
name: Bad Name
provider: { app_id: 1, region: cn-nort-1 }
action: batch
sender: 1
audience: { csv: missing.csv }
message: { type: text }
throttle: { limit: 10, window: 5 parsecs }
deadline: tomorrow
retry: { max_attempts: 0 }
breaker: { max_failure_ratio: 1.5 }
"#,
    );
    insta::assert_snapshot!(e);
}

#[test]
fn credentials_are_rejected_naming_the_line() {
    let f = Fixture::new();
    let e = load_err(
        &f,
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1, Secret_Key: abc }\naction: batch\nsender: 1\naudience: { ids: [1] }\nmessage:\n  type: text\n  text: \"key AKLTabcdefghijkl0\"\n",
    );
    insta::assert_snapshot!(e);
    for key in ["password", "token", "sk", "access_key", "SECRET"] {
        let e = load_err(
            &f,
            &format!("{HEAD}audience: {{ ids: [1] }}\n{MSG}{key}: x\n"),
        );
        assert!(e.contains(":8:1: key"), "{key}: {e}");
        assert!(e.contains("looks like a credential"), "{key}: {e}");
    }
}

#[test]
fn endpoint_policy() {
    let f = Fixture::new();
    let with = |ep: &str| {
        format!(
            "version: 1\nname: t\nprovider: {{ app_id: 1, region: cn-north-1, endpoint: \"{ep}\" }}\naction: batch\nsender: 1\naudience: {{ ids: [1] }}\n{MSG}"
        )
    };
    for ok in [
        "http://127.0.0.1:8420",
        "https://127.0.0.1:8420",
        "http://127.5.5.5:1",
        "http://localhost:9000/",
        "http://[::1]:80",
        "https://rtc.volcengineapi.com",
        "https://RTC.volcengineapi.com/",
    ] {
        let c = load_ok(&f, &with(ok), &LoadOptions::default());
        assert_eq!(
            c.endpoint.as_str(),
            url::Url::parse(ok).expect("url").as_str()
        );
    }
    let e = load_err(&f, &with("https://collector.example.com/"));
    insta::assert_snapshot!(e, @r"
    [DIR]/c.yaml: 1 problem
      [DIR]/c.yaml:3:54: provider.endpoint `https://collector.example.com/` is not a known region host or a loopback address; campaign files cannot send elsewhere unless the command line says `--allow-endpoint https://collector.example.com`
    ");
    for bad in [
        "http://10.0.0.1",
        "http://rtc.volcengineapi.com.evil.net",
        "ftp://127.0.0.1",
    ] {
        load_err(&f, &with(bad));
    }
    let c = load_ok(
        &f,
        &with("https://collector.example.com/"),
        &LoadOptions {
            allow_endpoints: vec!["https://collector.example.com".into()],
        },
    );
    assert_eq!(c.endpoint.host_str(), Some("collector.example.com"));
    // --allow-endpoint keeps working for loopback and for other hosts, over http too.
    let c = load_ok(
        &f,
        &with("http://proxy.internal:8080/"),
        &LoadOptions {
            allow_endpoints: vec!["http://proxy.internal:8080".into()],
        },
    );
    assert_eq!(c.endpoint.host_str(), Some("proxy.internal"));
}

#[test]
fn region_and_endpoint_must_agree_and_region_hosts_take_https_only() {
    let f = Fixture::new();
    let with = |region: &str, ep: &str| {
        format!(
            "version: 1\nname: t\nprovider: {{ app_id: 1, region: {region}, endpoint: \"{ep}\" }}\naction: batch\nsender: 1\naudience: {{ ids: [1] }}\n{MSG}"
        )
    };
    let c = load_ok(
        &f,
        &with(
            "ap-southeast-1",
            "https://open-ap-singapore-1.volcengineapi.com/",
        ),
        &LoadOptions::default(),
    );
    assert_eq!(c.region, "ap-southeast-1");
    let mut out = String::new();
    for (region, ep) in [
        (
            "cn-north-1",
            "https://open-ap-singapore-1.volcengineapi.com",
        ),
        ("ap-southeast-1", "https://rtc.volcengineapi.com/"),
        ("cn-north-1", "http://rtc.volcengineapi.com"),
        (
            "ap-southeast-1",
            "http://open-ap-singapore-1.volcengineapi.com/",
        ),
    ] {
        out.push_str(&load_err(&f, &with(region, ep)));
        out.push('\n');
    }
    insta::assert_snapshot!(out);
    // Not even --allow-endpoint lets a region host be reached the wrong way.
    for (region, ep) in [
        (
            "cn-north-1",
            "https://open-ap-singapore-1.volcengineapi.com",
        ),
        ("cn-north-1", "http://rtc.volcengineapi.com"),
    ] {
        let p = f.write("c.yaml", &with(region, ep));
        let opts = LoadOptions {
            allow_endpoints: vec![ep.to_string()],
        };
        assert!(spec::load(&p, &opts).is_err(), "{region} {ep}");
    }
}

#[test]
fn ids_and_app_id_out_of_the_providers_range_are_errors_with_their_place() {
    let f = Fixture::new();
    // The largest accepted values load.
    let c = load_ok(
        &f,
        "version: 1\nname: t\nprovider: { app_id: 2147483647, region: cn-north-1 }\naction: batch\nsender: 9223372036854775807\naudience: { ids: [9223372036854775807], exclude: [ { ids: [9223372036854775807] } ] }\nmessage: { type: text, text: hi }\n",
        &LoadOptions::default(),
    );
    assert_eq!((c.app_id, c.sender), (2147483647, i64::MAX as u64));
    let e = load_err(
        &f,
        "version: 1
name: t
provider: { app_id: 2147483648, region: cn-north-1 }
action: conversation
sender: 9223372036854775808
conversation:
  mentioned_users: [1, 18446744073709551615]
  visible_users: [9223372036854775808]
  invisible_users: [2]
  ref_msg: { referenced_message_id: 9223372036854775808, hint: x }
audience:
  ids: [1, 2, 9223372036854775808]
  exclude: [ { ids: [3] }, { ids: [4, 9223372036854775809] } ]
message: { type: text, text: hi }
",
    );
    insta::assert_snapshot!(e);
    let e = load_err(
        &f,
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: p2p\nsender: 1\np2p: { receiver_user_ids: [9223372036854775808], ignore_user_ids: [] }\naudience: { ids: [1] }\nmessage: { type: custom, text: x }\n",
    );
    assert!(
        e.contains("c.yaml:6:28: p2p.receiver_user_ids[0]: id 9223372036854775808 is larger than 9223372036854775807"),
        "{e}"
    );
}

#[test]
fn p2p_campaigns_cannot_set_what_p2psendmessage_does_not_have() {
    let f = Fixture::new();
    let head = "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: p2p\nsender: 1\naudience: { ids: [1] }\n";
    let mut out = String::new();
    for tail in [
        "message:\n  type: custom\n  text: x\n  ext: { k: v }\n",
        "message: { type: image, url: \"https://x/a.png\", width: 10, height: \"{{ h }}\" }\n",
        "p2p: { receiver_user_ids: [5], ignore_user_ids: [6] }\nmessage: { type: custom, text: x }\n",
    ] {
        out.push_str(&format!("{tail}{}\n\n", load_err(&f, &format!("{head}{tail}"))));
    }
    insta::assert_snapshot!(out);
    // What it does have still loads: an image without width/height, an empty ext, either list.
    for tail in [
        "message: { type: image, url: \"https://x/a.png\" }\n",
        "message: { type: custom, text: x, ext: {} }\n",
        "p2p: { receiver_user_ids: [5], ignore_user_ids: [] }\nmessage: { type: custom, text: x }\n",
        "p2p: { ignore_user_ids: [6] }\nmessage: { type: custom, text: x }\n",
    ] {
        load_ok(&f, &format!("{head}{tail}"), &LoadOptions::default());
    }
}

#[test]
fn message_shape_errors() {
    let f = Fixture::new();
    let cases = [
        "message: { type: text, text: a, template: b.j2 }\n",
        "message: { type: image }\n",
        "message: { type: raw, text: x }\n",
        "message: { type: text, text: x, url: y }\n",
        "message: { type: custom }\n",
        "message: { type: text, text: x, ext: { \"s:x\": y } }\n",
        "message: { type: text, text: x, vars: { recipient: y } }\n",
    ];
    let mut out = String::new();
    for m in cases {
        let e = load_err(&f, &format!("{HEAD}audience: {{ ids: [1] }}\n{m}"));
        out.push_str(&format!("{m}{e}\n\n"));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn action_options_must_match_the_action() {
    let f = Fixture::new();
    let e = load_err(
        &f,
        &format!("{HEAD}audience: {{ ids: [1] }}\n{MSG}conversation: {{ priority: 1 }}\n"),
    );
    assert!(
        e.contains("`conversation:` options apply to `action: conversation`"),
        "{e}"
    );
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let f = Fixture::new();
    let e = load_err(&f, "version: 1\nname: [unclosed\n");
    assert!(e.contains("c.yaml:"), "{e}");
    let e = load_err(&f, "");
    assert!(e.contains("1 problem"), "{e}");
}

#[test]
fn schema_command_prints_a_json_schema() {
    let f = Fixture::new();
    let out = f.imcast(&["schema"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["title"], "imcast campaign");
    assert_eq!(v["additionalProperties"], false);
    assert!(v["properties"]["audience"].is_object());
    // The committed copy is current.
    let committed = std::fs::read_to_string(crate::common::root().join("imcast.schema.json"))
        .expect("imcast.schema.json");
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(
        committed, v,
        "regenerate: imcast schema > imcast.schema.json"
    );
}

#[test]
fn validate_lists_every_file_and_exits_2() {
    let f = Fixture::new();
    let good = f.write(
        "good.yaml",
        &format!("{HEAD}audience: {{ ids: [1] }}\n{MSG}"),
    );
    let bad = f.write("bad.yaml", &format!("{HEAD}audiance: {{ ids: [1] }}\n"));
    let bad2 = f.write(
        "bad2.yaml",
        &format!(
            "{HEAD}audience: {{ ids: [1] }}\nmessage: {{ type: text, text: \"{{{{ nme }}}}\" }}\n"
        ),
    );
    let out = f.imcast(&[
        "validate",
        good.to_str().expect("utf8"),
        bad.to_str().expect("utf8"),
        bad2.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = f.redact(&String::from_utf8_lossy(&out.stdout));
    let stderr = f.redact(&String::from_utf8_lossy(&out.stderr));
    insta::assert_snapshot!(format!("stdout:\n{stdout}\nstderr:\n{stderr}"));
}

#[test]
fn validate_checks_the_shipped_campaigns_and_examples() {
    let root = crate::common::root();
    let mut files = Vec::new();
    for d in ["campaigns", "examples"] {
        for e in std::fs::read_dir(root.join(d)).expect("dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 5);
    let out = std::process::Command::new(crate::common::bin())
        .arg("validate")
        .args(&files)
        .output_limited()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
