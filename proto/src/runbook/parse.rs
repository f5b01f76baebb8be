//! From TOML text to a checked [`Runbook`].
//!
//! The text is parsed into a spanned tree first, then walked phase by phase and step by
//! step; each piece is deserialized on its own, so every error knows its phase, its step
//! and its line. A step's table is split by key into the fields every step has, the
//! fields of its kind and, for the tenancy builtins, their [`TenancyScope`]; each part is
//! deserialized by a struct that refuses unknown fields.

#![allow(
    clippy::result_large_err,
    reason = "a runbook is parsed once per run; an error is rare and carries its whole location"
)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::duration::{self, BAD_DURATION};
use super::kinds::NoFields;
use super::params;
use super::{
    ConsolidateStep, DropSchemasStep, DryRunBehaviour, DumpFormat, EmergencySpec, ExportDeltaStep,
    Phase, RetryPolicy, Runbook, RunbookError, RunbookErrorKind, Step, StepKind, TenancyScope,
    TenancyStep, TextPosition,
};
use crate::ids::{PhaseId, StepId};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

/// The top of the file, without its phases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    emergency: Option<EmergencySpec>,
    #[serde(default, with = "super::duration::option_text")]
    require_rehearsal_within: Option<std::time::Duration>,
    #[serde(default)]
    rehearsal: super::RehearsalSpec,
    /// Walked separately, so that each phase's errors know their place.
    #[serde(default, rename = "phases")]
    _phases: IgnoredAny,
}

/// A `[[phases]]` table, without its steps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseHeader {
    id: PhaseId,
    title: Option<String>,
    #[serde(default)]
    auto_advance: bool,
    /// Walked separately, step by step.
    #[serde(default, rename = "steps")]
    _steps: IgnoredAny,
}

/// The fields every step has; the rest of its table belongs to its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonFields {
    id: StepId,
    title: Option<String>,
    /// Read and checked before the split.
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    destructive: bool,
    #[serde(default, with = "duration::option_text")]
    timeout: Option<Duration>,
    #[serde(default, with = "duration::option_text")]
    budget: Option<Duration>,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    approvals: u32,
    #[serde(default)]
    dry_run: DryRunBehaviour,
    #[serde(default)]
    rehearse: bool,
    #[serde(default)]
    maintenance: Option<super::Maintenance>,
}

/// The keys of [`CommonFields`]: everything else in a step's table goes to its kind.
const COMMON_FIELDS: [&str; 12] = [
    "id",
    "title",
    "kind",
    "idempotent",
    "destructive",
    "timeout",
    "budget",
    "retry",
    "approvals",
    "dry_run",
    "rehearse",
    "maintenance",
];

/// Where in the runbook an error applies.
#[derive(Clone, Default)]
struct Place {
    phase: Option<String>,
    step: Option<String>,
}

/// The file being parsed, for locating errors.
struct Parser<'a> {
    file: &'a str,
    source: &'a str,
}

pub(super) fn parse(file: &str, source: &str) -> Result<Runbook, RunbookError> {
    let parser = Parser { file, source };
    let doc = DeTable::parse(source).map_err(|e| {
        let message = e.message().to_owned();
        parser.error(
            e.span(),
            &Place::default(),
            RunbookErrorKind::Syntax { message },
        )
    })?;
    let doc = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
    parser.runbook(&doc)
}

