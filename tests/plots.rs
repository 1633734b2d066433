//! The benches' shared output code (benches/common/): HdrHistogram's
//! percentile distribution text and the hand-written SVG plots.

#[path = "../benches/common/hdr.rs"]
mod hdr;
#[path = "../benches/common/svg.rs"]
mod svg;

use hdrhistogram::Histogram;

fn sample() -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).unwrap();
    for v in 1..=1000u64 {
        h.record(v * 1000).unwrap();
    }
    h
}

#[test]
fn percentile_distribution_has_hdrhistograms_text_format() {
    let text = hdr::percentile_distribution(&sample(), 1e3);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    assert_eq!(lines.next(), Some(""));
    let rows: Vec<Vec<&str>> = lines
        .clone()
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // First row: the minimum at percentile 0; last row: the max at 1.0,
    // without the 1/(1-p) column; every other row has four columns.
    assert_eq!(rows[0], ["1.000", "0.000000000000", "1", "1.00"]);
    let last = rows.last().unwrap();
    assert_eq!(last.len(), 3, "{last:?}");
    assert_eq!(last[1], "1.000000000000");
    assert_eq!(last[2], "1000");
    let max: f64 = last[0].parse().unwrap();
    assert!((999.0..=1001.0).contains(&max), "{max}");
    let mut prev = (0.0, 0.0, 0u64);
    for r in &rows[..rows.len() - 1] {
        assert_eq!(r.len(), 4, "{r:?}");
        let (v, p, n): (f64, f64, u64) = (
            r[0].parse().unwrap(),
            r[1].parse().unwrap(),
            r[2].parse().unwrap(),
        );
        assert!(
            v >= prev.0 && p >= prev.1 && n >= prev.2,
            "not monotonic at {r:?}"
        );
        let inv: f64 = r[3].parse().unwrap();
        assert!((inv - 1.0 / (1.0 - p)).abs() < 0.01 * inv, "{r:?}");
        prev = (v, p, n);
    }
    let p50 = rows.iter().find(|r| r[1] == "0.500000000000").unwrap();
    assert_eq!(p50[2], "500");
    let footer: Vec<&str> = text.lines().filter(|l| l.starts_with("#[")).collect();
    assert_eq!(footer.len(), 3, "{text}");
    assert!(footer[0].starts_with("#[Mean    =      500.") && footer[0].contains("StdDeviation"));
    assert!(
        footer[1].contains("Total count    =         1000]"),
        "{}",
        footer[1]
    );
    assert!(
        footer[2].contains("SubBuckets     =         2048]"),
        "{}",
        footer[2]
    );
}

#[test]
fn empty_histogram_gives_only_the_header() {
    let h = Histogram::<u64>::new(3).unwrap();
    assert_eq!(hdr::percentile_distribution(&h, 1.0).lines().count(), 2);
    assert!(hdr::spectrum_points(&h, 1.0).is_empty());
}

/// Checks that every element opened is closed in order (a small
/// well-formedness check: the SVG has no comments, CDATA or `>` in text).
fn assert_balanced(doc: &str) {
    let mut stack = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.to_string()), "mismatched </{name}>");
        } else if !tag.starts_with('?') && !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
}

#[test]
fn percentile_spectrum_is_a_balanced_svg_with_a_line_per_series() {
    let h = sample();
    let one = {
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record(5_000_000).unwrap();
        h
    };
    let series = [
        svg::Series {
            label: "a <&> \"b\"".into(),
            points: hdr::spectrum_points(&h, 1.0),
            count: h.len(),
        },
        svg::Series {
            label: "one sample".into(),
            points: hdr::spectrum_points(&one, 1.0),
            count: one.len(),
        },
    ];
    let doc = svg::percentile_spectrum("t & t", "latency", &series, 1e3, &|v| format!("{v}"));
    assert!(doc.starts_with("<?xml"), "{doc}");
    assert_balanced(&doc);
    assert_eq!(doc.matches("<polyline").count(), 2, "{doc}");
    assert_eq!(doc.matches("<circle").count(), 2, "a dot on each maximum");
    assert!(doc.contains("a &lt;&amp;&gt; &quot;b&quot;"));
    assert!(doc.contains(">t &amp; t</text>"));
    // x axis: 0 % up to one sample in 1,000 (99.9 %).
    for label in ["0%", "90%", "99%", "99.9%"] {
        assert!(doc.contains(&format!(">{label}</text>")), "{label}");
    }
    // y axis from 1e3 (1 µs, the floor) to 1e7 (the 5 ms sample, rounded up).
    assert!(doc.contains(">1000</text>") && doc.contains(">10000000</text>"));
}

#[test]
fn spectrum_axis_positions_and_labels() {
    assert_eq!(svg::percentile_label(0), "0%");
    assert_eq!(svg::percentile_label(2), "99%");
    assert_eq!(svg::percentile_label(4), "99.99%");
    assert!((svg::spectrum_x(0.99, 1000) - 2.0).abs() < 1e-9);
    assert_eq!(svg::spectrum_x(1.0, 1000), 3.0);
    assert_eq!(svg::spectrum_x(0.99999, 1000), 3.0);
    assert_eq!(svg::spectrum_x(0.0, 0), 0.0);
}
