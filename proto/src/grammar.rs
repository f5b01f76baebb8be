//! The `/rollback` command grammar, once for every front end and for the agent: the subcommands
//! and their typed options, turned into commands. Discord registration, Discord's options,
//! buttons and forms (whose custom ids carry a subcommand and its leading values), the
//! console's lines, and the agent's reading of an interaction Discord signed
//! ([`crate::interaction`]) all go through here.

use std::collections::BTreeMap;

use crate::{Command, RunId, StepId};

/// What an option holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// A run id (autocompleted).
    Run,
    /// A runbook name (autocompleted).
    Runbook,
    /// A step id.
    Step,
    /// Free text (a reason, a database name).
    Text,
    /// A whole number from 1.
    Item,
    /// Yes or no.
    Flag,
    /// Parameter overrides, `name=value` separated by commas.
    Params,
}

/// One option of a subcommand.
#[derive(Debug)]
pub struct OptionSpec {
    /// Its name, as typed.
    pub name: &'static str,
    /// What it holds.
    pub kind: OptionKind,
    /// Whether it must be given.
    pub required: bool,
    /// What it is, for people.
    pub description: &'static str,
    /// On Discord it is typed into a modal instead of the command line.
    pub in_modal: bool,
}

/// One subcommand.
#[derive(Debug)]
pub struct Subcommand {
    /// Its name, as typed.
    pub name: &'static str,
    /// What it does, for people.
    pub description: &'static str,
    /// Its options, in the order the console takes them.
    pub options: &'static [OptionSpec],
}

const fn opt(
    name: &'static str,
    kind: OptionKind,
    required: bool,
    description: &'static str,
) -> OptionSpec {
    OptionSpec {
        name,
        kind,
        required,
        description,
        in_modal: false,
    }
}

const RUN: OptionSpec = opt("run", OptionKind::Run, true, "The run id");
const STEP: OptionSpec = opt("step", OptionKind::Step, true, "The step id");
const RUNBOOK: OptionSpec = opt("runbook", OptionKind::Runbook, true, "The runbook's name");
const PARAMS: OptionSpec = opt(
    "params",
    OptionKind::Params,
    false,
    "Parameter overrides: name=value,name=value",
);

/// The one top-level command.
pub const COMMAND_NAME: &str = "rollback";

/// What starts the custom id of every button and form the bot issues.
pub const ID_PREFIX: &str = "rb";

/// The custom id of a button or form for `sub` with its leading values.
pub fn custom_id(sub: &str, values: &[&str]) -> String {
    let mut id = format!("{ID_PREFIX}|{sub}");
    for v in values {
        id.push('|');
        id.push_str(v);
    }
    id
}

/// The subcommand and values of a custom id the bot issued.
pub fn parse_custom_id(id: &str) -> Option<(&str, Vec<&str>)> {
    let mut parts = id.split('|');
    (parts.next()? == ID_PREFIX).then_some(())?;
    let sub = parts.next()?;
    Some((sub, parts.collect()))
}

/// The option values a custom id's leading values give: the subcommand's required options, in
/// order.
pub fn leading_values(sub: &Subcommand, leading: &[&str]) -> BTreeMap<String, Value> {
    sub.options
        .iter()
        .filter(|o| o.required)
        .zip(leading)
        .map(|(o, v)| (o.name.to_owned(), Value::Text((*v).to_owned())))
        .collect()
}

