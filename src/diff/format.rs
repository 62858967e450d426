//! [`PlanDiff`] for people: terminal text (optionally coloured) and Markdown for a pull-request
//! comment (a summary table and collapsible `<details>` sections). Both are built as strings and
//! printed by the command through `output`; nothing here writes anywhere.
//!
//! Markdown safety: every value taken from the campaign (ids, texts, list names) goes into code
//! spans or fenced blocks sized to outlast any backtick run in it, `|` is escaped in table cells and
//! text inside HTML (`<summary>`) is HTML-escaped, so a message cannot break the comment's layout.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use super::{Category, ContentGroup, Example, PlanDiff, WordChange};

/// Styles for terminal text; all plain when colour is off.
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, s: &str, style: Style) -> String {
        if self.on {
            format!("{style}{s}{style:#}")
        } else {
            s.to_string()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap(s, Style::new().bold())
    }
    fn add(&self, s: &str) -> String {
        self.wrap(s, AnsiColor::Green.on_default())
    }
    fn del(&self, s: &str) -> String {
        self.wrap(s, AnsiColor::Red.on_default())
    }
    fn dim(&self, s: &str) -> String {
        self.wrap(s, Style::new().dimmed())
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn example(e: &Example, rev: &str) -> String {
    let who = match (e.id, &e.raw_id) {
        (Some(id), _) => id.to_string(),
        (None, Some(raw)) => format!("{raw:?}"),
        (None, None) => "?".to_string(),
    };
    let at = match (e.line_after, e.line_before) {
        (Some(l), _) => format!("line {l}"),
        (None, Some(l)) => format!("line {l} at {rev}"),
        (None, None) => String::new(),
    };
    let mut s = if at.is_empty() {
        who
    } else {
        format!("{who} ({at})")
    };
    if let Some(d) = &e.detail {
        s.push_str(&format!(": {d}"));
    }
    s
}

fn side_label(d: &PlanDiff) -> String {
    format!(
        "{} ({})",
        d.rev,
        short(&d.commit).get(..8).unwrap_or(&d.commit)
    )
}

fn word_diff_plain(words: &[WordChange], p: &Paint) -> String {
    let mut s = String::new();
    for w in words {
        match w.op.as_str() {
            "delete" => s.push_str(&p.del(&format!("[-{}-]", w.text))),
            "insert" => s.push_str(&p.add(&format!("{{+{}+}}", w.text))),
            _ => s.push_str(&w.text),
        }
    }
    s
}

fn indent(s: &str, by: &str) -> String {
    s.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Terminal text; `color` adds ANSI styles (the caller decides: a terminal and no `NO_COLOR`).
pub fn text(d: &PlanDiff, color: bool) -> String {
    let p = Paint { on: color };
    let mut o = String::new();
    let rev = &d.rev;
    let _ = writeln!(o, "{}  {} ({})", p.bold("plan diff"), d.campaign, d.file);
    let _ = writeln!(o, "compared   the work tree with {}", side_label(d));
    let hash = |s: &Option<super::Side>, what: &str| {
        s.as_ref()
            .map(|s| short(&s.plan_hash).to_string())
            .unwrap_or_else(|| what.to_string())
    };
    let _ = writeln!(
        o,
        "plan hash  {} → {}",
        hash(&d.before, "(no file)"),
        hash(&d.after, "(deleted)")
    );
    let verdict = if d.no_effect {
        p.bold(&d.verdict)
    } else {
        p.bold(&p.wrap(&d.verdict, AnsiColor::Yellow.on_default()))
    };
    let _ = writeln!(o, "effect     {verdict}");
    let r = &d.recipients;
    let _ = writeln!(
        o,
        "recipients {} → {} ({}, {}, {} with a different message, {} unchanged)",
        r.before,
        r.after,
        p.add(&format!("+{} gained", r.gained)),
        p.del(&format!("−{} lost", r.lost)),
        r.content_changed,
        r.unchanged
    );

    let _ = writeln!(o);
    if d.audience.is_empty() {
        let _ = writeln!(
            o,
            "{}   no recipient added, removed, suppressed or invalid",
            p.bold("audience")
        );
    } else {
        let _ = writeln!(o, "{}", p.bold("audience"));
        for (name, c) in d.audience.named() {
            if c.count == 0 {
                continue;
            }
            let label = format!("{name:<17}{:>8}", c.count);
            let label = match name {
                "added" | "unsuppressed" | "fixed" => p.add(&format!("+ {label}")),
                "removed" => p.del(&format!("− {label}")),
                _ => format!("! {label}"),
            };
            let _ = writeln!(o, "  {label}  {}", examples_text(c, rev));
        }
    }

    let _ = writeln!(o);
    let c = &d.content;
    if c.changed == 0 {
        let _ = writeln!(o, "{}    no recipient's message changes", p.bold("content"));
    } else {
        let _ = writeln!(
            o,
            "{}    {} a different message ({} variant change{})",
            p.bold("content"),
            super::plural(c.changed, "recipient gets", "recipients get"),
            c.groups_total,
            if c.groups_total == 1 { "" } else { "s" }
        );
        for g in &c.groups {
            group_text(&mut o, g, rev, &p);
        }
        let more = c.groups_total.saturating_sub(c.groups.len() as u64);
        if more > 0 {
            let _ = writeln!(o, "  … and {more} more variant changes");
        }
    }
    if !c.gained.is_empty() {
        let _ = writeln!(o, "  recipients who gain a message get:");
        for g in &c.gained {
            let _ = writeln!(
                o,
                "    {} × {}, e.g. {}",
                g.count,
                g.variant,
                example(&g.example, rev)
            );
            let _ = writeln!(o, "{}", indent(&p.add(&g.content), "      "));
            for (k, v) in &g.ext {
                let _ = writeln!(o, "      ext {k}: {v:?}");
            }
        }
    }

    let _ = writeln!(o);
    let changed: Vec<&super::Setting> = d.settings.iter().filter(|s| s.changed).collect();
    if changed.is_empty() {
        let _ = writeln!(o, "{}    no setting changes", p.bold("sending"));
    } else {
        let _ = writeln!(o, "{}", p.bold("sending"));
        for s in &changed {
            let _ = writeln!(
                o,
                "  {:<12} {} → {}",
                s.name,
                p.del(s.before.as_deref().unwrap_or("(none)")),
                p.add(s.after.as_deref().unwrap_or("(none)"))
            );
        }
    }
    let same: Vec<&str> = d
        .settings
        .iter()
        .filter(|s| !s.changed)
        .map(|s| s.name.as_str())
        .collect();
    if !same.is_empty() {
        let _ = writeln!(o, "  {}", p.dim(&format!("unchanged: {}", same.join(", "))));
    }
    if d.schedule.changed {
        let _ = writeln!(o, "  next occurrences from {}:", d.schedule.from);
        for (label, occ) in [
            ("before", &d.schedule.before),
            ("after ", &d.schedule.after),
        ] {
            if occ.is_empty() {
                let _ = writeln!(o, "    {label}  none");
            }
            for (i, x) in occ.iter().enumerate() {
                let head = if i == 0 { label } else { "      " };
                let _ = writeln!(o, "    {head}  {} = {}", x.local, x.utc);
            }
        }
    }
    if !d.warnings.is_empty() {
        let _ = writeln!(o);
        for w in &d.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
    }
    o
}

fn examples_text(c: &Category, rev: &str) -> String {
    let ex: Vec<String> = c.examples.iter().map(|e| example(e, rev)).collect();
    let more = if c.count > c.examples.len() as u64 {
        ", …"
    } else {
        ""
    };
    format!("{}{more}", ex.join(", "))
}

fn group_text(o: &mut String, g: &ContentGroup, rev: &str, p: &Paint) {
    let _ = writeln!(
        o,
        "  {} × {} → {}, e.g. {}",
        g.count,
        g.before_variant,
        g.after_variant,
        example(&g.example, rev)
    );
    if g.before != g.after {
        let _ = writeln!(o, "    {}:", g.field);
        let _ = writeln!(o, "{}", indent(&word_diff_plain(&g.words, p), "      "));
    }
    for e in &g.ext {
        let _ = writeln!(
            o,
            "    ext {}: {} → {}",
            e.key,
            p.del(
                &e.before
                    .as_ref()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "(none)".into())
            ),
            p.add(
                &e.after
                    .as_ref()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "(none)".into())
            )
        );
    }
}

// ---- Markdown ----

/// An inline code span holding `s` (newlines become spaces; fence longer than any backtick run).
fn code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') || s.is_empty() {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Text for a table cell: `|` escaped (also inside code spans, as GFM requires).
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A fenced code block (info string `lang`) holding `body`.
fn fenced(lang: &str, body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}\n", body.trim_end_matches('\n'))
}

