//! `validate` and `plan` predict what `run` does (issue 11): the audience guard
//! (`guard.max_recipients`, an empty audience and `audience.allow_empty`,
//! `guard.max_invalid_ratio`) refuses in all three with the same words and exit 2; rejected rows
//! are listed with line and reason; a throttle above the account's share is named and the ETA is
//! the run's; a past `at:` says whether the daemon would still fire it; an inline id that is no id
//! names its position. Real files, the real binary, the embedded mock for `run`.

use std::process::Output;

use crate::common::{Fixture, HEAD};

const MSG: &str = "message: { type: text, text: hi }\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A CSV of `user_id` with `valid` good ids (1..) and then `bad` rows whose ids are not ids.
fn csv(valid: u64, bad: &[&str]) -> String {
    let mut s = String::from("user_id\n");
    for i in 1..=valid {
        s.push_str(&format!("{i}\n"));
    }
    for b in bad {
        s.push_str(&format!("{b}\n"));
    }
    s
}

/// The guard's sentence in an error message: the part after `c.yaml: ` on its line.
fn guard_words(s: &str, needle: &str) -> String {
    let line = s
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {s}"));
    line.split_once("c.yaml: ")
        .map(|(_, w)| w.to_string())
        .unwrap_or_else(|| line.to_string())
}

/// validate, plan and `run --mock` on `c.yaml`: their outputs.
fn three(f: &Fixture) -> (Output, Output, Output) {
    (
        f.imcast(&["validate", "c.yaml"]),
        f.imcast(&["plan", "c.yaml"]),
        f.imcast(&["run", "c.yaml", "--mock", "--yes"]),
    )
}

#[test]
fn max_recipients_is_refused_by_validate_plan_and_run_alike() {
    let f = Fixture::new();
    f.write("a.csv", &csv(1200, &[]));
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nguard: {{ max_recipients: 1000 }}\n{MSG}"),
    );
    let (v, p, r) = three(&f);
    for o in [&v, &p, &r] {
        assert_eq!(code(o), 2, "{}", text(&o.stderr));
    }
    let words = guard_words(&text(&v.stderr), "max_recipients");
    assert_eq!(
        words,
        "the audience has 1200 recipients but guard.max_recipients is 1000: check the audience file, or raise guard.max_recipients if this is intended"
    );
    assert_eq!(guard_words(&text(&p.stderr), "max_recipients"), words);
    assert_eq!(guard_words(&text(&r.stderr), "max_recipients"), words);
    // Nothing was sent: the mock saw no request and no run was recorded.
    assert!(
        text(&r.stderr).contains("Nothing was sent."),
        "{}",
        text(&r.stderr)
    );
    assert_eq!(text(&r.stdout), "", "no report: no run was started");
    insta::assert_snapshot!(
        "max_recipients",
        f.redact(&format!(
            "$ imcast validate c.yaml\n{}$ imcast plan c.yaml (stderr)\n{}$ imcast run c.yaml --mock --yes (last lines)\n{}",
            text(&v.stderr),
            text(&p.stderr),
            text(&r.stderr)
                .lines()
                .filter(|l| !l.contains("127.0.0.1") && !l.starts_with("Mock provider"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        ))
    );
    // At the limit: fine everywhere.
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nguard: {{ max_recipients: 1200 }}\n{MSG}"),
    );
    assert_eq!(code(&f.imcast(&["validate", "c.yaml"])), 0);
    assert_eq!(code(&f.imcast(&["plan", "c.yaml"])), 0);
}

