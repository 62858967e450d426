//! Rendering: one recipient's row → the Content string and Ext map its call carries.
//!
//! Invariants: minijinja runs with strict undefined (a missing variable is an error, never an
//! empty string), a fuel limit (a runaway template fails instead of hanging) and no access to
//! anything but the campaign's own template files (loader confined to the template's directory,
//! the campaign's directory and its `templates/`; no absolute paths, no `..`). Rendering is
//! deterministic: the same row gives the same bytes, which is what lets `plan` re-render at send
//! time instead of keeping millions of Contents. Content documents are built as data and
//! serialized with serde_json — never pasted together — so any quote, backslash, newline or emoji
//! in the data stays correct.
//! The context is: the row's columns, then `message.vars`, plus `campaign.name` and `recipient.id`
//! (a column shadows a var of the same name). Errors name the template file and line when the
//! problem is in one (the body's `message.template`, or an included file by its path): an error
//! inside an include is reported as that file's own, not as "could not render include".

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use sha2::{Digest, Sha256};

use crate::spec::{Body, Campaign, MessageKind};

/// Instructions a single render may execute before it is stopped.
pub const FUEL: u64 = 200_000;

/// Names minijinja resolves from its globals after the context.
const GLOBALS: [&str; 7] = [
    "range",
    "dict",
    "namespace",
    "debug",
    "lipsum",
    "cycler",
    "joiner",
];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// A variable the template uses is not defined for this recipient. `place` is where the
    /// template reads it when that is a file: `templates/welcome.j2 line 3` (the body template's
    /// path relative to the campaign, or an included file's name); None for inline templates.
    #[error("undefined variable `{variable}` ({detail})")]
    Undefined {
        variable: String,
        detail: String,
        place: Option<String>,
    },
    /// Any other template error (syntax, fuel, a filter failing).
    #[error("{0}")]
    Template(String),
}

/// The result of rendering one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub content: String,
    pub ext: BTreeMap<String, String>,
    /// The render read an empty value (a column or var holding "").
    pub used_empty: bool,
}

/// A row as the renderer sees it (the fields are moved in: no copy per row).
pub struct RowInput<'a> {
    pub id: u64,
    pub header: Option<&'a Arc<Vec<String>>>,
    pub fields: csv::StringRecord,
}

#[derive(Debug, Default)]
struct Touch {
    empty: bool,
    missing: Vec<String>,
}

#[derive(Debug)]
struct Ctx {
    header: Option<Arc<Vec<String>>>,
    fields: csv::StringRecord,
    vars: Arc<BTreeMap<String, Value>>,
    campaign: Value,
    id: u64,
    touch: Mutex<Touch>,
}

impl Ctx {
    fn note_empty(&self) {
        if let Ok(mut t) = self.touch.lock() {
            t.empty = true;
        }
    }
}

impl Object for Ctx {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        match k {
            "campaign" => return Some(self.campaign.clone()),
            "recipient" => {
                return Some(Value::from_iter([("id", Value::from(self.id))]));
            }
            _ => {}
        }
        if let Some(h) = &self.header {
            if let Some(i) = h.iter().position(|n| n == k) {
                let v = self.fields.get(i).unwrap_or("");
                if v.is_empty() {
                    self.note_empty();
                }
                return Some(Value::from(v));
            }
        }
        if let Some(v) = self.vars.get(k) {
            if v.as_str().is_some_and(str::is_empty) {
                self.note_empty();
            }
            return Some(v.clone());
        }
        if let Ok(mut t) = self.touch.lock() {
            t.missing.push(k.to_string());
        }
        None
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}

#[derive(Debug, serde::Serialize)]
struct TextContent<'a> {
    text: &'a str,
}

#[derive(Debug, serde::Serialize)]
struct ImageContent<'a> {
    url: &'a str,
}

/// One piece of a template that is only text and `{{ name }}` substitutions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// A column, by index in the audience header.
    Col(usize),
    /// `recipient.id`.
    Id,
}

