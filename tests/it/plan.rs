//! Planning: grouping into calls, re-rendering, the plan hash, rendering rules, and the
//! plan/preview commands.

use std::collections::{BTreeMap, HashSet};

use imcast::plan::{self, PlanOptions, PlannedCall, RowStatus, StoreLimits};
use imcast::spec::{self, LoadOptions};
use proptest::prelude::*;

use crate::common::{Fixture, HEAD};

fn load(p: &std::path::Path) -> spec::Campaign {
    match spec::load(p, &LoadOptions::default()) {
        Ok(c) => c,
        Err(e) => panic!("load: {e}"),
    }
}

fn calls(p: &plan::Plan) -> Vec<PlannedCall> {
    p.calls().collect::<Result<_, _>>().expect("calls")
}

/// Write `rows` (id, group) as a CSV and a campaign whose text depends on the group only.
fn grouped(f: &Fixture, rows: &[(u64, u8)], action: &str) -> spec::Campaign {
    let mut csv = String::from("user_id,g\n");
    for (id, g) in rows {
        csv.push_str(&format!("{id},{g}\n"));
    }
    f.write("a.csv", &csv);
    let p = f.write(
        "c.yaml",
        &format!(
            "version: 1\nname: t\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: {action}\nsender: 1\naudience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"group {{{{ g }}}}\" }}\n"
        ),
    );
    load(&p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Never two Contents in one call, never more than 500, no valid recipient lost or repeated,
    /// exactly Σ⌈g/500⌉ calls, groups ordered by first recipient; re-rendering gives the same calls.
    #[test]
    fn grouping_invariants(groups in proptest::collection::vec(0u8..6, 1..1400), dup_every in 0usize..40) {
        let f = Fixture::new();
        let mut rows: Vec<(u64, u8)> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| ((i as u64) * 1_000_003 + 9_007_199_254_740_000, *g))
            .collect();
        if dup_every > 0 {
            let dups: Vec<(u64, u8)> = rows.iter().step_by(dup_every).copied().collect();
            rows.extend(dups);
        }
        let c = grouped(&f, &rows, "batch");
        let p = plan::build(&c, &PlanOptions::default()).expect("plan");
        let cs = calls(&p);

        // Expected groups: first-appearance order of g among first occurrences of ids.
        let mut seen = HashSet::new();
        let mut sizes: BTreeMap<u8, u64> = BTreeMap::new();
        let mut order: Vec<u8> = Vec::new();
        let mut valid: Vec<u64> = Vec::new();
        for (id, g) in &rows {
            if seen.insert(*id) {
                if !sizes.contains_key(g) { order.push(*g); }
                *sizes.entry(*g).or_default() += 1;
                valid.push(*id);
            }
        }
        let expect_calls: u64 = sizes.values().map(|n| n.div_ceil(500)).sum();
        prop_assert_eq!(p.counts().calls, expect_calls);
        prop_assert_eq!(cs.len() as u64, expect_calls);
        prop_assert_eq!(p.counts().distinct_contents, sizes.len() as u64);

        let by_id: BTreeMap<u64, u8> = rows.iter().map(|(i, g)| (*i, *g)).rev().collect();
        let mut got: Vec<u64> = Vec::new();
        let mut call_groups: Vec<u8> = Vec::new();
        for (i, call) in cs.iter().enumerate() {
            prop_assert_eq!(call.seq, i as u64);
            prop_assert!(!call.receivers.is_empty() && call.receivers.len() <= 500);
            let gs: HashSet<u8> = call.receivers.iter().map(|r| by_id[r]).collect();
            prop_assert_eq!(gs.len(), 1, "two Contents in one call");
            let g = *gs.iter().next().expect("one");
            let v: serde_json::Value = serde_json::from_str(&call.content).expect("json");
            let want = format!("group {g}");
            prop_assert_eq!(v["text"].as_str(), Some(want.as_str()));
            if call_groups.last() != Some(&g) { call_groups.push(g); }
            got.extend(&call.receivers);
        }
        prop_assert_eq!(&call_groups, &order, "groups ordered by first recipient");
        let mut a = got.clone(); a.sort_unstable();
        let mut b = valid.clone(); b.sort_unstable();
        prop_assert_eq!(a, b, "every valid recipient exactly once");

        // rows() agrees with calls().
        for r in p.rows() {
            let r = r.expect("row");
            if let RowStatus::Valid { call } = r.status {
                prop_assert!(cs[call as usize].receivers.contains(&r.id.expect("id")));
            }
        }

        // Re-rendering at send time yields the same calls.
        let spilled = plan::build_with(&c, &PlanOptions::default(), StoreLimits { max_contents: 1, max_bytes: 1 << 20 }).expect("plan");
        prop_assert!(sizes.len() < 2 || !spilled.contents_in_memory());
        prop_assert_eq!(calls(&spilled), cs);
        prop_assert_eq!(spilled.hash(), p.hash());
    }

    /// Content is JSON built as data: any string in the data round-trips exactly.
    #[test]
    fn hostile_strings_round_trip(s in "(\"|\\\\|\n|\r|\t|😀|\\{\\{|\\}\\}|\\{%|<b>|&amp;|'|a|é|\u{0}|\u{2028}){0,24}") {
        let f = Fixture::new();
        let mut w = csv::Writer::from_path(f.path("a.csv")).expect("csv");
        w.write_record(["user_id", "v"]).expect("row");
        w.write_record(["9223372036854775807", s.as_str()]).expect("row");
        w.flush().expect("flush");
        drop(w);
        let p = f.write("c.yaml", &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"{{{{ v }}}}\", ext: {{ k: \"{{{{ v }}}}\" }} }}\n"));
        let c = load(&p);
        let plan = plan::build(&c, &PlanOptions::default()).expect("plan");
        let cs = calls(&plan);
        let v: serde_json::Value = serde_json::from_str(&cs[0].content).expect("content is JSON");
        // A trailing newline in a template's output is trimmed by minijinja only for the
        // template source, never for data.
        prop_assert_eq!(v["text"].as_str(), Some(s.as_str()));
        prop_assert_eq!(cs[0].ext.get("k").map(String::as_str), Some(s.as_str()));
        let wire = crate::common::wire_body(&c, &cs[0]);
        let back: serde_json::Value = serde_json::from_str(&wire).expect("parse");
        prop_assert_eq!(back["Content"].as_str(), Some(cs[0].content.as_str()));
        prop_assert_eq!(back["Receiver"][0].as_u64(), Some(i64::MAX as u64));
    }
}