#[test]
fn an_empty_audience_is_an_error_unless_allowed() {
    let f = Fixture::new();
    f.write("h.csv", "user_id,name\n");
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: h.csv }}\n{MSG}"),
    );
    let (v, p, r) = three(&f);
    for o in [&v, &p, &r] {
        assert_eq!(code(o), 2, "{}", text(&o.stderr));
    }
    let words = guard_words(&text(&v.stderr), "no valid recipient");
    assert_eq!(guard_words(&text(&p.stderr), "no valid recipient"), words);
    assert_eq!(guard_words(&text(&r.stderr), "no valid recipient"), words);
    assert!(words.contains("audience.allow_empty: true"), "{words}");

    // Every row suppressed is no valid recipient either.
    f.write("s.csv", "user_id\n1\n2\n");
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [1, 2], exclude: [ {{ csv: s.csv }} ] }}\n{MSG}"),
    );
    let s = f.imcast(&["validate", "c.yaml"]);
    assert_eq!(code(&s), 2);
    let suppressed = f.redact(&text(&s.stderr));

    // allow_empty: validate and plan say ok, run exits 0 saying there was no one to send to.
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: h.csv, allow_empty: true }}\n{MSG}"),
    );
    let (v2, p2, r2) = three(&f);
    for o in [&v2, &p2, &r2] {
        assert_eq!(code(o), 0, "{}", text(&o.stderr));
    }
    let note = text(&r2.stderr)
        .lines()
        .find(|l| l.contains("no one to send to"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no note in {}", text(&r2.stderr)));
    insta::assert_snapshot!(
        "empty_audience",
        f.redact(&format!(
            "$ imcast validate c.yaml (header-only CSV)\n{}$ imcast validate c.yaml (everyone suppressed)\n{}$ with allow_empty: imcast validate\n{}$ with allow_empty: imcast run --mock --yes\n{note}\n",
            text(&v.stderr),
            suppressed,
            text(&v2.stdout),
        ))
    );
}

#[test]
fn rejected_rows_are_listed_with_line_and_reason() {
    let f = Fixture::new();
    // The export: 6 of 10 rows invalid.
    f.write(
        "a.csv",
        "user_id,name\n1,a\n12abc,b\n-5,c\n99999999999999999999,d\n,e\n7.0e5,f\n2,g\n3,h\n4,i\n0x10,j\n",
    );
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\n{MSG}"),
    );
    let (v, p, r) = three(&f);
    for o in [&v, &p, &r] {
        assert_eq!(code(o), 2, "{}", text(&o.stderr));
    }
    let words = guard_words(&text(&v.stderr), "max_invalid_ratio");
    assert!(
        words.starts_with("6 of 10 rows are invalid (60%)"),
        "{words}"
    );
    assert_eq!(guard_words(&text(&p.stderr), "max_invalid_ratio"), words);
    assert_eq!(guard_words(&text(&r.stderr), "max_invalid_ratio"), words);
    let plan = text(&p.stdout);
    let plan = plan
        .lines()
        .filter(|l| !l.starts_with("plan hash"))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(
        "rejected_rows_small",
        f.redact(&format!(
            "$ imcast validate c.yaml\n{}$ imcast plan c.yaml\n{plan}\n(stderr)\n{}",
            text(&v.stderr),
            text(&p.stderr)
        ))
    );

    // Raising the ratio lets it through; the rows are still listed.
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv }}\nguard: {{ max_invalid_ratio: 0.6 }}\n{MSG}"),
    );
    let v = f.imcast(&["validate", "c.yaml"]);
    assert_eq!(code(&v), 0, "{}", text(&v.stderr));
    assert!(text(&v.stdout).contains("a.csv:3: rejected row: id `12abc` is not a whole number"));
}

#[test]
fn plan_shows_the_first_ten_and_json_lists_every_rejected_row() {
    let f = Fixture::new();
    let bad: Vec<String> = (0..15).map(|i| format!("x{i}")).collect();
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    // 15 invalid of 1015 rows: 1.5%, under the default 5%.
    f.write("a.csv", &csv(1000, &bad));
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ csv: a.csv, required: [] }}\n{MSG}"),
    );
    let p = f.imcast(&["plan", "c.yaml"]);
    assert_eq!(code(&p), 0, "{}", text(&p.stderr));
    let out = text(&p.stdout);
    let block: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("rejected"))
        .take_while(|l| !l.starts_with("first recipients"))
        .collect();
    insta::assert_snapshot!("rejected_rows_first_ten", block.join("\n"));

    let j = f.imcast(&["plan", "c.yaml", "--output", "json"]);
    assert_eq!(code(&j), 0, "{}", text(&j.stderr));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("plan json");
    let rows = v["rejected"].as_array().expect("rejected array");
    assert_eq!(rows.len(), 15);
    assert_eq!(rows[0]["line"], 1002);
    assert_eq!(rows[14]["line"], 1016);
    assert_eq!(rows[14]["id"], "x14");
    assert_eq!(rows[14]["reason"], "id `x14` is not a whole number");
    assert_eq!(v["refused"], serde_json::json!([]));

    // validate lists the first ten too (and, in JSON, how many there are).
    let vj = f.imcast(&["validate", "c.yaml", "--output", "json"]);
    assert_eq!(code(&vj), 0);
    let vv: serde_json::Value = serde_json::from_slice(&vj.stdout).expect("validate json");
    assert_eq!(
        vv["files"][0]["rejected"].as_array().map(Vec::len),
        Some(10)
    );
    assert_eq!(vv["files"][0]["rejected_total"], 15);
    assert_eq!(vv["files"][0]["rejected"][0]["line"], 1002);
    assert_eq!(vv["files"][0]["rejected"][0]["file"], "a.csv");
    let gh = text(
        &f.imcast(&["validate", "c.yaml", "--output", "github"])
            .stdout,
    );
    assert!(
        gh.contains("::warning file=a.csv,line=1002,title=imcast validate::rejected row: id `x0` is not a whole number"),
        "{gh}"
    );

    // Required columns that are empty are rejected rows too, with the column named.
    f.write("r.csv", "user_id,name\n1,a\n2,\n3,c\n");
    f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ csv: r.csv, required: [name] }}\nguard: {{ max_invalid_ratio: 0.5 }}\n{MSG}"
        ),
    );
    let j = f.imcast(&["plan", "c.yaml", "--output", "json"]);
    assert_eq!(code(&j), 0, "{}", text(&j.stderr));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("plan json");
    assert_eq!(
        v["rejected"],
        serde_json::json!([{ "line": 3, "id": "2", "reason": "column `name` is empty (audience.required)" }])
    );
}

