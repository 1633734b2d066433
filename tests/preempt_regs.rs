//! Register integrity across asynchronous preemption: AVX2/FMA vector
//! chains, integer chains that occupy every general register, scalar SSE
//! math and MXCSR rounding modes produce bit-identical results whether they
//! run on a plain thread or on goroutines preempted thousands of times.
#![cfg(feature = "preempt-signal")]
#![allow(deprecated)] // _mm_getcsr/_mm_setcsr: the only way to reach MXCSR without asm

mod common_preempt;

use std::arch::x86_64::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common_preempt::serial;
use gosched::{Builder, PreemptMode};

/// The computations under test. Each is chaotic (a logistic map, or a
/// bijective integer mix): a single flipped bit anywhere in its state at any
/// point changes the final result, so a register the trampoline failed to
/// restore cannot go unnoticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// 6 chains of 4-lane f64 logistic maps with FMA, plus running sums.
    FmaF64,
    /// 6 chains of 8-lane f32 logistic maps with FMA, plus running sums.
    FmaF32,
    /// 13 u64 accumulators mixed with rotates, multiplies, adds and xors.
    Int,
    /// Scalar f64 logistic maps, divisions and square roots.
    Scalar,
}

const KINDS: [Kind; 4] = [Kind::FmaF64, Kind::FmaF32, Kind::Int, Kind::Scalar];

/// AVX2 and FMA are available (checked before any `Kind::Fma*` runs).
fn have_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[target_feature(enable = "avx2,fma")]
fn fma_f64(seed: u64, iters: u64) -> Vec<u64> {
    let lane = |k: u64| {
        0.1 + 0.8 * (((seed.wrapping_mul(k * 2 + 1) >> 11) % 1_000_003) as f64 / 1_000_003.0)
    };
    let r = _mm256_setr_pd(3.99, 3.97, 3.95, 3.93);
    let mut x = [_mm256_setzero_pd(); 6];
    for (i, v) in x.iter_mut().enumerate() {
        let b = 4 * i as u64;
        *v = _mm256_setr_pd(lane(b), lane(b + 1), lane(b + 2), lane(b + 3));
    }
    let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5] = x;
    let [mut s0, mut s1, mut s2, mut s3, mut s4, mut s5] = [_mm256_setzero_pd(); 6];
    for _ in 0..iters {
        // x' = r x (1 - x) = -(r x) x + r x
        let r0 = _mm256_mul_pd(r, x0);
        x0 = _mm256_fnmadd_pd(r0, x0, r0);
        let r1 = _mm256_mul_pd(r, x1);
        x1 = _mm256_fnmadd_pd(r1, x1, r1);
        let r2 = _mm256_mul_pd(r, x2);
        x2 = _mm256_fnmadd_pd(r2, x2, r2);
        let r3 = _mm256_mul_pd(r, x3);
        x3 = _mm256_fnmadd_pd(r3, x3, r3);
        let r4 = _mm256_mul_pd(r, x4);
        x4 = _mm256_fnmadd_pd(r4, x4, r4);
        let r5 = _mm256_mul_pd(r, x5);
        x5 = _mm256_fnmadd_pd(r5, x5, r5);
        s0 = _mm256_fmadd_pd(x0, x1, s0);
        s1 = _mm256_fmadd_pd(x1, x2, s1);
        s2 = _mm256_fmadd_pd(x2, x3, s2);
        s3 = _mm256_fmadd_pd(x3, x4, s3);
        s4 = _mm256_fmadd_pd(x4, x5, s4);
        s5 = _mm256_fmadd_pd(x5, x0, s5);
    }
    let mut out = Vec::with_capacity(48);
    for v in [x0, x1, x2, x3, x4, x5, s0, s1, s2, s3, s4, s5] {
        let mut a = [0f64; 4];
        // SAFETY: `a` is 4 f64s, the unaligned store writes exactly those.
        unsafe { _mm256_storeu_pd(a.as_mut_ptr(), v) };
        out.extend(a.iter().map(|f| f.to_bits()));
    }
    out
}