#[test]
fn five_hundred_one_makes_two_calls_in_order() {
    let f = Fixture::new();
    let mut rows: Vec<(u64, u8)> = (0..501).map(|i| (1000 + i, 0)).collect();
    rows.insert(3, (5, 1));
    let c = grouped(&f, &rows, "batch");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let cs = calls(&p);
    assert_eq!(
        cs.iter().map(|c| c.receivers.len()).collect::<Vec<_>>(),
        vec![500, 1, 1]
    );
    assert_eq!(cs[1].receivers, vec![1500]);
    assert_eq!(cs[2].receivers, vec![5]);
    assert_eq!(p.counts().messages, 502);
    assert_ne!(cs[0].variant, cs[2].variant);
    assert_eq!(cs[0].variant, cs[1].variant);
}

#[test]
fn conversation_is_one_call_per_conversation() {
    let f = Fixture::new();
    let rows: Vec<(u64, u8)> = (0..7).map(|i| (70 + i, 0)).collect();
    let c = grouped(&f, &rows, "conversation");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let cs = calls(&p);
    assert_eq!(cs.len(), 7);
    assert!(cs.iter().all(|c| c.receivers.len() == 1));
    assert_eq!(p.counts().messages, 7);
    assert_eq!(p.counts().distinct_contents, 1);
    let body: serde_json::Value =
        serde_json::from_str(&crate::common::wire_body(&c, &cs[2])).expect("json");
    assert_eq!(body["ConversationShortId"], 72);
    assert!(body.get("Receiver").is_none());
}

