//! `imcast plan --diff REV` against a real temporary git repository (real `git` commands, identity
//! set in the repository, no global or system git config read), and `validate --output github|
//! json|sarif`, `completions`, `man`, `schema plan-diff`.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common::{bin, root, Fixture, OutputWithin};

/// A fixed instant for schedule occurrences and ETAs (a Sunday).
const NOW: &str = "2026-03-01T00:00:00Z";

/// A temporary git repository holding a campaign, its audience, exclude list and template.
struct Repo {
    dir: tempfile::TempDir,
}

fn git_env(c: &mut Command) -> &mut Command {
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_DATE", "2026-02-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-02-01T00:00:00Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
}

const CAMPAIGN: &str = "\
version: 1
name: spring-promo
provider: { app_id: 1, region: cn-north-1 }
action: batch
sender: 10
audience:
  csv: ../audiences/promo.csv
  required: [name]
  exclude:
    - csv: ../audiences/optout.csv
message:
  type: text
  template: ../templates/promo.j2
  ext: { campaign: \"{{ campaign.name }}\" }
throttle: { limit: 600, window: 60s }
schedule:
  cron: \"0 9 * * 1\"
  timezone: Asia/Shanghai
";

const AUDIENCE: &str = "\
user_id,name,city
1001,Alice,Paris
1002,Bob,Berlin
1003,Chen,Paris
1004,Dana,Rome
1005,Eve,Paris
";

const TEMPLATE: &str =
    "The spring sale starts Monday{% if city == 'Paris' %} in our Paris store{% endif %}.\n";

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        r.git(&["init", "-q", "-b", "main"]);
        r.git(&["config", "user.name", "imcast test"]);
        r.git(&["config", "user.email", "test@example.invalid"]);
        r.git(&["config", "commit.gpgsign", "false"]);
        r.write("campaigns/promo.yaml", CAMPAIGN);
        r.write("audiences/promo.csv", AUDIENCE);
        r.write("audiences/optout.csv", "user_id\n1005\n");
        r.write("templates/promo.j2", TEMPLATE);
        r.commit("base");
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    fn git(&self, args: &[&str]) -> String {
        let out = git_env(&mut Command::new("git"))
            .args(args)
            .current_dir(self.dir.path())
            .output_limited()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }

    fn imcast(&self, args: &[&str]) -> Output {
        git_env(&mut Command::new(bin()))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .output_limited()
            .expect("run imcast")
    }

    /// `plan campaigns/promo.yaml --diff REV --output FORMAT`, checked to succeed, commit ids and
    /// temp paths redacted.
    fn diff(&self, rev: &str, output: &str) -> String {
        self.diff_file("campaigns/promo.yaml", rev, output)
    }

    fn diff_file(&self, file: &str, rev: &str, output: &str) -> String {
        let out = self.imcast(&[
            "plan", file, "--diff", rev, "--output", output, "--now", NOW,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.redact(&stdout, rev)
    }

    fn redact(&self, s: &str, rev: &str) -> String {
        let commit = self.git(&["rev-parse", &format!("{rev}^{{commit}}")]);
        let raw = self.dir.path().display().to_string();
        let canon = std::fs::canonicalize(self.dir.path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| raw.clone());
        s.replace(&commit, "[COMMIT]")
            .replace(&commit[..8], "[COMMIT8]")
            .replace(&canon, "[REPO]")
            .replace(&raw, "[REPO]")
    }

    /// Commit a change, then snapshot all three outputs of `--diff HEAD~1` (the change alone), and
    /// return the JSON.
    fn change_and_snapshot(&self, name: &str, change: impl FnOnce(&Repo)) -> serde_json::Value {
        change(self);
        self.commit(name);
        let text = self.diff("HEAD~1", "text");
        let md = self.diff("HEAD~1", "markdown");
        let json = self.diff("HEAD~1", "json");
        check_markdown(&md);
        insta::assert_snapshot!(format!("diff_{name}_text"), text);
        insta::assert_snapshot!(format!("diff_{name}_markdown"), md);
        insta::assert_snapshot!(format!("diff_{name}_json"), json);
        let v: serde_json::Value = serde_json::from_str(&json).expect("json output");
        check_against_schema(&v);
        v
    }
}

/// The Markdown parses as CommonMark (with GFM tables): a summary table and three collapsible
/// `<details>` sections, each with a `<summary>`.
fn check_markdown(md: &str) {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut tables = 0;
    let mut header_cells = 0;
    let mut html = String::new();
    let mut in_head = false;
    for ev in Parser::new_ext(md, Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Table(_)) => tables += 1,
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableHead) => in_head = false,
            Event::Start(Tag::TableCell) if in_head => header_cells += 1,
            Event::Html(h) | Event::InlineHtml(h) => html.push_str(&h),
            _ => {}
        }
    }
    assert!(tables >= 2, "a summary table and a settings table: {md}");
    assert!(header_cells >= 4, "the summary table has 4 columns: {md}");
    assert_eq!(html.matches("<details>").count(), 3, "{html}");
    assert_eq!(html.matches("<summary>").count(), 3, "{html}");
    assert_eq!(html.matches("</details>").count(), 3, "{html}");
    for section in ["Audience:", "Content:", "Sending:"] {
        assert!(
            html.contains(&format!("<summary>{section}")),
            "{section}: {html}"
        );
    }
}

