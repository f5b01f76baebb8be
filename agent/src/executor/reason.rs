//! Why an escalation is raised, in words a person reads at once at 3 a.m.: the run, how long it
//! has waited and for what. It is stored in the event, so it holds no absolute time: the
//! envelope's `at` says when, and each front end shows that in its reader's time zone.

use rollback_proto::RunState;
use rollback_proto::times::duration_words;
use time::OffsetDateTime;

/// `run … (tenancy-rollback) has waited 20 min for an approval of `go-ahead` by someone other
/// than alice`, as of `now`.
pub(crate) fn escalation_reason(state: &RunState, now: OffsetDateTime) -> String {
    let waited = duration_words(now - state.last_activity_at);
    let head = format!("run {} ({})", state.run_id, state.runbook_name);
    match state.next_action() {
        rollback_proto::NextAction::Idle(waiting) => {
            format!("{head} has waited {waited} for {waiting}")
        }
        _ => format!("{head} has not moved for {waited}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_proto::envelope::{Draft, Envelope, GENESIS_HASH};
    use rollback_proto::{Actor, Event, PhaseId, RunId};
    use time::macros::datetime;

    const RUNBOOK: &str = r#"name = "release"
[[phases]]
id = "ship"
[[phases.steps]]
id = "go-ahead"
kind = "shell"
command = "true"
destructive = true
approvals = 1
"#;

    /// The run folded from sealed events, as every reader folds it.
    fn fold(events: Vec<(Actor, OffsetDateTime, Event)>) -> RunState {
        let run = RunId::new();
        let mut prev = GENESIS_HASH.to_owned();
        let mut state: Option<RunState> = None;
        for (i, (actor, at, event)) in events.into_iter().enumerate() {
            let env = Envelope::seal(
                run,
                i as u64 + 1,
                &prev,
                Draft {
                    actor,
                    causation_id: None,
                    at,
                    event,
                },
            );
            prev = env.hash.clone();
            match &mut state {
                None => state = Some(RunState::new(&env).unwrap()),
                Some(s) => s.apply(&env).unwrap(),
            }
        }
        state.unwrap()
    }

    #[test]
    fn the_reason_for_a_run_waiting_on_an_approval_reads_as_words() {
        let alice = Actor::Chat {
            proof: None,
            user_id: "42".into(),
            name: "alice".into(),
        };
        let started = datetime!(2026-12-06 03:12:07.123456789 UTC);
        let state = fold(vec![
            (
                alice.clone(),
                started,
                Event::RunStarted {
                    fresh_copy: false,
                    sample: None,
                    with_people: false,
                    keep_copies: false,
                    rehearsed_in: None,
                    rehearsal: false,
                    runbook: "release".into(),
                    runbook_hash: String::new(),
                    runbook_source: RUNBOOK.into(),
                    params: Default::default(),
                    dry_run: false,
                },
            ),
            (
                alice,
                started,
                Event::PhaseStarted {
                    phase: PhaseId::new("ship").unwrap(),
                },
            ),
        ]);
        let now = started + time::Duration::seconds(20 * 60 + 31);
        assert_eq!(
            escalation_reason(&state, now),
            format!(
                "run {} (release) has waited 20 min for an approval of `go-ahead` by someone \
                 other than alice",
                state.run_id
            )
        );
    }
}
