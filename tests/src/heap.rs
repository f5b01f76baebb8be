//! Heap accounting for the benchmarks: a counting wrapper around the system allocator,
//! switched on only while a measurement runs. A benchmark installs it with
//! `#[global_allocator] static ALLOCATOR: CountingAlloc = CountingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The counting allocator.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let now = CURRENT.fetch_add(by as isize, Ordering::Relaxed) + by as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrank(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        CURRENT.fetch_sub(by as isize, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new
    }
}

/// The heap high-water mark, above what was live when `f` started, while `f` runs.
pub async fn peak_heap_during<T>(f: impl Future<Output = T>) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f.await;
    COUNTING.store(false, Ordering::SeqCst);
    (out, (PEAK.load(Ordering::Relaxed) - base).max(0) as usize)
}

/// A synchronous measurement: counting starts at [`HeapMeasure::start`], and
/// [`HeapMeasure::peak`] is the high-water mark above the level then.
pub struct HeapMeasure {
    base: isize,
}

impl HeapMeasure {
    /// Starts counting from the current level.
    pub fn start() -> Self {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        COUNTING.store(true, Ordering::SeqCst);
        HeapMeasure { base }
    }

    /// The peak growth since the start; counting stops.
    pub fn peak(self) -> usize {
        COUNTING.store(false, Ordering::SeqCst);
        (PEAK.load(Ordering::Relaxed) - self.base).max(0) as usize
    }
}
