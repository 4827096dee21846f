//! A per-thread pool of `f64` buffers, reused across runs of a plan.
//!
//! Fresh allocations cost: large ones come from the operating system as unmapped pages, and
//! faulting them in costs more than the arithmetic that fills them (on the benchmark machines,
//! about 1 ms per 8 MB); small ones cost a call into the allocator each. A plan frees each
//! intermediate buffer after its last use; those buffers come back here, and kernels take
//! their storage from here, so a plan run many times stops paying for either after its first
//! run. Buffers are allocated at their exact size and kept by size class (powers of two), so
//! taking one is a pop, or a short search of one class.

use std::any::{Any, TypeId};
use std::cell::RefCell;

use super::Data;

/// Buffers smaller than this many elements are left to the allocator.
const MIN_LEN: usize = 16;
/// At most this many bytes of buffers are kept per thread: enough for the working set of the
/// suite's largest plans, small enough that buffers left by one plan do not stack up under
/// the next one's.
const MAX_BYTES: usize = 1 << 28;

/// Free buffers by size class: class `c` holds buffers with room for at least `2^c` values.
struct Pool {
    classes: Vec<Vec<Vec<f64>>>,
    bytes: usize,
    /// Per class, the buffers handed out and not given back. Only those are taken back: a
    /// buffer the pool never lent (an input's copy, say) would otherwise pile up, one per run.
    lent: Vec<usize>,
}

impl Pool {
    fn lend(&mut self, capacity: usize) {
        let class = class_of(capacity);
        if self.lent.len() <= class {
            self.lent.resize(class + 1, 0);
        }
        self.lent[class] += 1;
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { classes: Vec::new(), bytes: 0, lent: Vec::new() })
    };
}

/// The class of a buffer with room for `capacity` values: the largest `c` with
/// `2^c <= capacity`, so every buffer of class `c` serves any request of up to `2^c` values.
fn class_of(capacity: usize) -> usize {
    (usize::BITS - 1 - capacity.leading_zeros()) as usize
}

/// A pooled buffer with room for `len` values, holding whatever values it last held.
///
/// A plan run again asks for the sizes it returned, so besides the class that serves any
/// `len` (the next power of two) the class `len` itself falls in is searched for a buffer of
/// at least `len`.
fn find(len: usize) -> Option<Vec<f64>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let own = class_of(len);
        let any_fits = own + usize::from(!len.is_power_of_two());
        let buffer = match pool.classes.get_mut(any_fits).and_then(Vec::pop) {
            Some(buffer) => buffer,
            None => {
                let class = pool.classes.get_mut(own)?;
                let at = class.iter().position(|b| b.capacity() >= len)?;
                class.swap_remove(at)
            }
        };
        pool.bytes -= buffer.capacity() * std::mem::size_of::<f64>();
        pool.lend(buffer.capacity());
        Some(buffer)
    })
}

/// A new buffer of `len` values' room, lent by the pool (it takes it back when freed).
fn new_buffer(len: usize) -> Vec<f64> {
    POOL.with(|pool| pool.borrow_mut().lend(len));
    Vec::with_capacity(len)
}

/// An empty vector with room for `len` elements: for `f64`, from the pool when it holds one
/// large enough, else a new one of exactly that size (rounding up to a power of two would
/// waste up to half of every large buffer).
pub(crate) fn take<T: 'static>(len: usize) -> Vec<T> {
    if len < MIN_LEN || TypeId::of::<T>() != TypeId::of::<f64>() {
        return Vec::with_capacity(len);
    }
    let mut buffer = find(len).unwrap_or_else(|| new_buffer(len));
    buffer.clear();
    let any: Box<dyn Any> = Box::new(buffer);
    match any.downcast::<Vec<T>>() {
        Ok(buffer) => *buffer,
        Err(_) => Vec::with_capacity(len),
    }
}

/// `len` values for a caller that overwrites every one before it reads any: a pooled buffer
/// keeps the values it last held (only those past them are zeroed), so a plan run again does
/// not pay for a fill it does not need.
pub(crate) fn take_to_overwrite(len: usize) -> Vec<f64> {
    take_to_fill(len).0
}

/// As [`take_to_overwrite`], for values of any type: `f64` buffers come from the pool, others
/// are new zeros.
pub(crate) fn take_to_overwrite_any<T: Clone + num_traits::Zero + 'static>(len: usize) -> Vec<T> {
    if TypeId::of::<T>() != TypeId::of::<f64>() {
        return vec![T::zero(); len];
    }
    let any: Box<dyn Any> = Box::new(take_to_overwrite(len));
    any.downcast::<Vec<T>>()
        .map_or_else(|_| vec![T::zero(); len], |values| *values)
}

