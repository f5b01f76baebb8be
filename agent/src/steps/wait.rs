//! `wait`: polls a health condition every `interval` until it holds or the step's timeout.
//!
//! A failing poll (connection refused, a 503, a query error) only means "not yet"; the last
//! reason is kept for the failure message. A line of output is written when the reason
//! changes, not on every poll, so a ten-minute wait does not become hundreds of events.

use std::time::Duration;

use reqwest::{Client, Url};
use rollback_proto::OutputStream;
use rollback_proto::runbook::{WaitCondition, WaitStep};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;

use super::http::{client, describe_error, expected, parse_url, redacted_url, status_matches};
use super::{StepContext, StepOutcome, human};
use crate::db::describe_db_error;

/// The longest one poll may take, however long the step may wait in all.
const MAX_POLL: Duration = Duration::from_secs(30);

/// What to poll, after `${param}` expansion.
enum Probe {
    Http {
        client: Option<Client>,
        url: Url,
        expect: Vec<u16>,
    },
    Sql {
        target: String,
        pool: Option<PgPool>,
        query: String,
    },
}

pub(super) async fn run(ctx: &StepContext<'_>, step: &WaitStep) -> StepOutcome {
    let mut probe = match expand(ctx, &step.condition) {
        Ok(probe) => probe,
        Err(outcome) => return outcome,
    };
    let timeout = ctx.timeout();
    let interval = step.interval;
    if ctx.describes_only() {
        let condition = describe(&probe);
        let description = format!(
            "would poll every {} for at most {}: {condition}\n",
            human(interval),
            human(timeout)
        );
        return ctx
            .describe(&description, &format!("wait until {condition}"))
            .await;
    }
    // Resources are made once per attempt, before the first poll.
    match &mut probe {
        Probe::Http { client: slot, .. } => match client() {
            Ok(client) => *slot = Some(client),
            Err(outcome) => return outcome,
        },
        Probe::Sql { target, pool, .. } => match ctx.databases.get(target) {
            Ok(found) => *pool = Some(found),
            Err(err) => return StepOutcome::permanent(err.to_string()),
        },
    }

    let started = Instant::now();
    let deadline = started + timeout;
    let mut polls = 0u32;
    let mut last = String::from("no poll finished");
    loop {
        let full = MAX_POLL.max(interval);
        let poll_timeout = deadline.saturating_duration_since(Instant::now()).min(full);
        let poll_started = Instant::now();
        polls += 1;
        let polled = async {
            // A server that does not answer (yet) says so with its reason, within the connect
            // timeout, instead of the pool's own timeout running out.
            if let Probe::Sql { target, .. } = &probe
                && let Err(err) = ctx.databases.connect(target).await
            {
                return Err(err.to_string());
            }
            poll(&probe, poll_timeout).await
        };
        let result = tokio::select! {
            result = tokio::time::timeout(poll_timeout, polled) => result
                .unwrap_or_else(|_| Err(format!("the poll took longer than {}", human(poll_timeout)))),
            () = ctx.cancel.cancelled() => return ctx.cancelled(),
        };
        match result {
            Ok(()) => {
                return StepOutcome::Succeeded {
                    summary: format!(
                        "{} after {polls} poll(s) in {}",
                        describe(&probe),
                        human(round(started.elapsed()))
                    ),
                };
            }
            // A last poll cut short by the step's deadline that ran out of time says only
            // that: the reason before it (a refused connection, a status) is the one to keep.
            Err(_)
                if poll_timeout < full && poll_started.elapsed() >= poll_timeout && polls > 1 => {}
            Err(reason) => {
                if reason != last {
                    ctx.output
                        .write(OutputStream::Stdout, &format!("not yet: {reason}\n"))
                        .await;
                }
                last = reason;
            }
        }
        let next = Instant::now() + interval;
        if next >= deadline {
            // Sleep out the time left anyway: the failure should not come before the timeout.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = ctx.cancel.cancelled() => return ctx.cancelled(),
            }
            return StepOutcome::permanent(format!(
                "condition not met within {} ({polls} poll(s)): {}; last: {last}",
                human(timeout),
                describe(&probe)
            ));
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = ctx.cancel.cancelled() => return ctx.cancelled(),
        }
    }
}

fn expand(ctx: &StepContext<'_>, condition: &WaitCondition) -> Result<Probe, StepOutcome> {
    Ok(match condition {
        WaitCondition::Http(http) => Probe::Http {
            client: None,
            url: parse_url("http.url", &ctx.expand("http.url", &http.url)?)?,
            expect: http.expect_status.clone(),
        },
        WaitCondition::Sql(sql) => Probe::Sql {
            target: ctx.expand("sql.target", &sql.target)?,
            pool: None,
            query: ctx.expand("sql.query", &sql.query)?,
        },
    })
}

/// The condition in words: `GET http://… answers 2xx`.
fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Http { url, expect, .. } => {
            format!("GET {} answers {}", redacted_url(url), expected(expect))
        }
        Probe::Sql { target, query, .. } => {
            format!("`{}` returns true on `{target}`", query.trim())
        }
    }
}

