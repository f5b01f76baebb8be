//! `rollback-agent`: the executor of rollback runbooks, and its tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rollback_agent::config::{NatsAuth, NatsSection};
use rollback_agent::provision;
use rollback_agent::replay::{self, At};
use rollback_agent::tenancy::consolidate::{self, ConsolidateOptions};
use rollback_agent::tenancy::plan::{self, PlanOptions};
use rollback_agent::tenancy::verify;
use rollback_agent::{delta, demo};
use rollback_proto::runbook::{FkChecks, IdStrategy, StepKind};
use rollback_proto::{RunId, Runbook};

#[derive(Parser)]
#[command(
    name = "rollback-agent",
    version,
    about = "Executes rollback runbooks phase by phase, recording every action as an event"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: answer commands and execute runbooks until SIGINT or SIGTERM.
    Run {
        /// The configuration file (TOML); environment variables override it.
        #[arg(long, env = "ROLLBACK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create the event stream, the agents' buckets and the bot's bucket and consumer, or bring
    /// them back to their settings, with an administrator's NATS credentials (the agent's own
    /// may not). Prints what it created or changed; safe to repeat and to run from several
    /// places at once. Run it before the first start and whenever the agent reports the stream
    /// weakened.
    Provision {
        /// The agents' configuration file: NATS servers, `[store]` replicas and duplicate
        /// window, `[agent]` lease_ttl; environment variables override it as for `run`.
        #[arg(long, env = "ROLLBACK_CONFIG")]
        config: Option<PathBuf>,
        /// The administrator's NATS user; its password comes from NATS_ADMIN_PASSWORD. Without
        /// it (or --creds) the configuration's own credentials are used.
        #[arg(long, env = "NATS_ADMIN_USER")]
        user: Option<String>,
        /// The administrator's NATS credentials file.
        #[arg(long, env = "NATS_ADMIN_CREDS")]
        creds: Option<PathBuf>,
    },
    /// Replay a run for the postmortem: verify its hash chain, fold its events, write a report
    /// (the verdict first). Exits 2 when the history is not intact.
    Replay {
        /// The run's id.
        run: String,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Report the state at an event seq (a number from 1) or a time (RFC 3339, e.g.
        /// 2026-11-25T23:40:00Z): the fold stops there; the verdict still covers every event.
        #[arg(long)]
        at: Option<String>,
        /// Write the report to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The agent's configuration file, for the NATS connection; environment variables
        /// (NATS_URL, NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS) override it.
        #[arg(long, env = "ROLLBACK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check runbook files: every problem is reported with its file, phase and step.
    CheckRunbook {
        /// The runbook files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The tenancy preflight: what consolidation would do and what stands in its way. Writes nothing.
    Plan {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Count rows exactly instead of using the planner's estimates.
        #[arg(long)]
        exact: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Move every tenant schema's rows back into the shared tables (exactly once; safe to re-run).
    Consolidate {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Tenants worked on at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Report what would be done and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Foreign-key checks while loading: row by row (enforced), in bulk at the end
        /// (deferred; superuser, no application triggers), or deferred when safe (auto).
        #[arg(long, value_enum, default_value_t = FkMode::Auto)]
        fk_checks: FkMode,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Prove that the shared tables hold exactly the tenant schemas' rows. Reads only.
    Verify {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Units checked at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The emergency path's delta: the rows written in the tenant schemas since the migration,
    /// compared by key and row hash with a restored pre-migration copy, to a checksummed file.
    ExportDelta {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The restored pre-migration copy.
        #[arg(long)]
        baseline_url: String,
        /// The folder the delta file goes into (`delta-<time>.jsonl.gz` and its `.sha256`).
        #[arg(long)]
        output_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Import a delta into the restored database (exactly once per unit; safe to re-run), then
    /// prove every unit against it.
    ImportDelta {
        /// The restored database.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// The delta file.
        #[arg(long)]
        file: PathBuf,
        /// Its sha256 (default: the `.sha256` file beside it).
        #[arg(long)]
        sha256: Option<String>,
        /// Tenants worked on at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Only prove that the database holds what the delta says; write nothing.
        #[arg(long)]
        check_only: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Create a realistic demo schema-per-tenant database (deterministic for a seed).
    DemoDb {
        /// The database to fill; it must not already have a `tenants` table.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Number of tenants.
        #[arg(long, default_value_t = 10)]
        tenants: u32,
        /// Rows per table per tenant, on average.
        #[arg(long, default_value_t = 50)]
        rows: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rows per shared table from before the migration.
        #[arg(long, default_value_t = 20)]
        shared_rows: u32,
        /// Make one tenant this many times larger than the others.
        #[arg(long, default_value_t = 1)]
        big_tenant_factor: u32,
        /// Add decoy schemas (`tenants_archive`, `tenantx`, hostile names, orphans).
        #[arg(long)]
        decoys: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FkMode {
    Auto,
    Enforced,
    Deferred,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Md,
    Json,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Where the tenancy engine looks: a runbook's tenancy step, or flags.
#[derive(Args)]
struct ScopeArgs {
    /// The database (defaults to DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Take the scope (pattern, tenants table, tables, ids) from this runbook's first tenancy step.
    #[arg(long)]
    runbook: Option<PathBuf>,
    /// Schema names that are tenant schemas: an anchored regular expression, group 1 the tenant id.
    #[arg(long)]
    schema_pattern: Option<String>,
    /// The shared table listing the tenants.
    #[arg(long)]
    tenants_table: Option<String>,
    /// Only these tables (comma separated).
    #[arg(long, value_delimiter = ',')]
    tables: Option<Vec<String>>,
    /// Keep ids (only when unique across tenants) or remap them.
    #[arg(long, value_enum)]
    ids: Option<Ids>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ids {
    Remap,
    Keep,
}

impl ScopeArgs {
    fn options(&self) -> anyhow::Result<PlanOptions> {
        let mut opts = PlanOptions::default();
        if let Some(path) = &self.runbook {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let rb = Runbook::parse(&path.display().to_string(), &source)?;
            let step = rb
                .steps()
                .find_map(|(_, s)| match &s.kind {
                    StepKind::Plan(t) | StepKind::Verify(t) => {
                        Some((t.scope.clone(), t.tables.clone(), None))
                    }
                    StepKind::Consolidate(c) => Some((c.scope.clone(), None, Some(c.ids))),
                    _ => None,
                })
                .with_context(|| {
                    format!("{} has no plan, consolidate or verify step", path.display())
                })?;
            opts.scope = step.0;
            opts.tables = step.1;
            if let Some(ids) = step.2 {
                opts.ids = ids;
            }
        }
        if let Some(p) = &self.schema_pattern {
            opts.scope.schema_pattern = p.clone();
        }
        if let Some(t) = &self.tenants_table {
            opts.scope.tenants_table = t.clone();
        }
        if self.tables.is_some() {
            opts.tables = self.tables.clone();
        }
        match self.ids {
            Some(Ids::Remap) => opts.ids = IdStrategy::Remap,
            Some(Ids::Keep) => opts.ids = IdStrategy::Keep,
            None => {}
        }
        Ok(opts)
    }
}

/// A pool to `url`, after one connection proved the server is there: a database that does
/// not answer fails within seconds, with its host, port and reason (the error says it all, so
/// it gets no context of its own, which would only repeat it).
async fn connect(url: &str, max: u32) -> anyhow::Result<sqlx::PgPool> {
    Ok(rollback_agent::steps::connect_pool(url, max).await?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Cmd::CheckRunbook { files } => check_runbooks(&files),
        cmd => runtime.block_on(run(cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code for "ran, and said no" (a refused plan, a failed verification).
const REFUSED: u8 = 2;

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::CheckRunbook { .. } => unreachable!("handled without a runtime"),
        Cmd::Run { config } => {
            let config = rollback_agent::config::AgentConfig::load_from_env(config.as_deref())?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping");
                signal.cancel();
            });
            rollback_agent::agent::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Provision {
            config,
            user,
            creds,
        } => {
            let config = rollback_agent::config::AgentConfig::load_from_env(config.as_deref())?;
            let admin = provision::AdminCredentials::from_env(user, creds);
            let nats = provision::admin_connection(&config.nats, &admin)?;
            let (refused, mut refusals) = tokio::sync::mpsc::channel(16);
            let client =
                connect_nats_once(&nats, "rollback-agent provision", Some(refused)).await?;
            let js = async_nats::jetstream::new(client);
            let settings = provision::ProvisionSettings::of(&config);
            let done = provision::provision_patiently(&js, &settings, &mut refusals)
                .await
                .context("provisioning")?;
            for line in done {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay {
            run,
            format,
            at,
            out,
            config,
        } => {
            replay(
                &run,
                format,
                at.as_deref(),
                out.as_deref(),
                config.as_deref(),
            )
            .await
        }
        Cmd::Plan {
            scope,
            exact,
            format,
        } => {
            let pool = connect(&scope.database_url, 4).await?;
            let mut p = plan::plan(&pool, &scope.options()?).await?;
            if exact {
                plan::count_exactly(&pool, &mut p).await?;
            }
            match format {
                Format::Text => print!("{p}"),
                Format::Json => println!("{}", serde_json::to_string_pretty(&p)?),
            }
            Ok(if p.is_executable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(REFUSED)
            })
        }
        Cmd::Consolidate {
            scope,
            concurrency,
            dry_run,
            fk_checks,
            format,
        } => {
            let pool = connect(&scope.database_url, concurrency as u32 + 2).await?;
            let p = plan::plan(&pool, &scope.options()?).await?;
            if !p.is_executable() {
                print!("{p}");
                return Ok(ExitCode::from(REFUSED));
            }
            let opts = ConsolidateOptions {
                concurrency,
                dry_run,
                fk_checks: match fk_checks {
                    FkMode::Auto => FkChecks::Auto,
                    FkMode::Enforced => FkChecks::Enforced,
                    FkMode::Deferred => FkChecks::Deferred,
                },
            };
            let report = consolidate::consolidate(&pool, &p, &opts, &|pr| {
                tracing::info!(units = pr.units_done, of = pr.units_total, rows = pr.rows_done, tenant = pr.tenant, table = %pr.table, skipped = pr.skipped, "unit");
            })
            .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text if dry_run => report.would.iter().for_each(|w| println!("would {w}")),
                Format::Text => println!(
                    "consolidated {} unit(s) ({} already done), {} row(s) in {} ms",
                    report.units_done,
                    report.units_skipped,
                    report.rows_total(),
                    report.elapsed_ms
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ExportDelta {
            scope,
            baseline_url,
            output_dir,
            format,
        } => {
            let source = connect(&scope.database_url, 2).await?;
            let baseline = connect(&baseline_url, 2).await?;
            let opts = delta::ExportOptions {
                scope: scope.options()?.scope,
                output: delta::delta_path(&output_dir, time::OffsetDateTime::now_utc()),
                baseline_label: "the database given by --baseline-url".into(),
                source_database: source
                    .connect_options()
                    .get_database()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let report = delta::export(&source, &baseline, &opts, &|done, total| {
                tracing::info!(units = done, of = total, "unit");
            })
            .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text => {
                    report
                        .warnings
                        .iter()
                        .for_each(|w| eprintln!("warning: {w}"));
                    println!(
                        "{} inserted, {} updated, {} deleted in {} unit(s) of {} tenant(s): {} (sha256 {})",
                        report.inserted,
                        report.updated,
                        report.deleted,
                        report.units,
                        report.tenants,
                        report.path.display(),
                        report.sha256
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ImportDelta {
            database_url,
            file,
            sha256,
            concurrency,
            check_only,
            format,
        } => {
            let sha256 = match sha256 {
                Some(sum) => sum,
                None => rollback_agent::archive::read_sidecar(&file)
                    .await?
                    .with_context(|| {
                        format!(
                            "no sha256 given and no {} beside the file: a delta is imported only when its checksum can be checked",
                            rollback_agent::archive::sidecar_path(&file).display()
                        )
                    })?,
            };
            let pool = connect(&database_url, concurrency as u32 + 2).await?;
            let report = if check_only {
                delta::check(&pool, &file, &sha256).await?
            } else {
                let opts = delta::ImportOptions { concurrency };
                delta::import(&pool, &file, &sha256, &opts, &|done, total| {
                    tracing::info!(units = done, of = total, "unit");
                })
                .await?
            };
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text => {
                    for m in &report.mismatches {
                        println!(
                            "MISMATCH tenant {}, table {}: expected {} row(s) {}, found {} {}",
                            m.tenant,
                            m.table,
                            m.expected_rows,
                            m.expected_fingerprint,
                            m.rows,
                            m.fingerprint
                        );
                    }
                    println!(
                        "{} inserted, {} updated, {} deleted, {} tenant(s) created; {} unit(s) done, {} found done; {} of {} proven",
                        report.inserted,
                        report.updated,
                        report.deleted,
                        report.tenants_created,
                        report.units_done,
                        report.units_skipped,
                        report.verified_units,
                        report.units_total
                    );
                }
            }
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(REFUSED)
            })
        }
        Cmd::Verify {
            scope,
            concurrency,
            format,
        } => {
            let pool = connect(&scope.database_url, concurrency as u32 + 2).await?;
            let p = plan::plan(&pool, &scope.options()?).await?;
            let report = verify::verify(&pool, &p, concurrency).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Format::Text => {
                    println!(
                        "checked {} unit(s), {} row(s); {} tenant(s) verified",
                        report.units_checked,
                        report.rows_checked,
                        report.verified_tenants.len()
                    );
                    for f in report.failures() {
                        println!("FAIL {f}");
                    }
                }
            }
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(REFUSED)
            })
        }
        Cmd::DemoDb {
            database_url,
            tenants,
            rows,
            seed,
            shared_rows,
            big_tenant_factor,
            decoys,
        } => {
            let pool = connect(&database_url, 6).await?;
            let spec = demo::DemoSpec {
                tenants,
                rows,
                seed,
                shared_rows,
                big_tenant_factor,
                decoys,
                ..Default::default()
            };
            let summary = demo::generate(&pool, &spec).await?;
            println!("{}", demo::describe(&summary));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn replay(
    run: &str,
    format: ReportFormat,
    at: Option<&str>,
    out: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let run: RunId = run
        .parse()
        .map_err(|e| anyhow::anyhow!("`{run}` is not a run id: {e}"))?;
    let at = at.map(|at| at.parse::<At>()).transpose().context("--at")?;
    let config = rollback_agent::config::AgentConfig::load_from_env(config)?;
    let client = connect_nats_once(&config.nats, "rollback-agent replay", None).await?;
    let report = replay::replay_from(&async_nats::jetstream::new(client), run, at).await?;
    let text = replay::render(
        &report,
        match format {
            ReportFormat::Md => replay::Format::Markdown,
            ReportFormat::Json => replay::Format::Json,
            ReportFormat::Html => replay::Format::Html,
        },
    );
    match out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?,
        None => print!("{text}"),
    }
    if report.verdict.is_intact() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", report.verdict.headline());
        Ok(ExitCode::from(REFUSED))
    }
}

/// One connection attempt, for a command-line tool: a server that is down is an error now,
/// not a wait (unlike the agent, which keeps retrying).
/// The server's asynchronous errors (permission violations) go to `server_errors`, if given.
async fn connect_nats_once(
    nats: &NatsSection,
    name: &str,
    server_errors: Option<tokio::sync::mpsc::Sender<String>>,
) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(std::time::Duration::from_secs(5));
    if let Some(errors) = server_errors {
        opts = opts.event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    // Full: the earlier ones already tell the story.
                    let _ = errors.try_send(e.to_string());
                }
            }
        });
    }
    let opts = match nats.auth() {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.to_owned(), password.expose().clone())
        }
        NatsAuth::Token(token) => opts.token(token.expose().clone()),
        NatsAuth::CredsFile(path) => opts
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?,
    };
    opts.connect(nats.servers())
        .await
        .context("connecting to NATS (nats.url in the configuration, or NATS_URL)")
}

fn check_runbooks(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let source =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        match Runbook::parse(&file.display().to_string(), &source) {
            Ok(rb) => {
                let steps: usize = rb.phases.iter().map(|p| p.steps.len()).sum();
                println!(
                    "{}: ok ({} phases, {steps} steps)",
                    file.display(),
                    rb.phases.len()
                );
            }
            Err(e) => {
                failed = true;
                println!("{e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