/// Every subcommand of `/rollback`.
pub const SUBCOMMANDS: &[Subcommand] = &[
    Subcommand {
        name: "plan",
        description: "Preflight of a runbook's tenancy rollback; writes nothing",
        options: &[RUNBOOK],
    },
    Subcommand {
        name: "start",
        description: "Start a run of a runbook",
        options: &[
            RUNBOOK,
            opt(
                "dry_run",
                OptionKind::Flag,
                false,
                "Only record what each step would do",
            ),
            PARAMS,
        ],
    },
    Subcommand {
        name: "rehearse",
        description: "Rehearse a runbook for real on scratch copies of its databases",
        options: &[
            RUNBOOK,
            opt(
                "keep",
                OptionKind::Flag,
                false,
                "Keep the scratch copies afterwards instead of dropping them",
            ),
            opt(
                "people",
                OptionKind::Flag,
                false,
                "People start phases, tick checklists and approve, as on the night",
            ),
            opt(
                "fresh",
                OptionKind::Flag,
                false,
                "Copy from a fresh pg_dump even where a verified backup exists",
            ),
            opt(
                "sample",
                OptionKind::Item,
                false,
                "Rehearse on this many tenants (the largest among them); times extrapolated",
            ),
            PARAMS,
        ],
    },
    Subcommand {
        name: "status",
        description: "Show a run's state",
        options: &[RUN],
    },
    Subcommand {
        name: "next",
        description: "Start the run's next phase",
        options: &[RUN],
    },
    Subcommand {
        name: "approve",
        description: "Approve a step",
        options: &[RUN, STEP],
    },
    Subcommand {
        name: "check",
        description: "Tick a checklist item",
        options: &[
            RUN,
            STEP,
            opt("item", OptionKind::Item, true, "The item's number, from 1"),
        ],
    },
    Subcommand {
        name: "retry",
        description: "Run a failed or in-doubt step again",
        options: &[RUN, STEP],
    },
    Subcommand {
        name: "skip",
        description: "Skip a step",
        options: &[RUN, STEP, opt("reason", OptionKind::Text, true, "Why")],
    },
    Subcommand {
        name: "mark-done",
        description: "Declare an in-doubt step done, after checking by hand",
        options: &[
            RUN,
            STEP,
            opt("reason", OptionKind::Text, true, "What was checked"),
        ],
    },
    Subcommand {
        name: "pause",
        description: "Start no new step until resumed",
        options: &[RUN, opt("reason", OptionKind::Text, true, "Why")],
    },
    Subcommand {
        name: "resume",
        description: "Continue a paused run",
        options: &[RUN],
    },
    Subcommand {
        name: "abort",
        description: "Stop the run for good",
        options: &[RUN, opt("reason", OptionKind::Text, true, "Why")],
    },
    Subcommand {
        name: "ack",
        description: "Acknowledge the run's escalation: the pings stop",
        options: &[RUN],
    },
    Subcommand {
        name: "emergency",
        description: "Request an emergency restore from backup (a second person confirms)",
        options: &[
            RUNBOOK,
            OptionSpec {
                name: "database",
                kind: OptionKind::Text,
                required: true,
                description: "The database's name, typed out in full",
                in_modal: true,
            },
        ],
    },
    Subcommand {
        name: "confirm-emergency",
        description: "Confirm another person's emergency restore",
        options: &[RUN],
    },
    Subcommand {
        name: "replay",
        description: "The run's postmortem, as a file",
        options: &[RUN],
    },
    Subcommand {
        name: "accept-blocked",
        description: "Accept the tenants the phase left blocked as left behind (recorded with the reason)",
        options: &[
            RUN,
            opt(
                "reason",
                OptionKind::Text,
                true,
                "Why they may be left behind",
            ),
        ],
    },
    Subcommand {
        name: "rerun-blocked",
        description: "The blocked tenants are fixed: run the phase again from its first step that listed any",
        options: &[RUN],
    },
];

/// A value given for an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text (also what a console user types for any option).
    Text(String),
    /// A number.
    Integer(i64),
    /// A yes or no.
    Flag(bool),
}

impl std::fmt::Display for Value {
    /// The value as a person would name it in a refusal: "the number 3", "yes", "the text `x`".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Text(t) => write!(f, "the text `{t}`"),
            Value::Integer(n) => write!(f, "the number {n}"),
            Value::Flag(true) => f.write_str("yes"),
            Value::Flag(false) => f.write_str("no"),
        }
    }
}