#[test]
fn undefined_variable_names_variable_and_recipients() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n2,b\n3,c\n4,d\n5,e\n6,f\n7,g\n");
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"{{{{ nmae }}}} {{{{ x }}}}\" }}\n"),
    );
    let e = plan::build(&load(&p), &PlanOptions::default())
        .err()
        .expect("fails");
    insta::assert_snapshot!(e.to_string());
}

#[test]
fn variable_missing_for_some_rows_only() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n2\n");
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"hi {{{{ name }}}}{{{{ missing_for_all }}}}\" }}\n"),
    );
    let e = plan::build(&load(&p), &PlanOptions::default())
        .err()
        .expect("fails")
        .to_string();
    assert!(e.contains("undefined variable `missing_for_all`"), "{e}");
    assert!(
        e.contains("2 recipients, first: 1 (line 2), 2 (line 3)"),
        "{e}"
    );
}

#[test]
fn empty_values_are_counted_and_warned() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n2,\n3,\n");
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"Hi {{{{ name }}}},\" }}\n"),
    );
    let plan = plan::build(&load(&p), &PlanOptions::default()).expect("plan");
    assert_eq!(plan.counts().empty_value_rows, 2);
    assert!(plan
        .warnings()
        .iter()
        .any(|w| w.starts_with("2 recipients got a message that used an empty value")));
}

#[test]
fn personalized_plan_names_the_variable() {
    let f = Fixture::new();
    let mut csv = String::from("user_id,name,city\n");
    for i in 0..50 {
        csv.push_str(&format!("{i},n{i},c{}\n", i % 2));
    }
    f.write("a.csv", &csv);
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"{{{{ name }}}} in {{{{ city }}}}\" }}\n"),
    );
    let plan = plan::build(&load(&p), &PlanOptions::default()).expect("plan");
    assert_eq!(plan.counts().calls, 50);
    insta::assert_snapshot!(plan.warnings().join("\n"), @"personalized: 50 of 50 recipients get a Content of their own, so calls carry 1.0 receivers on average instead of up to 500; responsible: `name` (50 distinct values)");
}

#[test]
fn plan_hash_covers_every_input() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n2,b\n");
    f.write("x.csv", "user_id\n3\n");
    f.write("templates/foot.j2", "bye");
    f.write("t.j2", "hi {{ name }} {% include \"foot.j2\" %}");
    let g = f.write("global.csv", "user_id\n4\n");
    let yaml = format!(
        "{HEAD}audience: {{ csv: a.csv, exclude: [ {{ csv: x.csv }} ] }}\nmessage: {{ type: text, template: t.j2 }}\n"
    );
    let p = f.write("c.yaml", &yaml);
    let opts = PlanOptions {
        extra_suppress: vec![g.clone()],
        ..PlanOptions::default()
    };
    let h = |opts: &PlanOptions| {
        plan::build(&load(&p), opts)
            .expect("plan")
            .hash()
            .to_string()
    };
    let base = h(&opts);
    assert_eq!(base.len(), 64);
    assert_eq!(h(&opts), base, "stable");
    let mut changed = Vec::new();
    f.write("templates/foot.j2", "ciao");
    changed.push(h(&opts));
    f.write("templates/foot.j2", "bye");
    f.write("t.j2", "hello {{ name }} {% include \"foot.j2\" %}");
    changed.push(h(&opts));
    f.write("t.j2", "hi {{ name }} {% include \"foot.j2\" %}");
    f.write("x.csv", "user_id\n3\n5\n");
    changed.push(h(&opts));
    f.write("x.csv", "user_id\n3\n");
    f.write("global.csv", "user_id\n4\n6\n");
    changed.push(h(&opts));
    f.write("global.csv", "user_id\n4\n");
    changed.push(h(&PlanOptions::default()));
    f.write("a.csv", "user_id,name\n1,a\n2,c\n");
    changed.push(h(&opts));
    f.write("a.csv", "user_id,name\n1,a\n2,b\n");
    f.write("c.yaml", &format!("{yaml}retry: {{ max_attempts: 2 }}\n"));
    changed.push(h(&opts));
    f.write("c.yaml", &yaml);
    assert_eq!(h(&opts), base, "restored inputs give the same hash");
    for (i, c) in changed.iter().enumerate() {
        assert_ne!(c, &base, "change {i} must change the hash");
    }
}

