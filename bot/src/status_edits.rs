//! Status-message edits, paced for Discord: one budget per channel shared by every run in it,
//! pending edits coalesced, and waits spread with jitter.
//!
//! The event loop queues each status message's newest content ([`StatusEdits::queue`]); a newer
//! content replaces a queued one, so only the latest content of a message is ever sent. One
//! task ([`StatusEditor`]) sends them: at most `channel_edits` per `channel_edit_window` in a
//! channel (Discord's message-edit bucket is per channel, whichever message is edited), at
//! most one per message per `edit_interval`, urgent edits first (a run's final state, or new
//! buttons: someone is waited for), then the message that has waited longest. The last edit of
//! each window is kept for urgent edits, so that a run's end is never stuck behind other runs'
//! progress. After a 429 nothing more goes to the channel
//! until its wait is over (plus jitter); after another failure the message waits longer each
//! time, with jitter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::all::{ChannelId, CreateActionRow, EditMessage, MessageId};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ProgressSettings;
use crate::discord_rest::{DiscordRest, Sent, jitter};

/// The longest wait between attempts at an edit Discord refused for another reason than its
/// rate limits (an outage).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Added to the channel's window: Discord counts a window from the arrival of its first
/// request, and requests arrive a little after they leave.
const WINDOW_MARGIN: Duration = Duration::from_millis(250);
/// How long pending edits are still sent at shutdown.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// Edits sent in a channel lately, and the wait a 429 asked for.
#[derive(Debug)]
pub struct ChannelBudget {
    limit: usize,
    window: Duration,
    sent: VecDeque<Instant>,
    held_until: Option<Instant>,
}

impl ChannelBudget {
    /// At most `limit` edits in any `window` (at least one).
    pub fn new(limit: u32, window: Duration) -> Self {
        ChannelBudget {
            limit: (limit as usize).max(1),
            window: window + WINDOW_MARGIN,
            sent: VecDeque::new(),
            held_until: None,
        }
    }

    /// When the next edit may go: an `urgent` one may take the window's last edit, others may
    /// not.
    pub fn ready_at(&mut self, now: Instant, urgent: bool) -> Instant {
        while self.sent.front().is_some_and(|t| *t + self.window <= now) {
            self.sent.pop_front();
        }
        let reserve = usize::from(!urgent && self.limit > 1);
        let allowed = self.limit - reserve;
        let mut at = if self.sent.len() < allowed {
            now
        } else {
            self.sent[self.sent.len() - allowed] + self.window
        };
        // Progress is spread over the window rather than sent in bursts: then a place frees
        // up every so often for an urgent edit, instead of all of them at the window's end.
        if !urgent && let Some(last) = self.sent.back() {
            at = at.max(*last + self.window / self.limit as u32);
        }
        at.max(self.held_until.unwrap_or(now))
    }

    /// An edit left at `at`.
    pub fn spent(&mut self, at: Instant) {
        self.sent.push_back(at);
    }

    /// Nothing goes before `until` (a 429's wait, with jitter).
    pub fn hold_until(&mut self, until: Instant) {
        self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
    }
}

struct Pending {
    channel: ChannelId,
    content: String,
    components: Vec<CreateActionRow>,
    urgent: bool,
    /// When the message first differed from what Discord shows.
    since: Instant,
    /// A failed edit's backoff.
    not_before: Instant,
    failures: u32,
}

#[derive(Default)]
struct Queue {
    // Never held across an await.
    pending: Mutex<HashMap<MessageId, Pending>>,
    wake: Notify,
}

/// The event loop's side: queue the newest content of a status message.
#[derive(Clone)]
pub struct StatusEdits {
    queue: Arc<Queue>,
}

