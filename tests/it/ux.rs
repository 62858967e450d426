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

// ---------------------------------------------------------------------------------------------
// Mock runs and state directories.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::bin;

/// A campaign whose provider is loopback, so `run --mock` can send to the embedded mock.
const MOCK_CAMPAIGN: &str = "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }\naction: batch\nsender: 1\naudience: { ids: [1, 2, 3] }\nmessage: { type: text, text: hi }\n";

/// Run the binary in `dir` with no credentials and no inherited log or colour settings.
fn imcast_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .env_remove("VOLC_SECRETKEY_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run imcast")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn mock_runs_are_found_with_mock_and_their_reports_stay_under_reports_mock() {
    let f = Fixture::new();
    let root = std::fs::canonicalize(f.dir.path()).expect("canon");
    f.write("c.yaml", MOCK_CAMPAIGN);
    let out = imcast_in(&root, &["run", "c.yaml", "--mock", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(root.join(".imcast/mock/imcast.db").is_file());

    // Plain `status`: no real run, and it says there is a mock one and how to see it.
    let out = imcast_in(&root, &["status", "c.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let plain = f.redact(&text(&out.stdout));
    assert!(
        plain.contains("`imcast status c.yaml --mock` shows it"),
        "{plain}"
    );
    let out = imcast_in(&root, &["status", "c.yaml", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["run"], serde_json::Value::Null);
    assert_eq!(v["mock_runs"], 1);

    // Plain `report` fails (there is no real run) and says the same.
    let out = imcast_in(&root, &["report", "c.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let e = f.redact(&text(&out.stderr));
    assert!(e.contains("`imcast report c.yaml --mock`"), "{e}");

    // `--mock` shows it, with its report under reports/mock/.
    let out = imcast_in(&root, &["status", "c.yaml", "--mock"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mock = f.redact(&text(&out.stdout));
    assert!(mock.contains("Campaign \"t\": mock run "), "{mock}");
    assert!(mock.contains("report    [DIR]/reports/mock/t/"), "{mock}");

    // The report of a mock run goes under reports/mock/, even when the state directory is
    // named by hand (the run's own flags decide), and never into the real campaign's folder.
    std::fs::remove_dir_all(root.join("reports")).expect("rm reports");
    let out = imcast_in(&root, &["report", "c.yaml", "--state-dir", ".imcast/mock"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = text(&out.stdout);
    assert!(
        dir.trim()
            .starts_with(&root.join("reports/mock/t/").display().to_string()),
        "{dir}"
    );
    assert!(
        !root.join("reports/t").exists(),
        "nothing in the real reports"
    );
    let out = imcast_in(&root, &["report", "c.yaml", "--mock"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), dir);
    assert!(!root.join("reports/t").exists());

    // pause/resume/cancel: without --mock they say where the mock run's state is.
    let out = imcast_in(&root, &["pause", "t", "--no-wait"]);
    assert_eq!(out.status.code(), Some(2));
    let e = f.redact(&text(&out.stderr));
    assert!(e.contains("[DIR]/.imcast/mock: add --mock"), "{e}");
    let out = imcast_in(&root, &["pause", "t", "--mock", "--no-wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pause requested for t\n");
    let out = imcast_in(&root, &["cancel", "t", "--mock", "--no-wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    insta::assert_snapshot!("status_with_only_mock_runs", format!("{plain}---\n{e}"));
}

/// Outside any repository, `imcast daemon campaigns` and `imcast pause NAME` run in the same
/// folder find the same state directory: the current one's `.imcast/`.
#[test]
fn daemon_and_pause_in_the_same_shell_share_the_state_directory() {
    let f = Fixture::new();
    let root = std::fs::canonicalize(f.dir.path()).expect("canon");
    f.write(
        "campaigns/x.yaml",
        &MOCK_CAMPAIGN.replace("name: t", "name: weekly").replace(
            "message:",
            "schedule: { cron: \"0 9 * * 1\", timezone: UTC }\nmessage:",
        ),
    );
    let mut daemon = Command::new(bin())
        .args(["daemon", "campaigns"])
        .current_dir(&root)
        .env("VOLC_ACCESSKEY", imcast::mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", imcast::mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(f.dir.path().join("daemon.log")).expect("daemon log"))
        .spawn()
        .expect("start daemon");
    let db = root.join(".imcast/imcast.db");
    // Until the daemon has recorded its campaigns: up to about a minute (a CI machine running
    // the whole suite on two cores once took more than the ten seconds this waited before).
    let mut known = false;
    let mut last = String::new();
    for _ in 0..1200 {
        let out = imcast_in(&root, &["pause", "weekly", "--no-wait"]);
        if out.status.code() == Some(0) {
            known = true;
            break;
        }
        last = format!("{:?}: {}", out.status.code(), text(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(db.is_file(), "the daemon keeps its state in ./.imcast");
    assert!(
        !root.join("campaigns/.imcast").exists(),
        "not in campaigns/.imcast"
    );
    assert!(
        known,
        "`imcast pause weekly` finds the daemon's campaign; last: {last}\ndaemon's stderr:\n{}",
        std::fs::read_to_string(f.dir.path().join("daemon.log")).unwrap_or_default()
    );
    // `run` of a file in that folder, and `prune`, agree too.
    let out = imcast_in(&root, &["prune", "--older-than", "1d"]);
    assert!(
        text(&out.stdout).contains("pruned"),
        "{}",
        text(&out.stdout)
    );
    let out = imcast_in(&root, &["run", "campaigns/x.yaml", "--mock", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(root.join(".imcast/mock/imcast.db").is_file());
}

#[test]
fn help_says_the_state_directory_rule_and_lists_global_options_apart() {
    let f = Fixture::new();
    for cmd in [
        "run", "status", "report", "pause", "daemon", "prune", "schedule",
    ] {
        let out = imcast_in(f.dir.path(), &[cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        let h = text(&out.stdout);
        let words = h.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("Outside any repository it is the current directory"),
            "{cmd} --help lacks the rule: {h}"
        );
        let global = h.find("Global options:").expect("a Global options section");
        let color = h.find("--color <WHEN>").expect("--color is listed");
        let state = h.find("--state-dir <DIR>").expect("--state-dir is listed");
        assert!(color > global, "--color under Global options in {cmd}");
        assert!(state < global, "--state-dir among {cmd}'s own options");
    }
}

#[test]
fn every_flag_has_help_text() {
    use clap::CommandFactory;
    let cli = imcast::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
            }
            if arg.is_global_set() {
                assert_eq!(
                    arg.get_help_heading(),
                    Some(imcast::cli::GLOBAL),
                    "{} is global",
                    arg.get_id()
                );
            }
        }
    }
    assert!(missing.is_empty(), "flags without help: {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// Colour.

fn has_escape(b: &[u8]) -> bool {
    b.contains(&0x1b)
}

#[test]
fn no_colour_off_a_terminal_unless_asked_and_no_color_is_respected() {
    let f = Fixture::new();
    f.write("c.yaml", MOCK_CAMPAIGN);
    let run = |extra: &[&str], no_color: bool| {
        let mut c = Command::new(bin());
        c.args(["run", "c.yaml", "--mock", "--yes", "--new-run"])
            .args(extra)
            .current_dir(f.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("run imcast");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("INFO"), "logs were written");
        out.stderr
    };
    // stderr is a pipe here, as under cron, systemd or `2> file`.
    assert!(
        !has_escape(&run(&[], false)),
        "auto: no colour off a terminal"
    );
    assert!(!has_escape(&run(&["--color", "never"], false)));
    assert!(has_escape(&run(&["--color", "always"], false)));
    assert!(
        has_escape(&run(&["--color=always"], true)),
        "the flag overrides NO_COLOR"
    );
    assert!(!has_escape(&run(&["--color", "auto"], true)));
}

// ---------------------------------------------------------------------------------------------
// What people read: plurals, the folded preview.

#[test]
fn counts_agree_with_their_nouns() {
    let f = Fixture::new();
    f.write(
        "c.yaml",
        &format!("{HEAD}audience: {{ ids: [1] }}\nmessage: {{ type: text, text: hi }}\n"),
    );
    let out = imcast_in(f.dir.path(), &["validate", "c.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok  c.yaml: 1 valid of 1 row, 1 call\n");
    let out = imcast_in(f.dir.path(), &["plan", "c.yaml"]);
    let plan = text(&out.stdout);
    assert!(plan.contains("audience   1 row: 1 valid"), "{plan}");
    assert!(plan.contains("calls      1 (1 message)"), "{plan}");
    f.write("bad.yaml", "version: 2\n");
    let out = imcast_in(f.dir.path(), &["validate", "bad.yaml"]);
    assert!(
        text(&out.stderr).contains("error: 1 of 1 campaign file invalid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn preview_folds_long_receiver_lists_unless_full() {
    let f = Fixture::new();
    let ids: Vec<String> = (1..=40)
        .map(|i| (9_007_199_254_740_000u64 + i).to_string())
        .collect();
    f.write(
        "c.yaml",
        &format!(
            "{HEAD}audience: {{ ids: [{}] }}\nmessage: {{ type: text, text: \"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21]\" }}\n",
            ids.join(", ")
        ),
    );
    let folded = imcast_in(f.dir.path(), &["preview", "c.yaml", "--recipient", &ids[0]]);
    assert_eq!(folded.status.code(), Some(0), "{}", text(&folded.stderr));
    let full = imcast_in(
        f.dir.path(),
        &["preview", "c.yaml", "--recipient", &ids[0], "--full"],
    );
    assert_eq!(full.status.code(), Some(0), "{}", text(&full.stderr));
    // --full: the exact body — the wire bytes the sender builds, every receiver in it.
    let c = spec::load(&f.path("c.yaml"), &LoadOptions::default()).expect("campaign");
    let p = plan::build(&c, &PlanOptions::default()).expect("plan");
    let call = p.calls().next().expect("a call").expect("the call renders");
    assert_eq!(
        text(&full.stdout),
        format!("{}\n", crate::common::wire_body(&c, &call))
    );
    assert!(!text(&full.stderr).contains("FOLDED"));
    // Folded: marked in the body (not valid JSON) and on stderr; the Content is untouched.
    let shown = text(&folded.stdout);
    assert!(serde_json::from_str::<serde_json::Value>(&shown).is_err());
    assert!(
        shown.contains("…30 more ids folded: --full shows all…"),
        "{shown}"
    );
    assert!(shown.contains("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21]"));
    insta::assert_snapshot!(
        "preview_folded",
        format!("{shown}---\n{}", text(&folded.stderr))
    );
}

/// No problem in a campaign file is reported without its line and column.
#[test]
fn every_campaign_problem_has_a_line_and_column() {
    let f = Fixture::new();
    let cases = [
        format!("{HEAD}audience: {{ ids: [] }}\nmessage: {{ type: text }}\nretry: {{ max_attempts: 0 }}\n"),
        format!("{HEAD}audience: {{ exclude: [ {{ id_column: x }} ] }}\nmessage: {{ type: raw, url: u, data: {{ a: 1 }} }}\n"),
        format!("{HEAD}audience: {{ ids: [1] }}\nmessage: {{ type: image, text: t, ext: {{ \"s:x\": v }}, vars: {{ campaign: c }} }}\nconversation: {{ priority: 1 }}\nbreaker: {{ max_failure_ratio: 2 }}\n"),
        format!("{HEAD}audience: {{ ids: [1] }}\nmessage: {{ type: custom, text: t, data: {{ a: b }} }}\nschedule: {{ at: \"2026-03-01T09:00:00Z\", quiet_hours: {{ from: \"9:00\", to: \"9:00\", timezone: UTC }} }}\n"),
    ];
    let mut seen = 0;
    for text in &cases {
        let e = load_err(&f, text);
        for line in e.lines().skip(1) {
            let rest = line
                .trim_start()
                .strip_prefix("[DIR]/c.yaml:")
                .unwrap_or_else(|| panic!("no place: {line}"));
            let mut parts = rest.splitn(3, ':');
            let l = parts.next().unwrap_or("");
            let c = parts.next().unwrap_or("");
            assert!(
                l.parse::<u64>().is_ok() && c.parse::<u64>().is_ok(),
                "no line and column: {line}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 12, "the cases hold many problems ({seen})");
}

/// `imcast status` lists the daemons registered in the state directory (`sched_roster`), as
/// `imcast schedule` does: host, pid, last seen and whether each looks alive; JSON carries them
/// under `daemons`. Without any daemon nothing is added (the other status snapshots).
#[test]
fn status_lists_the_daemons_of_the_state_directory() {
    use imcast::daemon::state;
    let f = Fixture::new();
    let root = std::fs::canonicalize(f.dir.path()).expect("canon");
    f.write("c.yaml", MOCK_CAMPAIGN);
    // Without daemons: no list.
    let out = imcast_in(&root, &["status", "c.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("daemons"),
        "{}",
        text(&out.stdout)
    );
    // Two daemons on the state directory: one alive (refreshing hourly, seen now), one stopped.
    // The real clock: the `imcast status` process judges "alive" by its own.
    let now = imcast::clock::Clock::now(&imcast::clock::SystemClock).as_second();
    let who = |node: &str, host: &str, pid: u32| state::Claimant {
        node: node.to_string(),
        host: host.to_string(),
        pid,
    };
    {
        let c = state::open(&root.join(".imcast")).expect("state");
        state::roster_beat(&c, &who("node-live-1", "host-a", 4242), now - 60, 3600, now)
            .expect("live");
        let gone = who("node-gone-2", "host-b", 777);
        state::roster_beat(&c, &gone, now - 600, 10, now - 300).expect("gone");
        state::roster_stop(&c, &gone, now - 300).expect("stop");
    }
    let out = imcast_in(&root, &["status", "c.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(human.contains("has no runs yet"), "{human}");
    assert!(
        human.contains("daemons (alive: seen within 3 refresh intervals"),
        "{human}"
    );
    let line = |host: &str| {
        human
            .lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_else(|| panic!("no line for {host}: {human}"))
            .to_string()
    };
    let a = line("host-a");
    assert!(
        a.contains("pid 4242") && a.contains("alive, last seen"),
        "{a}"
    );
    assert!(!a.contains("NOT ALIVE"), "{a}");
    let b = line("host-b");
    assert!(b.contains("pid 777") && b.contains("stopped 5m"), "{b}");
    let out = imcast_in(&root, &["status", "c.yaml", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = v["daemons"].as_array().expect("daemons");
    let got: Vec<(&str, i64, bool)> = d
        .iter()
        .map(|d| {
            (
                d["host"].as_str().unwrap_or_default(),
                d["pid"].as_i64().unwrap_or_default(),
                d["alive"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(got, vec![("host-a", 4242, true), ("host-b", 777, false)]);
    // `--mock` shows the mock state only: no daemons there.
    let out = imcast_in(&root, &["status", "c.yaml", "--mock"]);
    assert!(
        !text(&out.stdout).contains("daemons"),
        "{}",
        text(&out.stdout)
    );
}