impl Parser<'_> {
    fn runbook(&self, doc: &Value<'_>) -> Result<Runbook, RunbookError> {
        let top = Place::default();
        let header: Header = self.deserialize(doc, &top)?;
        let table = as_table(doc);
        if let Err(e) = PhaseId::new(header.name.as_str()) {
            return Err(self.field_error(table, "name", &top, e.to_string()));
        }
        if let Some(name) = header
            .params
            .keys()
            .find(|name| !params::is_param_name(name))
        {
            let message = format!(
                "`{name}` is not a parameter name: use A-Z, a-z, 0-9 and `_`, not starting with a digit"
            );
            return Err(self.field_error(table, "params", &top, message));
        }
        if let Some(name) = header
            .rehearsal
            .params
            .keys()
            .find(|name| !header.params.contains_key(*name))
        {
            let message = format!(
                "`{name}` is not a parameter of this runbook: declare it in [params] to give it a value for rehearsals"
            );
            return Err(self.field_error(table, "rehearsal", &top, message));
        }
        if let Some(emergency) = &header.emergency {
            let at = self.span_of(table, "emergency").unwrap_or(doc.span());
            if emergency.database.trim().is_empty() {
                let kind = invalid(
                    "emergency.database",
                    "must name the database a person types to confirm",
                );
                return Err(self.error(Some(at), &top, kind));
            }
            if emergency.confirm_within.is_zero() {
                let kind = RunbookErrorKind::BadDuration {
                    field: Some("emergency.confirm_within".into()),
                    message: "must be longer than 0s".into(),
                };
                return Err(self.error(Some(at), &top, kind));
            }
        }
        let phases = match table.get("phases") {
            None => return Err(self.error(None, &top, RunbookErrorKind::NoPhases)),
            Some(value) => self.tables_in(value, "phases", "[[phases]]", &top)?,
        };
        if phases.is_empty() {
            return Err(self.error(
                table.get("phases").map(Spanned::span),
                &top,
                RunbookErrorKind::NoPhases,
            ));
        }
        let mut runbook = Runbook {
            name: header.name,
            description: header.description,
            params: header.params,
            emergency: header.emergency,
            require_rehearsal_within: header.require_rehearsal_within,
            rehearsal: header.rehearsal,
            phases: Vec::with_capacity(phases.len()),
        };
        let mut step_phases: BTreeMap<StepId, PhaseId> = BTreeMap::new();
        for (index, value) in phases.into_iter().enumerate() {
            let phase = self.phase(index, value, &runbook, &mut step_phases)?;
            runbook.phases.push(phase);
        }
        Ok(runbook)
    }

    fn phase(
        &self,
        index: usize,
        value: &Value<'_>,
        runbook: &Runbook,
        step_phases: &mut BTreeMap<StepId, PhaseId>,
    ) -> Result<Phase, RunbookError> {
        let table = as_table(value);
        let place = Place {
            phase: Some(label::<PhaseId>(table, index)),
            step: None,
        };
        let header: PhaseHeader = self.deserialize(value, &place)?;
        if let Some(first) = runbook.phase_index(&header.id) {
            let kind = RunbookErrorKind::DuplicatePhaseId {
                id: header.id,
                first: first + 1,
            };
            return Err(self.error(self.span_of(table, "id"), &place, kind));
        }
        let steps = match table.get("steps") {
            None => Vec::new(),
            Some(steps) => self.tables_in(steps, "steps", "[[phases.steps]]", &place)?,
        };
        if steps.is_empty() {
            return Err(self.error(Some(value.span()), &place, RunbookErrorKind::EmptyPhase));
        }
        let mut phase = Phase {
            title: header.title.unwrap_or_else(|| header.id.to_string()),
            id: header.id,
            auto_advance: header.auto_advance,
            steps: Vec::with_capacity(steps.len()),
        };
        for (index, value) in steps.into_iter().enumerate() {
            let table = as_table(value);
            let place = Place {
                phase: place.phase.clone(),
                step: Some(label::<StepId>(table, index)),
            };
            let step = self.step(value, &place, &runbook.params)?;
            if let Some(first_phase) = step_phases.get(&step.id) {
                let kind = RunbookErrorKind::DuplicateStepId {
                    id: step.id.clone(),
                    first_phase: first_phase.clone(),
                };
                return Err(self.error(self.span_of(table, "id"), &place, kind));
            }
            step_phases.insert(step.id.clone(), phase.id.clone());
            phase.steps.push(step);
        }
        Ok(phase)
    }

    fn step(
        &self,
        value: &Value<'_>,
        place: &Place,
        params: &BTreeMap<String, String>,
    ) -> Result<Step, RunbookError> {
        let table = as_table(value);
        let kind = match table
            .get("kind")
            .map(|kind| (kind.get_ref().as_str(), kind.span()))
        {
            None => {
                let kind = RunbookErrorKind::MissingField {
                    field: "kind".into(),
                };
                return Err(self.error(Some(value.span()), place, kind));
            }
            Some((None, span)) => {
                let kind = invalid("kind", "must be a string naming a step kind");
                return Err(self.error(Some(span), place, kind));
            }
            Some((Some(kind), span)) => match StepKind::NAMES.iter().find(|name| **name == kind) {
                Some(name) => *name,
                None => {
                    let kind = RunbookErrorKind::UnknownKind {
                        kind: kind.into(),
                        expected: StepKind::NAMES.to_vec(),
                    };
                    return Err(self.error(Some(span), place, kind));
                }
            },
        };
        // Each part is read by a struct that refuses unknown fields, so a typo is caught
        // whichever part it was meant for.
        let tenancy = matches!(
            kind,
            "plan" | "consolidate" | "verify" | "drop_schemas" | "export_delta"
        );
        let (common, own) = split(value, |key| COMMON_FIELDS.contains(&key));
        let (scope, own) = split(&own, |key| tenancy && TenancyScope::FIELDS.contains(&key));
        let common: CommonFields = self.deserialize(&common, place)?;
        let scope: TenancyScope = self.deserialize(&scope, place)?;
        let kind = self
            .kind_fields(kind, &own, scope, place)
            .map_err(|mut e| {
                if let RunbookErrorKind::UnknownField { field, expected } = &mut e.kind
                    && !field.contains(['.', '['])
                {
                    *expected = other_fields(kind, expected, tenancy);
                }
                e
            })?;
        let mut step = Step {
            title: common.title.unwrap_or_else(|| common.id.to_string()),
            id: common.id,
            idempotent: common.idempotent,
            destructive: common.destructive,
            timeout: common.timeout,
            budget: common.budget,
            retry: common.retry,
            approvals: common.approvals,
            dry_run: common.dry_run,
            rehearse: common.rehearse,
            maintenance: common.maintenance,
            kind,
        };
        if let StepKind::PgDump(dump) = &mut step.kind
            && dump.format == DumpFormat::Custom
            && !table.contains_key("jobs")
        {
            dump.jobs = 1; // the default of 2 is for the directory format, the only one pg_dump parallelises
        }
        // A rule names a field (`http.url`); point at its top-level key, or else the step.
        let at = |field: &str| {
            let key = field.split(['.', '[']).next().unwrap_or(field);
            self.span_of(table, key).or(Some(value.span()))
        };
        if let Err((key, kind)) = super::validate::step(&step) {
            return Err(self.error(at(key), place, kind));
        }
        self.check_params(value, place, params)?;
        Ok(step)
    }

    /// Reads the fields of a step's kind.
    fn kind_fields(
        &self,
        kind: &str,
        own: &Value<'_>,
        scope: TenancyScope,
        place: &Place,
    ) -> Result<StepKind, RunbookError> {
        Ok(match kind {
            "checklist" => StepKind::Checklist(self.deserialize(own, place)?),
            "approval" => self
                .deserialize::<NoFields>(own, place)
                .map(|_| StepKind::Approval)?,
            "shell" => StepKind::Shell(self.deserialize(own, place)?),
            "http" => StepKind::Http(self.deserialize(own, place)?),
            "sql" => StepKind::Sql(self.deserialize(own, place)?),
            "wait" => StepKind::Wait(self.deserialize(own, place)?),
            "pg_dump" => StepKind::PgDump(self.deserialize(own, place)?),
            "pg_restore" => StepKind::PgRestore(self.deserialize(own, place)?),
            "plan" => StepKind::Plan(TenancyStep {
                scope,
                ..self.deserialize(own, place)?
            }),
            "consolidate" => StepKind::Consolidate(ConsolidateStep {
                scope,
                ..self.deserialize(own, place)?
            }),
            "verify" => StepKind::Verify(TenancyStep {
                scope,
                ..self.deserialize(own, place)?
            }),
            "drop_schemas" => StepKind::DropSchemas(DropSchemasStep {
                scope,
                ..self.deserialize(own, place)?
            }),
            "export_delta" => StepKind::ExportDelta(ExportDeltaStep {
                scope,
                ..self.deserialize(own, place)?
            }),
            "import_delta" => StepKind::ImportDelta(self.deserialize(own, place)?),
            other => unreachable!("`{other}` is in StepKind::NAMES but has no arm"),
        })
    }

    /// Refuses `${name}` references to undeclared parameters anywhere in a step's text.
    fn check_params(
        &self,
        step: &Value<'_>,
        place: &Place,
        params: &BTreeMap<String, String>,
    ) -> Result<(), RunbookError> {
        let mut strings = Vec::new();
        for (key, value) in as_table(step).iter() {
            if !matches!(key.get_ref().as_ref(), "id" | "kind") {
                collect_strings(key.get_ref().to_string(), value, &mut strings);
            }
        }
        for (field, span, text) in strings {
            let missing = match params::references(text) {
                Ok(names) => names.into_iter().find(|name| !params.contains_key(*name)),
                Err(_) => {
                    let kind = invalid(
                        &field,
                        "has a `${` with no parameter name and `}` after it (write `$${` for a literal `${`)",
                    );
                    return Err(self.error(Some(span), place, kind));
                }
            };
            if let Some(name) = missing {
                let declared = params.keys().cloned().collect();
                let kind = RunbookErrorKind::UnknownParam {
                    name: name.to_owned(),
                    field,
                    declared,
                };
                return Err(self.error(Some(span), place, kind));
            }
        }
        Ok(())
    }

    /// The tables of an array of tables (`[[phases]]`), or an error naming how to write one.
    fn tables_in<'v, 'i>(
        &self,
        value: &'v Value<'i>,
        key: &str,
        how: &str,
        place: &Place,
    ) -> Result<Vec<&'v Value<'i>>, RunbookError> {
        let tables = value.get_ref().as_array().and_then(|array| {
            array
                .iter()
                .all(|item| item.get_ref().is_table())
                .then(|| array.iter().collect::<Vec<_>>())
        });
        tables.ok_or_else(|| {
            let kind = invalid(
                key,
                &format!("must be a list of tables, each written {how}"),
            );
            self.error(Some(value.span()), place, kind)
        })
    }

    /// Deserializes one piece of the tree, turning serde's error into a located one.
    fn deserialize<T: DeserializeOwned>(
        &self,
        value: &Value<'_>,
        place: &Place,
    ) -> Result<T, RunbookError> {
        T::deserialize(ValueDeserializer::from(value.clone())).map_err(|e| {
            // Errors about the piece as a whole (a missing field) carry its own span, or none.
            let span = e
                .span()
                .filter(|span| !span.is_empty() && *span != value.span());
            let path = span
                .as_ref()
                .and_then(|span| key_path(value.get_ref(), span));
            let span = span.unwrap_or(value.span());
            self.error(Some(span), place, classify(e.message(), path))
        })
    }

    fn field_error(
        &self,
        table: &DeTable<'_>,
        key: &str,
        place: &Place,
        message: String,
    ) -> RunbookError {
        self.error(self.span_of(table, key), place, invalid(key, &message))
    }

    fn span_of(&self, table: &DeTable<'_>, key: &str) -> Option<Span> {
        table.get(key).map(Spanned::span)
    }

    fn error(&self, span: Option<Span>, place: &Place, kind: RunbookErrorKind) -> RunbookError {
        RunbookError {
            file: self.file.to_owned(),
            at: span.map(|span| position(self.source, span.start)),
            phase: place.phase.clone(),
            step: place.step.clone(),
            kind,
        }
    }
}