impl StatusEdits {
    /// Queues `content` for `message`, replacing any content queued before it; `urgent` for a
    /// run's final state or new buttons.
    pub fn queue(
        &self,
        channel: ChannelId,
        message: MessageId,
        content: String,
        components: Vec<CreateActionRow>,
        urgent: bool,
    ) {
        let now = Instant::now();
        let mut pending = self.queue.pending.lock().expect("not poisoned");
        // An urgent change not sent yet stays urgent under newer content.
        let (since, not_before, failures, urgent) =
            pending.get(&message).map_or((now, now, 0, urgent), |p| {
                (p.since, p.not_before, p.failures, urgent || p.urgent)
            });
        pending.insert(
            message,
            Pending {
                channel,
                content,
                components,
                urgent,
                since,
                not_before,
                failures,
            },
        );
        drop(pending);
        self.queue.wake.notify_one();
    }

    /// Edits not yet sent.
    pub fn pending(&self) -> usize {
        self.queue.pending.lock().expect("not poisoned").len()
    }
}

/// The sending side: one task for every channel's status messages.
pub struct StatusEditor {
    rest: DiscordRest,
    queue: Arc<Queue>,
    settings: ProgressSettings,
    budgets: HashMap<ChannelId, ChannelBudget>,
    last_sent: HashMap<MessageId, Instant>,
}

impl StatusEditor {
    /// The editor and the handle that queues for it.
    pub fn new(rest: DiscordRest, settings: ProgressSettings) -> (StatusEditor, StatusEdits) {
        let queue = Arc::new(Queue::default());
        let editor = StatusEditor {
            rest,
            queue: queue.clone(),
            settings,
            budgets: HashMap::new(),
            last_sent: HashMap::new(),
        };
        (editor, StatusEdits { queue })
    }