/// Why a command could not be understood; nothing was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrammarError {
    /// No such subcommand.
    #[error("there is no subcommand `{0}` (try: {names})", names = names())]
    UnknownSubcommand(String),
    /// An option that the subcommand does not take.
    #[error("`{sub}` takes no option `{option}`")]
    UnknownOption {
        /// The subcommand.
        sub: &'static str,
        /// The option.
        option: String,
    },
    /// A required option is missing.
    #[error("`{sub}` needs `{option}`: {usage}")]
    Missing {
        /// The subcommand.
        sub: &'static str,
        /// The option.
        option: &'static str,
        /// How to type it.
        usage: String,
    },
    /// An option's value has the wrong form.
    #[error("`{option}`: {problem}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn names() -> String {
    SUBCOMMANDS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The subcommand of this name.
pub fn subcommand(name: &str) -> Option<&'static Subcommand> {
    SUBCOMMANDS.iter().find(|s| s.name == name)
}

/// How a subcommand is typed on the console: `skip <run> <step> <reason…>`.
pub fn usage(sub: &Subcommand) -> String {
    let mut out = sub.name.to_owned();
    for o in sub.options {
        out.push(' ');
        out.push_str(&match (o.required, o.kind) {
            (true, OptionKind::Text) => format!("<{}…>", o.name),
            (true, _) => format!("<{}>", o.name),
            (false, OptionKind::Flag) => format!("[--{}]", o.name.replace('_', "-")),
            (false, _) => format!("[{}=…]", o.name),
        });
    }
    out
}

/// Builds the command from a subcommand's name and its options' values.
pub fn build(sub_name: &str, values: &BTreeMap<String, Value>) -> Result<Command, GrammarError> {
    let sub =
        subcommand(sub_name).ok_or_else(|| GrammarError::UnknownSubcommand(sub_name.to_owned()))?;
    if let Some(extra) = values
        .keys()
        .find(|k| !sub.options.iter().any(|o| o.name == k.as_str()))
    {
        return Err(GrammarError::UnknownOption {
            sub: sub.name,
            option: extra.clone(),
        });
    }
    let args = Args { sub, values };
    Ok(match sub.name {
        "plan" => Command::Plan {
            runbook: args.runbook()?,
        },
        "start" => Command::start(args.runbook()?, args.flag("dry_run")?, args.params()?),
        "rehearse" => Command::Start {
            fresh: args.flag("fresh")?,
            people: args.flag("people")?,
            sample: args.number("sample")?,
            runbook: args.runbook()?,
            dry_run: false,
            rehearsal: true,
            keep: args.flag("keep")?,
            params: args.params()?,
        },
        "status" => Command::Status { run: args.run()? },
        "next" => Command::Next { run: args.run()? },
        "approve" => Command::Approve {
            run: args.run()?,
            step: args.step()?,
        },
        "check" => Command::Check {
            run: args.run()?,
            step: args.step()?,
            item: args.item()?,
        },
        "retry" => Command::Retry {
            run: args.run()?,
            step: args.step()?,
        },
        "skip" => Command::Skip {
            run: args.run()?,
            step: args.step()?,
            reason: args.text("reason")?,
        },
        "mark-done" => Command::MarkDone {
            run: args.run()?,
            step: args.step()?,
            reason: args.text("reason")?,
        },
        "pause" => Command::Pause {
            run: args.run()?,
            reason: args.text("reason")?,
        },
        "resume" => Command::Resume { run: args.run()? },
        "abort" => Command::Abort {
            run: args.run()?,
            reason: args.text("reason")?,
        },
        "ack" => Command::Ack { run: args.run()? },
        "emergency" => Command::Emergency {
            runbook: args.runbook()?,
            database: args.text("database")?,
        },
        "confirm-emergency" => Command::ConfirmEmergency { run: args.run()? },
        "replay" => Command::Replay { run: args.run()? },
        "accept-blocked" => Command::AcceptBlocked {
            run: args.run()?,
            reason: args.text("reason")?,
        },
        "rerun-blocked" => Command::RerunBlocked { run: args.run()? },
        other => unreachable!("subcommand {other} is in the table but not built"),
    })
}

