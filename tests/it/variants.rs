//! A/B variants and the holdout (issue 15): assignment proportions on 100k ids, stable under
//! row reordering and under switching a variant off, a property test that the plan loses and
//! repeats no one, a run against the mock on 127.0.0.1 where held-out recipients get nothing and
//! the report says `holdout`, and snapshots of what `plan`, `preview` and `validate` print.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::SystemClock;
use imcast::config::RepoPaths;
use imcast::exit::Exit;
use imcast::journal::RecipientStatus;
use imcast::mock::{self, MockConfig};
use imcast::plan::{self, PlanOptions, RowStatus};
use imcast::run::{run_campaign, Request};
use imcast::send::StopToken;
use imcast::spec::{self, Campaign, LoadOptions};
use imcast::variants::{Assigner, Assignment};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::common::{record_lines, Fixture};

/// A batch campaign named `spring` over `audience` (YAML), with `extra` top-level keys and the
/// `variants` list (YAML flow items, one a line).
fn campaign_text(audience: &str, extra: &str, variants: &[&str]) -> String {
    let mut s = format!(
        "version: 1\nname: spring\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }}\n\
         action: batch\nsender: 10001\naudience: {audience}\n{extra}message:\n  type: text\n  variants:\n"
    );
    for v in variants {
        s.push_str(&format!("    - {v}\n"));
    }
    s
}

fn parse(f: &Fixture, text: &str) -> Campaign {
    let p = f.write("c.yaml", text);
    spec::load(&p, &LoadOptions::default()).expect("valid campaign")
}

const ABC: [&str; 3] = [
    "{ name: a, weight: 50, text: \"A {{ recipient.id }}\" }",
    "{ name: b, weight: 30, text: \"B\" }",
    "{ name: c, weight: 20, text: \"C\", ext: { tag: c } }",
];

/// Within ±5σ of a binomial(n, p): a correct assignment fails this about once in 1.7 million.
fn within_binomial(count: u64, n: u64, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let dev = (count as f64 - mean).abs();
    assert!(
        dev <= 5.0 * sigma,
        "{what}: {count} of {n}, expected {mean:.0} ± {:.0} (5σ)",
        5.0 * sigma
    );
}

#[test]
fn assignment_proportions_follow_weights_and_holdout_on_100k_ids() {
    let f = Fixture::new();
    let c = parse(&f, &campaign_text("{ ids: [1] }", "holdout: 5%\n", &ABC));
    let a = Assigner::new(&c);
    let n = 100_000u64;
    let mut held = 0u64;
    let mut per = [0u64; 3];
    // Ids as a real audience has them: large and consecutive.
    for id in 7_000_000_000u64..7_000_000_000 + n {
        match a.assign(id) {
            Assignment::Holdout => held += 1,
            Assignment::Send(Some(i)) => per[i] += 1,
            Assignment::Send(None) => panic!("{id}: a campaign with variants gave no variant"),
        }
    }
    within_binomial(held, n, 0.05, "holdout");
    let sent = n - held;
    assert_eq!(
        per.iter().sum::<u64>(),
        sent,
        "everyone not held out has a variant"
    );
    within_binomial(per[0], sent, 0.5, "a (50 of 100)");
    within_binomial(per[1], sent, 0.3, "b (30 of 100)");
    within_binomial(per[2], sent, 0.2, "c (20 of 100)");
}

/// id → (status, variant name) of a plan's rows.
fn outcomes(c: &Campaign) -> BTreeMap<u64, (String, Option<String>)> {
    let p = plan::build(c, &PlanOptions::default()).expect("plan");
    p.rows()
        .map(|r| {
            let r = r.expect("row");
            let status = match r.status {
                RowStatus::Valid { .. } => "valid",
                RowStatus::Holdout => "holdout",
                RowStatus::Invalid { .. } => "invalid",
                RowStatus::Duplicate { .. } => "duplicate",
                RowStatus::Suppressed { .. } => "suppressed",
            };
            (r.id.expect("id"), (status.to_string(), r.variant_name))
        })
        .collect()
}