/// Names minijinja reads as literals, never from the context.
const LITERALS: [&str; 6] = ["true", "false", "none", "True", "False", "None"];

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Split a template source into literal text and `{{ name }}` / `{{ a.b }}` expressions, or
/// `None` if it uses anything else (blocks, comments, filters, whitespace control, non-ASCII
/// names...). Mirrors minijinja's lexer for this subset, including dropping one trailing newline
/// (`keep_trailing_newline` is off). Hand-written because minijinja exposes no AST; anything
/// this does not recognise goes through minijinja as before.
fn parse_simple(src: &str) -> Option<Vec<(bool, &str)>> {
    let mut src = src;
    if let Some(s) = src.strip_suffix('\n') {
        src = s;
    }
    if let Some(s) = src.strip_suffix('\r') {
        src = s;
    }
    if src.contains("{%") || src.contains("{#") {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("{{") {
        let lit = &rest[..i];
        if lit.contains("}}") {
            return None;
        }
        if !lit.is_empty() {
            out.push((false, lit));
        }
        let after = &rest[i + 2..];
        let j = after.find("}}")?;
        let expr = after[..j].trim_matches(|c| c == ' ' || c == '\t' || c == '\n' || c == '\r');
        let ok = match expr.split_once('.') {
            Some((a, b)) => is_ident(a) && is_ident(b),
            None => is_ident(expr),
        };
        if !ok || LITERALS.iter().any(|l| expr.split('.').any(|p| p == *l)) {
            return None;
        }
        out.push((true, expr));
        rest = &after[j + 2..];
    }
    if rest.contains("}}") {
        return None;
    }
    if !rest.is_empty() {
        out.push((false, rest));
    }
    Some(out)
}

enum Compiled {
    Text,
    Image { width: bool, height: bool },
    CustomData(serde_json::Value),
    Raw,
}

/// The compiled templates of one campaign.
pub struct Renderer {
    env: Environment<'static>,
    compiled: Compiled,
    vars: Arc<BTreeMap<String, Value>>,
    campaign: Value,
    campaign_name: String,
    loaded: Arc<Mutex<BTreeMap<String, [u8; 32]>>>,
    /// Included files read so far: the name they were included by → their path relative to
    /// the campaign's directory (for error messages).
    found: Arc<Mutex<BTreeMap<String, String>>>,
    main_file: Option<(String, [u8; 32])>,
    used: BTreeSet<String>,
    may_include: bool,
    /// Per template: the variables it reads and whether it may include other files.
    template_vars: BTreeMap<String, (BTreeSet<String>, bool)>,
    /// Templates that do not depend on the recipient, rendered once (see [`Renderer::prepare`]).
    fixed: BTreeMap<String, String>,
    /// Templates that are only text and substitutions of columns (and `recipient.id`), rendered
    /// without minijinja by [`Renderer::render_fields`] (see [`Renderer::prepare`]).
    fast: BTreeMap<String, Vec<Seg>>,
    /// The columns given to [`Renderer::prepare`].
    columns: Vec<String>,
    /// Every template is in `fixed` or `fast`: a row renders without minijinja.
    direct: bool,
    ext_names: Vec<(String, String)>,
    /// What the body template is called in messages.
    label: String,
}

/// The error that caused `e`: an error inside an included file reaches us wrapped in "could
/// not render include"; the inner one names the file, the line and the undefined variable.
fn innermost(e: &minijinja::Error) -> &minijinja::Error {
    let mut cur = e;
    while let Some(inner) =
        std::error::Error::source(cur).and_then(|s| s.downcast_ref::<minijinja::Error>())
    {
        cur = inner;
    }
    cur
}

/// A template error as people read it; `label` is what the body template is called (its file
/// or `message.text`), since minijinja knows it by its internal name. An error inside an
/// included file is told as that file's error.
fn template_error(e: &minijinja::Error, label: &str) -> String {
    let e = innermost(e);
    let mut s = e.to_string();
    let shown = if e.name() == Some(BODY) {
        label
    } else {
        e.name().unwrap_or("")
    };
    s = s.replace(&format!("(in {BODY}:"), &format!("(in {label}:"));
    if let Some(line) = e.line() {
        if !shown.is_empty() && !s.contains(shown) {
            s.push_str(&format!(" (in {shown} line {line})"));
        }
    }
    if e.kind() == ErrorKind::OutOfFuel {
        s.push_str(": the template did too much work (a loop that never ends?)");
    }
    s
}

fn safe_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return None;
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(p.to_path_buf())
}

const BODY: &str = "message";