fn invalid(field: &str, message: &str) -> RunbookErrorKind {
    RunbookErrorKind::InvalidField {
        field: Some(field.to_owned()),
        message: message.to_owned(),
    }
}

/// The hint after an unknown field of a step: serde's list covers the kind's own fields only.
fn other_fields(kind: &str, expected: &str, tenancy: bool) -> String {
    let mut others: Vec<_> = if tenancy {
        TenancyScope::FIELDS.to_vec()
    } else {
        Vec::new()
    };
    others.extend(COMMON_FIELDS);
    let others = others
        .iter()
        .map(|field| format!("`{field}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match expected.strip_prefix(", there are no fields") {
        Some(_) => format!("; a step of kind `{kind}` takes only {others}"),
        None => format!("{expected}, or one of {others}"),
    }
}

/// Splits a table in two by key: (the entries `wanted` picks, the others), both with its span.
fn split<'i>(value: &Value<'i>, wanted: impl Fn(&str) -> bool) -> (Value<'i>, Value<'i>) {
    let (mut picked, mut rest) = (DeTable::new(), DeTable::new());
    for (key, field) in as_table(value).iter() {
        let half = if wanted(key.get_ref()) {
            &mut picked
        } else {
            &mut rest
        };
        half.insert(key.clone(), field.clone());
    }
    (
        Spanned::new(value.span(), DeValue::Table(picked)),
        Spanned::new(value.span(), DeValue::Table(rest)),
    )
}