#[test]
fn the_same_csv_shuffled_gives_everyone_the_same_assignment() {
    let f = Fixture::new();
    let mut ids: Vec<u64> = (0..3_000u64).map(|i| 5_000_000 + i * 7).collect();
    let csv = |ids: &[u64]| {
        let mut s = String::from("user_id,city\n");
        for id in ids {
            s.push_str(&format!("{id},c{}\n", id % 5));
        }
        s
    };
    f.write("ordered.csv", &csv(&ids));
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    ids.shuffle(&mut rng);
    f.write("shuffled.csv", &csv(&ids));
    let ordered = outcomes(&parse(
        &f,
        &campaign_text("{ csv: ordered.csv }", "holdout: 10%\n", &ABC),
    ));
    let shuffled = outcomes(&parse(
        &f,
        &campaign_text("{ csv: shuffled.csv }", "holdout: 10%\n", &ABC),
    ));
    assert_eq!(ordered.len(), 3_000);
    assert_eq!(ordered, shuffled, "assignment independent of row order");
    let held = ordered.values().filter(|(s, _)| s == "holdout").count();
    assert!(held > 0 && held < 3_000, "{held} held out");
    for name in ["a", "b", "c"] {
        assert!(
            ordered.values().any(|(_, v)| v.as_deref() == Some(name)),
            "variant {name} has recipients"
        );
    }
}

#[test]
fn switching_a_variant_off_with_weight_0_moves_nobody_else() {
    let f = Fixture::new();
    let ids: Vec<String> = (0..2_000u64).map(|i| (900_000 + i).to_string()).collect();
    let audience = format!("{{ ids: [{}] }}", ids.join(", "));
    // Four variants, a middle one switched off: with cumulative ranges this would move some of
    // c's people to d.
    let d = "{ name: d, weight: 10, text: \"D\" }";
    let on = [ABC[0], ABC[1], ABC[2], d];
    let before = outcomes(&parse(&f, &campaign_text(&audience, "holdout: 5%\n", &on)));
    let off = [ABC[0], "{ name: b, weight: 0, text: \"B\" }", ABC[2], d];
    let after = outcomes(&parse(&f, &campaign_text(&audience, "holdout: 5%\n", &off)));
    let mut moved = 0;
    for (id, (status, variant)) in &before {
        let (s2, v2) = &after[id];
        assert_eq!(
            status, s2,
            "{id}: the holdout does not depend on the weights"
        );
        assert_ne!(v2.as_deref(), Some("b"), "{id}: b is switched off");
        if variant.as_deref() == Some("b") {
            moved += 1;
            assert!(v2.is_some(), "{id}: b's recipients go to another variant");
        } else {
            assert_eq!(variant, v2, "{id}: kept its variant");
        }
    }
    assert!(moved > 0, "b had recipients before");
}