impl Renderer {
    /// Compile every template of the campaign (syntax errors surface here).
    pub fn new(c: &Campaign) -> Result<Renderer, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_keep_trailing_newline(false);
        // Content is JSON or plain text, never HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);

        let mut dirs = Vec::new();
        let mut main_file = None;
        let body_source = |b: &Body,
                           dirs: &mut Vec<PathBuf>,
                           main_file: &mut Option<(String, [u8; 32])>|
         -> Result<String, RenderError> {
            match b {
                Body::Inline(t) => Ok(t.clone()),
                Body::File(p) => {
                    let text = c.files.read_to_string(p).map_err(|e| {
                        RenderError::Template(format!("cannot read {}: {e}", p.display()))
                    })?;
                    if let Some(d) = p.parent() {
                        dirs.push(d.to_path_buf());
                    }
                    *main_file = Some((
                        p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        Sha256::digest(text.as_bytes()).into(),
                    ));
                    Ok(text)
                }
            }
        };
        let mut sources: Vec<(String, String)> = Vec::new();
        let compiled = match &c.message.kind {
            MessageKind::Text { body } => {
                sources.push((BODY.into(), body_source(body, &mut dirs, &mut main_file)?));
                Compiled::Text
            }
            MessageKind::Raw { body } => {
                sources.push((BODY.into(), body_source(body, &mut dirs, &mut main_file)?));
                Compiled::Raw
            }
            MessageKind::Image { url, width, height } => {
                sources.push((BODY.into(), url.clone()));
                if let Some(w) = width {
                    sources.push(("image.width".into(), w.clone()));
                }
                if let Some(h) = height {
                    sources.push(("image.height".into(), h.clone()));
                }
                Compiled::Image {
                    width: width.is_some(),
                    height: height.is_some(),
                }
            }
            MessageKind::CustomData { data } => {
                let mut n = 0usize;
                collect_data_templates(data, &mut n, &mut sources);
                Compiled::CustomData(data.clone())
            }
        };
        let ext_keys: Vec<String> = c.message.ext.keys().cloned().collect();
        for (k, v) in &c.message.ext {
            sources.push((format!("ext.{k}"), v.clone()));
        }
        dirs.push(c.dir.clone());
        dirs.push(c.dir.join("templates"));

        let loaded: Arc<Mutex<BTreeMap<String, [u8; 32]>>> = Arc::default();
        let loaded_in = Arc::clone(&loaded);
        let found: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let found_in = Arc::clone(&found);
        let campaign_dir = c.dir.clone();
        let files = c.files.clone();
        env.set_loader(move |name| {
            let Some(rel) = safe_relative(name) else {
                return Err(minijinja::Error::new(
                    ErrorKind::TemplateNotFound,
                    format!(
                        "`{name}`: templates may only include files by relative name, without `..`"
                    ),
                ));
            };
            for d in &dirs {
                let p = d.join(&rel);
                if files.is_file(&p) {
                    let text = files.read_to_string(&p).map_err(|e| {
                        minijinja::Error::new(
                            ErrorKind::TemplateNotFound,
                            format!("cannot read {}: {e}", p.display()),
                        )
                    })?;
                    if let Ok(mut l) = loaded_in.lock() {
                        l.insert(name.to_string(), Sha256::digest(text.as_bytes()).into());
                    }
                    if let Ok(mut f) = found_in.lock() {
                        let shown = p.strip_prefix(&campaign_dir).unwrap_or(&p);
                        f.insert(name.to_string(), shown.display().to_string());
                    }
                    return Ok(Some(text));
                }
            }
            Ok(None)
        });

