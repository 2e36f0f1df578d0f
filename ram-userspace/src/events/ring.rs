//! Reading the programs' ring buffers.

use std::io;

use aya::maps::{MapData, RingBuf};
use log::warn;
use tokio::io::{Interest, unix::AsyncFd};

/// Events handled per wake-up: a process hammering denied addresses can produce events as
/// fast as the daemon writes them, and the daemon must still get to signals, reloads and the
/// control socket in between (the kernel counts what overflows meanwhile).
pub const EVENTS_PER_TURN: usize = 512;

/// Events handled when the daemon stops: what is in the ring buffers goes to the log before it
/// goes, bounded so that a flood cannot keep it from stopping (the rest waits, pinned, for the
/// next daemon).
pub const EVENTS_AT_STOP: usize = 8192;

/// `ring`, registered with the event loop's reactor (wakes when the programs write an event).
pub fn watch(ring: RingBuf<MapData>) -> io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring buffer owns its map's descriptor and keeps it open, under the same
    // number, for as long as it lives, which is as long as the AsyncFd that owns it.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
}

/// Hands up to `max` events waiting in `ring` to `handle`, as a `T` (the `repr(C)` event type
/// the programs write into that ring buffer); short records are logged and skipped. Returns
/// whether the ring is empty.
pub fn drain<T>(ring: &mut RingBuf<MapData>, max: usize, mut handle: impl FnMut(T)) -> bool {
    for _ in 0..max {
        let Some(item) = ring.next() else {
            return true;
        };
        if item.len() < size_of::<T>() {
            warn!("ignoring a short event ({} bytes)", item.len());
            continue;
        }
        // SAFETY: the kernel wrote a whole T (every ring buffer carries one event type);
        // read_unaligned copes with any alignment of the ring buffer's data.
        handle(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    false
}
