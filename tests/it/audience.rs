//! Audiences: CSV details users hit, id validity, duplicates, suppression, required columns.

use imcast::plan::{self, AudienceRow, PlanOptions, RowStatus};
use imcast::spec::{self, LoadOptions};

use crate::common::{Fixture, HEAD};

fn campaign(f: &Fixture, audience: &str, text: &str) -> spec::Campaign {
    let p = f.write(
        "c.yaml",
        &format!("{HEAD}audience:\n{audience}\nmessage: {{ type: text, text: \"{text}\" }}\n"),
    );
    match spec::load(&p, &LoadOptions::default()) {
        Ok(c) => c,
        Err(e) => panic!("load: {e}"),
    }
}

fn rows(p: &plan::Plan) -> Vec<AudienceRow> {
    p.rows().collect::<Result<_, _>>().expect("rows")
}

#[test]
fn bom_crlf_quotes_and_multiline_fields() {
    let f = Fixture::new();
    f.write(
        "a.csv",
        "\u{feff}user_id,name,note\r\n1,\"Smith, Jo\",\"said \"\"hi\"\"\"\r\n2,Ann,\"two\r\nlines\"\r\n\r\n3,Bo,x\r\n",
    );
    let c = campaign(&f, "  csv: a.csv", "{{ name }}|{{ note }}");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    assert_eq!(p.counts().total, 3);
    assert_eq!(p.counts().valid, 3);
    let r = rows(&p);
    assert_eq!(
        r.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![2, 3, 6],
        "lines count the multi-line field and skip the blank line"
    );
    let texts: Vec<String> = p
        .samples()
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(&s.content).expect("json");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    assert_eq!(
        texts,
        vec!["Smith, Jo|said \"hi\"", "Ann|two\r\nlines", "Bo|x"]
    );
}

#[test]
fn invalid_duplicate_suppressed_with_lines() {
    let f = Fixture::new();
    f.write(
        "a.csv",
        "user_id,name\n10,a\n,b\nabc,c\n-4,d\n18446744073709551616,e\n1.5,f\n10,g\n11,h\n9007199254740993,i\n12,\n9223372036854775807,j\n9223372036854775808,k\n18446744073709551615,l\n",
    );
    f.write("optout.csv", "user_id\n11\n");
    let c = campaign(
        &f,
        "  csv: a.csv\n  required: [name]\n  exclude: [ { csv: optout.csv } ]",
        "hi {{ name }}",
    );
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let n = p.counts();
    assert_eq!(
        (n.total, n.valid, n.invalid, n.duplicate, n.suppressed),
        (13, 3, 8, 1, 1)
    );
    let text: Vec<String> = rows(&p)
        .iter()
        .map(|r| format!("{} {:?} {:?}", r.line, r.id, r.status))
        .collect();
    insta::assert_snapshot!(text.join("\n"));
}

#[test]
fn ids_above_2_pow_53_survive() {
    let f = Fixture::new();
    f.write(
        "a.csv",
        "user_id\n9007199254740993\n9223372036854775807\n9007199254740992\n",
    );
    let c = campaign(&f, "  csv: a.csv", "hi");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let calls: Vec<_> = p.calls().collect::<Result<_, _>>().expect("calls");
    assert_eq!(
        calls[0].receivers,
        vec![
            9_007_199_254_740_993,
            i64::MAX as u64,
            9_007_199_254_740_992
        ]
    );
    let text = crate::common::wire_body(&c, &calls[0]);
    assert!(
        text.contains("[9007199254740993,9223372036854775807,9007199254740992]"),
        "{text}"
    );
}

#[test]
fn header_errors_are_clear() {
    let f = Fixture::new();
    f.write("empty.csv", "");
    f.write("noid.csv", "id,name\n1,a\n");
    f.write("req.csv", "user_id\n1\n");
    let mut out = String::new();
    for (file, extra) in [
        ("empty.csv", ""),
        ("noid.csv", ""),
        ("req.csv", "\n  required: [name]"),
    ] {
        let c = campaign(&f, &format!("  csv: {file}{extra}"), "hi");
        let e = plan::build(&c, &PlanOptions::default())
            .err()
            .expect("should fail");
        out.push_str(&f.redact(&e.to_string()));
        out.push('\n');
    }
    insta::assert_snapshot!(out);
}

#[test]
fn custom_id_column_and_short_rows() {
    let f = Fixture::new();
    f.write("a.csv", "name,conv\nx,5\ny\nz,6,extra\n");
    let c = campaign(&f, "  csv: a.csv\n  id_column: conv", "hi {{ name }}");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let r = rows(&p);
    assert_eq!(r[0].id, Some(5));
    assert_eq!(
        r[1].status,
        RowStatus::Invalid {
            reason: "missing id".into()
        }
    );
    assert_eq!(r[2].id, Some(6));
}

#[test]
fn bad_suppression_list_is_an_error_not_ignored() {
    let f = Fixture::new();
    f.write("a.csv", "user_id\n1\n");
    f.write("x.csv", "user_id\n2\nnope\n");
    let c = campaign(&f, "  csv: a.csv\n  exclude: [ { csv: x.csv } ]", "hi");
    let e = plan::build(&c, &PlanOptions::default())
        .err()
        .expect("should fail");
    assert_eq!(
        f.redact(&e.to_string()),
        "[DIR]/x.csv: line 3: suppression list id `nope` is invalid (id `nope` is not a whole number); fix the list — a suppression list is never partly applied"
    );
}

#[test]
fn extra_suppression_lists_apply_and_one_column_files_work() {
    let f = Fixture::new();
    f.write("a.csv", "user_id\n1\n2\n3\n");
    let g = f.write("global.csv", "uid\n2\n");
    let c = campaign(&f, "  csv: a.csv\n  exclude: [ { ids: [3] } ]", "hi");
    let p = plan::build(
        &c,
        &PlanOptions {
            extra_suppress: vec![g],
            ..PlanOptions::default()
        },
    )
    .expect("plan");
    let st: Vec<RowStatus> = rows(&p).into_iter().map(|r| r.status).collect();
    assert_eq!(
        st,
        vec![
            RowStatus::Valid { call: 0 },
            RowStatus::Suppressed {
                list: "global.csv".into()
            },
            RowStatus::Suppressed {
                list: "inline".into()
            },
        ]
    );
}

#[test]
fn not_utf8_names_the_line() {
    let f = Fixture::new();
    let p = f.path("a.csv");
    std::fs::write(&p, b"user_id,name\n1,ok\n2,\xff\xfe\n").expect("write");
    let c = campaign(&f, "  csv: a.csv", "hi {{ name }}");
    let e = plan::build(&c, &PlanOptions::default())
        .err()
        .expect("should fail");
    let s = f.redact(&e.to_string());
    assert!(s.starts_with("[DIR]/a.csv: line 3:"), "{s}");
    assert!(s.contains("UTF-8"), "{s}");
}