#[test]
fn templates_are_sandboxed_and_fueled() {
    let f = Fixture::new();
    f.write("secret.txt", "s3cret");
    let mut out = String::new();
    for text in [
        "{% include \\\"../secret.txt\\\" %}",
        "{% include \\\"/etc/passwd\\\" %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 1 + }}",
    ] {
        f.write("sub/.keep", "");
        let p = f.write(
            "sub/c.yaml",
            &format!(
                "{HEAD}audience: {{ ids: [1] }}\nmessage: {{ type: text, text: \"{text}\" }}\n"
            ),
        );
        let e = plan::build(&load(&p), &PlanOptions::default())
            .err()
            .expect("fails");
        out.push_str(&f.redact(&e.to_string()));
        out.push('\n');
    }
    insta::assert_snapshot!(out);
}

#[test]
fn image_and_custom_content_are_built_as_data() {
    let f = Fixture::new();
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [7] }}\nmessage:\n  type: image\n  url: \"https://cdn.example.com/{{{{ recipient.id }}}}.png\"\n  width: 640\n  height: \"{{{{ h }}}}\"\n  vars: {{ h: \"480\" }}\n"),
    );
    let c = load(&p);
    let cs = calls(&plan::build(&c, &PlanOptions::default()).expect("plan"));
    assert_eq!(cs[0].msg_type, 10003);
    assert_eq!(cs[0].content, r#"{"url":"https://cdn.example.com/7.png"}"#);
    assert_eq!(cs[0].ext["file_ext_key_original_width"], "640");
    assert_eq!(cs[0].ext["file_ext_key_original_height"], "480");

    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [7] }}\nmessage:\n  type: custom\n  data: {{ kind: promo, title: \"Hi \\\"{{{{ recipient.id }}}}\\\"\", n: 3, tags: [a, \"{{{{ campaign.name }}}}\"] }}\n"),
    );
    let c = load(&p);
    let cs = calls(&plan::build(&c, &PlanOptions::default()).expect("plan"));
    assert_eq!(cs[0].msg_type, 10012);
    assert_eq!(
        cs[0].content,
        r#"{"kind":"promo","title":"Hi \"7\"","n":3,"tags":["a","t"]}"#
    );

    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [7] }}\nmessage: {{ type: raw, msg_type: 10008, text: \"raw {{{{ recipient.id }}}}\" }}\n"),
    );
    let c = load(&p);
    let cs = calls(&plan::build(&c, &PlanOptions::default()).expect("plan"));
    assert_eq!((cs[0].msg_type, cs[0].content.as_str()), (10008, "raw 7"));
}

fn demo(f: &Fixture) -> std::path::PathBuf {
    f.write(
        "a.csv",
        "user_id,name,city\n9007199254740993,Ann,Paris\n2,Bo,Oslo\n3,Cy,Paris\n2,Bo,Oslo\n",
    );
    f.write("x.csv", "user_id\n3\n");
    f.write(
        "c.yaml",
        "version: 1\nname: demo\nprovider: { app_id: 666675, region: cn-north-1 }\naction: batch\nsender: 10001\nbatch: { inbox_type: 0 }\naudience: { csv: a.csv, exclude: [ { csv: x.csv } ] }\nmessage:\n  type: text\n  text: \"Sale in {{ city }} \\\"now\\\"\"\n  ext: { campaign: \"{{ campaign.name }}\" }\nthrottle: { limit: 1000, window: 5s }\n",
    )
}