/// As [`take_to_overwrite`], and whether the buffer is new: then its pages are mapped as
/// they are first written (see [`Unmapped`]).
pub(crate) fn take_to_fill(len: usize) -> (Vec<f64>, bool) {
    if len < MIN_LEN {
        return (vec![0.0; len], true);
    }
    match find(len) {
        Some(mut buffer) => {
            buffer.resize(len, 0.0);
            (buffer, false)
        }
        None => {
            POOL.with(|pool| pool.borrow_mut().lend(len));
            // Zeroed by the operating system as its pages are first touched, not here.
            (vec![0.0; len], true)
        }
    }
}

/// New buffers at least this large are mapped ahead of their filling (see [`Unmapped`]).
const MAP_AHEAD_MIN: usize = 1 << 17;

/// The pages of new buffers (from [`take_to_fill`]), not mapped yet. Mapping a page costs
/// about as much as writing it a few times over, and a loop filling a large buffer row after
/// row would otherwise stop for the kernel at every 4 KiB; another thread maps them ahead.
pub(crate) struct Unmapped(Vec<(usize, usize)>);

impl Unmapped {
    /// The large ones among `new` buffers.
    pub fn of<'a>(new: impl Iterator<Item = &'a [f64]>) -> Unmapped {
        // Addresses, not references: the buffers are written while they are mapped.
        let large = new.filter(|b| b.len() >= MAP_AHEAD_MIN);
        Unmapped(
            large
                .map(|b| (b.as_ptr() as usize, size_of_val(b)))
                .collect(),
        )
    }

    /// Runs `fill`, which writes the buffers from their start on (from their end on when
    /// `backwards`), while another thread maps their pages, a megabyte of each in turn. The
    /// buffers must outlive the call. On a thread of the pool (a chunk of a sweep whose chunks
    /// run side by side), the other threads have work of their own: `fill` maps as it goes.
    pub fn fill_while_mapping<R>(self, backwards: bool, fill: impl FnOnce() -> R) -> R {
        let busy = rayon::current_thread_index().is_some();
        if self.0.is_empty() || rayon::current_num_threads() < 2 || busy {
            return fill();
        }
        rayon::in_place_scope(|scope| {
            scope.spawn(move |_| map_ahead(&self.0, backwards));
            fill()
        })
    }
}

/// Maps the pages of `ranges` (address, bytes), a megabyte of each in turn.
fn map_ahead(ranges: &[(usize, usize)], backwards: bool) {
    const STEP: usize = 1 << 20;
    let longest = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    for done in (0..longest).step_by(STEP) {
        for &(start, bytes) in ranges.iter().filter(|r| r.1 > done) {
            let (lo, hi) = match backwards {
                false => (done, bytes.min(done + STEP)),
                true => (bytes.saturating_sub(done + STEP), bytes - done),
            };
            map_pages(start + lo, start + hi);
        }
    }
}

/// The page size the system maps memory in (Linux on the processors we build for).
#[cfg(target_os = "linux")]
const PAGE: usize = 4096;