fn example_md(e: &Example, rev: &str) -> String {
    let who = match (e.id, &e.raw_id) {
        (Some(id), _) => code(&id.to_string()),
        (None, Some(raw)) => code(raw),
        (None, None) => "?".to_string(),
    };
    let at = match (e.line_after, e.line_before) {
        (Some(l), _) => format!(" (line {l})"),
        (None, Some(l)) => format!(" (line {l} at {})", code(rev)),
        (None, None) => String::new(),
    };
    let detail = e
        .detail
        .as_ref()
        .map(|d| format!(": {}", code(d)))
        .unwrap_or_default();
    format!("{who}{at}{detail}")
}

fn num(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "—".to_string())
}

fn delta(b: Option<u64>, a: Option<u64>) -> String {
    let d = a.unwrap_or(0) as i128 - b.unwrap_or(0) as i128;
    match d {
        0 => String::new(),
        d if d > 0 => format!("+{d}"),
        d => format!("−{}", -d),
    }
}

/// Markdown for a pull-request comment.
pub fn markdown(d: &PlanDiff) -> String {
    let mut o = String::new();
    let rev = &d.rev;
    let _ = writeln!(
        o,
        "### imcast plan diff: {} ({})\n",
        code(&d.campaign),
        code(&d.file)
    );
    let _ = writeln!(
        o,
        "Compared the work tree with {} ({}). **{}**\n",
        code(rev),
        code(d.commit.get(..8).unwrap_or(&d.commit)),
        d.verdict.replace('*', "\\*")
    );
    let b = d.before.as_ref();
    let a = d.after.as_ref();
    let _ = writeln!(
        o,
        "| | before ({}) | after (work tree) | change |",
        cell(&code(rev))
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    type Get = fn(&super::Side) -> u64;
    let rows: [(&str, Get); 8] = [
        ("recipients", |s| s.valid),
        ("audience rows", |s| s.rows),
        ("invalid", |s| s.invalid),
        ("duplicate", |s| s.duplicate),
        ("suppressed", |s| s.suppressed),
        ("distinct contents", |s| s.distinct_contents),
        ("calls", |s| s.calls),
        ("messages", |s| s.messages),
    ];
    for (name, f) in rows {
        let (bv, av) = (b.map(f), a.map(f));
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} |",
            num(bv),
            num(av),
            delta(bv, av)
        );
    }
    let r = &d.recipients;
    let _ = writeln!(
        o,
        "| gain / lose a message | | | +{} / −{} |",
        r.gained, r.lost
    );
    let _ = writeln!(o, "| different message | | | {} |", r.content_changed);
    let h = |s: Option<&super::Side>| {
        s.map(|s| code(short(&s.plan_hash)))
            .unwrap_or_else(|| "—".to_string())
    };
    let _ = writeln!(
        o,
        "| plan hash | {} | {} | {} |",
        h(b),
        h(a),
        if d.identical { "same" } else { "changed" }
    );
    let _ = writeln!(o);

    // Audience.
    let counts: Vec<String> = d
        .audience
        .named()
        .iter()
        .filter(|(_, c)| c.count > 0)
        .map(|(n, c)| format!("{} {n}", c.count))
        .collect();
    let summary = if counts.is_empty() {
        "no change".to_string()
    } else {
        counts.join(", ")
    };
    let _ = writeln!(
        o,
        "<details><summary>Audience: {}</summary>\n",
        html(&summary)
    );
    if counts.is_empty() {
        let _ = writeln!(o, "No recipient added, removed, suppressed or invalid.\n");
    } else {
        let _ = writeln!(o, "| change | count | first |");
        let _ = writeln!(o, "|---|---:|---|");
        for (name, c) in d.audience.named() {
            if c.count == 0 {
                continue;
            }
            let ex: Vec<String> = c.examples.iter().map(|e| example_md(e, rev)).collect();
            let more = if c.count > c.examples.len() as u64 {
                ", …"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "| {name} | {} | {}{more} |",
                c.count,
                cell(&ex.join(", "))
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "</details>\n");

    // Content.
    let c = &d.content;
    let summary = if c.changed == 0 {
        "no recipient's message changes".to_string()
    } else {
        format!(
            "{} a different message ({} variant change{})",
            super::plural(c.changed, "recipient gets", "recipients get"),
            c.groups_total,
            if c.groups_total == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(
        o,
        "<details><summary>Content: {}</summary>\n",
        html(&summary)
    );
    if c.changed == 0 && c.gained.is_empty() {
        let _ = writeln!(
            o,
            "Every recipient on both sides gets the same Content and Ext.\n"
        );
    }
    for g in &c.groups {
        let _ = writeln!(
            o,
            "**{} recipient{}** {} → {}, e.g. {}:\n",
            g.count,
            if g.count == 1 { "" } else { "s" },
            code(&g.before_variant),
            code(&g.after_variant),
            example_md(&g.example, rev)
        );
        if g.before != g.after {
            let mut body = String::new();
            for l in g.before.lines() {
                let _ = writeln!(body, "- {l}");
            }
            for l in g.after.lines() {
                let _ = writeln!(body, "+ {l}");
            }
            o.push_str(&fenced("diff", &body));
            o.push('\n');
            let _ = writeln!(o, "Word diff ({}):\n", g.field);
            o.push_str(&fenced(
                "text",
                &word_diff_plain(&g.words, &Paint { on: false }),
            ));
            o.push('\n');
        }
        if !g.ext.is_empty() {
            let _ = writeln!(o, "| Ext key | before | after |");
            let _ = writeln!(o, "|---|---|---|");
            for e in &g.ext {
                let v = |x: &Option<String>| {
                    x.as_ref()
                        .map(|v| cell(&code(v)))
                        .unwrap_or_else(|| "—".to_string())
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} |",
                    cell(&code(&e.key)),
                    v(&e.before),
                    v(&e.after)
                );
            }
            let _ = writeln!(o);
        }
    }
    let more = c.groups_total.saturating_sub(c.groups.len() as u64);
    if more > 0 {
        let _ = writeln!(o, "… and {more} more variant changes.\n");
    }
    if !c.gained.is_empty() {
        let _ = writeln!(o, "Recipients who gain a message get:\n");
        for g in &c.gained {
            let _ = writeln!(
                o,
                "**{} recipient{}** {}, e.g. {}:\n",
                g.count,
                if g.count == 1 { "" } else { "s" },
                code(&g.variant),
                example_md(&g.example, rev)
            );
            let mut body = g.content.clone();
            if !g.ext.is_empty() {
                body.push_str(&format!(
                    "\nExt {}",
                    serde_json::to_string(&g.ext).unwrap_or_default()
                ));
            }
            o.push_str(&fenced("json", &body));
            o.push('\n');
        }
    }
    let _ = writeln!(o, "</details>\n");

    // Sending.
    let changed: Vec<&super::Setting> = d.settings.iter().filter(|s| s.changed).collect();
    let summary = if changed.is_empty() {
        "no setting changes".to_string()
    } else {
        let names: Vec<&str> = changed.iter().map(|s| s.name.as_str()).collect();
        format!("{} changed", names.join(", "))
    };
    let _ = writeln!(
        o,
        "<details><summary>Sending: {}</summary>\n",
        html(&summary)
    );
    let _ = writeln!(o, "| setting | before | after |");
    let _ = writeln!(o, "|---|---|---|");
    for s in &d.settings {
        let v = |x: &Option<String>| {
            x.as_ref()
                .map(|v| cell(&code(v)))
                .unwrap_or_else(|| "—".to_string())
        };
        let name = if s.changed {
            format!("**{}**", s.name)
        } else {
            s.name.clone()
        };
        let _ = writeln!(o, "| {name} | {} | {} |", v(&s.before), v(&s.after));
    }
    let _ = writeln!(o);
    if !d.schedule.before.is_empty() || !d.schedule.after.is_empty() {
        let _ = writeln!(o, "Next occurrences from {}:\n", code(&d.schedule.from));
        let _ = writeln!(o, "| # | before | after |");
        let _ = writeln!(o, "|---:|---|---|");
        let n = d.schedule.before.len().max(d.schedule.after.len());
        for i in 0..n {
            let v = |x: Option<&super::Occurrence>| {
                x.map(|x| cell(&format!("{} = {}", code(&x.local), code(&x.utc))))
                    .unwrap_or_else(|| "—".to_string())
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                i + 1,
                v(d.schedule.before.get(i)),
                v(d.schedule.after.get(i))
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "</details>");
    if !d.warnings.is_empty() {
        let _ = writeln!(o);
        for w in &d.warnings {
            let _ = writeln!(o, "> **Warning:** {}", w.replace('\n', " "));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_outlast_backticks_and_cells_escape_pipes() {
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code("two\nlines"), "`two lines`");
        assert_eq!(cell(&code("a|b")), "`a\\|b`");
        assert_eq!(html("<b>&"), "&lt;b&gt;&amp;");
        assert!(fenced("text", "has ``` inside").starts_with("````text\n"));
    }

    #[test]
    fn colour_is_added_only_when_asked() {
        let d = PlanDiff {
            verdict: "Changes what is sent.".into(),
            recipients: super::super::Recipients {
                gained: 1,
                ..Default::default()
            },
            ..PlanDiff::default()
        };
        assert!(text(&d, true).contains("\u{1b}["));
        assert!(!text(&d, false).contains('\u{1b}'));
    }
}
