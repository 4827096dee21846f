//! Sizes and the memory limit: every element and byte count is computed with checked
//! arithmetic, and every large allocation is checked against a limit first.
//!
//! A shape whose size cannot even be counted (its element or byte count overflows, or exceeds
//! what an allocation may hold) is an [`Error::Shape`] naming the operation and the shape. A
//! size that can be counted but is more than the memory limit is an [`Error::Memory`] naming
//! the bytes, the limit and what to use instead. The limit is checked before eager operations
//! allocate their results, and before a transform runs its plan (against what the call will
//! allocate: the plan's intermediates at their peak and its outputs), so a call too large for
//! the machine fails with an error instead of aborting the process.
//!
//! The limit is global ([`set_limit`]) and can be set per transform
//! ([`GradientTransform::memory_limit`](crate::GradientTransform::memory_limit)). By default it
//! is three quarters of the physical memory (or of the memory of the control group the process
//! runs in, when that is smaller), read from `/proc/meminfo` and the cgroup files on Linux;
//! where those cannot be read, 8 GiB.
//!
//! ```
//! use brainstate::{memory, Error, Tensor};
//! let err = Tensor::zeros(&[usize::MAX]).shape().unwrap_err(); // cannot be counted
//! assert!(matches!(err, Error::Shape { .. }));
//! memory::set_limit(Some(1 << 20)); // 1 MiB
//! let err = Tensor::zeros(&[1 << 20]).shape().unwrap_err(); // 8 MiB of f64
//! assert!(matches!(err, Error::Memory { needed: 8_388_608, .. }));
//! memory::set_limit(None); // back to the default
//! assert!(memory::limit() > 1 << 20);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::error::{Error, Result};
use crate::storage::{Aval, DType, Data};

/// The global limit in bytes; 0 means the default.
static LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Used when the physical memory cannot be read.
const FALLBACK: usize = 8 << 30;

/// The memory limit in bytes that eager operations and transforms without a limit of their own
/// check their allocations against.
///
/// ```
/// assert!(brainstate::memory::limit() > 0);
/// ```
pub fn limit() -> usize {
    match LIMIT.load(Ordering::Relaxed) {
        0 => default_limit(),
        bytes => bytes,
    }
}

/// Sets the global memory limit in bytes; `None` restores the default (three quarters of the
/// physical memory). Transforms with a limit of their own
/// ([`memory_limit`](crate::GradientTransform::memory_limit)) keep it.
///
/// ```
/// use brainstate::memory;
/// memory::set_limit(Some(64 << 30));
/// assert_eq!(memory::limit(), 64 << 30);
/// memory::set_limit(None);
/// ```
pub fn set_limit(bytes: Option<usize>) {
    // 0 stands for the default, so a limit of 0 bytes is kept as 1.
    let stored = match bytes {
        Some(bytes) => bytes.max(1),
        None => 0,
    };
    LIMIT.store(stored, Ordering::Relaxed);
}

/// The physical memory of the machine in bytes (or of the control group the process runs in,
/// when that is smaller), if it can be read.
///
/// ```
/// if let Some(bytes) = brainstate::memory::physical() {
///     assert!(bytes > 0);
/// }
/// ```
pub fn physical() -> Option<usize> {
    static PHYSICAL: OnceLock<Option<usize>> = OnceLock::new();
    *PHYSICAL.get_or_init(|| {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| meminfo_total(&info));
        let cgroup = [
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
        match (total, cgroup) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        }
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(info: &str) -> Option<usize> {
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn default_limit() -> usize {
    physical().map_or(FALLBACK, |bytes| bytes / 4 * 3)
}

/// The bytes of an array of `shape` and `dtype`, or an error naming `op` and the shape when
/// that size cannot be counted or exceeds what one allocation may hold (`isize::MAX` bytes).
pub(crate) fn array_bytes(op: &str, shape: &[usize], dtype: DType) -> Result<usize> {
    // As for ndarray and NumPy, the nonzero dimensions must have a countable product even
    // when another dimension is zero.
    let countable = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
        .filter(|&n| n <= isize::MAX as usize);
    countable
        .and_then(|_| shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)))
        .and_then(|n| n.checked_mul(dtype.size_bytes()))
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("an array of shape {shape:?} and dtype {dtype} is too large to exist"),
            )
        })
}

/// Checks that every aval can exist (see [`array_bytes`]) and returns their total bytes.
pub(crate) fn avals_bytes(op: &str, avals: &[Aval]) -> Result<usize> {
    avals.iter().try_fold(0usize, |total, a| {
        Ok(total.saturating_add(array_bytes(op, &a.shape, a.dtype)?))
    })
}

/// An error unless `needed` bytes fit `limit`; `what` says what takes them and what to use
/// instead.
pub(crate) fn check(
    op: &str,
    needed: usize,
    limit: usize,
    what: impl FnOnce() -> String,
) -> Result<()> {
    if needed <= limit {
        return Ok(());
    }
    Err(Error::Memory {
        op: op.to_string(),
        needed,
        limit,
        msg: what(),
    })
}

/// Checks the results of an eager operation against the global limit before they are
/// allocated.
pub(crate) fn check_results(op: &str, avals: &[Aval]) -> Result<()> {
    let needed = avals_bytes(op, avals)?;
    check(op, needed, limit(), || {
        let shapes: Vec<String> = avals.iter().map(ToString::to_string).collect();
        format!(
            "its result {} would be allocated now; compute on smaller pieces, or raise the \
             limit with brainstate::memory::set_limit",
            shapes.join(", ")
        )
    })
}

/// A size in bytes for people: `1.5 GiB`.
///
/// ```
/// assert_eq!(brainstate::memory::human(3 << 29), "1.5 GiB");
/// assert_eq!(brainstate::memory::human(512), "512 B");
/// ```
pub fn human(bytes: usize) -> String {
    crate::error::human_bytes(bytes)
}

