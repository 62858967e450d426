//! What people read around a send (issue 11): every error has a place, mock runs and state
//! directories are found the same way by every command, colour only where it belongs, and the
//! folded preview. Messages are snapshotted.

use imcast::plan::{self, PlanOptions};
use imcast::spec::{self, LoadOptions};

use crate::common::{Fixture, HEAD};

fn load_err(f: &Fixture, text: &str) -> String {
    let p = f.write("c.yaml", text);
    let e = spec::load(&p, &LoadOptions::default()).expect_err("campaign should be rejected");
    f.redact(&e.to_string())
}

const BODY: &str = "audience: { ids: [1, 2] }\nmessage: { type: text, text: hi }\n";

#[test]
fn schedule_errors_name_line_column_and_the_cron_field() {
    let f = Fixture::new();
    let bad_hour = load_err(
        &f,
        &format!("{HEAD}{BODY}schedule:\n  cron: \"0 25 * * *\"\n  timezone: Asia/Shanghai\n"),
    );
    let bad_dow = load_err(
        &f,
        &format!("{HEAD}{BODY}schedule:\n  cron: \"0 0 9 * * MON-FRY\"\n  timezone: UTC\n"),
    );
    let bad_tz = load_err(
        &f,
        &format!("{HEAD}{BODY}schedule:\n  cron: \"0 9 * * *\"\n  timezone: Asia/Shanghay\n"),
    );
    let no_tz = load_err(
        &f,
        &format!("{HEAD}{BODY}schedule: {{ cron: \"0 9 * * *\" }}\n"),
    );
    let quiet = load_err(
        &f,
        &format!(
            "{HEAD}{BODY}schedule:\n  at: \"2026-03-01T09:00:00Z\"\n  quiet_hours: {{ from: \"22:00\", to: \"7h\", timezone: UTC }}\n"
        ),
    );
    for e in [&bad_hour, &bad_dow, &bad_tz, &no_tz, &quiet] {
        assert!(!e.contains("schedule: schedule."), "doubled prefix: {e}");
        assert!(!e.contains("quiet_hours: schedule."), "doubled prefix: {e}");
    }
    // The key's line and column, and the field that is wrong.
    assert!(
        bad_hour.contains("c.yaml:9:9: schedule.cron:"),
        "{bad_hour}"
    );
    assert!(bad_hour.contains("field 2 (hour) \"25\""), "{bad_hour}");
    assert!(
        bad_dow.contains("field 6 (day-of-week) \"MON-FRY\""),
        "{bad_dow}"
    );
    assert!(
        !bad_dow.contains("field 1 "),
        "only the wrong field: {bad_dow}"
    );
    assert!(
        bad_tz.contains("c.yaml:10:13: schedule.timezone:"),
        "{bad_tz}"
    );
    insta::assert_snapshot!(
        "schedule_errors",
        [bad_hour, bad_dow, bad_tz, no_tz, quiet].join("\n")
    );
}

#[test]
fn a_yaml_alias_bomb_is_refused_with_words_people_read() {
    let f = Fixture::new();
    let mut text =
        format!("{HEAD}audience: {{ ids: [1] }}\nmessage:\n  type: text\n  text: hi\n  vars:\n");
    text.push_str("    a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for (name, prev) in [
        ("b", "a"),
        ("c", "b"),
        ("d", "c"),
        ("e", "d"),
        ("f", "e"),
        ("g", "f"),
    ] {
        let items = vec![format!("*{prev}"); 10].join(",");
        text.push_str(&format!("    {name}: &{name} [{items}]\n"));
    }
    let e = load_err(&f, &text);
    assert!(e.contains("[DIR]/c.yaml:"), "names the file: {e}");
    assert!(
        e.contains("the file expands to too many values (YAML aliases?)"),
        "{e}"
    );
    assert!(!e.contains("budget") && !e.contains("Nodes {"), "{e}");
    insta::assert_snapshot!("alias_bomb", e);
}

#[test]
fn an_undefined_variable_in_a_template_file_names_the_file_and_line() {
    let f = Fixture::new();
    f.write("a.csv", "user_id,name\n1,a\n2,b\n");
    f.write(
        "templates/welcome.j2",
        "Hello {{ name }},\n\nsee {{ nmae }}\n",
    );
    f.write("templates/footer.j2", "--\n{{ signature }}\n");
    f.write(
        "with_include.j2",
        "Hi {{ name }}\n{% include \"footer.j2\" %}\n",
    );
    let build = |template: &str| {
        let p = f.write(
            "c.yaml",
            &format!("{HEAD}audience: {{ csv: a.csv }}\nmessage: {{ type: text, template: {template} }}\n"),
        );
        let c = spec::load(&p, &LoadOptions::default()).expect("campaign loads");
        plan::build(&c, &PlanOptions::default())
            .err()
            .expect("rendering fails")
            .to_string()
    };
    let direct = build("templates/welcome.j2");
    assert!(
        direct.contains(
            "undefined variable `nmae` in templates/welcome.j2 line 3 (did you mean `name`?)"
        ),
        "{direct}"
    );
    let included = build("with_include.j2");
    assert!(
        included.contains("undefined variable `signature` in templates/footer.j2 line 2"),
        "{included}"
    );
    insta::assert_snapshot!("template_file_errors", format!("{direct}\n{included}"));
}