        let label = match &c.message.kind {
            MessageKind::Text { body } | MessageKind::Raw { body } => match body {
                Body::Inline(_) => "message.text".to_string(),
                Body::File(p) => p.strip_prefix(&c.dir).unwrap_or(p).display().to_string(),
            },
            MessageKind::Image { .. } => "message.url".to_string(),
            MessageKind::CustomData { .. } => "message.data".to_string(),
        };
        let mut used = BTreeSet::new();
        let mut may_include = false;
        let mut template_vars = BTreeMap::new();
        for (name, src) in sources {
            let includes =
                src.contains("include") || src.contains("import") || src.contains("extends");
            may_include |= includes;
            env.add_template_owned(name.clone(), src)
                .map_err(|e| RenderError::Template(template_error(&e, &label)))?;
            let t = env
                .get_template(&name)
                .map_err(|e| RenderError::Template(template_error(&e, &label)))?;
            let mut vars = t.undeclared_variables(false);
            vars.retain(|v| !GLOBALS.contains(&v.as_str()));
            used.extend(vars.iter().cloned());
            template_vars.insert(name, (vars.into_iter().collect(), includes));
        }
        let vars: BTreeMap<String, Value> = c
            .message
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_serialize(v)))
            .collect();
        let campaign = Value::from_serialize(serde_json::json!({ "name": c.name }));
        used.retain(|v| !GLOBALS.contains(&v.as_str()));
        let ext_names = ext_keys
            .iter()
            .map(|k| (k.clone(), format!("ext.{k}")))
            .collect();
        Ok(Renderer {
            env,
            compiled,
            ext_names,
            fixed: BTreeMap::new(),
            fast: BTreeMap::new(),
            columns: Vec::new(),
            direct: false,
            template_vars,
            label,
            vars: Arc::new(vars),
            campaign,
            campaign_name: c.name.clone(),
            loaded,
            found,
            main_file,
            used,
            may_include,
        })
    }

    /// Where in a template FILE an error happened (`templates/welcome.j2 line 3`): the body
    /// template when it comes from `message.template`, or an included file. None for the
    /// campaign's inline templates (`message.text`, `ext`, `data`), which the campaign names.
    fn file_place(&self, e: &minijinja::Error) -> Option<String> {
        let e = innermost(e);
        let name = e.name()?;
        let file = if name == BODY {
            self.main_file.as_ref()?;
            self.label.clone()
        } else if self.template_vars.contains_key(name) {
            return None;
        } else {
            self.found
                .lock()
                .ok()
                .and_then(|f| f.get(name).cloned())
                .unwrap_or_else(|| name.to_string())
        };
        Some(match e.line() {
            Some(line) => format!("{file} line {line}"),
            None => file,
        })
    }

    /// Top-level variables the templates read (includes not followed).
    pub fn variables(&self) -> &BTreeSet<String> {
        &self.used
    }

    /// True when no template can depend on the recipient: every recipient gets the same Content.
    pub fn is_static(&self, columns: &[String]) -> bool {
        !self.may_include
            && self
                .used
                .iter()
                .all(|v| v == "campaign" || (self.vars.contains_key(v) && !columns.contains(v)))
    }

    /// Render once every template that cannot depend on the recipient (it reads only `campaign`
    /// and vars that no column shadows, and includes nothing), so per-row rendering skips it.
    /// Call after the audience header is known; rendering is unchanged, only faster.
    pub fn prepare(&mut self, columns: &[String]) -> Result<(), RenderError> {
        self.prepare_fast(columns);
        let empty = Arc::new(Vec::new());
        let fixed_names: Vec<String> = self
            .template_vars
            .iter()
            .filter(|(_, (vars, includes))| {
                !includes
                    && vars.iter().all(|v| {
                        v == "campaign" || (self.vars.contains_key(v) && !columns.contains(v))
                    })
            })
            .map(|(n, _)| n.clone())
            .collect();
        let ctx = Value::from_object(Ctx {
            header: Some(empty),
            fields: csv::StringRecord::new(),
            vars: Arc::clone(&self.vars),
            campaign: self.campaign.clone(),
            id: 0,
            touch: Mutex::default(),
        });
        let mut fixed = BTreeMap::new();
        for n in fixed_names {
            let out = self
                .render_one(&n, &ctx)
                .map_err(|e| RenderError::Template(template_error(&e, &self.label)))?;
            fixed.insert(n, out);
        }
        // An empty value used by a fixed template must still count: keep those dynamic.
        if ctx
            .downcast_object_ref::<Ctx>()
            .and_then(|c| c.touch.lock().ok().map(|t| t.empty))
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.fixed = fixed;
        self.direct = self
            .template_vars
            .keys()
            .all(|n| self.fixed.contains_key(n) || self.fast.contains_key(n));
        Ok(())
    }

    /// Find the templates [`Renderer::render_fields`] can render by plain substitution: only text
    /// and `{{ x }}` where `x` is a column (looked up as the context does: first matching column),
    /// a non-empty string var no column shadows, `recipient.id` or `campaign.name`. Anything else
    /// (an include, a filter, a number var, an empty var, an undefined name) keeps minijinja.
    fn prepare_fast(&mut self, columns: &[String]) {
        let mut fast = BTreeMap::new();
        for (name, (_, includes)) in &self.template_vars {
            if *includes {
                continue;
            }
            let Ok(t) = self.env.get_template(name) else {
                continue;
            };
            let Some(pieces) = parse_simple(t.source()) else {
                continue;
            };
            let mut segs = Vec::with_capacity(pieces.len());
            let mut ok = true;
            for (is_expr, text) in pieces {
                if !is_expr {
                    segs.push(Seg::Lit(text.to_string()));
                    continue;
                }
                let seg = match text.split_once('.') {
                    Some(("recipient", "id")) => Some(Seg::Id),
                    Some(("campaign", "name")) => Some(Seg::Lit(self.campaign_name.clone())),
                    Some(_) => None,
                    None if text == "campaign" || text == "recipient" => None,
                    None => match columns.iter().position(|c| c == text) {
                        Some(i) => Some(Seg::Col(i)),
                        None => self
                            .vars
                            .get(text)
                            .and_then(|v| v.as_str())
                            .filter(|s| !s.is_empty())
                            .map(|s| Seg::Lit(s.to_string())),
                    },
                };
                match seg {
                    Some(s) => segs.push(s),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                fast.insert(name.clone(), segs);
            }
        }
        self.fast = fast;
        self.columns = columns.to_vec();
        self.direct = false;
    }

    /// Template files read so far (main template and includes), name → sha256. Part of the plan hash.
    pub fn files(&self) -> BTreeMap<String, [u8; 32]> {
        let mut m = self.loaded.lock().map(|l| l.clone()).unwrap_or_default();
        if let Some((n, h)) = &self.main_file {
            m.insert(format!("<main>/{n}"), *h);
        }
        m
    }

    fn render_one(&self, name: &str, ctx: &Value) -> Result<String, minijinja::Error> {
        if let Some(s) = self.fixed.get(name) {
            return Ok(s.clone());
        }
        self.env.get_template(name)?.render(ctx)
    }

    /// Render one recipient.
    pub fn render(&self, row: RowInput<'_>) -> Result<Rendered, RenderError> {
        let ctx = Ctx {
            header: row.header.cloned(),
            fields: row.fields,
            vars: Arc::clone(&self.vars),
            campaign: self.campaign.clone(),
            id: row.id,
            touch: Mutex::default(),
        };
        let value = Value::from_object(ctx);
        let result = self.render_with(&|name: &str| self.render_one(name, &value));
        let touch = value
            .downcast_object_ref::<Ctx>()
            .and_then(|c| c.touch.lock().ok().map(|t| (t.empty, t.missing.clone())));
        let (empty, missing) = touch.unwrap_or_default();
        match result {
            Ok((content, ext)) => Ok(Rendered {
                content,
                ext,
                used_empty: empty,
            }),
            Err(e) if innermost(&e).kind() == ErrorKind::UndefinedError => {
                let variable = missing
                    .iter()
                    .rev()
                    .find(|m| !GLOBALS.contains(&m.as_str()))
                    .cloned()
                    .unwrap_or_else(|| "?".to_string());
                Err(RenderError::Undefined {
                    variable,
                    detail: template_error(&e, &self.label),
                    place: self.file_place(&e),
                })
            }
            Err(e) => Err(RenderError::Template(template_error(&e, &self.label))),
        }
    }

    /// Render one recipient from borrowed fields; same result as [`Renderer::render`] (the
    /// header must be the columns given to [`Renderer::prepare`]). When every template is fixed
    /// or plain substitution, minijinja is not involved and nothing is copied per row but the
    /// output; otherwise (or on any error, so messages are the same) it goes through `render`.
    pub fn render_fields(
        &self,
        id: u64,
        header: Option<&Arc<Vec<String>>>,
        fields: &csv::StringRecord,
    ) -> Result<Rendered, RenderError> {
        let same_columns = match header {
            Some(h) => h.as_slice() == self.columns.as_slice(),
            None => self.columns.is_empty(),
        };
        if self.direct && same_columns {
            let empty = Cell::new(false);
            let one = |name: &str| -> Result<String, minijinja::Error> {
                if let Some(s) = self.fixed.get(name) {
                    return Ok(s.clone());
                }
                let Some(segs) = self.fast.get(name) else {
                    return Err(minijinja::Error::new(
                        ErrorKind::TemplateNotFound,
                        name.to_string(),
                    ));
                };
                let mut out = String::new();
                for s in segs {
                    match s {
                        Seg::Lit(t) => out.push_str(t),
                        Seg::Col(i) => {
                            let v = fields.get(*i).unwrap_or("");
                            if v.is_empty() {
                                empty.set(true);
                            }
                            out.push_str(v);
                        }
                        Seg::Id => {
                            let _ = write!(out, "{id}");
                        }
                    }
                }
                Ok(out)
            };
            if let Ok((content, ext)) = self.render_with(&one) {
                return Ok(Rendered {
                    content,
                    ext,
                    used_empty: empty.get(),
                });
            }
        }
        self.render(RowInput {
            id,
            header,
            fields: fields.clone(),
        })
    }

    fn render_with(
        &self,
        one: &dyn Fn(&str) -> Result<String, minijinja::Error>,
    ) -> Result<(String, BTreeMap<String, String>), minijinja::Error> {
        let mut ext = BTreeMap::new();
        for (k, name) in &self.ext_names {
            ext.insert(k.clone(), one(name)?);
        }
        let content = match &self.compiled {
            Compiled::Text => {
                let text = one(BODY)?;
                to_json(&TextContent { text: &text })?
            }
            Compiled::Raw => one(BODY)?,
            Compiled::Image { width, height } => {
                let url = one(BODY)?;
                if *width {
                    ext.insert("file_ext_key_original_width".into(), one("image.width")?);
                }
                if *height {
                    ext.insert("file_ext_key_original_height".into(), one("image.height")?);
                }
                to_json(&ImageContent { url: &url })?
            }
            Compiled::CustomData(data) => {
                let mut n = 0usize;
                let doc = self.render_data(data, &mut n, one)?;
                to_json(&doc)?
            }
        };
        Ok((content, ext))
    }

    fn render_data(
        &self,
        v: &serde_json::Value,
        n: &mut usize,
        one: &dyn Fn(&str) -> Result<String, minijinja::Error>,
    ) -> Result<serde_json::Value, minijinja::Error> {
        Ok(match v {
            serde_json::Value::String(_) => {
                let name = format!("data.{n}");
                *n += 1;
                serde_json::Value::String(one(&name)?)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(
                a.iter()
                    .map(|x| self.render_data(x, n, one))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(o) => {
                let mut m = serde_json::Map::new();
                for (k, x) in o {
                    m.insert(k.clone(), self.render_data(x, n, one)?);
                }
                serde_json::Value::Object(m)
            }
            other => other.clone(),
        })
    }
}

fn collect_data_templates(v: &serde_json::Value, n: &mut usize, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) => {
            out.push((format!("data.{n}"), s.clone()));
            *n += 1;
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_data_templates(x, n, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_data_templates(x, n, out)),
        _ => {}
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, minijinja::Error> {
    serde_json::to_string(v).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::BadSerialization,
            format!("cannot serialize Content: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{LoadOptions, Problem};

    fn campaign(message: &str) -> Campaign {
        let text = format!(
            "version: 1\nname: t\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\nsender: 1\naudience: {{ ids: [1] }}\nmessage: {message}\n"
        );
        let dir = std::env::temp_dir();
        crate::spec::parse_str(&text, dir.join("t.yaml"), dir, &LoadOptions::default())
            .unwrap_or_else(|p: Vec<Problem>| panic!("{p:?}"))
    }

    fn row(header: &Arc<Vec<String>>, fields: &[&str]) -> RowInput<'static> {
        RowInput {
            id: 9_007_199_254_740_993,
            header: Some(Box::leak(Box::new(Arc::clone(header)))),
            fields: csv::StringRecord::from(fields.to_vec()),
        }
    }

    #[test]
    fn text_content_is_a_json_document() {
        let r = Renderer::new(&campaign(
            "{ type: text, text: \"{{ name }} \\\"{{ recipient.id }}\\\" {{ campaign.name }}\" }",
        ))
        .expect("compile");
        let h = Arc::new(vec!["user_id".to_string(), "name".to_string()]);
        let out = r.render(row(&h, &["1", "a\"b\\c\n😀{{"])).expect("render");
        assert_eq!(
            out.content,
            r#"{"text":"a\"b\\c\n😀{{ \"9007199254740993\" t"}"#
        );
        assert!(!out.used_empty);
    }

    #[test]
    fn undefined_names_the_variable_and_empty_is_noticed() {
        let r = Renderer::new(&campaign("{ type: text, text: \"{{ name }}{{ other }}\" }"))
            .expect("compile");
        let h = Arc::new(vec!["user_id".to_string(), "name".to_string()]);
        match r.render(row(&h, &["1", ""])) {
            Err(RenderError::Undefined { variable, .. }) => assert_eq!(variable, "other"),
            other => panic!("expected undefined, got {other:?}"),
        }
        let r =
            Renderer::new(&campaign("{ type: text, text: \"Hi {{ name }},\" }")).expect("compile");
        let out = r.render(row(&h, &["1", ""])).expect("render");
        assert!(out.used_empty);
        assert_eq!(out.content, r#"{"text":"Hi ,"}"#);
    }

    #[test]
    fn static_detection_and_fixed_templates() {
        let mut r = Renderer::new(&campaign(
            "{ type: text, text: \"{{ a }} {{ campaign.name }}\", vars: { a: x } }",
        ))
        .expect("compile");
        assert!(r.is_static(&["user_id".into()]));
        assert!(
            !r.is_static(&["user_id".into(), "a".into()]),
            "a column shadows the var"
        );
        r.prepare(&["user_id".into()]).expect("prepare");
        let h = Arc::new(vec!["user_id".to_string()]);
        assert_eq!(
            r.render(row(&h, &["1"])).expect("render").content,
            r#"{"text":"x t"}"#
        );
    }

    /// The substitution fast path gives exactly what minijinja gives, or defers to it.
    #[test]
    fn fast_path_matches_minijinja() {
        let h = Arc::new(vec![
            "user_id".to_string(),
            "name".to_string(),
            "true".to_string(),
            "v".to_string(),
        ]);
        let texts = [
            "Hi {{ name }}, {{recipient.id}} from {{ campaign.name }}!",
            "{{ name }}\n",
            "a }} b {{ name }}",
            "{{- name }} x",
            "{{ name|upper }}",
            "{{ true }} {{ v }}",
            "{{ s }}-{{ e }}-{{ n }}",
            "{{ s }}",
            "{{ e }}",
            "{# c #}{{ name }}",
            "{{ name.x }}",
            "plain",
            "{{ recipient }}",
        ];
        for t in texts {
            let msg = format!(
                "{{ type: text, text: {t:?}, ext: {{ k: \"{{{{ name }}}}!\" }}, vars: {{ s: sv, e: \"\", n: 5, v: var }} }}"
            );
            let mut r = Renderer::new(&campaign(&msg)).expect("compile");
            r.prepare(&h).expect("prepare");
            for fields in [
                &["1", "Zoë \"q\" \\ 😀", "t", "col"][..],
                &["2", "", "", ""],
                &["3"],
            ] {
                let rec = csv::StringRecord::from(fields.to_vec());
                let fast = r.render_fields(7, Some(&h), &rec);
                let slow = r.render(RowInput {
                    id: 7,
                    header: Some(&h),
                    fields: rec.clone(),
                });
                assert_eq!(fast, slow, "template {t:?}, row {fields:?}");
            }
        }
        let r = Renderer::new(&campaign("{ type: text, text: \"Hi {{ name }}\" }"));
        let mut r = r.expect("compile");
        r.prepare(&h).expect("prepare");
        assert!(r.direct, "a column substitution renders without minijinja");
        assert_eq!(
            parse_simple("a{{ x }}b\n"),
            Some(vec![(false, "a"), (true, "x"), (false, "b")])
        );
    }

    #[test]
    fn include_names_are_confined() {
        assert!(safe_relative("footer.j2").is_some());
        assert!(safe_relative("parts/footer.j2").is_some());
        assert!(safe_relative("../secret").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
    }
}