/// Maps the whole pages between two addresses for writing, without changing their contents.
#[cfg(target_os = "linux")]
fn map_pages(from: usize, to: usize) {
    let (first, end) = (from.next_multiple_of(PAGE), to / PAGE * PAGE);
    if end > first {
        // SAFETY: MADV_POPULATE_WRITE maps pages as a write would, but reads and writes
        // none of their contents, so it is sound whatever the range holds by then (the
        // caller's buffers, which outlive the scope this runs in). On kernels without it
        // (before 5.14) the call fails and changes nothing: pages then map on first write.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                end - first,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn map_pages(_from: usize, _to: usize) {}

/// Whether the pages of `buffer` are mapped already (its first, middle and last page, which
/// tell memory the allocator had from new pages): then writing it costs no page faults.
#[cfg(target_os = "linux")]
pub(crate) fn mapped<T>(buffer: &[T]) -> bool {
    let (start, bytes) = (buffer.as_ptr() as usize, size_of_val(buffer));
    if bytes == 0 {
        return true;
    }
    [start, start + bytes / 2, start + bytes - 1]
        .iter()
        .all(|&at| {
            let mut resident = 0u8;
            // SAFETY: mincore reads the page tables only, for the one page holding `at` (part of
            // `buffer`), and writes one byte into `resident`.
            let ok =
                unsafe { libc::mincore((at / PAGE * PAGE) as *mut libc::c_void, 1, &mut resident) };
            ok == 0 && resident & 1 == 1
        })
}

/// Elsewhere, buffers are taken as new.
#[cfg(not(target_os = "linux"))]
pub(crate) fn mapped<T>(_buffer: &[T]) -> bool {
    false
}

/// Returns the storage of a dead array to the pool.
pub(crate) fn recycle(data: Data) {
    if let Data::F64(array) = data {
        give(array.into_raw_vec_and_offset().0);
    }
}

/// Returns the storage of the arrays nothing else holds to the pool: a plan's outputs that
/// the caller has read, so that the next run takes their pages again instead of fresh ones.
pub(crate) fn recycle_all(arrays: Vec<std::sync::Arc<Data>>) {
    for array in arrays {
        if let Ok(data) = std::sync::Arc::try_unwrap(array) {
            recycle(data);
        }
    }
}

/// Returns a buffer to the pool, if the pool lent one of its class. When the pool is full, the largest buffers it holds make
/// room: the buffer just freed belongs to the plan running now, and those to plans before it.
pub(crate) fn give(buffer: Vec<f64>) {
    let capacity = buffer.capacity();
    if !(MIN_LEN..=MAX_BYTES / std::mem::size_of::<f64>()).contains(&capacity) {
        return;
    }
    let class = class_of(capacity);
    let bytes = capacity * std::mem::size_of::<f64>();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        match pool.lent.get_mut(class) {
            Some(lent) if *lent > 0 => *lent -= 1,
            _ => return,
        }
        while pool.bytes + bytes > MAX_BYTES {
            let Some(evicted) = pool.classes.iter_mut().rev().find_map(|class| class.pop()) else {
                break;
            };
            pool.bytes -= evicted.capacity() * std::mem::size_of::<f64>();
        }
        if pool.classes.len() <= class {
            pool.classes.resize_with(class + 1, Vec::new);
        }
        pool.classes[class].push(buffer);
        pool.bytes += bytes;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_filled_while_their_pages_are_mapped_keep_every_value_written() {
        for backwards in [false, true] {
            let len = 3 * MAP_AHEAD_MIN + 5;
            let (mut a, new_a) = take_to_fill(len);
            let (mut b, new_b) = take_to_fill(len / 2);
            assert!(new_a && new_b && a.iter().all(|&x| x == 0.0));
            let unmapped = Unmapped::of([&a[..], &b[..]].into_iter());
            assert_eq!(unmapped.0.len(), 2);
            unmapped.fill_while_mapping(backwards, || {
                let order: Vec<usize> = match backwards {
                    false => (0..len).collect(),
                    true => (0..len).rev().collect(),
                };
                for i in order {
                    a[i] = i as f64 + 0.5;
                    if i < b.len() {
                        b[i] = -(i as f64);
                    }
                }
            });
            assert!(a.iter().enumerate().all(|(i, &x)| x == i as f64 + 0.5));
            assert!(b.iter().enumerate().all(|(i, &x)| x == -(i as f64)));
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn new_buffers_are_unmapped_until_written() {
        // 64 MiB: beyond any allocator's reuse of freed memory, new pages from the system.
        let mut buffer = vec![0.0f64; 8 << 20];
        assert!(!mapped(&buffer));
        buffer.fill(1.0);
        assert!(mapped(&buffer));
        assert!(mapped::<f64>(&[]));
    }

    #[test]
    fn a_returned_buffer_is_taken_again_for_its_class() {
        let buffer = take::<f64>(1000);
        assert!(buffer.capacity() >= 1000);
        let address = buffer.as_ptr();
        give(buffer);
        let again = take::<f64>(600); // served by class 512, which holds buffers >= 512
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty() && again.capacity() >= 600);
        give(again);
        assert!(
            take::<f64>(1001).capacity() >= 1001,
            "too small a buffer is never handed out"
        );
        let smaller = take::<f64>(999);
        assert_eq!(smaller.as_ptr(), address, "a smaller request of its class");
        give(smaller);
        let reused = take_to_overwrite(999);
        assert_eq!((reused.len(), reused.as_ptr()), (999, address));
        assert_eq!(take_to_overwrite(3), vec![0.0; 3]);
        // A buffer the pool did not lend is not kept.
        let held = || POOL.with(|pool| pool.borrow().bytes);
        let before = held();
        give(Vec::with_capacity(1 << 20));
        assert_eq!(held(), before);
        // Other element types and tiny buffers go to the allocator.
        assert!(take::<i64>(1000).capacity() >= 1000);
        assert_eq!(take::<f64>(3).capacity(), 3);
    }
}
