//! A global allocator that counts live heap bytes, for tests and measurements of memory. Each binary that wants
//! it declares `#[global_allocator] static ALLOCATOR: Counting = Counting;`.
//!
//! The library forbids unsafe code; a counting global allocator needs `unsafe impl`, so it lives only in the
//! test helpers, and it only counts and forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts into [`LIVE_BYTES`].
pub struct Counting;

/// Bytes allocated and not yet freed (as requested; the allocator's own overhead is not counted).
pub static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Live heap bytes now.
pub fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}
