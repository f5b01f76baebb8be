//! Bounded output of one step attempt: chunks of at most 4 KiB, at most 256 KiB in all.
//!
//! Every chunk becomes an event in the run's log, so output is cut into pieces an event can
//! carry and capped per attempt: a command that prints a gigabyte must not write a gigabyte
//! of history. What is over the cap is counted, and one last chunk says how much was dropped.

use std::sync::{Arc, Mutex, PoisonError};

use rollback_proto::OutputStream;
use tokio::sync::mpsc;

/// The largest chunk, in bytes of UTF-8.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024;
/// The most output one attempt keeps, in bytes; the rest is dropped and counted.
pub const MAX_ATTEMPT_BYTES: usize = 256 * 1024;

/// One piece of a step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream it came from.
    pub stream: OutputStream,
    /// At most [`MAX_CHUNK_BYTES`] bytes of text.
    pub text: String,
}

/// Where a step attempt writes its output; cheap to clone, clones share the attempt's budget.
///
/// The channel is bounded on purpose: when the executor cannot append events as fast as a
/// command prints, `write` waits, the pipe from the child fills, and the child blocks on its
/// own writes. Memory stays bounded instead of queueing output nobody has stored yet.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputChunk>,
    budget: Arc<Mutex<Budget>>,
}

#[derive(Debug)]
struct Budget {
    limit: usize,
    /// Largest piece sent as one chunk (one event).
    chunk: usize,
    kept: usize,
    dropped: usize,
    /// The stream whose output was dropped first, where the closing note goes.
    dropped_from: Option<OutputStream>,
    finished: bool,
}

impl OutputSink {
    /// A sink sending into `tx`, with the default per-attempt cap.
    pub fn new(tx: mpsc::Sender<OutputChunk>) -> Self {
        Self::with_limit(tx, MAX_ATTEMPT_BYTES)
    }

    /// A sink sending into `tx` that keeps at most `limit` bytes.
    pub fn with_limit(tx: mpsc::Sender<OutputChunk>, limit: usize) -> Self {
        Self::with_limits(tx, limit, MAX_CHUNK_BYTES)
    }

    /// A sink that keeps at most `limit` bytes, sent in pieces of at most `chunk` bytes (the
    /// agent's `output_chunk_bytes`; at least 64).
    pub fn with_limits(tx: mpsc::Sender<OutputChunk>, limit: usize, chunk: usize) -> Self {
        Self {
            tx,
            budget: Arc::new(Mutex::new(Budget {
                limit,
                chunk: chunk.max(64),
                kept: 0,
                dropped: 0,
                dropped_from: None,
                finished: false,
            })),
        }
    }

    /// A sink and the receiver of its chunks, `capacity` chunks deep; for tests and tools.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<OutputChunk>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self::new(tx), rx)
    }

    /// Sends `text` as chunks, within what is left of the attempt's budget.
    ///
    /// Waits while the channel is full. Output sent after the receiver is gone is discarded:
    /// nobody is left to record it, and the step itself must still finish (or be killed).
    pub async fn write(&self, stream: OutputStream, text: &str) {
        let (kept, chunk) = self.reserve(stream, text);
        for piece in split_chunks_of(kept, chunk) {
            let chunk = OutputChunk {
                stream,
                text: piece.to_owned(),
            };
            if self.tx.send(chunk).await.is_err() {
                return;
            }
        }
    }

    /// Ends the attempt's output: when anything was dropped, one last chunk says how much.
    ///
    /// Called once by [`run_step`](super::run_step) after the step ends; later writes are dropped.
    pub async fn finish(&self) {
        let note = {
            let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
            budget.finished = true;
            match (budget.dropped, budget.dropped_from) {
                (0, _) | (_, None) => None,
                (dropped, Some(stream)) => Some(OutputChunk {
                    stream,
                    text: format!(
                        "\n[output truncated: {dropped} more byte(s) dropped after the first {} KiB]\n",
                        budget.limit / 1024
                    ),
                }),
            }
        };
        if let Some(note) = note {
            let _ = self.tx.send(note).await;
        }
    }

    /// Bytes dropped so far because the attempt's budget was spent.
    pub fn dropped_bytes(&self) -> usize {
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }

    /// The prefix of `text` that fits in the budget (cut on a char boundary); counts the rest.
    fn reserve<'t>(&self, stream: OutputStream, text: &'t str) -> (&'t str, usize) {
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        let room = if budget.finished {
            0
        } else {
            budget.limit - budget.kept
        };
        let mut end = text.len().min(room);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        budget.kept += end;
        if end < text.len() {
            budget.dropped += text.len() - end;
            budget.dropped_from.get_or_insert(stream);
        }
        (&text[..end], budget.chunk)
    }
}

