//! What a step reports besides its output, for the executor to record as events.
//!
//! A step never touches the store: it sends notes through its context. Progress is lossy (the
//! latest report wins), a fact is never dropped, and a fact the step must see stored before
//! it goes on (the archive a drop depends on) is answered by the executor once it is appended.

use rollback_proto::Event;
use tokio::sync::{mpsc, oneshot};

/// How many notes may wait for the executor before a step's `send` waits too.
const NOTES_CAPACITY: usize = 16;

/// What a step reports besides its output.
#[derive(Debug)]
pub enum StepNote {
    /// How far it got.
    Progress(Progress),
    /// An event about the attempt (a verification result, an archive written).
    Record(Event),
    /// An event the step waits on: the executor answers once it is stored, and drops the
    /// answer when it could not be stored (the run moved on meanwhile).
    RecordAcknowledged(Event, oneshot::Sender<()>),
    /// Rows the attempt moved, checked, restored, exported or imported, by the engine's own
    /// count (added up): what a rehearsal's rows per second are computed from.
    Rows(u64),
}

/// How far a long step got, as the executor records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What the units are.
    pub note: String,
}

/// Why an acknowledged note was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// No executor takes the attempt's notes any more.
    #[error("the executor no longer takes this attempt's notes")]
    Closed,
    /// The executor could not store the event (the run moved on meanwhile).
    #[error("the event could not be stored")]
    NotStored,
}

/// The step's end of the notes channel.
#[derive(Debug, Clone)]
pub struct Notes(mpsc::Sender<StepNote>);

impl Notes {
    /// A notes channel: the step's end and the executor's.
    pub fn channel() -> (Notes, mpsc::Receiver<StepNote>) {
        let (tx, rx) = mpsc::channel(NOTES_CAPACITY);
        (Notes(tx), rx)
    }

    /// Reports progress; dropped when the executor has not taken the previous reports yet, as
    /// a newer report supersedes them.
    pub fn progress(&self, progress: Progress) {
        let _ = self.0.try_send(StepNote::Progress(progress));
    }

    /// Hands `event` to the executor, which records it at its next flush.
    pub async fn record(&self, event: Event) {
        let _ = self.0.send(StepNote::Record(event)).await;
    }

    /// Counts `rows` the attempt worked through (moved, checked, restored, exported,
    /// imported).
    pub async fn rows(&self, rows: u64) {
        let _ = self.0.send(StepNote::Rows(rows)).await;
    }

    /// Hands `event` to the executor and waits until it says the event is stored.
    pub async fn record_acknowledged(&self, event: Event) -> Result<(), NoteError> {
        let (ack, stored) = oneshot::channel();
        self.0
            .send(StepNote::RecordAcknowledged(event, ack))
            .await
            .map_err(|_| NoteError::Closed)?;
        stored.await.map_err(|_| NoteError::NotStored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_proto::StepId;

    fn event() -> Event {
        Event::resumed(StepId::new("s").expect("a step id"), 0, 1, "nothing")
    }

    #[tokio::test]
    async fn an_acknowledged_note_waits_for_the_executors_answer() {
        let (notes, mut rx) = Notes::channel();
        let executor = async {
            match rx.recv().await {
                Some(StepNote::RecordAcknowledged(recorded, ack)) => {
                    assert_eq!(recorded, event());
                    ack.send(()).expect("the step waits");
                }
                other => panic!("{other:?}"),
            }
        };
        let (stored, ()) = tokio::join!(notes.record_acknowledged(event()), executor);
        assert_eq!(stored, Ok(()));
    }

    #[tokio::test]
    async fn a_note_not_stored_or_not_taken_is_refused() {
        let (notes, mut rx) = Notes::channel();
        let executor = async {
            // Dropped unanswered: the event could not be stored.
            drop(rx.recv().await);
            rx
        };
        let (stored, rx) = tokio::join!(notes.record_acknowledged(event()), executor);
        assert_eq!(stored, Err(NoteError::NotStored));
        drop(rx);
        assert_eq!(
            notes.record_acknowledged(event()).await,
            Err(NoteError::Closed)
        );
    }

    #[tokio::test]
    async fn progress_never_waits() {
        let (notes, mut rx) = Notes::channel();
        for done in 0..(NOTES_CAPACITY as u64 * 2) {
            notes.progress(Progress {
                done,
                total: 100,
                note: "units".into(),
            });
        }
        assert!(matches!(rx.recv().await, Some(StepNote::Progress(p)) if p.done == 0));
    }
}