/// Allocations from this many bytes on are first tried fallibly (see [`probe`]).
const PROBE_BYTES: usize = 1 << 20;

/// Asks the allocator for `bytes` and gives them back: an error naming `op` when it cannot
/// provide them, where an allocation that fails would abort the process.
fn probe(op: &str, bytes: usize) -> Result<()> {
    if bytes < PROBE_BYTES {
        return Ok(());
    }
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| Error::Memory {
        op: op.to_string(),
        needed: bytes,
        limit: limit(),
        msg: "the allocator could not provide this memory".into(),
    })
}

/// A vector of `n` copies of `value`, or an error naming `op` when the allocator cannot give
/// the memory. (The memory is asked for fallibly first, then as `vec!` does, which takes
/// zeros as untouched pages from the system.)
pub(crate) fn try_filled<T: Clone>(op: &str, n: usize, value: T) -> Result<Vec<T>> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Error::shape(op, format!("{n} values are too many to exist")))?;
    probe(op, bytes)?;
    Ok(vec![value; n])
}

/// An error naming `op` when an array of `shape` and `dtype` cannot be allocated (see
/// [`probe`]): checked before a kernel allocates one.
pub(crate) fn check_array(op: &str, shape: &[usize], dtype: DType) -> Result<()> {
    probe(op, array_bytes(op, shape, dtype)?)
}

/// Zeros of `shape` and `dtype`, or an error naming `op` when they cannot be allocated.
pub(crate) fn zeros(op: &str, shape: &[usize], dtype: DType) -> Result<Data> {
    check_array(op, shape, dtype)?;
    Ok(Data::zeros(shape, dtype))
}

/// Bytes of results kept by every [`Kept`] together.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A call's results, kept for the next call to write into once the caller has let go of them:
/// a large result is then neither mapped nor zeroed again. What is kept is the caller's memory
/// as long as the caller holds it, and this one's until the next call or until it is dropped;
/// all of them together keep at most a quarter of the limit a call runs under.
#[derive(Default)]
pub(crate) struct Kept(Mutex<Vec<Arc<Data>>>);

/// Whether `bytes` more fit beside the `kept` bytes within a quarter of `limit`.
fn fits(kept: usize, bytes: usize, limit: usize) -> bool {
    kept.saturating_add(bytes) <= limit / 4
}

fn bytes_of(arrays: &[Arc<Data>]) -> usize {
    let bytes = |a: &Arc<Data>| a.shape().iter().product::<usize>() * a.dtype().size_bytes();
    arrays.iter().map(bytes).sum()
}

impl Kept {
    /// Whether results of `bytes` would be kept now under `limit`, with what the others keep.
    pub fn would_keep(bytes: usize, limit: usize) -> bool {
        fits(KEPT.load(Ordering::Relaxed), bytes, limit)
    }

    /// Keeps `arrays` in place of what was kept, when they fit a quarter of `limit` with what
    /// the others keep.
    pub fn keep(&self, arrays: &[Arc<Data>], limit: usize) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        KEPT.fetch_sub(bytes_of(&kept), Ordering::Relaxed);
        kept.clear();
        let bytes = bytes_of(arrays);
        if fits(KEPT.fetch_add(bytes, Ordering::Relaxed), bytes, limit) {
            kept.extend_from_slice(arrays);
        } else {
            KEPT.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// The kept arrays when nothing else holds any of them, else none; nothing is kept after,
    /// so two calls at once never write into the same arrays.
    pub fn take_unshared(&self) -> Vec<Data> {
        let kept = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        KEPT.fetch_sub(bytes_of(&kept), Ordering::Relaxed);
        match kept.iter().all(|a| Arc::strong_count(a) == 1) {
            true => kept
                .into_iter()
                .filter_map(|a| Arc::try_unwrap(a).ok())
                .collect(),
            false => Vec::new(),
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let kept = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        KEPT.fetch_sub(bytes_of(kept), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_never_overflow() {
        assert!(array_bytes("t", &[usize::MAX], DType::F64).is_err());
        assert!(array_bytes("t", &[1 << 31, 1 << 31], DType::F64).is_err());
        assert!(array_bytes("t", &[0, 1 << 40], DType::F64).is_ok()); // empty
        assert!(array_bytes("t", &[0, usize::MAX], DType::F64).is_err()); // as ndarray
        assert_eq!(array_bytes("t", &[2, 3], DType::C128).unwrap(), 96);
        let err = array_bytes("zeros", &[usize::MAX], DType::F64).unwrap_err();
        assert!(err.to_string().starts_with("zeros: an array of shape"));
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let info = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_total(info), Some(24576000 * 1024));
        assert_eq!(meminfo_total("nothing"), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(320_000_000_000), "298.0 GiB");
        assert_eq!(human(1024), "1.0 KiB");
    }

    #[test]
    fn results_are_kept_within_a_quarter_of_the_limit_and_given_back_unshared_only() {
        let array = || Arc::new(Data::zeros(&[1024], DType::F64)); // 8 KiB
        let kept = Kept::default();
        // 8 KiB is more than a quarter of 32 KiB - 1: not kept.
        kept.keep(&[array()], (32 << 10) - 1);
        assert!(kept.take_unshared().is_empty());
        // Kept under 64 MiB, and given back once only the keeper holds it.
        let shared = array();
        kept.keep(&[shared.clone(), array()], 64 << 20);
        assert!(kept.take_unshared().is_empty()); // `shared` is still held here
        kept.keep(&[shared, array()], 64 << 20);
        assert_eq!(kept.take_unshared().len(), 2);
        assert!(kept.take_unshared().is_empty()); // taken: nothing is kept after
    }
}