#[target_feature(enable = "avx2,fma")]
fn fma_f32(seed: u64, iters: u64) -> Vec<u64> {
    let lane =
        |k: u64| 0.1 + 0.8 * (((seed.wrapping_mul(k * 2 + 1) >> 11) % 10_007) as f32 / 10_007.0);
    let r = _mm256_setr_ps(3.99, 3.98, 3.97, 3.96, 3.95, 3.94, 3.93, 3.92);
    let mut x = [_mm256_setzero_ps(); 6];
    for (i, v) in x.iter_mut().enumerate() {
        let b = 8 * i as u64;
        *v = _mm256_setr_ps(
            lane(b),
            lane(b + 1),
            lane(b + 2),
            lane(b + 3),
            lane(b + 4),
            lane(b + 5),
            lane(b + 6),
            lane(b + 7),
        );
    }
    let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5] = x;
    let [mut s0, mut s1, mut s2, mut s3, mut s4, mut s5] = [_mm256_setzero_ps(); 6];
    for _ in 0..iters {
        let r0 = _mm256_mul_ps(r, x0);
        x0 = _mm256_fnmadd_ps(r0, x0, r0);
        let r1 = _mm256_mul_ps(r, x1);
        x1 = _mm256_fnmadd_ps(r1, x1, r1);
        let r2 = _mm256_mul_ps(r, x2);
        x2 = _mm256_fnmadd_ps(r2, x2, r2);
        let r3 = _mm256_mul_ps(r, x3);
        x3 = _mm256_fnmadd_ps(r3, x3, r3);
        let r4 = _mm256_mul_ps(r, x4);
        x4 = _mm256_fnmadd_ps(r4, x4, r4);
        let r5 = _mm256_mul_ps(r, x5);
        x5 = _mm256_fnmadd_ps(r5, x5, r5);
        s0 = _mm256_fmadd_ps(x0, x1, s0);
        s1 = _mm256_fmadd_ps(x1, x2, s1);
        s2 = _mm256_fmadd_ps(x2, x3, s2);
        s3 = _mm256_fmadd_ps(x3, x4, s3);
        s4 = _mm256_fmadd_ps(x4, x5, s4);
        s5 = _mm256_fmadd_ps(x5, x0, s5);
    }
    let mut out = Vec::with_capacity(96);
    for v in [x0, x1, x2, x3, x4, x5, s0, s1, s2, s3, s4, s5] {
        let mut a = [0f32; 8];
        // SAFETY: `a` is 8 f32s, the unaligned store writes exactly those.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        out.extend(a.iter().map(|f| f.to_bits() as u64));
    }
    out
}

/// Thirteen live u64 accumulators plus the loop counter: with rsp that is
/// nearly every general register, so a lost one shows.
#[inline(never)]
fn int_mix(seed: u64, iters: u64) -> Vec<u64> {
    let mut a = [0u64; 13];
    let mut z = seed;
    for v in a.iter_mut() {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        *v = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1;
    }
    let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7, mut a8, mut a9, mut a10, mut a11, mut a12] =
        a;
    for i in 0..iters {
        a0 = a0.rotate_left(7) ^ a1.wrapping_add(i);
        a1 = a1.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(a2);
        a2 = a2.rotate_left(13).wrapping_add(a3 ^ a0);
        a3 = a3.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ a4;
        a4 = a4.rotate_left(17).wrapping_sub(a5);
        a5 = a5.wrapping_mul(0xbf58_476d_1ce4_e5b9).wrapping_add(a6 >> 3);
        a6 = a6.rotate_left(23) ^ a7.wrapping_mul(3);
        a7 = a7.wrapping_add(a8).rotate_left(29);
        a8 = a8.wrapping_mul(0x94d0_49bb_1331_11eb) ^ a9;
        a9 = a9.rotate_left(31).wrapping_add(a10);
        a10 = a10.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ a11.rotate_left(5);
        a11 = a11.wrapping_add(a12 ^ a0).rotate_left(37);
        a12 = a12
            .wrapping_mul(0xc4ce_b9fe_1a85_ec53)
            .wrapping_add(a1 ^ a6);
    }
    vec![a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12]
}

