//! HdrHistogram output for the benchmarks: the standard percentile
//! distribution text (`.hgrm`) and the points of a percentile spectrum.
//!
//! Include from a bench with `#[path = "common/hdr.rs"] mod hdr;`. The
//! `hdrhistogram` crate is a dev-dependency with `default-features = false`,
//! so its `serialization` module (the V2 log format) is not built; its
//! percentile iteration (`iter_quantiles`) is, and this writes the text
//! format that HdrHistogram's `outputPercentileDistribution` prints and its
//! online plotter reads
//! (<https://hdrhistogram.github.io/HdrHistogram/plotFiles.html>).

#![allow(dead_code)]

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Quantile steps per half distance to 100 %, as HdrHistogram's default.
pub const TICKS_PER_HALF: u32 = 5;

/// The percentile distribution of `h` in HdrHistogram's text format:
/// `Value Percentile TotalCount 1/(1-Percentile)` rows, then the mean,
/// standard deviation, max, count and bucket lines. Values are divided by
/// `scale` (e.g. 1000.0 to write nanoseconds as microseconds).
pub fn percentile_distribution(h: &Histogram<u64>, scale: f64) -> String {
    let digits = h.sigfig() as usize;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:>12.digits$} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:>12.digits$} {q:>14.12} {total:>10}");
        }
    }
    // HdrHistogram's sub-bucket count: the power of two above 2 x 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

/// `(quantile, value)` points of `h` for a percentile spectrum plot, at the
/// same steps as [`percentile_distribution`]; values divided by `scale`.
pub fn spectrum_points(h: &Histogram<u64>, scale: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(TICKS_PER_HALF)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / scale,
            )
        })
        .collect()
}