/// A table's contents; callers only pass values known to be tables.
fn as_table<'v, 'i>(value: &'v Value<'i>) -> &'v DeTable<'i> {
    value.get_ref().as_table().expect("checked to be a table")
}

/// How a phase or step is named in errors: its id when valid, else `#n`.
fn label<Id: std::str::FromStr + ToString>(table: &DeTable<'_>, index: usize) -> String {
    table
        .get("id")
        .and_then(|id| id.get_ref().as_str())
        .and_then(|id| id.parse::<Id>().ok())
        .map_or_else(|| format!("#{}", index + 1), |id| id.to_string())
}

/// Sorts serde's message into a kind a caller can branch on.
fn classify(message: &str, path: Option<String>) -> RunbookErrorKind {
    let quoted = |rest: &str| {
        rest.split_once('`')
            .map(|(name, tail)| (name.to_owned(), tail.to_owned()))
    };
    if let Some((field, _)) = message.strip_prefix("missing field `").and_then(quoted) {
        let field = path.map_or_else(|| field.clone(), |path| format!("{path}.{field}"));
        return RunbookErrorKind::MissingField { field };
    }
    if let Some((field, expected)) = message.strip_prefix("unknown field `").and_then(quoted) {
        return RunbookErrorKind::UnknownField {
            field: path.unwrap_or(field),
            expected,
        };
    }
    if message.starts_with(BAD_DURATION) {
        return RunbookErrorKind::BadDuration {
            field: path,
            message: message.to_owned(),
        };
    }
    RunbookErrorKind::InvalidField {
        field: path,
        message: message.to_owned(),
    }
}

