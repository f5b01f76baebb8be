//! A list that keeps its first and last entries and counts the rest, so a report of a run with
//! a million events holds a bounded number of them.

use std::collections::VecDeque;

use serde::Serialize;

/// At most `keep` entries from the start and `keep` from the end; the total is always exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Capped<T> {
    keep: usize,
    total: u64,
    first: Vec<T>,
    last: VecDeque<T>,
}

impl<T> Capped<T> {
    /// An empty list keeping `keep` entries at each end.
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            total: 0,
            first: Vec::new(),
            last: VecDeque::new(),
        }
    }

    /// Adds an entry at the end.
    pub fn push(&mut self, entry: T) {
        self.total += 1;
        if self.first.len() < self.keep {
            self.first.push(entry);
            return;
        }
        self.last.push_back(entry);
        if self.last.len() > self.keep {
            self.last.pop_front();
        }
    }

    /// The most recent entry kept (to extend it in place).
    pub fn last_mut(&mut self) -> Option<&mut T> {
        match self.last.back_mut() {
            Some(entry) => Some(entry),
            None => self.first.last_mut(),
        }
    }

    /// How many entries were pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many entries were pushed and not kept.
    pub fn omitted(&self) -> u64 {
        self.total - (self.first.len() + self.last.len()) as u64
    }

    /// The entries from the start.
    pub fn first(&self) -> &[T] {
        &self.first
    }

    /// The entries from the end (after a gap of [`omitted`](Self::omitted) entries).
    pub fn last(&self) -> impl Iterator<Item = &T> {
        self.last.iter()
    }

    /// The same list with every kept entry mapped; the total stays.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Capped<U> {
        Capped {
            keep: self.keep,
            total: self.total,
            first: self.first.iter().map(&f).collect(),
            last: self.last.iter().map(&f).collect(),
        }
    }

    /// Every kept entry, in order.
    pub fn kept(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(self.last.iter())
    }
}

/// Serialized as `{ total, omitted, first, last }`, so a reader sees where the gap is.
impl<T: Serialize> Serialize for Capped<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Capped", 4)?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("omitted", &self.omitted())?;
        s.serialize_field("first", &self.first)?;
        s.serialize_field("last", &self.last)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_both_ends_and_counts_everything() {
        let mut list = Capped::new(3);
        for i in 0..10 {
            list.push(i);
        }
        assert_eq!(list.total(), 10);
        assert_eq!(list.omitted(), 4);
        assert_eq!(list.first(), [0, 1, 2]);
        assert_eq!(list.last().copied().collect::<Vec<_>>(), [7, 8, 9]);
        *list.last_mut().unwrap() = 90;
        let doubled = list.map(|i| i * 2);
        assert_eq!((doubled.total(), doubled.first()), (10, &[0, 2, 4][..]));
        assert_eq!(list.kept().copied().last(), Some(90));
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["omitted"], 4);
        assert_eq!(json["last"], serde_json::json!([7, 8, 90]));
    }

    #[test]
    fn a_short_list_is_kept_whole() {
        let mut list = Capped::new(3);
        assert!(list.last_mut().is_none());
        list.push('a');
        list.push('b');
        assert_eq!(list.omitted(), 0);
        assert_eq!(list.kept().collect::<String>(), "ab");
        *list.last_mut().unwrap() = 'c';
        assert_eq!(list.kept().collect::<String>(), "ac");
    }
}
