//! Scalar functions written out where the platform's are slow: `tanh` (the activation of most
//! models here) through Cephes' rational approximations, with no branch the compiler cannot
//! turn into a select, so loops over it vectorise. Accurate to a few units in the last place
//! (the tests hold it to 1e-15 relative against the platform's `tanh` over a dense grid).

/// `c[0] x^(n-1) + ... + c[n-1]`, by Horner's rule.
#[inline(always)]
fn poly(x: f64, c: &[f64]) -> f64 {
    c.iter().fold(0.0, |acc, &k| acc * x + k)
}

/// `e^x` for `|x| <= 700` as a fraction `(numerator, denominator)`: `x = k ln 2 + r` with
/// `|r| <= ln 2 / 2`, the Padé form `(Q + p) / (Q - p)` of `e^r`, its numerator scaled by
/// `2^k` (Cephes' `exp`). A fraction, so that `tanh` divides once.
#[inline(always)]
fn exp_fraction(x: f64) -> (f64, f64) {
    const P: [f64; 3] = [1.261_771_930_748_105_9e-4, 3.029_944_077_074_419_6e-2, 1.0];
    const Q: [f64; 4] = [
        3.001_985_051_386_644_6e-6,
        2.524_483_403_496_841e-3,
        2.272_655_482_081_550_3e-1,
        2.0,
    ];
    // ln 2 in two parts, the first exact in few bits, so `k * LN2_HI` is exact.
    const LN2_HI: f64 = 6.931_457_519_531_25e-1;
    const LN2_LO: f64 = 1.428_606_820_309_417_3e-6;
    // Adding 1.5 * 2^52 rounds to an integer (there is no rounding instruction before SSE4.1).
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let k = (x * std::f64::consts::LOG2_E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let rr = r * r;
    let p = r * poly(rr, &P);
    let q = poly(rr, &Q);
    // 2^k from the low bits of `k + ROUND`, which hold k.
    let scale = f64::from_bits(((k + ROUND).to_bits().wrapping_add(1023) & 0x7ff) << 52);
    ((q + p) * scale, q - p)
}

/// The hyperbolic tangent (Cephes' `tanh`): a rational function of `x^2` below 0.625, else
/// `(e - 1) / (e + 1)` for `e = e^(2|x|)`, with the sign of `x`; exact at 0, -0, the
/// infinities and NaN. Both branches are fractions, computed with one division between
/// them: division is the slowest vector instruction here.
#[inline(always)]
pub(crate) fn tanh(x: f64) -> f64 {
    const P: [f64; 3] = [
        -9.643_991_794_250_523e-1,
        -9.928_772_310_019_186e1,
        -1.614_687_684_417_084_5e3,
    ];
    const Q: [f64; 4] = [
        1.0,
        1.128_116_784_916_329_3e2,
        2.235_488_390_601_005e3,
        4.844_063_053_251_255e3,
    ];
    let a = x.abs();
    let z = x * x;
    // x + x z P(z) / Q(z), over Q(z).
    let q = poly(z, &Q);
    let small = (x * q + x * z * poly(z, &P), q);
    // e = n / d: (e - 1) / (e + 1) = (n - d) / (n + d).
    let (n, d) = exp_fraction(2.0 * a.min(22.0));
    let large = ((n - d).copysign(x), n + d);
    let (numerator, denominator) = if a < 0.625 { small } else { large };
    let t = numerator / denominator;
    if a == 0.0 || x.is_nan() { x } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative(a: f64, b: f64) -> f64 {
        if b == 0.0 {
            a.abs()
        } else {
            ((a - b) / b).abs()
        }
    }

    #[test]
    fn tanh_agrees_with_the_platform_to_the_last_bits() {
        let mut worst = 0.0f64;
        for i in -600_000..600_000 {
            let x = i as f64 * 6.1e-5 * 1.000_012_3;
            worst = worst.max(relative(tanh(x), x.tanh()));
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        for x in [
            0.0f64,
            -0.0,
            5e-324,
            1e-300,
            0.625,
            -0.625,
            21.9,
            22.5,
            1e300,
            f64::MAX,
        ] {
            assert!(relative(tanh(x), x.tanh()) < 1e-15, "tanh({x})");
            assert!(relative(tanh(-x), (-x).tanh()) < 1e-15, "tanh({})", -x);
        }
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!((tanh(f64::INFINITY), tanh(f64::NEG_INFINITY)), (1.0, -1.0));
        assert!(tanh(f64::NAN).is_nan());
    }

    #[test]
    fn exp_agrees_with_the_platform_over_its_range() {
        let mut worst = 0.0f64;
        for i in -700_000..700_000 {
            let x = i as f64 * 1e-3 * 1.000_012_3;
            let (n, d) = exp_fraction(x);
            worst = worst.max(relative(n / d, x.exp()));
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
    }
}