#[test]
fn plan_command_human_and_json() {
    let f = Fixture::new();
    let p = demo(&f);
    let out = f.imcast(&["plan", p.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(f.redact(&String::from_utf8_lossy(&out.stdout)));

    let out = f.imcast(&["plan", "c.yaml", "--output", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["counts"]["total"], 4);
    assert_eq!(v["counts"]["valid"], 2);
    assert_eq!(v["counts"]["duplicate"], 1);
    assert_eq!(v["counts"]["suppressed"], 1);
    assert_eq!(v["counts"]["calls"], 2);
    assert_eq!(v["eta_secs"], 1);
    assert_eq!(v["samples"][0]["id"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(v["plan_hash"].as_str().map(str::len), Some(64));
}

#[test]
fn plan_command_warns_past_the_deadline() {
    let f = Fixture::new();
    let mut ids = String::from("user_id\n");
    for i in 0..3000 {
        ids.push_str(&format!("{i}\n"));
    }
    f.write("a.csv", &ids);
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: hi }}\nthrottle: {{ limit: 1000, window: 60s }}\ndeadline: 1m\n"),
    );
    let out = f.imcast(&["plan", "c.yaml"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("→ about 3m"), "{s}");
    assert!(
        s.contains(
            "warning: the estimated duration 3m is longer than the deadline of 1m after start"
        ),
        "{s}"
    );
}

#[test]
fn preview_prints_the_exact_body() {
    let f = Fixture::new();
    demo(&f);
    let out = f.imcast(&["preview", "c.yaml", "--recipient", "9007199254740993"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    insta::assert_snapshot!(stdout);
    assert!(stdout.contains("9007199254740993"));

    let out = f.imcast(&["preview", "c.yaml", "--recipient", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("recipient 3 gets no message: line 4: suppressed by x.csv"),
        "{e}"
    );
    let out = f.imcast(&["preview", "c.yaml", "--recipient", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the audience"));
}

#[test]
fn shipped_demo_plans() {
    let root = crate::common::root();
    let c = load(&root.join("examples/demo.yaml"));
    assert!(c.endpoint.host_str() == Some("127.0.0.1"));
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    assert_eq!(p.counts().valid, 2000);
    assert_eq!(p.counts().distinct_contents, 4);
    assert_eq!(p.counts().calls, 4);
}

#[test]
fn many_chunks_keep_audience_order() {
    // More rows than one render chunk (4096), so parallel chunks must be reassembled in order.
    let f = Fixture::new();
    let rows: Vec<(u64, u8)> = (0..9_000u64).map(|i| (i, (i * 7 % 11) as u8)).collect();
    let c = grouped(&f, &rows, "batch");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let cs = calls(&p);
    assert_eq!(p.counts().distinct_contents, 11);
    let expect: u64 = (0..11u64)
        .map(|g| (rows.iter().filter(|r| r.1 as u64 == g).count() as u64).div_ceil(500))
        .sum();
    assert_eq!(cs.len() as u64, expect);
    // Within each call, receivers ascend (audience order); each group's first call starts with
    // the group's first recipient, and groups come in first-recipient order.
    let mut firsts = Vec::new();
    let mut last_variant = String::new();
    for call in &cs {
        assert!(call.receivers.windows(2).all(|w| w[0] < w[1]));
        if call.variant != last_variant {
            firsts.push(call.receivers[0]);
            last_variant = call.variant.clone();
        }
    }
    assert_eq!(firsts, (0..11).collect::<Vec<u64>>());
    assert_eq!(p.samples()[3].id, 3);
}

#[test]
fn plan_is_send_and_sync_for_the_sender() {
    fn check<T: Send + Sync>() {}
    check::<plan::Plan>();
    check::<spec::Campaign>();
    check::<PlannedCall>();
}

#[test]
fn p2p_body_uses_the_wire_names() {
    let f = Fixture::new();
    let p = f.write(
        "c.yaml",
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: p2p\nsender: 9\np2p: { receiver_user_ids: [9223372036854775807] }\naudience: { ids: [42] }\nmessage: { type: custom, data: { op: ping } }\n",
    );
    let c = load(&p);
    let cs = calls(&plan::build(&c, &PlanOptions::default()).expect("plan"));
    assert_eq!(
        crate::common::wire_body(&c, &cs[0]),
        r#"{"AppId":1,"Sender":9,"ConversationShortId":42,"MsgType":10012,"Content":"{\"op\":\"ping\"}","ReceiverUserId":[9223372036854775807]}"#
    );
}

/// The ETA is the run's: at the lower of the campaign's throttle and the account's share in
/// imcast.toml (it used to take the throttle alone, ignoring the account's limit and reserve).
#[test]
fn plan_eta_uses_the_limit_the_run_uses() {
    let f = Fixture::new();
    f.write(
        "imcast.toml",
        "[account]\nreserve = 0.5\n[limits.batch]\nlimit = 600\nwindow = \"60s\"\n",
    );
    let ids: Vec<String> = (1..=600).map(|i| i.to_string()).collect();
    let p = f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ ids: [{}] }}\nmessage: {{ type: text, text: hi }}\nthrottle: {{ limit: 100000, window: 60s }}\n",
            ids.join(", ")
        ),
    );
    let out = f.imcast(&["plan", p.to_str().expect("utf8"), "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // 600 receivers at the account's share, 300 a minute.
    assert_eq!(v["throttle_limit"], 300);
    assert_eq!(v["eta_secs"], 120);
    let human = f.imcast(&["plan", p.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("throttle   300 per 1m (the account's share in imcast.toml) → about 2m"),
        "{text}"
    );
}

#[test]
fn plan_eta_accounts_for_quiet_hours() {
    let f = Fixture::new();
    let ids: Vec<String> = (1..=600).map(|i| i.to_string()).collect();
    // 600 messages at 10 per second: one minute of sending. Quiet hours leave one open minute
    // a day, so the run spans about one day whatever time it starts.
    let p = f.write(
        "q.yaml",
        &format!(
            "{HEAD}audience: {{ ids: [{}] }}\nmessage: {{ type: text, text: hi }}\nthrottle: {{ limit: 10, window: 1s }}\nschedule:\n  quiet_hours: {{ from: \"00:00\", to: \"23:59\", timezone: UTC }}\n",
            ids.join(", ")
        ),
    );
    let out = f.imcast(&["plan", p.to_str().expect("utf8"), "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["eta_secs"], 60);
    let wall = v["eta_with_quiet_hours_secs"].as_u64().expect("quiet eta");
    assert!(wall > 60, "quiet hours lengthen the run: {wall}");
    assert!(wall <= 2 * 86_400, "{wall}");
    assert_eq!(v["quiet_hours"], "00:00–23:59 UTC");
    let human = f.imcast(&["plan", p.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("quiet      00:00–23:59 UTC"), "{text}");
}

/// An audience of many rejected rows whose plan cannot write its temporary file (TMPDIR names
/// no folder) fails with an error naming the folder and what to do, and prints no plan.
#[test]
fn a_plan_that_cannot_write_its_temporary_file_says_where() {
    let f = Fixture::new();
    let mut csv = String::from("user_id\n");
    for i in 0..60_000 {
        csv.push_str(&format!("x{i}\n"));
    }
    f.write("a.csv", &csv);
    let file = f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: hi }}\n"),
    );
    let gone = f.path("no-such-folder");
    let out = std::process::Command::new(crate::common::bin())
        .arg("plan")
        .arg(&file)
        .env("TMPDIR", &gone)
        .output()
        .expect("imcast plan");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the plan's temporary file of rejected rows in {}",
            gone.display()
        )) && err.contains("set TMPDIR"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