/// Scalar SSE f64: logistic maps, a division chain and square roots, eight
/// xmm registers live.
#[inline(never)]
fn scalar(seed: u64, iters: u64) -> Vec<u64> {
    let f = |k: u64| {
        0.1 + 0.8 * (((seed.wrapping_mul(2 * k + 1) >> 11) % 1_000_003) as f64 / 1_000_003.0)
    };
    let (mut x0, mut x1, mut x2, mut x3) = (f(0), f(1), f(2), f(3));
    let (mut q, mut s, mut t, mut u) = (f(4) + 1.0, 0.0f64, 0.0f64, f(5));
    for _ in 0..iters {
        x0 = 3.99 * x0 * (1.0 - x0);
        x1 = 3.97 * x1 * (1.0 - x1);
        x2 = (x2 * (1.0 - x2)) / 0.251;
        x3 = 3.93 * x3 * (1.0 - x3);
        q = (q + x0) / (1.0 + x1);
        s += (x2 * x3 + q).sqrt();
        t += x0 / (x3 + 0.5);
        u = (u * 0.5 + x1 * x2).sqrt();
    }
    [x0, x1, x2, x3, q, s, t, u]
        .iter()
        .map(|f| f.to_bits())
        .collect()
}

fn compute(kind: Kind, seed: u64, iters: u64) -> Vec<u64> {
    let (seed, iters) = (black_box(seed), black_box(iters));
    match kind {
        // SAFETY: the FMA kinds run only after `have_avx2_fma()` returned
        // true (checked at the start of the test).
        Kind::FmaF64 => unsafe { fma_f64(seed, iters) },
        // SAFETY: as above.
        Kind::FmaF32 => unsafe { fma_f32(seed, iters) },
        Kind::Int => int_mix(seed, iters),
        Kind::Scalar => scalar(seed, iters),
    }
}

/// Iterations of `run` that take about `target` on a plain thread (the
/// fastest of three timings, so a loaded machine does not shrink the work).
fn calibrate(target: Duration, run: impl Fn(u64)) -> u64 {
    let mut n = 10_000u64;
    loop {
        let t = Instant::now();
        run(n);
        if t.elapsed() >= Duration::from_millis(20) {
            let best = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    run(n);
                    t.elapsed()
                })
                .min()
                .unwrap();
            let per = best.as_secs_f64() / n as f64;
            return ((target.as_secs_f64() / per) as u64).max(1);
        }
        n *= 4;
    }
}