fn plan_inline(dir: &std::path::Path, ids: &[u64], weights: &[u64], holdout_bp: u64) -> Campaign {
    let names = ["a", "b", "c", "d"];
    let variants: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            // The same text in every variant: the variant alone keeps their calls apart.
            format!(
                "{{ name: {}, weight: {w}, text: \"v {{{{ recipient.id % 3 }}}}\" }}",
                names[i]
            )
        })
        .collect();
    let refs: Vec<&str> = variants.iter().map(String::as_str).collect();
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    let text = campaign_text(
        &format!("{{ ids: [{}] }}", list.join(", ")),
        &format!(
            "holdout: \"{}.{:02}%\"\n",
            holdout_bp / 100,
            holdout_bp % 100
        ),
        &refs,
    );
    spec::parse_str(
        &text,
        dir.join("c.yaml"),
        dir.to_path_buf(),
        &LoadOptions::default(),
    )
    .expect("valid campaign")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every valid id is either held out or in exactly one call; each call carries one variant,
    /// the one the assigner gives each of its receivers; a weight-0 variant gets nobody.
    #[test]
    fn assignment_loses_and_repeats_no_one(
        ids in proptest::collection::btree_set(0u64..(1u64 << 62), 1..250),
        weights in proptest::collection::vec(0u64..5, 1..4),
        holdout_bp in 0u64..5_000,
    ) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<u64> = ids.into_iter().collect();
        let c = plan_inline(dir.path(), &ids, &weights, holdout_bp);
        let p = plan::build(&c, &PlanOptions::default()).expect("plan");
        let a = p.assigner();
        let mut in_calls: BTreeMap<u64, u32> = BTreeMap::new();
        for call in p.calls() {
            let call = call.expect("call");
            let variants: BTreeSet<Option<usize>> = call
                .receivers
                .iter()
                .map(|id| match a.assign(*id) {
                    Assignment::Send(v) => v,
                    Assignment::Holdout => panic!("{id}: held out but in call {}", call.seq),
                })
                .collect();
            prop_assert_eq!(variants.len(), 1, "call {} mixes variants", call.seq);
            for id in call.receivers {
                *in_calls.entry(id).or_default() += 1;
            }
        }
        let held: BTreeSet<u64> = p
            .rows()
            .map(|r| r.expect("row"))
            .filter(|r| r.status == RowStatus::Holdout)
            .filter_map(|r| r.id)
            .collect();
        prop_assert!(in_calls.values().all(|n| *n == 1), "someone is in two calls");
        let called: BTreeSet<u64> = in_calls.keys().copied().collect();
        prop_assert!(called.is_disjoint(&held));
        let all: BTreeSet<u64> = called.union(&held).copied().collect();
        prop_assert_eq!(all, ids.iter().copied().collect::<BTreeSet<u64>>());
        prop_assert_eq!(p.counts().valid + p.counts().holdout, ids.len() as u64);
        for (i, v) in p.ab_variants().iter().enumerate() {
            if weights[i] == 0 {
                prop_assert_eq!(v.recipients, 0);
            }
        }
        prop_assert_eq!(
            p.ab_variants().iter().map(|v| v.recipients).sum::<u64>(),
            p.counts().valid
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_run_sends_nobody_in_the_holdout_and_reports_them_as_holdout() {
    let f = Fixture::new();
    f.write(
        "imcast.toml",
        "[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
    );
    let ids: Vec<u64> = (0..600u64).map(|i| 100_000 + i).collect();
    let mut csv = String::from("user_id,name\n");
    for id in &ids {
        csv.push_str(&format!("{id},n{}\n", id % 4));
    }
    f.write("a.csv", &csv);
    let file = f.write(
        "c.yaml",
        &campaign_text(
            "{ csv: a.csv }",
            "holdout: 20%\n",
            &[
                "{ name: a, weight: 1, text: \"Hi {{ name }}\" }",
                "{ name: b, weight: 1, text: \"Hello\", ext: { cta: shop } }",
            ],
        ),
    );
    let c = spec::load(&file, &LoadOptions::default()).expect("valid");
    let assigner = Assigner::new(&c);
    let held: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|id| assigner.assign(*id) == Assignment::Holdout)
        .collect();
    assert!(!held.is_empty() && held.len() < ids.len());
    let rec = f.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let request = |c: Campaign| {
        let mut req = Request::new(c, RepoPaths::discover(&file, None, None, None));
        req.target = Some((m.endpoint(), m.credentials()));
        req.flags.mock = true;
        req.report_formats = Some(imcast::config::ReportFormats {
            csv: true,
            jsonl: true,
        });
        req
    };
    // A first session stopped after its first call, then a resume: nobody held out is sent by
    // either, and the resumed run keeps them `holdout`.
    let stop = StopToken::new();
    let mut first = request(c.clone());
    let stopper = stop.clone();
    first.hooks.progress = Some(Arc::new(move |p: &imcast::send::Progress| {
        if p.calls_done >= 1 {
            stopper.stop();
        }
    }));
    let s1 = run_campaign(first, Arc::new(SystemClock), stop)
        .await
        .expect("first session");
    assert!(
        s1.counts
            .get(&RecipientStatus::Pending)
            .copied()
            .unwrap_or(0)
            > 0,
        "the first session stopped early: {s1:?}"
    );
    assert_eq!(
        s1.counts.get(&RecipientStatus::Holdout).copied(),
        Some(held.len() as u64)
    );
    let s = run_campaign(request(c), Arc::new(SystemClock), StopToken::new())
        .await
        .expect("resumed run");
    assert_eq!(s.run_id, s1.run_id, "the same run resumed");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    assert_eq!(
        s.counts.get(&RecipientStatus::Holdout).copied(),
        Some(held.len() as u64)
    );
    assert_eq!(
        s.counts.get(&RecipientStatus::Sent).copied(),
        Some((ids.len() - held.len()) as u64)
    );

    // The mock: every recipient not held out exactly once, no held-out one at all.
    let mut delivered: BTreeMap<u64, u64> = BTreeMap::new();
    for v in record_lines(&rec, stats.delivered) {
        *delivered
            .entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    let want: BTreeSet<u64> = ids.iter().copied().filter(|i| !held.contains(i)).collect();
    assert_eq!(delivered.keys().copied().collect::<BTreeSet<_>>(), want);
    assert!(delivered.values().all(|n| *n == 1));

    // The report: status holdout (no variant, no call), everyone else their variant's name.
    let dir = s.report_dir.as_ref().expect("report");
    let rows = jsonl_rows(dir);
    assert_eq!(rows.len(), ids.len());
    let mut by_variant: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        let id = r["id"].as_u64().expect("id");
        if held.contains(&id) {
            assert_eq!(r["status"], "holdout", "{r}");
            assert_eq!(r["variant_name"], Value::Null, "{r}");
            assert_eq!(r["call"], Value::Null, "{r}");
        } else {
            assert_eq!(r["status"], "sent", "{r}");
            let want = match assigner.assign(id) {
                Assignment::Send(Some(0)) => "a",
                Assignment::Send(Some(1)) => "b",
                other => panic!("{id}: {other:?}"),
            };
            assert_eq!(r["variant_name"], want, "{r}");
            *by_variant.entry(want.to_string()).or_default() += 1;
        }
    }
    let csv = std::fs::read_to_string(dir.join("recipients.csv")).expect("csv");
    assert!(
        csv.lines()
            .next()
            .expect("header")
            .ends_with(",variant_name"),
        "{csv:.200}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.contains(",holdout,")).count(),
        held.len()
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("summary json");
    assert_eq!(summary["counts"]["holdout"], held.len() as u64);
    for (name, n) in &by_variant {
        assert_eq!(summary["variants"][name]["sent"], *n, "{summary}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).expect("html");
    assert!(html.contains("id=\"ab-variants-table\""));
    assert!(html.contains(&format!(
        "<tr data-variant=\"a\"><th scope=\"row\">a</th><td class=\"num\" data-status=\"sent\" data-count=\"{}\"",
        by_variant["a"]
    )));
    assert!(html.contains("data-status=\"holdout\""));
}

/// The rows of a run's `recipients.jsonl` in report folder `dir`.
fn jsonl_rows(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("recipients.jsonl"))
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// The per-recipient report a [`mock_run`] writes.
enum Kind {
    Csv,
    Jsonl,
}

/// Run campaign `c` (from `file`) once against a mock provider on 127.0.0.1, with `set` applied
/// to the request; it must end `Ok`. The run's report folder.
async fn mock_run(
    file: &std::path::Path,
    c: Campaign,
    report: Kind,
    set: impl FnOnce(&mut Request),
) -> std::path::PathBuf {
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut req = Request::new(c, RepoPaths::discover(file, None, None, None));
    req.target = Some((m.endpoint(), m.credentials()));
    req.flags.mock = true;
    req.report_formats = Some(imcast::config::ReportFormats {
        csv: matches!(report, Kind::Csv),
        jsonl: matches!(report, Kind::Jsonl),
    });
    set(&mut req);
    let s = run_campaign(req, Arc::new(SystemClock), StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    s.report_dir.expect("report")
}

/// A staged A/B run (a canary, skipped here, cuts calls per stage and group): every recipient's
/// row in the report names the A/B variant it was sent, the one its call carried. The rows used
/// to take the variant of the group numbered like their bucket (stage × group) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_ab_run_reports_each_recipients_own_variant() {
    let f = Fixture::new();
    f.write(
        "imcast.toml",
        "[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
    );
    let ids: Vec<u64> = (0..400u64).map(|i| 300_000 + i).collect();
    let mut csv = String::from("user_id\n");
    for id in &ids {
        csv.push_str(&format!("{id}\n"));
    }
    f.write("a.csv", &csv);
    let file = f.write(
        "c.yaml",
        &campaign_text(
            "{ csv: a.csv }",
            "rollout: { canary: 10%, wait: 1h }\n",
            &[
                "{ name: a, weight: 1, text: \"Hi\" }",
                "{ name: b, weight: 1, text: \"Hello\" }",
            ],
        ),
    );
    let c = spec::load(&file, &LoadOptions::default()).expect("valid");
    let assigner = Assigner::new(&c);
    let dir = mock_run(&file, c, Kind::Jsonl, |req| req.flags.skip_canary = true).await;
    let rows = jsonl_rows(&dir);
    assert_eq!(rows.len(), ids.len());
    let mut names = BTreeSet::new();
    for r in &rows {
        let id = r["id"].as_u64().expect("id");
        let want = match assigner.assign(id) {
            Assignment::Send(Some(0)) => "a",
            Assignment::Send(Some(1)) => "b",
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!(
            (&r["status"], &r["variant_name"]),
            (&Value::from("sent"), &Value::from(want)),
            "{r}"
        );
        names.insert(want);
    }
    assert_eq!(names.len(), 2);
}

/// A small fixed campaign for the snapshots.
fn snapshot_fixture() -> Fixture {
    let f = Fixture::new();
    let mut csv = String::from("user_id,name\n");
    for i in 1..=12u64 {
        csv.push_str(&format!("{},n{i}\n", 1000 + i));
    }
    f.write("a.csv", &csv);
    f.write(
        "c.yaml",
        "version: 1\nname: spring\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n\
         audience: { csv: a.csv }\nholdout: 10%\nmessage:\n  type: text\n  ext: { campaign: spring }\n  variants:\n\
         \x20   - { name: a, weight: 50, text: \"Hi {{ name }}: 20% off\" }\n\
         \x20   - { name: b, weight: 50, text: \"Spring sale\", ext: { cta: shop } }\n\
         \x20   - { name: c, weight: 0, text: \"off\" }\n",
    );
    f
}

fn out(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn plan_shows_each_variant_and_the_holdout() {
    let f = snapshot_fixture();
    let o = f.imcast(&["plan", "c.yaml", "--now", "2026-03-01T00:00:00Z"]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let text = f.redact(&stdout);
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("plan hash"))
        .map(|l| format!("{l}\n"))
        .collect();
    insta::assert_snapshot!("variants_plan", text);
    let o = f.imcast(&[
        "plan",
        "c.yaml",
        "--now",
        "2026-03-01T00:00:00Z",
        "--output",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("plan json");
    let names: Vec<&str> = v["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(v["holdout"], "10%");
    let total = v["counts"]["valid"].as_u64().expect("valid")
        + v["counts"]["holdout"].as_u64().expect("holdout");
    assert_eq!(total, 12);
}

#[test]
fn preview_says_which_variant_and_why() {
    let f = snapshot_fixture();
    let c = spec::load(&f.path("c.yaml"), &LoadOptions::default()).expect("valid");
    let a = Assigner::new(&c);
    let first = |want: fn(Assignment) -> bool| {
        (1001..=1012u64)
            .find(|id| want(a.assign(*id)))
            .expect("such a recipient")
    };
    let held = first(|x| x == Assignment::Holdout);
    let in_a = first(|x| x == Assignment::Send(Some(0)));
    let mut shown = String::new();
    for id in [in_a, held] {
        let o = f.imcast(&["preview", "c.yaml", "--recipient", &id.to_string()]);
        let (stdout, stderr) = out(&o);
        shown.push_str(&format!(
            "$ imcast preview c.yaml --recipient {id}\nexit {:?}\n{stdout}{stderr}\n",
            o.status.code()
        ));
    }
    insta::assert_snapshot!("variants_preview", f.redact(&shown));
}

#[test]
fn variant_and_holdout_errors_name_their_line() {
    let f = Fixture::new();
    let p = f.write(
        "c.yaml",
        "version: 1\nname: spring\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n\
         audience: { ids: [1] }\nholdout: 100%\nmessage:\n  type: text\n  text: hello\n  variants:\n\
         \x20   - { name: a, weight: 0, text: x }\n\
         \x20   - name: a\n      weight: 0\n      text: y\n      template: t.j2\n\
         \x20   - { name: \"b c\", weight: 0 }\n",
    );
    let e = spec::load(&p, &LoadOptions::default()).expect_err("invalid");
    let shown = f.redact(&e.to_string());
    assert!(
        shown.contains("c.yaml:13:13: message.variants[1].name `a` is used twice"),
        "{shown}"
    );
    let p2 = f.write(
        "d.yaml",
        "version: 1\nname: spring\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n\
         audience: { ids: [1] }\nholdout: five percent\nmessage:\n  type: image\n  url: x\n  variants:\n\
         \x20   - { name: a, weight: 1, text: x }\n",
    );
    let e2 = spec::load(&p2, &LoadOptions::default()).expect_err("invalid");
    insta::assert_snapshot!(
        "variants_spec_errors",
        format!("{shown}\n---\n{}", f.redact(&e2.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_csv_names_each_ab_variant_with_its_recipients() {
    let f = Fixture::new();
    f.write(
        "imcast.toml",
        "[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
    );
    let mut csv = String::from("user_id,name\n");
    for id in 200_000..200_300u64 {
        csv.push_str(&format!("{id},n{}\n", id % 3));
    }
    f.write("a.csv", &csv);
    // Variant a renders three Contents (one per name), b one.
    let file = f.write(
        "c.yaml",
        &campaign_text(
            "{ csv: a.csv }",
            "",
            &[
                "{ name: a, weight: 1, text: \"Hi {{ name }}\" }",
                "{ name: b, weight: 1, text: \"Hello\", ext: { cta: shop } }",
            ],
        ),
    );
    let c = spec::load(&file, &LoadOptions::default()).expect("valid");
    let dir = mock_run(&file, c, Kind::Csv, |_| {}).await;

    // recipients.csv: rows per variant name, and which variant ids each name has.
    let mut rows = csv::Reader::from_path(dir.join("recipients.csv")).expect("recipients.csv");
    let h = rows.headers().expect("header").clone();
    let col = |n: &str| h.iter().position(|c| c == n).expect(n);
    let (vid, vname) = (col("variant"), col("variant_name"));
    let mut per_name: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows.records() {
        let r = r.expect("row");
        *per_name.entry(r[vname].to_string()).or_default() += 1;
        ids_of
            .entry(r[vname].to_string())
            .or_default()
            .insert(r[vid].to_string());
    }
    assert_eq!(per_name.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(per_name.values().sum::<u64>(), 300);

    // variants.csv: every row names its A/B variant, and the recipients per name match.
    let mut v = csv::Reader::from_path(dir.join("variants.csv")).expect("variants.csv");
    let h = v.headers().expect("header").clone();
    assert_eq!(&h[1], "variant_name", "{h:?}");
    let col = |n: &str| h.iter().position(|c| c == n).expect(n);
    let (vid, vname, n) = (col("variant"), col("variant_name"), col("recipients"));
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    let mut listed_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in v.records() {
        let r = r.expect("row");
        *listed.entry(r[vname].to_string()).or_default() += r[n].parse::<u64>().expect("count");
        listed_ids
            .entry(r[vname].to_string())
            .or_default()
            .insert(r[vid].to_string());
    }
    assert_eq!(listed, per_name);
    assert_eq!(listed_ids, ids_of);
    assert_eq!(listed_ids["a"].len(), 3, "a renders one Content per name");
    assert_eq!(listed_ids["b"].len(), 1);
}
