//! `rollback-bot run`: the progress poster, the gateway client and the HTTP endpoint, each an
//! owned task; the first to fail, or a signal, stops them all.

use std::sync::Arc;

use anyhow::Context;
use rollback_bot::agent_client::{self, AgentClient};
use rollback_bot::bot_state::BotState;
use rollback_bot::config::BotConfig;
use rollback_bot::endpoint::Endpoint;
use rollback_bot::interactions::Interactions;
use rollback_bot::progress::Progress;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn run(config: BotConfig) -> anyhow::Result<()> {
    let nats = agent_client::connect(&config.nats, "rollback-bot")
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(nats.clone());
    let state = BotState::open(&js)
        .await
        .context("opening the bot's bucket")?;
    // Chat waits minutes, not `nats.request_timeout`: a late answer is edited in.
    let agent = AgentClient::new(nats, config.interactions.wait_for_agent);
    let interactions = Interactions::new(agent.clone(), Some(state.clone()));
    let channels = config.channels()?;
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    let progress = Progress {
        agent: agent.clone(),
        js,
        discord: rollback_bot::discord_rest(&config)?,
        state,
        channels,
        settings: config.progress.clone(),
        emergency_mentions: config.discord.emergency_mentions.clone(),
    };
    let stop = shutdown.clone();
    tasks.spawn(async move { ("progress", progress.run(stop).await.map_err(Into::into)) });

    if let Some(listen) = config.interactions.listen {
        let endpoint = Endpoint::new(
            config.public_key()?,
            config.interactions.max_timestamp_skew,
            config.interactions.answer_within,
            interactions.clone(),
            Arc::new(rollback_bot::discord_http(&config)?),
        )?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        tracing::info!(address = %listener.local_addr()?, "interactions endpoint listening");
        let max_body = config.interactions.max_body_bytes;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let result = endpoint.serve(listener, max_body, stop).await;
            ("interactions endpoint", result.map_err(Into::into))
        });
    }

    if config.discord.gateway {
        let http = rollback_bot::discord_http(&config)?;
        let budget = config.interactions.answer_within;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let result = rollback_bot::gateway::run(http, interactions, budget, stop).await;
            ("gateway", result.map_err(Into::into))
        });
    }

    let mut failure = None;
    loop {
        tokio::select! {
            _ = signal() => {
                tracing::info!("stopping");
                shutdown.cancel();
            }
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let (name, result) = joined.context("a task panicked")?;
                match result {
                    Ok(()) => tracing::info!(task = name, "stopped"),
                    Err(e) => {
                        tracing::error!(task = name, error = format!("{e:#}"), "failed");
                        failure.get_or_insert(e.context(name));
                    }
                }
                shutdown.cancel();
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
