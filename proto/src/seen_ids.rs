//! Repeated event ids, found in bounded memory.
//!
//! Every event's id must be unique within its run (it is the deduplication id of the append,
//! and readers such as the chat bot key their work by it). An exact one-pass check needs every
//! id seen so far, which grows with the run; a run's history is read in constant memory
//! everywhere else. The check therefore keeps only the [`NEWEST_IDS`] largest ids seen, and
//! the largest id it ever let go of (the *floor*):
//!
//! - an id among the kept ones is a repeat;
//! - an id above the floor is new (every id let go of is at or below the floor);
//! - an id at or below the floor cannot be decided in one pass: it is *unsettled*, and the
//!   reader reads the same messages a second time with the unsettled ids in hand, which finds
//!   their earlier occurrence, if any (a repeat among the unsettled ids themselves is found at
//!   once).
//!
//! Event ids are UUID v7: their first 48 bits are the time they were sealed, and a writer seals
//! an event only after reading the one before it, so a run's ids arrive in increasing order
//! except for the clock difference between two agents. An id falls below the newest
//! [`NEWEST_IDS`] only when that many events were written within such a difference: in
//! practice never, so the second read costs nothing in a healthy store, while the check stays
//! exact whatever a forger writes.

use std::collections::BTreeMap;

/// How many of the largest ids are kept (about 100 KiB).
pub(crate) const NEWEST_IDS: usize = 2048;

/// Event ids a first read could not check against every earlier event, with the seq each
/// was seen at: read the same messages again with
/// [`ChainVerifier::rechecking`](crate::ChainVerifier::rechecking) to settle them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsettledIds(BTreeMap<u128, u64>);

impl UnsettledIds {
    /// How many ids are unsettled.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no id is unsettled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ids of one read of a run.
#[derive(Debug, Clone)]
pub(crate) struct SeenIds {
    capacity: usize,
    /// The largest ids seen, with their seq.
    newest: BTreeMap<u128, u64>,
    /// The largest id no longer in `newest`.
    floor: Option<u128>,
    unsettled: UnsettledIds,
    /// On a second read: the first read's unsettled ids.
    recheck: Option<UnsettledIds>,
    /// On a second read: the seq of each repeat found ahead, with the seq it repeats.
    repeats_ahead: BTreeMap<u64, u64>,
}

impl SeenIds {
    pub(crate) fn new() -> Self {
        Self::with_capacity(NEWEST_IDS)
    }

    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            newest: BTreeMap::new(),
            floor: None,
            unsettled: UnsettledIds::default(),
            recheck: None,
            repeats_ahead: BTreeMap::new(),
        }
    }

    /// A second read of the same messages, settling the first read's unsettled ids.
    pub(crate) fn rechecking(ids: UnsettledIds) -> Self {
        Self {
            recheck: Some(ids),
            ..Self::new()
        }
    }

    /// Records the id of the event at `seq`; `Err` holds the seq of the event it repeats.
    pub(crate) fn check(&mut self, id: u128, seq: u64) -> Result<(), u64> {
        if let Some(&first) = self.repeats_ahead.get(&seq) {
            return Err(first);
        }
        if let Some(&first) = self.newest.get(&id) {
            return Err(first);
        }
        if let Some(later) = self.recheck.as_ref().and_then(|ids| ids.0.get(&id))
            && *later > seq
        {
            // This is the earlier occurrence of an id the first read could not settle.
            self.repeats_ahead.insert(*later, seq);
        }
        if self.floor.is_some_and(|floor| id <= floor) {
            // On a second read every such id is one of the first read's: nothing to record.
            if self.recheck.is_none() {
                if let Some(&first) = self.unsettled.0.get(&id) {
                    return Err(first);
                }
                self.unsettled.0.insert(id, seq);
            }
            return Ok(());
        }
        self.newest.insert(id, seq);
        if self.newest.len() > self.capacity
            && let Some((smallest, _)) = self.newest.pop_first()
        {
            self.floor = Some(smallest);
        }
        Ok(())
    }

    /// The ids this read could not settle, if any (never on a second read).
    pub(crate) fn unsettled(&self) -> Option<UnsettledIds> {
        (!self.unsettled.is_empty()).then(|| self.unsettled.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeat found: (seq, seq it repeats).
    type Repeat = (u64, u64);

    /// Checks `ids` as seq 1, 2, …; the first repeat.
    fn first_repeat(seen: &mut SeenIds, ids: &[u128]) -> Option<Repeat> {
        ids.iter()
            .zip(1..)
            .find_map(|(id, seq)| seen.check(*id, seq).err().map(|first: u64| (seq, first)))
    }

    /// Reads `ids` as a reader does, keeping `capacity` ids: once, and again when the first
    /// read left ids unsettled. The first read's repeat, how many ids it left unsettled, and
    /// the second read's repeat (`None` when there was no second read).
    fn two_reads(capacity: usize, ids: &[u128]) -> (Option<Repeat>, usize, Option<Repeat>) {
        let mut first = SeenIds::with_capacity(capacity);
        let found = first_repeat(&mut first, ids);
        let Some(unsettled) = first.unsettled() else {
            return (found, 0, None);
        };
        let left = unsettled.len();
        let mut second = SeenIds {
            capacity,
            ..SeenIds::rechecking(unsettled)
        };
        let found_again = first_repeat(&mut second, ids);
        assert_eq!(
            second.unsettled(),
            None,
            "a second read leaves nothing unsettled"
        );
        (found, left, found_again)
    }

    #[test]
    fn increasing_ids_need_no_second_read() {
        let mut seen = SeenIds::with_capacity(4);
        let ids: Vec<u128> = (1..=100).collect();
        assert_eq!(first_repeat(&mut seen, &ids), None);
        assert_eq!(seen.unsettled(), None);
        assert_eq!(seen.newest.len(), 4, "memory stays bounded");
    }

    #[test]
    fn a_repeat_among_the_newest_is_found_at_once() {
        let mut seen = SeenIds::with_capacity(4);
        assert_eq!(first_repeat(&mut seen, &[10, 20, 30, 20]), Some((4, 2)));
    }

    #[test]
    fn a_repeat_of_a_forgotten_id_is_found_by_the_second_read() {
        // 20 falls below the floor before it comes again.
        let ids = [10, 20, 30, 40, 50, 60, 20, 70];
        assert_eq!(two_reads(4, &ids), (None, 1, Some((7, 2))));
    }

    #[test]
    fn an_old_but_unique_id_is_settled_by_the_second_read() {
        // 15 is below the floor when it comes.
        let ids = [10, 20, 30, 40, 50, 60, 15, 70];
        assert_eq!(two_reads(4, &ids), (None, 1, None));
    }

    #[test]
    fn a_repeat_among_unsettled_ids_is_found_at_once() {
        let mut seen = SeenIds::with_capacity(2);
        assert_eq!(
            first_repeat(&mut seen, &[10, 20, 30, 40, 5, 50, 5]),
            Some((7, 5))
        );
    }
}
