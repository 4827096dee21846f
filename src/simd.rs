//! Kernels compiled for the processor they run on.
//!
//! The library is built for baseline x86-64, whose vector registers hold two `f64`. The loops
//! that stream over tiles and rows are where wider registers pay, so [`multiversion!`] compiles
//! such a loop three times (AVX-512, AVX2, baseline) and picks the widest one the processor
//! has when it runs. The results do not depend on the choice: every version performs the same
//! operations in the same order (Rust never contracts a multiply and an add into one).

/// Defines `fn $name(args)` whose body is compiled for AVX-512 and for AVX2 as well as for the
/// baseline, running the widest version the processor supports. The body's loops should be
/// simple enough to vectorise, and whatever it calls `#[inline(always)]`, so that it is
/// compiled into each version.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident$(<$($g:ident: $bound:path),*>)?($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name$(<$($g: $bound),*>)?($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512$(<$($g: $bound),*>)?($($arg: $ty),*) $body
                #[target_feature(enable = "avx2")]
                fn avx2$(<$($g: $bound),*>)?($($arg: $ty),*) $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor has the features this version is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

pub(crate) use multiversion;

/// Whether the processor has AVX-512, whose 32 vector registers hold a few chunks of values
/// at once: fused loops then pass results from one operation to the next in registers (see
/// `exec::fuse`). With AVX2's 16 such chains measured slower than a loop per operation.
pub(crate) fn wide_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Copies `src` into `dst` (of the same length) with stores that bypass the caches (where the
/// processor has them): for outputs much larger than the caches, which ordinary stores first
/// read in, line by line, only to overwrite them. Call [`stream_fence`] before another thread
/// reads what was written.
pub(crate) fn stream<T: Copy>(src: &[T], dst: &mut [std::mem::MaybeUninit<T>]) {
    // Every slot of `dst` is written: callers take it as initialised afterwards.
    assert_eq!(src.len(), dst.len(), "a stream fills its destination");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let bytes = size_of_val(src);
        let (from, to) = (src.as_ptr().cast::<u8>(), dst.as_mut_ptr().cast::<u8>());
        let head = to.align_offset(16).min(bytes);
        let body = (bytes - head) / 16 * 16;
        // SAFETY: `from` and `to` are `bytes` long (the lengths are equal) and do not
        // overlap (one is borrowed mutably); `T: Copy` is plain data, copied byte for byte;
        // the streaming stores write 16 bytes at `to + at`, 16-aligned, inside `dst`; SSE2 is
        // part of x86-64.
        unsafe {
            std::ptr::copy_nonoverlapping(from, to, head);
            for at in (head..head + body).step_by(16) {
                let value = _mm_loadu_si128(from.add(at).cast::<__m128i>());
                _mm_stream_si128(to.add(at).cast::<__m128i>(), value);
            }
            let tail = head + body;
            std::ptr::copy_nonoverlapping(from.add(tail), to.add(tail), bytes - tail);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (slot, &value) in dst.iter_mut().zip(src) {
        slot.write(value);
    }
}

/// Orders the [`stream`] stores of this thread before its later stores (a rayon task's
/// completion among them), so that whoever sees those sees the streamed values.
pub(crate) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a fence has no operands; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    #[test]
    fn streams_copy_every_value_whatever_the_alignment_and_length() {
        let values: Vec<f64> = (0..67).map(|k| k as f64 * 0.5 - 3.0).collect();
        for start in 0..3 {
            for len in [0, 1, 2, 3, 17, 64 - start] {
                let src = &values[start..start + len];
                let mut dst = vec![MaybeUninit::new(f64::NAN); 70];
                // Destinations at odd offsets too: their head is copied before the stores.
                super::stream(src, &mut dst[start..start + len]);
                super::stream_fence();
                for (k, &want) in src.iter().enumerate() {
                    // SAFETY: initialised above, and written by the stream.
                    assert_eq!(unsafe { dst[start + k].assume_init() }, want);
                }
            }
        }
        let complex: Vec<num_complex::Complex32> = (0..9)
            .map(|k| num_complex::Complex32::new(k as f32, -(k as f32)))
            .collect();
        let mut dst = vec![MaybeUninit::new(num_complex::Complex32::new(0.0, 0.0)); 9];
        super::stream(&complex, &mut dst);
        // SAFETY: initialised above.
        let got: Vec<_> = dst.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(got, complex);
    }
}