    /// Sends queued edits until `drain` is cancelled, then for at most [`DRAIN_FOR`] more until
    /// none is left.
    pub async fn run(mut self, drain: CancellationToken) {
        let mut deadline: Option<Instant> = None;
        loop {
            if deadline.is_none() && drain.is_cancelled() {
                deadline = Some(Instant::now() + DRAIN_FOR);
            }
            let next = self.next();
            if let Some(deadline) = deadline {
                match next {
                    None => return,
                    Some(_) if Instant::now() >= deadline => {
                        tracing::warn!(
                            pending = self.queue.pending.lock().expect("not poisoned").len(),
                            "stopping with status edits unsent"
                        );
                        return;
                    }
                    _ => {}
                }
            }
            match next {
                Some((message, at)) if at <= Instant::now() => self.send(message).await,
                Some((_, at)) => {
                    let until = deadline.map_or(at, |d| at.min(d));
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = self.queue.wake.notified() => {}
                        _ = drain.cancelled(), if deadline.is_none() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.queue.wake.notified() => {}
                        _ = drain.cancelled(), if deadline.is_none() => {}
                    }
                }
            }
        }
    }

    /// The message to edit next and when: the earliest allowed; among those allowed now, a
    /// urgent ones first, then the longest waiting.
    fn next(&mut self) -> Option<(MessageId, Instant)> {
        let now = Instant::now();
        let pending = self.queue.pending.lock().expect("not poisoned");
        let mut best: Option<(Instant, bool, Instant, MessageId)> = None;
        for (message, p) in pending.iter() {
            let budget = self.budgets.entry(p.channel).or_insert_with(|| {
                ChannelBudget::new(
                    self.settings.channel_edits,
                    self.settings.channel_edit_window,
                )
            });
            let mut at = budget.ready_at(now, p.urgent).max(p.not_before);
            if let Some(last) = self.last_sent.get(message) {
                at = at.max(*last + self.settings.edit_interval);
            }
            if let Some(ready) = self.rest.edits_ready_at(p.channel, *message) {
                at = at.max(ready);
            }
            let at = at.max(now);
            // Earliest first; then urgent ones; then the longest waiting.
            let key = (at, !p.urgent, p.since, *message);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|(at, _, _, message)| (message, at))
    }

    /// Sends the newest content of `message`, taking it from the queue; puts it back (unless a
    /// newer one came meanwhile) when Discord refuses.
    async fn send(&mut self, message: MessageId) {
        let Some(p) = self
            .queue
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&message)
        else {
            return;
        };
        let edit = EditMessage::new()
            .content(p.content.clone())
            .components(p.components.clone());
        let now = Instant::now();
        let result = self.rest.edit_message_once(p.channel, message, edit).await;
        let budget = self
            .budgets
            .get_mut(&p.channel)
            .expect("a budget for every queued channel");
        budget.spent(now);
        match result {
            Ok(Sent::Done) => {
                let interval = self.settings.edit_interval;
                self.last_sent.retain(|_, at| *at + interval > now);
                self.last_sent.insert(message, now);
            }
            Ok(Sent::RateLimited(wait)) => {
                budget.hold_until(Instant::now() + wait + jitter());
                self.requeue(message, p);
            }
            Err(e) => {
                let failures = p.failures + 1;
                let backoff = self
                    .settings
                    .edit_interval
                    .max(Duration::from_millis(500))
                    .saturating_mul(1 << failures.min(8))
                    .min(MAX_BACKOFF);
                tracing::warn!(error = %e, %message, failures, "status edit refused; trying again later");
                let not_before = Instant::now() + backoff + jitter();
                self.requeue(
                    message,
                    Pending {
                        not_before,
                        failures,
                        ..p
                    },
                );
            }
        }
    }

    /// Puts a refused edit back, unless newer content came meanwhile (which then goes instead,
    /// keeping the refused one's place in line).
    fn requeue(&self, message: MessageId, refused: Pending) {
        let mut pending = self.queue.pending.lock().expect("not poisoned");
        match pending.get_mut(&message) {
            Some(newer) => {
                newer.since = refused.since;
                newer.not_before = refused.not_before;
                newer.failures = refused.failures;
            }
            None => {
                pending.insert(message, refused);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_takes_its_limit_per_window_and_keeps_the_last_for_urgent_ones() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut budget = ChannelBudget::new(5, window);
        let spacing = (window + WINDOW_MARGIN) / 5;
        // Progress is spread: one edit per fifth of the window.
        let mut at = t0;
        for i in 0..4 {
            let next = budget.ready_at(at, false);
            assert_eq!(next, t0 + spacing * i, "edit {i}");
            budget.spent(next);
            at = next;
        }
        // The fifth of the window is kept for an urgent edit, which goes at once.
        assert_eq!(budget.ready_at(at, false), t0 + window + WINDOW_MARGIN);
        assert_eq!(budget.ready_at(at, true), at);
        budget.spent(at);
        assert_eq!(budget.ready_at(at, true), t0 + window + WINDOW_MARGIN);
        // When the window has passed, the first edit's place is free again.
        let later = t0 + window + WINDOW_MARGIN;
        assert_eq!(budget.ready_at(later, true), later);
    }

    #[test]
    fn a_held_channel_waits_whatever_its_budget() {
        let t0 = Instant::now();
        let mut budget = ChannelBudget::new(5, Duration::from_secs(5));
        budget.hold_until(t0 + Duration::from_secs(7));
        assert_eq!(budget.ready_at(t0, true), t0 + Duration::from_secs(7));
        // A shorter hold does not shorten a longer one.
        budget.hold_until(t0 + Duration::from_secs(2));
        assert_eq!(budget.ready_at(t0, true), t0 + Duration::from_secs(7));
    }

    #[test]
    fn newer_content_replaces_a_queued_edit_and_keeps_its_urgency() {
        let queue = StatusEdits {
            queue: Arc::new(Queue::default()),
        };
        let (channel, message) = (ChannelId::new(1), MessageId::new(2));
        queue.queue(channel, message, "approve?".into(), Vec::new(), true);
        queue.queue(channel, message, "progress".into(), Vec::new(), false);
        assert_eq!(queue.pending(), 1);
        let pending = queue.queue.pending.lock().unwrap();
        let edit = &pending[&message];
        assert_eq!(edit.content, "progress");
        assert!(edit.urgent, "the urgent change is not shown yet");
    }

    #[test]
    fn a_limit_of_one_is_not_all_reserve() {
        let t0 = Instant::now();
        let mut budget = ChannelBudget::new(1, Duration::from_secs(1));
        assert_eq!(budget.ready_at(t0, false), t0);
    }
}