/// Every key of the output is in `plan-diff.schema.json`, and every required key is present.
fn check_against_schema(v: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("plan-diff.schema.json")).expect("schema file"),
    )
    .expect("schema json");
    let props = schema["properties"].as_object().expect("properties");
    let obj = v.as_object().expect("object");
    for k in obj.keys() {
        assert!(props.contains_key(k), "`{k}` is not in the schema");
    }
    for k in schema["required"].as_array().expect("required") {
        let k = k.as_str().expect("key");
        assert!(obj.contains_key(k), "required `{k}` missing");
    }
    assert_eq!(v["format"], "imcast-plan-diff/1");
}

#[test]
fn template_change_groups_recipients_by_variant_with_a_word_diff() {
    let r = Repo::new();
    let v = r.change_and_snapshot("template", |r| {
        r.write(
            "templates/promo.j2",
            &TEMPLATE.replace("starts Monday", "starts on Tuesday"),
        );
    });
    assert_eq!(v["no_effect"], false);
    assert_eq!(v["recipients"]["content_changed"], 4);
    assert_eq!(v["recipients"]["gained"], 0);
    assert_eq!(v["content"]["groups_total"], 2);
    let g = &v["content"]["groups"][0];
    assert_eq!(g["count"], 2);
    assert_eq!(g["field"], "text");
    let words: Vec<(String, String)> = g["words"]
        .as_array()
        .expect("words")
        .iter()
        .map(|w| {
            (
                w["op"].as_str().unwrap_or("").to_string(),
                w["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        words.contains(&("delete".into(), "Monday".into())),
        "{words:?}"
    );
    assert!(
        words.contains(&("insert".into(), "on Tuesday".into())),
        "{words:?}"
    );
}

#[test]
fn csv_change_lists_added_removed_invalid_and_duplicate_rows() {
    let r = Repo::new();
    let v = r.change_and_snapshot("csv", |r| {
        let csv = r
            .read("audiences/promo.csv")
            .replace("1002,Bob,Berlin\n", "")
            + "1006,Fay,Rome\n10x7,Gus,Paris\n1008,,Paris\n1001,Alice,Paris\n1009,Hal,Berlin\n";
        r.write("audiences/promo.csv", &csv);
    });
    let a = &v["audience"];
    assert_eq!(a["added"]["count"], 2, "{a}");
    assert_eq!(a["added"]["examples"][0]["id"], 1006);
    assert_eq!(a["added"]["examples"][0]["line_after"], 6);
    assert_eq!(a["removed"]["count"], 1);
    assert_eq!(a["removed"]["examples"][0]["id"], 1002);
    assert_eq!(a["removed"]["examples"][0]["line_before"], 3);
    assert_eq!(a["newly_invalid"]["count"], 2);
    assert_eq!(a["newly_invalid"]["examples"][0]["raw_id"], "10x7");
    assert_eq!(a["newly_invalid"]["examples"][1]["id"], 1008);
    assert_eq!(a["newly_duplicate"]["count"], 1);
    assert_eq!(a["newly_duplicate"]["examples"][0]["id"], 1001);
    assert_eq!(v["recipients"]["gained"], 2);
    assert_eq!(v["recipients"]["lost"], 1);
    assert_eq!(v["recipients"]["content_changed"], 0);
    assert_eq!(v["no_effect"], false);
}

#[test]
fn exclude_list_change_shows_newly_suppressed() {
    let r = Repo::new();
    let v = r.change_and_snapshot("exclude", |r| {
        r.write("audiences/optout.csv", "user_id\n1005\n1003\n");
    });
    assert_eq!(v["audience"]["newly_suppressed"]["count"], 1);
    assert_eq!(v["audience"]["newly_suppressed"]["examples"][0]["id"], 1003);
    assert_eq!(v["recipients"]["lost"], 1);
    assert_eq!(v["recipients"]["after"], 3);
}

#[test]
fn throttle_change_shows_throttle_and_eta() {
    let r = Repo::new();
    let v = r.change_and_snapshot("throttle", |r| {
        r.write(
            "campaigns/promo.yaml",
            &CAMPAIGN.replace("limit: 600, window: 60s", "limit: 2, window: 60s"),
        );
    });
    let changed: Vec<&str> = v["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter(|s| s["changed"] == true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(changed, ["throttle", "eta"]);
    assert_eq!(v["recipients"]["unchanged"], 4);
    assert_eq!(v["no_effect"], false);
}

#[test]
fn a_max_invalid_ratio_change_shows_in_the_guard() {
    let r = Repo::new();
    let v = r.change_and_snapshot("guard_ratio", |r| {
        r.write(
            "campaigns/promo.yaml",
            &format!("{CAMPAIGN}guard: {{ max_invalid_ratio: 0.5 }}\n"),
        );
    });
    let changed: Vec<&serde_json::Value> = v["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter(|s| s["changed"] == true)
        .collect();
    assert_eq!(changed.len(), 1, "only the guard changes: {changed:?}");
    let g = changed[0];
    assert_eq!(g["name"], "guard");
    assert_eq!(
        g["before"],
        "max_recipients none, max_invalid_ratio 0.05 (default), audience.allow_empty false"
    );
    assert_eq!(
        g["after"],
        "max_recipients none, max_invalid_ratio 0.5, audience.allow_empty false"
    );
    assert_eq!(v["recipients"]["unchanged"], 4);
}

#[test]
fn schedule_time_zone_change_shows_next_occurrences_in_both_zones() {
    let r = Repo::new();
    let v = r.change_and_snapshot("timezone", |r| {
        r.write(
            "campaigns/promo.yaml",
            &CAMPAIGN.replace("Asia/Shanghai", "Europe/Berlin"),
        );
    });
    let s = &v["schedule"];
    assert_eq!(s["changed"], true);
    // Monday 2 March 2026, 09:00 in each zone.
    assert_eq!(s["before"][0]["utc"], "2026-03-02T01:00:00Z");
    assert_eq!(s["after"][0]["utc"], "2026-03-02T08:00:00Z");
    assert_eq!(
        s["after"][0]["local"],
        "2026-03-02 09:00:00 +01:00 (Europe/Berlin)"
    );
}

#[test]
fn a_comment_only_change_has_no_effect() {
    let r = Repo::new();
    let v = r.change_and_snapshot("comment", |r| {
        r.write(
            "campaigns/promo.yaml",
            &format!("# Reviewed by ops on Friday.\n{CAMPAIGN}"),
        );
    });
    assert_eq!(v["no_effect"], true);
    assert_eq!(
        v["identical"], false,
        "the plan hash covers the file's bytes"
    );
    assert_ne!(v["before"]["plan_hash"], v["after"]["plan_hash"]);
}

#[test]
fn a_reordering_of_rows_has_no_effect() {
    let r = Repo::new();
    r.write(
        "audiences/promo.csv",
        "user_id,name,city\n1004,Dana,Rome\n1003,Chen,Paris\n1005,Eve,Paris\n1002,Bob,Berlin\n1001,Alice,Paris\n",
    );
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    assert_eq!(v["no_effect"], true, "{v}");
    assert!(v["audience"]["added"]["count"] == 0 && v["recipients"]["unchanged"] == 4);
    // A real change in the same reordered file is seen.
    r.write(
        "audiences/promo.csv",
        "user_id,name,city\n1004,Dana,Rome\n1003,Chen,Berlin\n1005,Eve,Paris\n1002,Bob,Berlin\n1001,Alice,Paris\n",
    );
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    assert_eq!(v["no_effect"], false);
    assert_eq!(v["recipients"]["content_changed"], 1);
    assert_eq!(v["content"]["groups"][0]["example"]["id"], 1003);
    assert_eq!(v["content"]["groups"][0]["example"]["line_after"], 3);
    assert_eq!(v["content"]["groups"][0]["example"]["line_before"], 4);
}

#[test]
fn a_file_absent_at_the_revision_is_all_added() {
    let r = Repo::new();
    r.write(
        "campaigns/second.yaml",
        &CAMPAIGN.replace("spring-promo", "second"),
    );
    let v: serde_json::Value =
        serde_json::from_str(&r.diff_file("campaigns/second.yaml", "HEAD", "json"))
            .expect("json output");
    assert!(v["before"].is_null());
    assert_eq!(v["after"]["valid"], 4);
    assert_eq!(v["audience"]["added"]["count"], 4);
    assert_eq!(v["recipients"]["gained"], 4);
    assert_eq!(v["content"]["gained"][0]["count"], 2);
    assert_eq!(v["no_effect"], false);
    assert!(v["verdict"]
        .as_str()
        .is_some_and(|s| s.starts_with("New campaign")));
    check_markdown(&r.diff_file("campaigns/second.yaml", "HEAD", "markdown"));
}

#[test]
fn a_deleted_file_is_all_removed() {
    let r = Repo::new();
    std::fs::remove_file(r.path("campaigns/promo.yaml")).expect("rm");
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    assert!(v["after"].is_null());
    assert_eq!(v["audience"]["removed"]["count"], 4);
    assert_eq!(v["recipients"]["lost"], 4);
    let text = r.diff("HEAD", "text");
    assert!(text.contains("Campaign deleted: 4 recipients"), "{text}");
}

#[test]
fn the_revision_is_read_from_git_not_the_work_tree() {
    // Uncommitted changes to every input: the revision side must still see the committed files.
    let r = Repo::new();
    r.write("audiences/promo.csv", "user_id,name,city\n2001,Zed,Rome\n");
    r.write("templates/promo.j2", "Changed.\n");
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    assert_eq!(v["before"]["valid"], 4);
    assert_eq!(v["after"]["valid"], 1);
    assert_eq!(v["audience"]["removed"]["count"], 4);
    assert_eq!(
        v["content"]["gained"][0]["content"],
        r#"{"text":"Changed."}"#
    );
}

#[test]
fn outside_a_repository_and_unknown_revisions_are_clear_errors() {
    let f = Fixture::new();
    f.write("c.yaml", CAMPAIGN);
    let out = f.imcast(&["plan", "c.yaml", "--diff", "HEAD"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("not inside a git repository"), "{e}");

    let r = Repo::new();
    let out = r.imcast(&["plan", "campaigns/promo.yaml", "--diff", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown revision `no-such-branch`"), "{e}");

    let out = r.imcast(&["plan", "campaigns/promo.yaml", "--diff", "origin/main"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("fetch-depth"),
        "a remote branch hints at fetching: {e}"
    );

    let out = r.imcast(&["plan", "campaigns/promo.yaml", "--diff=--output=x"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("starts with `-`"), "{e}");

    let out = r.imcast(&["plan", "campaigns/none.yaml", "--diff", "HEAD"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no such campaign file"), "{e}");

    // A file the revision's campaign names but the revision does not have.
    r.write("audiences/extra.csv", "user_id\n1\n");
    r.write(
        "campaigns/promo.yaml",
        &CAMPAIGN.replace("optout.csv", "extra.csv"),
    );
    // The campaign is committed, the list it names is not (it is only in the work tree).
    r.git(&["add", "campaigns/promo.yaml"]);
    r.git(&["commit", "-q", "-m", "names a new list"]);
    let out = r.imcast(&["plan", "campaigns/promo.yaml", "--diff", "HEAD"]);
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("at HEAD"), "{e}");
    assert!(e.contains("extra.csv"), "{e}");
}

#[test]
fn markdown_without_diff_is_refused() {
    let r = Repo::new();
    let out = r.imcast(&["plan", "campaigns/promo.yaml", "--output", "markdown"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--diff"));
}

#[test]
fn plan_diff_schema_is_committed_and_current() {
    let out = Command::new(bin())
        .args(["schema", "plan-diff"])
        .output_limited()
        .expect("run imcast");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["title"], "imcast plan diff");
    let committed =
        std::fs::read_to_string(root().join("plan-diff.schema.json")).expect("schema file");
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(
        committed, v,
        "regenerate: imcast schema plan-diff > plan-diff.schema.json"
    );
}

fn bad_campaign(f: &Fixture) -> PathBuf {
    f.write("a.csv", "user_id,name\n1,A\n2,B\n");
    f.write(
        "bad,one.yaml",
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-nort-1 }\naction: batch\nsender: 1\naudience: { csv: a.csv }\nmessage: { type: text, text: \"hi\" }\n",
    );
    f.write(
        "render.yaml",
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { csv: a.csv }\nmessage: { type: text, text: \"hi {{ nme }}\" }\n",
    );
    f.write(
        "good.yaml",
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { csv: a.csv }\nmessage: { type: text, text: \"hi {{ name }}\" }\n",
    )
}

#[test]
fn validate_prints_github_annotations_with_file_line_and_column() {
    let f = Fixture::new();
    bad_campaign(&f);
    let out = f.imcast(&[
        "validate",
        "good.yaml",
        "bad,one.yaml",
        "render.yaml",
        "--output",
        "github",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ok  good.yaml: 2 valid"), "{text}");
    assert!(
        lines[1].starts_with("::error file=bad%2Cone.yaml,line=3,col=32,title=imcast validate::unknown region `cn-nort-1`"),
        "{text}"
    );
    // The `,` in the file name is escaped; the render failure points at the audience row.
    assert!(
        lines[2].starts_with("::error file=a.csv,line=2,title=imcast validate::rendering failed: undefined variable `nme`"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
}

#[test]
fn validate_json_and_sarif_list_every_problem() {
    let f = Fixture::new();
    bad_campaign(&f);
    let out = f.imcast(&["validate", "good.yaml", "bad,one.yaml", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["invalid"], 1);
    assert_eq!(v["files"][0]["ok"], true);
    assert_eq!(v["files"][0]["valid"], 2);
    assert_eq!(v["files"][1]["problems"][0]["line"], 3);
    assert_eq!(v["files"][1]["problems"][0]["column"], 32);

    let out = f.imcast(&["validate", "good.yaml", "bad,one.yaml", "--output", "sarif"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sarif");
    assert_eq!(v["version"], "2.1.0");
    let r = &v["runs"][0]["results"][0];
    assert_eq!(
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "bad,one.yaml"
    );
    assert_eq!(
        r["locations"][0]["physicalLocation"]["region"]["startLine"],
        3
    );
    assert_eq!(v["runs"][0]["results"].as_array().map(Vec::len), Some(1));
}

#[test]
fn completions_and_man_page_are_generated() {
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .output_limited()
            .expect("run imcast");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_imcast()") && bash.contains("--diff"),
        "bash"
    );
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef imcast"), "zsh");
    let fish = run(&["completions", "fish"]);
    assert!(fish.contains("complete -c imcast"), "fish");
    let man = run(&["man"]);
    assert!(
        man.contains(".TH imcast") && man.contains("validate"),
        "man"
    );
    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output_limited()
        .expect("run imcast");
    assert_eq!(out.status.code(), Some(2));
}

/// The comparison step of `examples/github-actions.yml`, run as the workflow runs it (bash with
/// `-eo pipefail`) in a clone whose `origin/main` is the base: the changed campaign is in the
/// comment, the untouched one is not.
#[test]
fn the_example_workflow_compares_changed_campaigns() {
    let wf: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("examples/github-actions.yml")).expect("workflow"),
    )
    .expect("workflow yaml");
    let steps = wf["jobs"]["review"]["steps"].as_array().expect("steps");
    let script = steps
        .iter()
        .find(|s| s["name"] == "Compare every campaign with the base branch")
        .and_then(|s| s["run"].as_str())
        .expect("the compare step");
    assert!(steps.iter().any(|s| s["with"]["fetch-depth"] == 0));

    let r = Repo::new();
    r.write(
        "campaigns/other.yaml",
        &CAMPAIGN
            .replace("spring-promo", "other")
            .replace("template: ../templates/promo.j2", "text: Unchanged."),
    );
    r.commit("another campaign");
    let remote = tempfile::tempdir().expect("temp dir");
    let origin = remote.path().join("origin.git");
    r.git(&[
        "clone",
        "-q",
        "--bare",
        ".",
        origin.to_str().expect("utf-8 path"),
    ]);
    r.git(&[
        "remote",
        "add",
        "origin",
        origin.to_str().expect("utf-8 path"),
    ]);
    r.git(&["fetch", "-q", "origin"]);
    r.write("templates/promo.j2", "The sale starts today.\n");
    r.commit("new wording");

    let path = format!(
        "{}:{}",
        bin().parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = git_env(&mut Command::new("bash"))
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(r.dir.path())
        .env("BASE", "origin/main")
        .env("PATH", path)
        .output_limited()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let comment = r.read("comment.md");
    assert!(
        comment.contains("### imcast plan diff: `spring-promo`"),
        "{comment}"
    );
    assert!(
        comment.contains("4 recipients get a different message"),
        "{comment}"
    );
    assert!(
        !comment.contains("`other`"),
        "an untouched campaign is left out: {comment}"
    );
    check_markdown(&comment);
}

/// The account's suppression lists (`imcast.toml`) are read at the revision too: a list that grew
/// in the work tree shows its new ids as newly suppressed, and only those.
#[test]
fn account_suppression_lists_are_compared_at_the_revision() {
    let r = Repo::new();
    r.write(
        "imcast.toml",
        "[account]\nsuppress = [\"audiences/global.csv\"]\n",
    );
    r.write("audiences/global.csv", "user_id\n1004\n");
    r.commit("a global suppression list");
    r.write("audiences/global.csv", "user_id\n1004\n1001\n");
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    let s = &v["audience"]["newly_suppressed"];
    assert_eq!(s["count"], 1, "{v}");
    assert_eq!(s["examples"][0]["id"], 1001);
    assert_eq!(
        s["examples"][0]["detail"],
        "by global.csv; got a message before"
    );
    assert_eq!(v["before"]["suppressed"], 2);
    assert_eq!(v["after"]["suppressed"], 3);
}

/// Each side's settings are what a run of it would use, `imcast.toml` included: a `[breaker]` or
/// limit changed there alone shows as changed settings, never "the inputs are identical".
#[test]
fn account_settings_are_compared_at_the_revision() {
    let r = Repo::new();
    r.write("imcast.toml", "[breaker]\nconsecutive_failures = 7\n");
    r.commit("account settings");
    r.write(
        "imcast.toml",
        "[breaker]\nconsecutive_failures = 3\n[limits.batch]\nlimit = 300\nwindow = \"60s\"\n",
    );
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    let changed: Vec<&str> = v["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter(|s| s["changed"] == true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    // Four messages take a second either way: the ETA does not change.
    assert_eq!(changed, ["throttle", "breaker"], "{v}");
    let setting = |name: &str| {
        v["settings"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .cloned()
            .expect("setting")
    };
    assert!(
        setting("breaker")["before"]
            .as_str()
            .is_some_and(|b| b.starts_with("stop after 7 failed calls")),
        "{v}"
    );
    // The account's 300 a minute is below the campaign's 600: it paces the run.
    assert_eq!(
        setting("throttle")["after"],
        "300 per 1m (the account's share in imcast.toml)"
    );
    assert_eq!(v["identical"], false);
    assert_eq!(v["no_effect"], false);
    assert_eq!(v["recipients"]["unchanged"], 4);
}

/// Templates a template includes are read at the revision too.
#[test]
fn included_templates_are_compared_at_the_revision() {
    let r = Repo::new();
    r.write(
        "templates/promo.j2",
        "The sale starts Monday. {% include \"footer.j2\" %}\n",
    );
    r.write("templates/footer.j2", "Reply STOP to opt out.");
    r.commit("a footer");
    r.write("templates/footer.j2", "Reply STOP to unsubscribe.");
    let v: serde_json::Value = serde_json::from_str(&r.diff("HEAD", "json")).expect("json output");
    assert_eq!(v["recipients"]["content_changed"], 4, "{v}");
    assert_eq!(
        v["content"]["groups"][0]["after"],
        "The sale starts Monday. Reply STOP to unsubscribe."
    );
    assert_eq!(
        v["content"]["groups"][0]["before"],
        "The sale starts Monday. Reply STOP to opt out."
    );
}