/// Every computation, two goroutines per kind with their own seeds, on 2 Ps
/// preempted every ~150 µs, matches a plain-thread reference bit for bit.
fn registers_survive_preemption(mode: PreemptMode) {
    if !have_avx2_fma() {
        eprintln!("note: skipping: this CPU lacks AVX2 or FMA");
        return;
    }
    let _s = serial();
    let jobs: Vec<(Kind, u64, u64)> = KINDS
        .iter()
        .flat_map(|&k| {
            let iters = calibrate(Duration::from_millis(150), |n| {
                black_box(compute(k, 1, n));
            });
            (0..2u64).map(move |i| (k, 0x1234_5678 + 977 * i + k as u64, iters))
        })
        .collect();
    // References on plain threads (never preempted by the runtime).
    let reference: Vec<Vec<u64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = jobs
            .chunks(jobs.len() / 2)
            .map(|c| {
                sc.spawn(move || {
                    c.iter()
                        .map(|&(k, s, n)| compute(k, s, n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let b = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(150))
        .preempt_mode(mode);
    // SAFETY: the goroutines compute on registers and their own locals
    // (register state is the goroutine's, saved by the trampoline); no
    // thread-locals, no stdout (the eprintln! runs after block_on).
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let t = Instant::now();
    let got: Vec<Vec<u64>> = rt.block_on(|| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|&(k, s, n)| gosched::spawn(move || compute(k, s, n)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let st = rt.stats();
    eprintln!(
        "{mode:?}: {} jobs in {:?}, preempt_async={} refused={:?}",
        jobs.len(),
        t.elapsed(),
        st.preempt_async,
        st.preempt_refused_by_reason
    );
    for ((job, want), got) in jobs.iter().zip(&reference).zip(&got) {
        assert_eq!(
            got, want,
            "{mode:?}: {job:?} differs from its plain-thread reference"
        );
    }
    assert!(
        st.preempt_async > 20,
        "{mode:?}: too few asynchronous preemptions to prove anything: {}",
        st.preempt_async
    );
}

#[test]
fn vector_integer_and_scalar_registers_survive_preemption_thread_affine() {
    registers_survive_preemption(PreemptMode::ThreadAffine);
}

#[test]
fn vector_integer_and_scalar_registers_survive_preemption_migrate() {
    registers_survive_preemption(PreemptMode::Migrate);
}

/// MXCSR rounding control (bits 13-14); the low six bits are sticky
/// exception flags that the computations set.
const MXCSR_RC_MASK: u32 = 0x6000;
const MXCSR_FLAGS: u32 = 0x3f;

#[inline(never)]
fn set_rounding(rc: u32) {
    // SAFETY: SSE is baseline on x86-64; changing the rounding mode
    // affects only this thread's (goroutine's) floating-point results.
    unsafe { _mm_setcsr((_mm_getcsr() & !MXCSR_RC_MASK) | rc) };
}

/// Not inlined, and opaque: LLVM models `_mm_getcsr` as reading nothing
/// it tracks, and would otherwise merge two reads around a `set_rounding`.
#[inline(never)]
fn read_mxcsr() -> u32 {
    black_box(());
    // SAFETY: SSE is baseline on x86-64; reading MXCSR has no effect.
    unsafe { _mm_getcsr() }
}

/// A chain of inexact divisions: each rounds according to MXCSR, and the
/// map is chaotic, so the rounding mode decides the result.
#[inline(never)]
fn division_chain(seed: u64, iters: u64) -> u64 {
    let mut x = black_box(0.2 + (seed % 1000) as f64 / 2000.0);
    let d = black_box(0.2506);
    let mut acc = black_box(0.0f64);
    for _ in 0..iters {
        x = (x * (1.0 - x)) / d;
        acc = (acc + x) / 1.000_001;
    }
    x.to_bits() ^ acc.to_bits().rotate_left(17)
}

/// Runs the chain under rounding mode `rc`, restoring the default after;
/// returns the result and MXCSR as read back at the end.
fn chain_under(rc: u32, seed: u64, iters: u64) -> (u64, u32) {
    let before = read_mxcsr();
    set_rounding(rc);
    let v = division_chain(seed, iters);
    let csr = read_mxcsr();
    set_rounding(before & MXCSR_RC_MASK);
    (v, csr)
}

/// A goroutine that switched MXCSR to round-toward-zero keeps it across
/// preemptions (and gets the same results as a plain thread under the same
/// mode), while goroutines on the same threads keep round-to-nearest.
fn mxcsr_survives_preemption(mode: PreemptMode) {
    const RN: u32 = 0x0000;
    const RZ: u32 = 0x6000;
    let _s = serial();
    let iters = calibrate(Duration::from_millis(150), |n| {
        black_box(chain_under(RN, 1, n));
    });
    let jobs: Vec<(u32, u64)> = (0..6u64)
        .map(|i| (if i % 2 == 0 { RZ } else { RN }, 17 + i))
        .collect();
    let reference: Vec<(u64, u32)> = std::thread::scope(|sc| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|&(rc, s)| sc.spawn(move || chain_under(rc, s, iters)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Non-vacuous: the rounding mode changes the result.
    let (rz0, _) = chain_under(RZ, 99, iters.min(100_000));
    let (rn0, _) = chain_under(RN, 99, iters.min(100_000));
    assert_ne!(
        rz0, rn0,
        "rounding mode does not affect the chain: the test would prove nothing"
    );
    let b = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(150))
        .preempt_mode(mode);
    // SAFETY: the goroutines run a division chain under their own MXCSR
    // (goroutine register state, saved by the trampoline); no thread-locals,
    // no stdout (the eprintln! runs after block_on).
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let got: Vec<(u64, u32)> = rt.block_on(|| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|&(rc, s)| gosched::spawn(move || chain_under(rc, s, iters)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let st = rt.stats();
    eprintln!(
        "{mode:?}: MXCSR jobs {jobs:?}, {iters} divisions each, preempt_async={}",
        st.preempt_async
    );
    for ((&(rc, seed), want), got) in jobs.iter().zip(&reference).zip(&got) {
        assert_eq!(
            got.1 & !MXCSR_FLAGS,
            want.1 & !MXCSR_FLAGS,
            "{mode:?}: MXCSR read back differs (rc {rc:#x}, seed {seed})"
        );
        assert_eq!(
            got.1 & MXCSR_RC_MASK,
            rc,
            "{mode:?}: rounding mode lost (seed {seed})"
        );
        assert_eq!(got.0, want.0, "{mode:?}: divisions under rc {rc:#x} (seed {seed}) differ from the plain-thread reference");
    }
    assert!(
        st.preempt_async > 20,
        "{mode:?}: too few asynchronous preemptions: {}",
        st.preempt_async
    );
}

#[test]
fn mxcsr_rounding_mode_survives_preemption_thread_affine() {
    mxcsr_survives_preemption(PreemptMode::ThreadAffine);
}

#[test]
fn mxcsr_rounding_mode_survives_preemption_migrate() {
    mxcsr_survives_preemption(PreemptMode::Migrate);
}

/// Bytes `avx512_hold` writes: zmm16-31 (64 each), then k1-k7 (2 each).
const AVX512_OUT: usize = 16 * 64 + 7 * 2;

/// Loads zmm16-zmm31 and k1-k7 (registers nothing else here touches)
/// with values derived from `seed`, spins `n` rounds of `dec; jnz` with
/// them live (a preemption lands in the loop), then stores them to `out`.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_hold(seed: u64, n: u64, out: &mut [u8; AVX512_OUT]) {
    // SAFETY: (caller) AVX-512F is present; `out` is valid for
    // AVX512_OUT bytes; every register written is declared clobbered.
    unsafe {
        std::arch::asm!(
        "vpbroadcastq zmm16, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm17, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm18, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm19, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm20, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm21, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm22, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm23, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm24, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm25, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm26, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm27, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm28, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm29, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm30, {s}",
        "add {s}, {step}",
        "vpbroadcastq zmm31, {s}",
        "add {s}, {step}",
        "kmovw k1, {s:e}",
        "add {s}, {step}",
        "kmovw k2, {s:e}",
        "add {s}, {step}",
        "kmovw k3, {s:e}",
        "add {s}, {step}",
        "kmovw k4, {s:e}",
        "add {s}, {step}",
        "kmovw k5, {s:e}",
        "add {s}, {step}",
        "kmovw k6, {s:e}",
        "add {s}, {step}",
        "kmovw k7, {s:e}",
        "add {s}, {step}",
        "2:",
        "dec {n}",
        "jnz 2b",
        "vmovdqu64 [{out} + 0], zmm16",
        "vmovdqu64 [{out} + 64], zmm17",
        "vmovdqu64 [{out} + 128], zmm18",
        "vmovdqu64 [{out} + 192], zmm19",
        "vmovdqu64 [{out} + 256], zmm20",
        "vmovdqu64 [{out} + 320], zmm21",
        "vmovdqu64 [{out} + 384], zmm22",
        "vmovdqu64 [{out} + 448], zmm23",
        "vmovdqu64 [{out} + 512], zmm24",
        "vmovdqu64 [{out} + 576], zmm25",
        "vmovdqu64 [{out} + 640], zmm26",
        "vmovdqu64 [{out} + 704], zmm27",
        "vmovdqu64 [{out} + 768], zmm28",
        "vmovdqu64 [{out} + 832], zmm29",
        "vmovdqu64 [{out} + 896], zmm30",
        "vmovdqu64 [{out} + 960], zmm31",
        "kmovw [{out} + 1024], k1",
        "kmovw [{out} + 1026], k2",
        "kmovw [{out} + 1028], k3",
        "kmovw [{out} + 1030], k4",
        "kmovw [{out} + 1032], k5",
        "kmovw [{out} + 1034], k6",
        "kmovw [{out} + 1036], k7",
        s = inout(reg) seed => _,
        step = in(reg) 0x0101_0101_0101_0101u64,
        n = inout(reg) n.max(1) => _,
        out = in(reg) out.as_mut_ptr(),
        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _, out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _, out("k6") _, out("k7") _,
        options(nostack),
        );
    }
}

/// What `avx512_hold(seed, ..)` must store.
fn avx512_expected(seed: u64) -> [u8; AVX512_OUT] {
    let mut want = [0u8; AVX512_OUT];
    let mut s = seed;
    for r in 0..16 {
        for lane in 0..8 {
            want[r * 64 + lane * 8..][..8].copy_from_slice(&s.to_le_bytes());
        }
        s = s.wrapping_add(0x0101_0101_0101_0101);
    }
    for k in 0..7 {
        want[1024 + k * 2..][..2].copy_from_slice(&(s as u16).to_le_bytes());
        s = s.wrapping_add(0x0101_0101_0101_0101);
    }
    want
}

/// The AVX-512 state (zmm16-31, whose upper halves and high registers
/// only XSAVE's AVX-512 components hold, and the mask registers) survives
/// preemption, whichever XSAVE format the trampoline uses (the compacted
/// one leaves out components in their initial state: a wrong mask would
/// lose these). Two goroutines on one P, each holding its own values
/// through ~30 ms loops at a 100 µs quantum.
fn avx512_registers_survive_preemption(mode: PreemptMode) {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("note: skipping: this CPU lacks AVX-512F");
        return;
    }
    let _s = serial();
    // ~30 ms of `dec; jnz` at ~1 round per cycle.
    let n = calibrate(Duration::from_millis(30), |n| {
        let mut out = [0u8; AVX512_OUT];
        // SAFETY: AVX-512F checked above.
        unsafe { avx512_hold(1, n, &mut out) };
    });
    let b = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_micros(100))
        .preempt_mode(mode);
    // SAFETY: the goroutines hold registers and write their own buffers:
    // no thread-locals, no stdout.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let seeds: Vec<u64> = (0..4)
        .map(|i| 0x1111_2222_3333_4444u64.wrapping_mul(i + 3))
        .collect();
    let got: Vec<Vec<[u8; AVX512_OUT]>> = rt.block_on(|| {
        let hs: Vec<_> = seeds
            .iter()
            .map(|&seed| {
                gosched::spawn(move || {
                    (0..3)
                        .map(|_| {
                            let mut out = [0u8; AVX512_OUT];
                            // SAFETY: AVX-512F checked above.
                            unsafe { avx512_hold(seed, n, &mut out) };
                            out
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let st = rt.stats();
    eprintln!(
        "{mode:?}: AVX-512 holders, preempt_async={}",
        st.preempt_async
    );
    for (seed, outs) in seeds.iter().zip(&got) {
        let want = avx512_expected(*seed);
        for out in outs {
            assert!(
                out[..] == want[..],
                "{mode:?}: AVX-512 registers of seed {seed:#x} changed across preemption"
            );
        }
    }
    assert!(
        st.preempt_async > 20,
        "{mode:?}: too few asynchronous preemptions to prove anything: {}",
        st.preempt_async
    );
}

#[test]
fn avx512_registers_survive_preemption_thread_affine() {
    avx512_registers_survive_preemption(PreemptMode::ThreadAffine);
}

#[test]
fn avx512_registers_survive_preemption_migrate() {
    avx512_registers_survive_preemption(PreemptMode::Migrate);
}

/// Loads eight values on the x87 register stack (all of it), spins `n`
/// rounds of `dec; jnz` with them there (a preemption lands in the loop),
/// then pops and adds them: 8.0 if they all survived.
#[inline(never)]
fn x87_full_stack(n: u64) -> f64 {
    let one = 1.0f64;
    let mut sum = 0.0f64;
    // SAFETY: x87 is baseline on x86-64; the block pushes eight values and
    // pops all eight (the stack is empty again after it, as the ABI wants),
    // reads `one` and writes `sum`, both live locals.
    unsafe {
        std::arch::asm!(
            "fld qword ptr [{one}]",
            "fld st(0)", "fld st(0)", "fld st(0)",
            "fld st(0)", "fld st(0)", "fld st(0)", "fld st(0)",
            "2:",
            "dec {n}",
            "jnz 2b",
            "faddp st(1), st", "faddp st(1), st", "faddp st(1), st", "faddp st(1), st",
            "faddp st(1), st", "faddp st(1), st", "faddp st(1), st",
            "fstp qword ptr [{sum}]",
            one = in(reg) &one,
            sum = in(reg) &mut sum,
            n = inout(reg) n.max(1) => _,
        );
    }
    sum
}

/// sqrt(2) on the x87 unit (what C's `sqrtl` does): pushes three values,
/// so it needs the free stack slots the ABI promises at every call.
#[inline(never)]
fn x87_sqrt2() -> f64 {
    let mut r = 0.0f64;
    // SAFETY: x87 is baseline on x86-64; the block pushes one value,
    // computes on it and pops it, and writes `r`, a live local.
    unsafe {
        std::arch::asm!(
            "fld1",
            "fadd st, st(0)",
            "fsqrt",
            "fstp qword ptr [{r}]",
            r = in(reg) &mut r,
        );
    }
    r
}

/// A goroutine preempted with a full x87 register stack: the scheduler
/// and every goroutine that runs meanwhile (on its thread, or on a thread
/// the scheduler started then: a new thread inherits its creator's x87
/// registers) start with an empty stack, as at any call; the preempted
/// goroutine gets its eight values back. The trampoline used to call the
/// scheduler with the interrupted x87 stack still loaded: fresh goroutines'
/// x87 math overflowed it and returned NaN (28-58 of ~2,900 in Migrate
/// mode, 1 in ThreadAffine, every run).
fn x87_stack_stays_with_its_goroutine(mode: PreemptMode) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let _s = serial();
    assert_eq!(x87_sqrt2(), std::f64::consts::SQRT_2);
    let b = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_micros(100))
        .preempt_mode(mode);
    // SAFETY: the goroutines run x87 arithmetic and a spin on locals; no
    // thread-locals, no stdout.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let (ran, sums) = rt.block_on({
        let (stop, wrong) = (stop.clone(), wrong.clone());
        move || {
            // Three, so that in ThreadAffine mode each preempted one's
            // thread waits with it and the scheduler starts new threads.
            let hogs: Vec<_> = (0..3)
                .map(|_| {
                    let s = stop.clone();
                    gosched::spawn(move || {
                        let mut bad = 0u64;
                        while !s.load(Ordering::Relaxed) {
                            if x87_full_stack(1_000_000) != 8.0 {
                                bad += 1;
                            }
                        }
                        bad
                    })
                })
                .collect();
            let t = Instant::now();
            let mut ran = 0u64;
            while t.elapsed() < Duration::from_millis(700) {
                let w = wrong.clone();
                gosched::spawn(move || {
                    if x87_sqrt2() != std::f64::consts::SQRT_2 {
                        w.fetch_add(1, Ordering::Relaxed);
                    }
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(300) {}
                })
                .join()
                .unwrap();
                ran += 1;
            }
            stop.store(true, Ordering::Relaxed);
            (
                ran,
                hogs.into_iter().map(|h| h.join().unwrap()).sum::<u64>(),
            )
        }
    });
    let st = rt.stats();
    eprintln!(
        "{mode:?}: {ran} goroutines computed sqrt(2) beside the x87 hogs, preempt_async={}",
        st.preempt_async
    );
    assert_eq!(sums, 0, "{mode:?}: the preempted goroutine lost x87 values");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "{mode:?}: goroutines found the preempted goroutine's x87 stack ({ran} ran)"
    );
    assert!(
        st.preempt_async > 20,
        "{mode:?}: too few asynchronous preemptions: {}",
        st.preempt_async
    );
}

#[test]
fn x87_stack_stays_with_its_goroutine_thread_affine() {
    x87_stack_stays_with_its_goroutine(PreemptMode::ThreadAffine);
}

#[test]
fn x87_stack_stays_with_its_goroutine_migrate() {
    x87_stack_stays_with_its_goroutine(PreemptMode::Migrate);
}