/// Splits `text` into pieces of at most [`MAX_CHUNK_BYTES`], cut after a newline where one
/// falls in the piece, else on a char boundary.
pub fn split_chunks(text: &str) -> impl Iterator<Item = &str> {
    split_chunks_of(text, MAX_CHUNK_BYTES)
}

/// Splits `text` into pieces of at most `max` bytes, as [`split_chunks`] does.
pub fn split_chunks_of(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = if rest.len() <= max {
            rest.len()
        } else {
            let window = floor_char_boundary(rest, max);
            match rest[..window].rfind('\n') {
                Some(newline) => newline + 1,
                None => window,
            }
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Bytes read from a pipe, held until they can be sent as whole lines (or whole chars).
///
/// A read may end in the middle of a line or of a multi-byte character; cutting there would
/// scatter one line over two events or mangle a character, so the tail waits for the next read.
#[derive(Debug, Default)]
pub(crate) struct PendingOutput {
    bytes: Vec<u8>,
}

impl PendingOutput {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// At least a full chunk is waiting.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes.len() >= MAX_CHUNK_BYTES
    }

    /// Takes everything up to the last newline; when there is none, everything up to the last
    /// whole character (a progress bar without newlines still shows).
    pub(crate) fn take_ready(&mut self) -> String {
        let end = match self.bytes.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None => complete_utf8_prefix(&self.bytes),
        };
        self.take(end)
    }

    /// Takes everything, invalid or incomplete UTF-8 replaced.
    pub(crate) fn take_all(&mut self) -> String {
        self.take(self.bytes.len())
    }

    fn take(&mut self, end: usize) -> String {
        let text = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes.drain(..end);
        text
    }
}

