//! The gateway client: interactions arrive over Discord's websocket and are answered through
//! the REST API, by the same handlers as the HTTP endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serenity::all::{Context, EventHandler, GatewayIntents, Http, Interaction, Ready};
use serenity::builder::Builder;
use serenity::client::ClientBuilder;
use tokio_util::sync::CancellationToken;

use crate::interactions::{self, FirstResponse, Interactions};

/// Interactions need no privileged intent; GUILDS keeps the session's guild list.
pub const INTENTS: GatewayIntents = GatewayIntents::GUILDS;

struct Handler {
    interactions: Arc<Interactions>,
    budget: Duration,
    /// Deferred answers still waiting for the agent say so when the bot stops.
    stop: CancellationToken,
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        tracing::info!(user = %ready.user.name, guilds = ready.guilds.len(), "connected to the gateway");
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let id = interaction.id();
        let token = interaction.token().to_owned();
        let deferral = Interactions::deferral(&interaction);
        // Over the gateway Discord signs nothing: the agent takes the bot's word for who acted.
        let work = self.interactions.clone().answer(interaction, None).boxed();
        let result = match interactions::within(self.budget, deferral, work).await {
            FirstResponse::Now(answer) => {
                answer
                    .into_response()
                    .execute(&*ctx.http, (id, &token))
                    .await
            }
            FirstResponse::Later(work) => {
                let deferred = interactions::deferred()
                    .execute(&*ctx.http, (id, &token))
                    .await;
                if deferred.is_ok() {
                    interactions::deliver_later(&ctx.http, &token, work, &self.stop).await;
                }
                deferred
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not answer an interaction");
        }
    }
}

/// Connects to the gateway and answers interactions until `shutdown`.
pub async fn run(
    http: Http,
    interactions: Arc<Interactions>,
    budget: Duration,
    shutdown: CancellationToken,
) -> Result<(), serenity::Error> {
    let mut client = ClientBuilder::new_with_http(http, INTENTS)
        .event_handler(Handler {
            interactions,
            budget,
            stop: shutdown.clone(),
        })
        .await?;
    let shards = client.shard_manager.clone();
    tokio::select! {
        result = client.start() => result,
        _ = shutdown.cancelled() => {
            shards.shutdown_all().await;
            Ok(())
        }
    }
}
