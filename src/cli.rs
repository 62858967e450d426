//! The command line: raw flags (clap derive) and the dispatch to each command.
//!
//! This module owns the flag names and their help text. It turns the process arguments into one
//! [`Cli`] value and hands each subcommand's arguments to the module that implements it
//! (`crate::cmd::*`). It does no work of its own beyond logging setup and exit-code mapping.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::exit::{CmdResult, Exit};

#[derive(Debug, Parser)]
#[command(
    name = "imcast",
    version,
    about = "Declarative campaign runner for the Volcengine RTC IM server API",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes; `--help` lists them apart, under "Global options".
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human,
          help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Less log output: warnings and errors only.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Log request bodies (they hold personal data). Off unless asked for.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub log_bodies: bool,
    /// Colour in logs and text output: auto (only on a terminal, and not when NO_COLOR is set),
    /// always, or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto,
          value_name = "WHEN", help_heading = GLOBAL)]
    pub color: ColorChoice,
}

/// The heading `--help` lists [`GlobalArgs`] under, apart from each command's own flags.
pub const GLOBAL: &str = "Global options";

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ColorChoice {
    /// Colour only where it is read on a terminal, and never when NO_COLOR is set (no-color.org).
    #[default]
    Auto,
    /// Colour even into files and pipes (and despite NO_COLOR).
    Always,
    /// No colour.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// `--output` of `status` and `schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Lines for people.
    #[default]
    #[value(alias = "text")]
    Human,
    /// One JSON document, for scripts.
    Json,
}

/// `imcast plan --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PlanOutput {
    /// For people (coloured on a terminal unless NO_COLOR is set).
    #[default]
    #[value(alias = "human")]
    Text,
    /// Machine-readable (with --diff: the format in plan-diff.schema.json).
    Json,
    /// With --diff: a summary table and collapsible sections for a pull-request comment.
    Markdown,
}