/// The dotted path (`retry.max_attempts`, `items[2]`) of the key or value at `span`.
fn key_path(value: &DeValue<'_>, span: &Span) -> Option<String> {
    let within = |outer: Span| outer.start <= span.start && span.end <= outer.end;
    match value {
        DeValue::Table(table) => table.iter().find_map(|(key, child)| {
            let name = key.get_ref().to_string();
            if within(key.span()) {
                return Some(name);
            }
            // A `[a.b]` table's span is its header only: look inside whatever the span says.
            match key_path(child.get_ref(), span) {
                Some(rest) if rest.starts_with('[') => Some(format!("{name}{rest}")),
                Some(rest) => Some(format!("{name}.{rest}")),
                None => within(child.span()).then_some(name),
            }
        }),
        DeValue::Array(array) => {
            array.iter().enumerate().find_map(|(index, child)| {
                match key_path(child.get_ref(), span) {
                    Some(rest) if rest.starts_with('[') => Some(format!("[{index}]{rest}")),
                    Some(rest) => Some(format!("[{index}].{rest}")),
                    None => within(child.span()).then(|| format!("[{index}]")),
                }
            })
        }
        _ => None,
    }
}

/// Every string in a value, with its path and span.
fn collect_strings<'v>(path: String, value: &'v Value<'_>, out: &mut Vec<(String, Span, &'v str)>) {
    match value.get_ref() {
        DeValue::String(text) => out.push((path, value.span(), text.as_ref())),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                collect_strings(format!("{path}[{index}]"), item, out);
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter() {
                collect_strings(format!("{path}.{}", key.get_ref()), item, out);
            }
        }
        _ => {}
    }
}

/// The 1-based line and column of a byte offset.
fn position(source: &str, offset: usize) -> TextPosition {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    TextPosition {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}