struct Args<'a> {
    sub: &'static Subcommand,
    values: &'a BTreeMap<String, Value>,
}

impl Args<'_> {
    fn spec(&self, name: &str) -> &'static OptionSpec {
        self.sub
            .options
            .iter()
            .find(|o| o.name == name)
            .expect("options named in build() are in the table")
    }

    fn get(&self, name: &str) -> Result<Option<&Value>, GrammarError> {
        let spec = self.spec(name);
        match self.values.get(name) {
            Some(Value::Text(t)) if t.trim().is_empty() => self.missing(spec),
            Some(v) => Ok(Some(v)),
            None => self.missing(spec),
        }
    }

    fn missing(&self, spec: &'static OptionSpec) -> Result<Option<&Value>, GrammarError> {
        if spec.required {
            Err(GrammarError::Missing {
                sub: self.sub.name,
                option: spec.name,
                usage: usage(self.sub),
            })
        } else {
            Ok(None)
        }
    }

    fn text(&self, name: &str) -> Result<String, GrammarError> {
        let spec = self.spec(name);
        match self.get(name)? {
            Some(Value::Text(t)) => Ok(t.trim().to_owned()),
            Some(other) => Err(invalid(spec, format!("expected text, got {other}"))),
            None => Ok(String::new()),
        }
    }

    fn runbook(&self) -> Result<String, GrammarError> {
        self.text("runbook")
    }

    fn run(&self) -> Result<RunId, GrammarError> {
        let text = self.text("run")?;
        text.parse()
            .map_err(|_| invalid(self.spec("run"), format!("`{text}` is not a run id")))
    }

    fn step(&self) -> Result<StepId, GrammarError> {
        let text = self.text("step")?;
        StepId::new(text.clone())
            .map_err(|e| invalid(self.spec("step"), format!("`{text}` is not a step id: {e}")))
    }

    fn item(&self) -> Result<u32, GrammarError> {
        Ok(self.number("item")?.unwrap_or(0))
    }

    /// A whole number from 1 (an item's, a count of tenants), if given.
    fn number(&self, name: &str) -> Result<Option<u32>, GrammarError> {
        let spec = self.spec(name);
        let n = match self.get(name)? {
            Some(Value::Integer(n)) => *n,
            Some(Value::Text(t)) => t
                .trim()
                .parse()
                .map_err(|_| invalid(spec, format!("`{t}` is not a number")))?,
            Some(other) => return Err(invalid(spec, format!("expected a number, got {other}"))),
            None => return Ok(None),
        };
        u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| invalid(spec, format!("{n} is not a whole number from 1")))
    }

    fn flag(&self, name: &str) -> Result<bool, GrammarError> {
        let spec = self.spec(name);
        match self.get(name)? {
            None => Ok(false),
            Some(Value::Flag(b)) => Ok(*b),
            Some(Value::Text(t)) => match t.trim() {
                "true" | "yes" => Ok(true),
                "false" | "no" => Ok(false),
                other => Err(invalid(spec, format!("`{other}` is not true or false"))),
            },
            Some(other) => Err(invalid(
                spec,
                format!("expected true or false, got {other}"),
            )),
        }
    }

    fn params(&self) -> Result<BTreeMap<String, String>, GrammarError> {
        let spec = self.spec("params");
        let text = match self.get("params")? {
            None => return Ok(BTreeMap::new()),
            Some(Value::Text(t)) => t.clone(),
            Some(other) => return Err(invalid(spec, format!("expected text, got {other}"))),
        };
        let mut params = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .filter(|(n, _)| !n.trim().is_empty())
                .ok_or_else(|| invalid(spec, format!("`{pair}` is not name=value")))?;
            params.insert(name.trim().to_owned(), value.trim().to_owned());
        }
        Ok(params)
    }
}