/// `imcast validate --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ValidateOutput {
    /// One line per file; problems on stderr.
    #[default]
    #[value(alias = "human")]
    Text,
    /// One JSON document: every file, its counts or its problems.
    Json,
    /// GitHub Actions workflow commands (`::error file=…,line=…,col=…::message`).
    Github,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check campaign files offline: schema, paths, templates, audience, schedule. Sends nothing.
    Validate(ValidateArgs),
    /// Dry run: audience counts, grouping into calls, ETA, plan hash, sample messages. Sends nothing.
    Plan(PlanArgs),
    /// Print the exact request body one recipient's call would carry. Sends nothing.
    Preview(PreviewArgs),
    /// Print a JSON Schema: of the campaign file format (for editors), or of `plan --diff --output json`.
    Schema(SchemaArgs),
    /// Send a campaign: throttled, journaled, resumable; writes a per-recipient report.
    Run(RunArgs),
    /// Show the latest run of a campaign.
    Status(StatusArgs),
    /// Rewrite a run's report (report.html, summary.json, per-recipient files) from the journal.
    Report(ReportArgs),
    /// Run a folder of campaigns on their schedules, each occurrence exactly once.
    Daemon(DaemonArgs),
    /// List each campaign's next and past occurrences.
    Schedule(ScheduleArgs),
    /// Pause a running or scheduled campaign.
    Pause(ControlArgs),
    /// Resume a paused campaign.
    Resume(ControlArgs),
    /// Cancel a running or scheduled campaign: its pending recipients become `cancelled`.
    Cancel(ControlArgs),
    /// Delete old runs from the journal (and, with --reports, their report folders).
    Prune(PruneArgs),
    /// The shared state store (`[state] url` in imcast.toml): schema migrations.
    #[command(subcommand)]
    State(StateCommand),
    /// Run the mock provider: the same API on loopback, with signature checks, limits and faults.
    MockServer(MockServerArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// Which schema.
    #[arg(value_enum, default_value_t = SchemaKind::Campaign)]
    pub kind: SchemaKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// The campaign file (imcast.schema.json).
    Campaign,
    /// The JSON output of `plan --diff` (plan-diff.schema.json).
    PlanDiff,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Where state and account settings live; shared by commands that touch the journal.
#[derive(Debug, Clone, Args, Default)]
pub struct StateArgs {
    /// Account settings file (default: imcast.toml at the campaigns repository root, if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State directory holding the journal (default: .imcast/ at the campaigns root; --help
    /// says how the root is found).
    #[arg(long, value_name = "DIR", long_help = state_dir_long_help())]
    pub state_dir: Option<PathBuf>,
}

fn state_dir_long_help() -> String {
    format!(
        "State directory holding the journal (default: .imcast/ at the campaigns root).\n\n{}",
        crate::config::ROOT_RULE
    )
}

/// `--mock` of the commands that read or act on runs.
const MOCK_HELP: &str = "Mock runs (`imcast run --mock`) instead of real ones: their state is in \
<state>/mock/ and their reports under reports/mock/";

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Campaign files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateOutput::Text)]
    pub output: ValidateOutput,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Campaign file.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
    /// Compare with the campaign as it was at this git revision (branch, tag or commit): who is
    /// added or removed, whose message changes, which settings change.
    #[arg(long, value_name = "REV")]
    pub diff: Option<String>,
    /// Pretend it is this instant (RFC 3339); for tests and what-if checks.
    #[arg(long, hide = true, value_name = "TIME")]
    pub now: Option<String>,
    /// How many rendered sample recipients to show.
    #[arg(long, default_value_t = 3)]
    pub sample: usize,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    /// Also say what `imcast run FILE --retry-failed` would send again (from the journal): how many
    /// failed recipients of the last finished run, by code, and what stays.
    #[arg(long, conflicts_with = "diff")]
    pub retry_failed: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PreviewArgs {
    /// Campaign file.
    pub file: PathBuf,
    /// The recipient (user id, or conversation id for conversation/p2p campaigns).
    #[arg(long)]
    pub recipient: u64,
    /// Print the body exactly as it goes on the wire, every id included. Without it, id lists
    /// longer than 20 (e.g. a call's 500 receivers) are folded to their first and last 5 and a
    /// count — readable, but no longer the wire bytes nor valid JSON, and marked as folded.
    #[arg(long)]
    pub full: bool,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Campaign file.
    pub file: PathBuf,
    /// Start the embedded mock provider and send there (no credentials needed).
    #[arg(long)]
    pub mock: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Start a fresh run that sends to everyone again, even if an earlier run finished.
    #[arg(long, conflicts_with = "continue_changed")]
    pub new_run: bool,
    /// Continue an unfinished run whose inputs changed: new content, skipping recipients already sent.
    #[arg(long)]
    pub continue_changed: bool,
    /// Resend recipients whose outcome is unknown (may duplicate messages).
    #[arg(long)]
    pub resend_unknown: bool,
    /// Send past the rollout's canary without waiting for its gate (recorded in the audit).
    #[arg(long)]
    pub skip_canary: bool,
    /// After fixing what made recipients fail: start a follow-up run (linked to the last
    /// finished run) that sends again to exactly the recipients that run left `failed` with a
    /// retryable code (FailedReceiver, rate limited or unavailable after the retries ran out).
    /// `unknown` recipients stay behind --resend-unknown.
    #[arg(long, conflicts_with_all = ["new_run", "continue_changed", "resend_unknown", "test_to"])]
    pub retry_failed: bool,
    /// Send the real content to these ids only, as a test; the campaign's run is not touched.
    /// Ids are at most 9223372036854775807 (the provider's ids are signed 64-bit).
    #[arg(long, value_delimiter = ',', value_name = "ID,ID",
          value_parser = clap::value_parser!(u64).range(..=i64::MAX as u64))]
    pub test_to: Vec<u64>,
    /// Where reports go (default: reports/ at the campaigns repository root).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Per-recipient report files, comma-separated: csv, jsonl, or none (default: imcast.toml's
    /// `report.formats`, else csv). report.html and summary.json are always written.
    #[arg(long, value_name = "FORMAT,FORMAT", value_parser = crate::config::ReportFormats::parse)]
    pub report_format: Option<crate::config::ReportFormats>,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Campaign file.
    pub file: PathBuf,
    #[arg(long, help = MOCK_HELP)]
    pub mock: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Where reports go (default: reports/ at the campaigns repository root).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Campaign file.
    pub file: PathBuf,
    /// Run id (default: the latest run).
    #[arg(long)]
    pub run: Option<String>,
    /// Mock runs (`imcast run --mock`) instead of real ones: their state is in <state>/mock/. A
    /// mock run's report always goes under reports/mock/, with or without this flag.
    #[arg(long)]
    pub mock: bool,
    /// Where reports go (default: reports/ at the campaigns repository root).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Per-recipient report files, comma-separated: csv, jsonl, or none (default: imcast.toml's
    /// `report.formats`, else csv). report.html and summary.json are always written.
    #[arg(long, value_name = "FORMAT,FORMAT", value_parser = crate::config::ReportFormats::parse)]
    pub report_format: Option<crate::config::ReportFormats>,
    /// Open report.html in a browser, when there is one (else print where it is).
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Folder of campaign files.
    pub dir: PathBuf,
    /// Serve Prometheus metrics on this loopback address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Where reports go (default: reports/ at the campaigns repository root).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Per-recipient report files, comma-separated: csv, jsonl, or none (default: imcast.toml's
    /// `report.formats`, else csv). report.html and summary.json are always written.
    #[arg(long, value_name = "FORMAT,FORMAT", value_parser = crate::config::ReportFormats::parse)]
    pub report_format: Option<crate::config::ReportFormats>,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Folder of campaign files.
    pub dir: PathBuf,
    /// How many upcoming occurrences to list per campaign.
    #[arg(long, default_value_t = 3)]
    pub next: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// How many past occurrences to list per campaign.
    #[arg(long, default_value_t = 10)]
    pub past: usize,
    /// Pretend it is this instant (RFC 3339); for tests and what-if checks.
    #[arg(long, hide = true, value_name = "TIME")]
    pub now: Option<String>,
    /// Allow this provider endpoint besides the known region hosts and loopback.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// Campaign name (the `name:` in its file).
    pub name: String,
    /// Do not wait for the daemon to acknowledge the request.
    #[arg(long)]
    pub no_wait: bool,
    /// Act on a running `imcast run --mock` (its state is in <state>/mock/).
    #[arg(long)]
    pub mock: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete runs that ended longer ago than this (e.g. 90d).
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    /// Also delete the report folders of runs that ended longer ago (never by default).
    #[arg(long)]
    pub reports: bool,
    /// Where reports are (with --reports; default: reports/ at the campaigns repository root).
    #[arg(long, requires = "reports")]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// `imcast state …`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Bring the state store's schema up to this version of imcast and print what was applied
    /// (a schema newer than this imcast knows is refused, untouched).
    Migrate(StateMigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StateMigrateArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MockServerArgs {
    /// Address to listen on (port 0 = ephemeral); the bound address is the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Access key id the mock accepts.
    #[arg(long, env = "VOLC_ACCESSKEY", default_value = crate::mock::DEFAULT_ACCESS_KEY)]
    pub access_key: String,
    /// Secret key the mock verifies signatures with.
    #[arg(long, env = "VOLC_SECRETKEY", default_value = crate::mock::DEFAULT_SECRET_KEY, hide_env_values = true)]
    pub secret_key: String,
    /// Region the credential scope must name (the service must be `rtc`); a request signed for
    /// another region or service gets 401 SignatureDoesNotMatch.
    #[arg(long, default_value = crate::mock::DEFAULT_REGION)]
    pub region: String,
    /// Write replies the way a real (Go) server may: comma-separated from null-lists,
    /// empty-error, success-spelling, extra-fields, or `all`.
    #[arg(long, value_name = "LIST")]
    pub quirks: Option<String>,
    /// AppIds the mock accepts (repeatable; default: any).
    #[arg(long)]
    pub app_id: Vec<u64>,
    /// BatchSendMessage messages allowed per rolling window.
    #[arg(long, default_value_t = 12000)]
    pub limit: u64,
    /// The rolling window for --limit (e.g. 60s, 5s, 500ms).
    #[arg(long, default_value = "60s")]
    pub window: String,
    /// SendMessage requests allowed per rolling second.
    #[arg(long, default_value_t = 50)]
    pub send_qps: u64,
    /// P2PSendMessage requests allowed per rolling second.
    #[arg(long, default_value_t = 100)]
    pub p2p_qps: u64,
    /// Share of requests answered HTTP 500 before processing.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests processed, then answered HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub fail_after_rate: f64,
    /// Share of requests processed, then the connection closed with no response.
    #[arg(long, default_value_t = 0.0)]
    pub lost_rate: f64,
    /// Share of requests answered 503 ServiceUnavailableTemp before processing.
    #[arg(long, default_value_t = 0.0)]
    pub unavailable_rate: f64,
    /// Share of receivers returned in FailedReceiver.
    #[arg(long, default_value_t = 0.0)]
    pub failed_receiver_rate: f64,
    /// Share of P2P users returned NOT_ONLINE.
    #[arg(long, default_value_t = 0.0)]
    pub offline_rate: f64,
    /// Added latency per request, in milliseconds: a random part before the request is read,
    /// checked and counted in its window, the rest before the answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed for the fault injection.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Record every delivery to this JSONL file.
    #[arg(long)]
    pub record: Option<PathBuf>,
}

/// Parse the arguments, set up logging, run the command, map the outcome to an exit code.
pub fn run<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // clap prints help and usage errors before `--color` is parsed: look for it first.
    let parsed = Cli::command()
        .color(clap_color(&args))
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Ok.into()
                }
                _ => Exit::Invalid.into(),
            };
        }
    };
    crate::logging::init(&cli.global);
    match dispatch(cli) {
        Ok(exit) => exit.into(),
        Err(failure) => {
            crate::errln!("error: {failure}");
            failure.exit.into()
        }
    }
}

