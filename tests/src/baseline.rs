//! Baselines the benchmarks compare the product with.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use rollback_proto::RunId;
use rollback_proto::subjects::{EVENTS_STREAM, events_subject};

/// Reads a run's subject with a plain ordered consumer, touching each payload, nothing more:
/// the floor of any read of a run.
pub async fn raw_ordered_read(
    js: &jetstream::Context,
    run: RunId,
    events: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = js.get_stream_no_info(EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: events_subject(run),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut bytes = 0;
    for _ in 0..events {
        let message = messages.next().await.context("consumer ended")??;
        bytes += message.payload.len();
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed())
}