fn invalid(spec: &'static OptionSpec, problem: String) -> GrammarError {
    GrammarError::Invalid {
        option: spec.name,
        problem,
    }
}

/// Parses a console line: `approve <run> <step>`, `skip <run> <step> the reason in words`,
/// `start demo --dry-run params=a=1,b=2`. The last required text option takes the rest.
pub fn parse_line(line: &str) -> Result<Command, GrammarError> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or_default();
    let sub = subcommand(name).ok_or_else(|| GrammarError::UnknownSubcommand(name.to_owned()))?;
    let mut values = BTreeMap::new();
    let mut positional = sub.options.iter().filter(|o| o.required);
    let rest: Vec<&str> = words.collect();
    let mut i = 0;
    while i < rest.len() {
        let word = rest[i];
        if let Some(flag) = word.strip_prefix("--") {
            values.insert(flag.replace('-', "_"), Value::Flag(true));
        } else if let Some((k, v)) = word.split_once('=')
            && sub.options.iter().any(|o| !o.required && o.name == k)
        {
            values.insert(k.to_owned(), Value::Text(v.to_owned()));
        } else if let Some(spec) = positional.next() {
            if spec.kind == OptionKind::Text {
                values.insert(spec.name.to_owned(), Value::Text(rest[i..].join(" ")));
                break;
            }
            values.insert(spec.name.to_owned(), Value::Text(word.to_owned()));
        } else {
            return Err(GrammarError::UnknownOption {
                sub: sub.name,
                option: word.to_owned(),
            });
        }
        i += 1;
    }
    build(sub.name, &values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_kind_is_named_in_words() {
        let run = RunId::new();
        let values: BTreeMap<String, Value> = [
            ("run".to_owned(), Value::Integer(7)),
            ("step".to_owned(), Value::Text("assess".into())),
            ("item".to_owned(), Value::Flag(true)),
        ]
        .into();
        let text = build("check", &values).unwrap_err().to_string();
        assert!(text.contains("got the number 7"), "{text}");
        assert!(!text.contains("Integer(") && !text.contains("{ "), "{text}");
        let values: BTreeMap<String, Value> = [
            ("run".to_owned(), Value::Text(run.to_string())),
            ("step".to_owned(), Value::Text("assess".into())),
            ("item".to_owned(), Value::Flag(true)),
        ]
        .into();
        let text = build("check", &values).unwrap_err().to_string();
        assert!(text.contains("expected a number, got yes"), "{text}");
    }

    #[test]
    fn console_lines_become_commands() {
        let run = RunId::new();
        assert_eq!(
            parse_line(&format!("skip {run} backup the disk   is full")).unwrap(),
            Command::Skip {
                run,
                step: StepId::new("backup").unwrap(),
                reason: "the disk is full".into()
            }
        );
        assert_eq!(
            parse_line("start demo --dry-run params=a=1,b=two").unwrap(),
            Command::Start {
                fresh: false,
                people: false,
                sample: None,
                keep: false,
                rehearsal: false,
                runbook: "demo".into(),
                dry_run: true,
                params: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "two".into())]),
            }
        );
        assert_eq!(
            parse_line("rehearse demo --people sample=3 --fresh").unwrap(),
            Command::Start {
                fresh: true,
                people: true,
                sample: Some(3),
                keep: false,
                rehearsal: true,
                runbook: "demo".into(),
                dry_run: false,
                params: BTreeMap::new(),
            }
        );
        let e = parse_line("rehearse demo sample=0").unwrap_err();
        assert!(
            e.to_string().contains("0 is not a whole number from 1"),
            "{e}"
        );
        assert_eq!(
            parse_line(&format!("check {run} assess 2")).unwrap(),
            Command::Check {
                run,
                step: StepId::new("assess").unwrap(),
                item: 2
            }
        );
        assert_eq!(
            parse_line("emergency restore app_db").unwrap(),
            Command::Emergency {
                runbook: "restore".into(),
                database: "app_db".into()
            }
        );
    }

    #[test]
    fn bad_input_is_named() {
        let run = RunId::new();
        assert!(matches!(
            parse_line("launch x"),
            Err(GrammarError::UnknownSubcommand(_))
        ));
        let e = parse_line("approve not-a-run step").unwrap_err();
        assert!(e.to_string().contains("not-a-run"), "{e}");
        let e = parse_line(&format!("check {run} assess zero")).unwrap_err();
        assert!(e.to_string().contains("zero"), "{e}");
        let e = parse_line(&format!("check {run} assess 0")).unwrap_err();
        assert!(e.to_string().contains("item"), "{e}");
        let e = parse_line(&format!("skip {run} backup")).unwrap_err();
        assert!(e.to_string().contains("reason"), "{e}");
        let e = parse_line("start demo params=novalue").unwrap_err();
        assert!(e.to_string().contains("novalue"), "{e}");
        let e = build(
            "next",
            &BTreeMap::from([("colour".into(), Value::Text("x".into()))]),
        )
        .unwrap_err();
        assert!(matches!(e, GrammarError::UnknownOption { .. }));
    }

    #[test]
    fn blocked_tenants_are_accepted_with_a_reason_or_rerun() {
        let run = RunId::new();
        assert_eq!(
            parse_line(&format!(
                "accept-blocked {run} closed accounts, see TICKET-12"
            ))
            .unwrap(),
            Command::AcceptBlocked {
                run,
                reason: "closed accounts, see TICKET-12".into()
            }
        );
        assert_eq!(
            parse_line(&format!("rerun-blocked {run}")).unwrap(),
            Command::RerunBlocked { run }
        );
        // From Discord's options, as the slash command and the modal send them.
        let values = BTreeMap::from([
            ("run".to_owned(), Value::Text(run.to_string())),
            ("reason".to_owned(), Value::Text("  closed  ".into())),
        ]);
        assert_eq!(
            build("accept-blocked", &values).unwrap(),
            Command::AcceptBlocked {
                run,
                reason: "closed".into()
            }
        );
        let e = parse_line(&format!("accept-blocked {run}")).unwrap_err();
        assert!(
            matches!(
                e,
                GrammarError::Missing {
                    option: "reason",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("accept-blocked <run> <reason…>"),
            "{e}"
        );
        let e = parse_line(&format!("rerun-blocked {run} now")).unwrap_err();
        assert!(matches!(e, GrammarError::UnknownOption { .. }), "{e}");
        let e = parse_line("rerun-blocked").unwrap_err();
        assert!(e.to_string().contains("run"), "{e}");
    }

    #[test]
    fn every_name_and_description_keeps_to_discords_rules() {
        // Discord: names 1-32 lowercase letters, digits, `-` or `_`; descriptions 1-100 characters.
        let name_ok = |n: &str| {
            (1..=32).contains(&n.len())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        };
        let description_ok = |d: &str| (1..=100).contains(&d.chars().count());
        for sub in SUBCOMMANDS {
            assert!(name_ok(sub.name), "{}", sub.name);
            assert!(description_ok(sub.description), "{}", sub.description);
            for o in sub.options {
                assert!(name_ok(o.name), "{}", o.name);
                assert!(description_ok(o.description), "{}", o.description);
            }
        }
    }

    #[test]
    fn every_subcommand_of_the_design_is_there() {
        for name in [
            "plan",
            "start",
            "rehearse",
            "status",
            "next",
            "approve",
            "check",
            "retry",
            "skip",
            "pause",
            "resume",
            "abort",
            "ack",
            "emergency",
            "replay",
            "accept-blocked",
            "rerun-blocked",
        ] {
            assert!(subcommand(name).is_some(), "{name}");
        }
    }
}