/// One poll: `Ok` when the condition holds, else why not.
async fn poll(probe: &Probe, timeout: Duration) -> Result<(), String> {
    match probe {
        Probe::Http {
            client: Some(client),
            url,
            expect,
        } => {
            let response = client
                .get(url.clone())
                .timeout(timeout)
                .send()
                .await
                .map_err(|err| describe_error(&err, url, timeout).0)?;
            let status = response.status();
            if status_matches(status, expect) {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        }
        Probe::Sql {
            pool: Some(pool),
            query,
            ..
        } => {
            let row: Option<Option<bool>> = sqlx::query_scalar(AssertSqlSafe(query.as_str()))
                .fetch_optional(pool)
                .await
                .map_err(|err| describe_db_error(&err))?;
            match row {
                Some(Some(true)) => Ok(()),
                Some(Some(false)) => Err("the query returned false".to_owned()),
                Some(None) => Err("the query returned NULL".to_owned()),
                None => Err("the query returned no row".to_owned()),
            }
        }
        Probe::Http { client: None, .. } | Probe::Sql { pool: None, .. } => {
            Err("not prepared".to_owned())
        }
    }
}

/// Whole milliseconds, for a readable summary.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::http::install_crypto_provider;
    use super::super::http::test_server::{Reply, TestServer, refused_url};
    use super::super::test_support::*;
    use super::*;

    fn wait_http(url: &str, extra: &str) -> Fixture {
        Fixture::new(runbook(
            "",
            &format!("kind = \"wait\"\nhttp = {{ url = \"{url}\" }}\n{extra}"),
        ))
    }

    #[tokio::test]
    async fn http_wait_succeeds_once_the_service_is_healthy() {
        install_crypto_provider();
        let server = TestServer::start(|n| match n {
            0 => Reply::Status(503, "starting".into()),
            1 => Reply::Status(500, "still".into()),
            _ => Reply::Status(200, "ok".into()),
        })
        .await;
        let step = wait_http(
            &format!("{}/healthz", server.url),
            "interval = \"20ms\"\ntimeout = \"10s\"",
        );
        let (outcome, chunks) = step.run().await;
        let summary = succeeded(&outcome);
        assert!(summary.contains("answers 2xx after 3 poll(s)"), "{summary}");
        assert_eq!(
            text(&chunks, OutputStream::Stdout),
            "not yet: HTTP 503 Service Unavailable\nnot yet: HTTP 500 Internal Server Error\n"
        );
    }

    #[tokio::test]
    async fn http_wait_times_out_with_the_last_reason() {
        install_crypto_provider();
        let url = refused_url().await;
        let step = wait_http(&url, "interval = \"20ms\"\ntimeout = \"200ms\"");
        let started = std::time::Instant::now();
        let (outcome, chunks) = step.run().await;
        let elapsed = started.elapsed();
        let StepOutcome::Failed { error, retryable } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(!retryable);
        assert!(
            error.starts_with("condition not met within 200ms"),
            "{error}"
        );
        assert!(error.contains("last: "), "{error}");
        assert!(error.contains("cannot connect"), "{error}");
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        // One line for the one reason, however many polls.
        assert_eq!(text(&chunks, OutputStream::Stdout).lines().count(), 1);
    }

    /// The poll that the step's deadline cuts short and that runs out of time says only that:
    /// the failure names the last finished poll's reason. (Under load the last poll could start
    /// with no time left at all, and the failure read "timed out after 0s".)
    #[tokio::test]
    async fn a_last_poll_cut_short_by_the_deadline_keeps_the_reason_before_it() {
        install_crypto_provider();
        let server = TestServer::start(|n| match n {
            0 => Reply::Status(503, "starting".into()),
            _ => Reply::Hang,
        })
        .await;
        let step = wait_http(&server.url, "interval = \"20ms\"\ntimeout = \"300ms\"");
        let (outcome, chunks) = step.run().await;
        let StepOutcome::Failed { error, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            error.ends_with("last: HTTP 503 Service Unavailable"),
            "{error}"
        );
        assert!(error.contains("(2 poll(s))"), "{error}");
        assert_eq!(
            text(&chunks, OutputStream::Stdout),
            "not yet: HTTP 503 Service Unavailable\n"
        );
    }

    #[tokio::test]
    async fn expected_statuses_are_honoured() {
        install_crypto_provider();
        let server = TestServer::start(|_| Reply::Status(401, String::new())).await;
        let step = Fixture::new(runbook(
            "",
            &format!(
                "kind = \"wait\"\nhttp = {{ url = \"{}\", expect_status = [401] }}\ninterval = \"20ms\"\ntimeout = \"5s\"",
                server.url
            ),
        ));
        assert!(step.run().await.0.is_success());
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait() {
        install_crypto_provider();
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let server = TestServer::start(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            Reply::Status(503, String::new())
        })
        .await;
        let step = wait_http(&server.url, "interval = \"20ms\"\ntimeout = \"1m\"");
        let cancel = step.cancel.clone();
        tokio::spawn(async move {
            while polls.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancel.cancel();
        });
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(5), step.run())
            .await
            .expect("cancellation ends the wait");
        let StepOutcome::Failed { error, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(error.starts_with("cancelled"), "{error}");
    }

    #[tokio::test]
    async fn dry_run_describes_the_condition() {
        let step = Fixture::new(runbook(
            "flag = \"ready\"",
            "kind = \"wait\"\nsql = { target = \"main\", query = \"SELECT ${flag} FROM app_state\" }\ninterval = \"2s\"\ntimeout = \"1m\"",
        ));
        let (summary, description) = step.describe().await;
        assert_eq!(
            summary,
            "dry run: would wait until `SELECT ready FROM app_state` returns true on `main`"
        );
        assert_eq!(
            description,
            "would poll every 2s for at most 1m: `SELECT ready FROM app_state` returns true on `main`\n"
        );
    }
}