#[test]
fn a_throttle_above_the_account_limit_is_named_and_the_eta_is_the_runs() {
    let f = Fixture::new();
    f.write("a.csv", &csv(24_000, &[]));
    let file = f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ csv: a.csv }}\nthrottle: {{ limit: 60000, window: 1m }}\n{MSG}"
        ),
    );
    let p = f.imcast(&["plan", "c.yaml"]);
    assert_eq!(code(&p), 0, "{}", text(&p.stderr));
    let out = text(&p.stdout);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("throttle") || l.starts_with("warning: throttle"))
        .collect();
    insta::assert_snapshot!("throttle_above_the_account", lines.join("\n"));
    // The ETA is the run's: Settings::eta at the pace the limiter applies (12,000 a minute).
    let c = imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let s = imcast::run::Settings::resolve(
        &c,
        &imcast::config::AccountConfig::default(),
        &imcast::journal::RunFlags::default(),
        None,
    );
    let eta = s.eta(24_000, 48);
    assert_eq!(eta.as_secs(), 120);
    let j = f.imcast(&["plan", "c.yaml", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("json");
    assert_eq!(v["eta_secs"], 120);
    assert_eq!(v["throttle_limit"], 12_000);
    assert!(v["throttle_warning"]
        .as_str()
        .is_some_and(|w| w.contains("60000 per 1m") && w.contains("12000 per 1m")));
    // validate warns too.
    let v = f.imcast(&["validate", "c.yaml"]);
    assert_eq!(code(&v), 0);
    assert!(text(&v.stdout)
        .contains("warning: throttle 60000 per 1m is above the account's limit 12000 per 1m"));
    // run says it too (one recipient: the run itself takes no time).
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [1] }}\nthrottle: {{ limit: 60000, window: 1m }}\n{MSG}"),
    );
    let r = f.imcast(&["run", "c.yaml", "--mock", "--yes"]);
    assert_eq!(code(&r), 0, "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("throttle 60000 per 1m is above the account's limit 12000 per 1m"),
        "{}",
        text(&r.stderr)
    );
    // A throttle below the share: no warning.
    f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ csv: a.csv }}\nthrottle: {{ limit: 6000, window: 1m }}\n{MSG}"
        ),
    );
    let v: serde_json::Value =
        serde_json::from_slice(&f.imcast(&["plan", "c.yaml", "--output", "json"]).stdout)
            .expect("json");
    assert_eq!(v["throttle_warning"], serde_json::Value::Null);
    assert_eq!(v["eta_secs"], 240);
}

#[test]
fn a_past_at_says_whether_the_daemon_would_still_fire_it() {
    let f = Fixture::new();
    f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ ids: [1] }}\nschedule: {{ at: \"2026-03-01T09:00:00+08:00\", not_after: 2h }}\n{MSG}"
        ),
    );
    let show = |now: &str| {
        let p = f.imcast(&["plan", "c.yaml", "--now", now]);
        assert_eq!(code(&p), 0, "{}", text(&p.stderr));
        text(&p.stdout)
            .lines()
            .find(|l| l.starts_with("schedule"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let ahead = show("2026-03-01T00:00:00Z");
    let within = show("2026-03-01T02:30:00Z");
    let late = show("2026-03-04T02:30:00Z");
    assert!(ahead.contains("next 2026-03-01T01:00:00Z"), "{ahead}");
    insta::assert_snapshot!("past_at", format!("{ahead}\n{within}\n{late}"));
    // The rule is the daemon's.
    let c = imcast::spec::load(&f.path("c.yaml"), &imcast::spec::LoadOptions::default())
        .expect("campaign");
    let s = c.schedule.expect("schedule");
    let at: jiff::Timestamp = "2026-03-01T01:00:00Z".parse().expect("ts");
    assert!(!s.is_late(at, "2026-03-01T02:30:00Z".parse().expect("ts")));
    assert!(s.is_late(at, "2026-03-01T03:00:01Z".parse().expect("ts")));
    let j = f.imcast(&[
        "plan",
        "c.yaml",
        "--now",
        "2026-03-04T02:30:00Z",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("json");
    assert!(v["schedule_past"]
        .as_str()
        .is_some_and(|s| s.contains("will not fire")));
}

#[test]
fn an_inline_id_that_is_no_id_names_its_position() {
    let f = Fixture::new();
    f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience:\n  ids: [1, \"abc\", -5, 1.5, 99999999999999999999, null, 7]\n  exclude:\n    - ids:\n        - 2\n        - x\n{MSG}"
        ),
    );
    let v = f.imcast(&["validate", "c.yaml"]);
    assert_eq!(code(&v), 2);
    insta::assert_snapshot!("inline_ids", f.redact(&text(&v.stderr)));
}
