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