/// The length of `bytes` without a trailing, incomplete UTF-8 sequence.
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    // A sequence is at most 4 bytes: look back at most 3 for its lead byte.
    for back in 1..=bytes.len().min(3) {
        let at = bytes.len() - back;
        let byte = bytes[at];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: the lead is further back
        }
        let needed = match byte {
            b if b & 0b1000_0000 == 0 => 1,
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => 1, // invalid lead: lossy conversion replaces it, nothing to wait for
        };
        return if back < needed { at } else { bytes.len() };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut rx: mpsc::Receiver<OutputChunk>) -> Vec<OutputChunk> {
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        chunks
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(split_chunks("hello\n").collect::<Vec<_>>(), ["hello\n"]);
        assert_eq!(split_chunks("").count(), 0);
    }

    #[test]
    fn chunks_prefer_line_ends_and_never_exceed_the_limit() {
        let line = format!("{}\n", "x".repeat(999));
        let text = line.repeat(10);
        let chunks: Vec<&str> = split_chunks(&text).collect();
        assert_eq!(chunks.concat(), text);
        for chunk in &chunks {
            assert!(chunk.len() <= MAX_CHUNK_BYTES);
            assert!(
                chunk.ends_with('\n'),
                "cut inside a line: {} bytes",
                chunk.len()
            );
        }
        assert_eq!(chunks[0].len(), 4000);
    }

    #[test]
    fn chunks_cut_on_char_boundaries_without_newlines() {
        // 3-byte characters: 4096 is not a multiple of 3.
        let text = "€".repeat(5000);
        let chunks: Vec<&str> = split_chunks(&text).collect();
        assert_eq!(chunks.concat(), text);
        assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK_BYTES));
        assert_eq!(chunks[0].len(), 4095);
    }

    #[tokio::test]
    async fn budget_caps_output_and_reports_what_was_dropped() {
        let (tx, rx) = mpsc::channel(64);
        let sink = OutputSink::with_limit(tx, 10 * 1024);
        let text = "y".repeat(8 * 1024);
        sink.write(OutputStream::Stdout, &text).await;
        sink.write(OutputStream::Stderr, &text).await;
        sink.write(OutputStream::Stdout, "more").await;
        sink.finish().await;
        sink.write(OutputStream::Stdout, "after the end").await;
        let chunks = drain(rx).await;
        let kept: usize = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| c.text.len())
            .sum();
        assert_eq!(kept, 10 * 1024);
        let note = chunks.last().unwrap();
        assert_eq!(
            note.stream,
            OutputStream::Stderr,
            "first stream that lost output"
        );
        assert!(
            note.text
                .contains(&format!("{} more byte(s) dropped", 6 * 1024 + 4)),
            "{}",
            note.text
        );
        assert_eq!(sink.dropped_bytes(), 6 * 1024 + 4 + "after the end".len());
    }

    #[tokio::test]
    async fn finish_without_drops_sends_nothing() {
        let (sink, rx) = OutputSink::channel(8);
        sink.write(OutputStream::Stdout, "fine\n").await;
        sink.finish().await;
        let chunks = drain(rx).await;
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "fine\n");
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_writer_wait() {
        let (sink, mut rx) = OutputSink::channel(1);
        sink.write(OutputStream::Stdout, "one").await;
        let writer = sink.clone();
        let second = tokio::spawn(async move { writer.write(OutputStream::Stdout, "two").await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "wrote past a full channel");
        assert_eq!(rx.recv().await.unwrap().text, "one");
        second.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().text, "two");
    }

    #[tokio::test]
    async fn a_gone_receiver_does_not_block_the_writer() {
        let (sink, rx) = OutputSink::channel(1);
        drop(rx);
        sink.write(OutputStream::Stdout, &"z".repeat(20_000)).await;
        sink.finish().await;
    }

    #[test]
    fn pending_output_waits_for_whole_lines_and_characters() {
        let mut pending = PendingOutput::default();
        pending.push(b"first line\nsecond ");
        assert_eq!(pending.take_ready(), "first line\n");
        assert_eq!(pending.take_ready(), "second ");
        let euro = "€".as_bytes();
        pending.push(&euro[..2]);
        assert_eq!(pending.take_ready(), "", "half a character waits");
        pending.push(&euro[2..]);
        assert_eq!(pending.take_ready(), "€");
        pending.push(&[0xff, b'a']);
        assert_eq!(pending.take_ready(), "\u{fffd}a");
        pending.push(&euro[..1]);
        assert_eq!(pending.take_all(), "\u{fffd}");
        assert!(pending.is_empty());
    }
}

#[cfg(test)]
mod chunk_size_tests {
    use super::*;

    #[tokio::test]
    async fn the_configured_chunk_size_bounds_every_event() {
        let (tx, mut rx) = mpsc::channel(64);
        let sink = OutputSink::with_limits(tx, MAX_ATTEMPT_BYTES, 100);
        sink.write(OutputStream::Stdout, &"x".repeat(1000)).await;
        drop(sink);
        let mut total = 0;
        while let Some(chunk) = rx.recv().await {
            assert!(chunk.text.len() <= 100, "{}", chunk.text.len());
            total += chunk.text.len();
        }
        assert_eq!(total, 1000);
    }
}
