//! Hand-written SVG plots for the benchmarks (no plotting dependency).
//!
//! Include from a bench with `#[path = "common/svg.rs"] mod svg;`.
//!
//! - [`Svg`]: a minimal writer (lines, polylines, text, rectangles), every
//!   string XML-escaped;
//! - [`percentile_spectrum`]: HdrHistogram's usual "percentile spectrum"
//!   plot: x is the percentile on a log `1/(1-p)` axis (0 %, 90 %, 99 %,
//!   99.9 %, ... equally spaced), y the value on a log axis, one line per
//!   series, a dot on its maximum.

#![allow(dead_code)]

use std::fmt::Write as _;

/// Line colours, one per series (cycled).
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes `&`, `<`, `>` and `"` for use in SVG text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// An SVG document being written.
pub struct Svg {
    body: String,
    width: f64,
    height: f64,
}

impl Svg {
    /// A `width` x `height` document with a white background.
    pub fn new(width: f64, height: f64) -> Svg {
        let mut s = Svg {
            body: String::new(),
            width,
            height,
        };
        s.rect(0.0, 0.0, width, height, "#ffffff", None);
        s
    }

    /// A rectangle filled with `fill`, outlined with `stroke` if given.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, stroke: Option<&str>) {
        let stroke = stroke.map_or(String::new(), |c| format!(" stroke=\"{}\"", escape(c)));
        let _ = writeln!(
            self.body,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{}\"{stroke}/>",
            escape(fill)
        );
    }

    /// A straight line; `dash` is an SVG dash pattern such as "4 3".
    pub fn line(
        &mut self,
        (x1, y1): (f64, f64),
        (x2, y2): (f64, f64),
        color: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let dash = dash.map_or(String::new(), |d| {
            format!(" stroke-dasharray=\"{}\"", escape(d))
        });
        let _ = writeln!(
            self.body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{}\" stroke-width=\"{width}\"{dash}/>",
            escape(color)
        );
    }

    /// A line through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], color: &str, width: f64) {
        let mut pts = String::new();
        for (x, y) in points {
            let _ = write!(pts, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            self.body,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" stroke-linejoin=\"round\"/>",
            pts.trim_end(),
            escape(color)
        );
    }

    /// A filled circle.
    pub fn circle(&mut self, (x, y): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{}\"/>",
            escape(fill)
        );
    }

    /// Text at (x, y); `anchor` is "start", "middle" or "end"; `rotate`
    /// turns it (degrees) around its anchor point.
    pub fn text(
        &mut self,
        (x, y): (f64, f64),
        s: &str,
        size: f64,
        anchor: &str,
        rotate: Option<f64>,
    ) {
        let rot = rotate.map_or(String::new(), |r| {
            format!(" transform=\"rotate({r} {x:.1} {y:.1})\"")
        });
        let _ = writeln!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-family=\"sans-serif\" font-size=\"{size}\" text-anchor=\"{}\"{rot}>{}</text>",
            escape(anchor),
            escape(s)
        );
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// One line of a percentile spectrum: `(quantile in 0..=1, value)` points,
/// in increasing quantile order.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// How many samples; the quantile 1.0 (the maximum) is drawn at
    /// `1/(1-p) = count`, one sample in `count`.
    pub count: u64,
}

/// The x coordinate of quantile `q` on the log `1/(1-p)` axis, in decades
/// (0 = 0 %, 1 = 90 %, 2 = 99 %, ...), capped at one sample in `count`.
pub fn spectrum_x(q: f64, count: u64) -> f64 {
    let cap = (count.max(1) as f64).log10();
    if q >= 1.0 {
        return cap;
    }
    (-(1.0 - q.max(0.0)).log10()).min(cap)
}

/// The label of decade `d` of the `1/(1-p)` axis: "0%", "90%", "99%", ...
pub fn percentile_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
    .replace("99.%", "99%")
}

/// A percentile spectrum of `series`: x = percentile (log `1/(1-p)`), y =
/// value on a log axis, labelled by `fmt_y` at each power of ten. Values
/// below `y_floor` are drawn at it (a log axis has no zero).
pub fn percentile_spectrum(
    title: &str,
    y_label: &str,
    series: &[Series],
    y_floor: f64,
    fmt_y: &dyn Fn(f64) -> String,
) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (78.0, 200.0, 44.0, 56.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut svg = Svg::new(w, h);
    svg.text((w / 2.0, 24.0), title, 15.0, "middle", None);

    // Axes' ranges: whole decades that hold every point.
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1.max(y_floor)));
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (y_floor, y_floor * 10.0)
    };
    let y0 = lo.log10().floor();
    let y1 = (hi.log10().ceil()).max(y0 + 1.0);
    let x1 = series
        .iter()
        .map(|s| spectrum_x(1.0, s.count).ceil())
        .fold(2.0f64, f64::max);
    let px = |x: f64| left + pw * x / x1;
    let py = |v: f64| top + ph * (1.0 - (v.max(y_floor).log10() - y0) / (y1 - y0));

    // Grid and tick labels.
    svg.rect(left, top, pw, ph, "#ffffff", Some("#444444"));
    for d in 0..=(x1 as u32) {
        let x = px(d as f64);
        svg.line((x, top), (x, top + ph), "#dddddd", 1.0, None);
        svg.text(
            (x, top + ph + 16.0),
            &percentile_label(d),
            11.0,
            "middle",
            None,
        );
    }
    let mut e = y0;
    while e <= y1 + 1e-9 {
        let v = 10f64.powf(e);
        let y = py(v);
        svg.line((left, y), (left + pw, y), "#dddddd", 1.0, None);
        svg.text((left - 6.0, y + 4.0), &fmt_y(v), 11.0, "end", None);
        // Minor lines at 2x and 5x.
        for m in [2.0, 5.0] {
            if e < y1 {
                let ym = py(v * m);
                svg.line((left, ym), (left + pw, ym), "#f1f1f1", 1.0, None);
            }
        }
        e += 1.0;
    }
    svg.text(
        (left + pw / 2.0, h - 14.0),
        "percentile (log scale of 1/(1-p))",
        12.0,
        "middle",
        None,
    );
    svg.text((18.0, top + ph / 2.0), y_label, 12.0, "middle", Some(-90.0));

    // The series and the legend.
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(q, v)| (px(spectrum_x(q, s.count)), py(v)))
            .collect();
        if pts.len() > 1 {
            svg.polyline(&pts, color, 2.0);
        }
        // A dot on the maximum, so that a series of one sample (all its
        // points at x = 0) shows too.
        if let Some(&last) = pts.last() {
            svg.circle(last, 3.5, color);
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        svg.line(
            (w - right + 14.0, ly),
            (w - right + 38.0, ly),
            color,
            3.0,
            None,
        );
        svg.text((w - right + 44.0, ly + 4.0), &s.label, 11.0, "start", None);
    }
    svg.finish()
}