/// The `--color` on the command line, for clap's own help and error output (which honours
/// NO_COLOR and a terminal by itself under `auto`).
fn clap_color(args: &[OsString]) -> clap::ColorChoice {
    let mut it = args.iter().filter_map(|a| a.to_str());
    let mut last = None;
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let v = match a.strip_prefix("--color") {
            Some("") => it.next(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(v) = v {
            last = Some(v);
        }
    }
    match last {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}

fn dispatch(cli: Cli) -> CmdResult {
    let g = &cli.global;
    match &cli.command {
        Command::Validate(a) => crate::cmd::validate::run(g, a),
        Command::Plan(a) => crate::cmd::plan::run(g, a),
        Command::Preview(a) => crate::cmd::preview::run(g, a),
        Command::Schema(a) => crate::cmd::schema::run(g, a),
        Command::Run(a) => crate::cmd::run::run(g, a),
        Command::Status(a) => crate::cmd::status::run(g, a),
        Command::Report(a) => crate::cmd::report::run(g, a),
        Command::Daemon(a) => crate::cmd::daemon::run(g, a),
        Command::Schedule(a) => crate::cmd::schedule::run(g, a),
        Command::Pause(a) => crate::cmd::control::pause(g, a),
        Command::Resume(a) => crate::cmd::control::resume(g, a),
        Command::Cancel(a) => crate::cmd::control::cancel(g, a),
        Command::Prune(a) => crate::cmd::prune::run(g, a),
        Command::State(StateCommand::Migrate(a)) => crate::cmd::state::migrate(g, a),
        Command::MockServer(a) => crate::cmd::mock_server::run(g, a),
        Command::Completions(a) => crate::cmd::completions::completions(g, a),
        Command::Man => crate::cmd::completions::man(g),
    }
}
