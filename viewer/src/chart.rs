//! Just enough SVG charting for the run panels: linear scales with round ticks, labelled
//! axes, lines, step lines, points, shaded bands, markers and a legend. Charts scale with
//! their container (a `viewBox`, no fixed pixel size), so they read at desktop and phone width.

use std::fmt::Write;

/// Maps a data interval onto a pixel interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub from: f64,
    pub to: f64,
}

impl Scale {
    /// A scale over `[lo, hi]` (widened when empty or not finite) onto `[from, to]`.
    pub fn new(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
        if hi - lo < 1e-12 * (1.0 + lo.abs()) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        Scale { lo, hi, from, to }
    }

    /// The pixel of value `v`.
    pub fn map(&self, v: f64) -> f64 {
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    /// About `count` round tick values (1, 2 or 5 × 10^k apart) inside the domain.
    pub fn ticks(&self, count: usize) -> Vec<f64> {
        let raw = (self.hi - self.lo) / count.max(1) as f64;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step).floor() as i64;
        (first..=last).map(|i| i as f64 * step).collect()
    }
}

/// A tick label: integers as is, large values with k/M/G/T, small ones with 3 significant digits.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e3 {
        // A value that rounds up to the next unit (999 950 → "1000.0k") takes that unit.
        let (div, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
            .into_iter()
            .find(|(d, _)| a >= *d * (1.0 - 5e-5))
            .expect("a >= 1e3 matches k");
        let x = v / div;
        return if (x - x.round()).abs() < 1e-9 { format!("{}{unit}", x.round()) } else { format!("{x:.1}{unit}") };
    }
    if (v - v.round()).abs() < 1e-9 {
        return format!("{}", v.round());
    }
    let digits = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{v:.digits$}");
    // 0.600 → 0.6: ticks are round numbers, trailing zeros only add noise.
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Labels of evenly spaced `ticks`: [`format_number`]'s, or as many decimals as the spacing
/// needs where those would print two ticks alike (a narrow range such as 2.31 to 2.33).
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let labels: Vec<String> = ticks.iter().map(|&t| format_number(t)).collect();
    if ticks.len() < 2 || labels.windows(2).all(|w| w[0] != w[1]) {
        return labels;
    }
    let digits = (-(ticks[1] - ticks[0]).log10().floor()).clamp(0.0, 9.0) as usize;
    ticks.iter().map(|t| format!("{t:.digits$}")).collect()
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Colours of the series, in order (distinguishable for the common colour-vision deficiencies).
pub const PALETTE: [&str; 6] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

const WIDTH: f64 = 640.0;
const MARGIN_LEFT: f64 = 58.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 28.0;
const MARGIN_BOTTOM: f64 = 44.0;

/// One chart being drawn: axes first, then marks, then [`Plot::finish`].
pub struct Plot {
    pub x: Scale,
    pub y: Scale,
    height: f64,
    marks: String,
    legend: Vec<(String, String, bool)>,
    title: String,
    x_label: String,
    y_label: String,
}

impl Plot {
    /// A chart `height` units tall (640 wide) over the given data ranges.
    pub fn new(title: &str, x_label: &str, y_label: &str, x: (f64, f64), y: (f64, f64), height: f64) -> Plot {
        Plot {
            x: Scale::new(x.0, x.1, MARGIN_LEFT, WIDTH - MARGIN_RIGHT),
            y: Scale::new(y.0, y.1, height - MARGIN_BOTTOM, MARGIN_TOP),
            height,
            marks: String::new(),
            legend: Vec::new(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
        }
    }

    fn path(&self, points: &[(f64, f64)]) -> String {
        let mut d = String::new();
        for (i, &(x, y)) in points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).enumerate() {
            let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, self.x.map(x), self.y.map(y));
        }
        d
    }

    /// A polyline through `points` (non-finite points are left out), listed in the legend.
    pub fn line(&mut self, points: &[(f64, f64)], label: &str, color: &str, dashed: bool) {
        let d = self.path(points);
        if d.is_empty() {
            return;
        }
        let dash = if dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        let _ = write!(self.marks, "<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash}/>");
        // One point draws no line (a run in its first epoch): a dot shows it.
        let mut finite = points.iter().filter(|(x, y)| x.is_finite() && y.is_finite());
        if let (Some(&(x, y)), None) = (finite.next(), finite.next()) {
            let (cx, cy) = (self.x.map(x), self.y.map(y));
            let _ = write!(self.marks, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"{color}\"/>");
        }
        self.legend.push((label.into(), color.into(), dashed));
    }

    /// A step line: value `points[i].1` holds from `points[i].0` to the next point's x
    /// (the last one to `end`).
    pub fn step_line(&mut self, points: &[(f64, f64)], end: f64, label: &str, color: &str) {
        let mut stepped = Vec::with_capacity(2 * points.len());
        for (i, &(x, y)) in points.iter().enumerate() {
            let next = points.get(i + 1).map_or(end, |p| p.0);
            stepped.push((x, y));
            stepped.push((next, y));
        }
        self.line(&stepped, label, color, false);
    }

    /// Round markers with a tooltip each; `highlight` ones are larger and outlined.
    pub fn points(&mut self, points: &[(f64, f64, String, bool)], color: &str) {
        for (x, y, tip, highlight) in points {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let (r, stroke) = if *highlight { (7.0, " stroke=\"#000\" stroke-width=\"2\"") } else { (4.5, "") };
            let _ = write!(
                self.marks,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{color}\"{stroke}><title>{}</title></circle>",
                self.x.map(*x),
                self.y.map(*y),
                escape(tip)
            );
        }
    }

    /// Text next to a data point.
    pub fn label(&mut self, x: f64, y: f64, text: &str) {
        let _ = write!(
            self.marks,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"mark-label\">{}</text>",
            self.x.map(x) + 9.0,
            self.y.map(y) - 6.0,
            escape(text)
        );
    }

    /// A shaded vertical band from x0 to x1, e.g. a search window.
    pub fn band(&mut self, x0: f64, x1: f64, label: &str) {
        let (a, b) = (self.x.map(x0.max(self.x.lo)), self.x.map(x1.min(self.x.hi)));
        if b <= a {
            return;
        }
        let _ = write!(
            self.marks,
            "<rect x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"band\"><title>{}</title></rect>",
            self.y.to,
            b - a,
            self.y.from - self.y.to,
            escape(label)
        );
    }

    /// A vertical marker at x with a short label at the top, e.g. a stage boundary.
    pub fn vline(&mut self, x: f64, label: &str) {
        let px = self.x.map(x);
        let _ = write!(
            self.marks,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"marker\"/><text x=\"{:.1}\" \
                y=\"{:.1}\" class=\"marker-label\">{}</text>",
            self.y.from,
            self.y.to,
            px + 3.0,
            self.y.to + 11.0,
            escape(label)
        );
    }

    /// The finished `<svg>`: marks, axes with ticks and labels, title and legend.
    pub fn finish(self) -> String {
        let h = self.height;
        let mut s = format!(
            "<svg viewBox=\"0 0 {WIDTH} {h}\" class=\"chart\" role=\"img\" aria-label=\"{}\">",
            escape(&self.title)
        );
        let _ = write!(s, "<text x=\"{MARGIN_LEFT}\" y=\"16\" class=\"chart-title\">{}</text>", escape(&self.title));
        let y_ticks = self.y.ticks(5);
        for (t, label) in y_ticks.iter().copied().zip(tick_labels(&y_ticks)) {
            let y = self.y.map(t);
            let _ = write!(
                s,
                "<line x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/><text x=\"{:.1}\" \
                    y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
                WIDTH - MARGIN_RIGHT,
                MARGIN_LEFT - 6.0,
                y + 4.0,
                label
            );
        }
        let x_ticks = self.x.ticks(8);
        for (t, label) in x_ticks.iter().copied().zip(tick_labels(&x_ticks)) {
            let x = self.x.map(t);
            let _ = write!(
                s,
                "<text x=\"{x:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                h - MARGIN_BOTTOM + 16.0,
                label
            );
        }
        s.push_str(&self.marks);
        let _ = write!(
            s,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" y2=\"{:.1}\" class=\"axis\"/><line \
                x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"axis\"/>",
            h - MARGIN_BOTTOM,
            WIDTH - MARGIN_RIGHT,
            h - MARGIN_BOTTOM,
            h - MARGIN_BOTTOM
        );
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis-label\" text-anchor=\"middle\">{}</text>",
            (MARGIN_LEFT + WIDTH - MARGIN_RIGHT) / 2.0,
            h - 8.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            "<text transform=\"translate(14 {:.1}) rotate(-90)\" class=\"axis-label\" text-anchor=\"middle\">{}</text>",
            (MARGIN_TOP + h - MARGIN_BOTTOM) / 2.0,
            escape(&self.y_label)
        );
        let mut x = WIDTH - MARGIN_RIGHT;
        for (label, color, dashed) in self.legend.iter().rev() {
            let width = 26.0 + 7.0 * label.chars().count() as f64;
            x -= width;
            let dash = if *dashed { " stroke-dasharray=\"6 4\"" } else { "" };
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"12\" y2=\"12\" stroke=\"{color}\" \
                    stroke-width=\"2.5\"{dash}/><text x=\"{:.1}\" y=\"16\" class=\"legend\">{}</text>",
                x + 18.0,
                x + 22.0,
                escape(label)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// The mean; NaN for no values (drawn as nothing rather than as a loss of 0).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The smallest and largest finite value (infinities for none).
pub fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// (step, mean loss) of consecutive groups of steps, at most `max_points` groups; non-finite
/// losses are left out of the means.
pub fn bucket_means(steps: &[autoprog::runlog::StepEvent], max_points: usize) -> Vec<(u64, f64)> {
    let size = steps.len().div_ceil(max_points.max(1)).max(1);
    steps
        .chunks(size)
        .filter_map(|chunk| {
            let finite: Vec<f64> = chunk.iter().map(|s| s.loss).filter(|l| l.is_finite()).collect();
            (!finite.is_empty()).then(|| (chunk[chunk.len() / 2].step, mean(&finite)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_map_ends_and_ticks_are_round_and_inside() {
        let s = Scale::new(0.0, 30.0, 50.0, 650.0);
        assert_eq!((s.map(0.0), s.map(30.0), s.map(15.0)), (50.0, 650.0, 350.0));
        assert_eq!(s.ticks(6), [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]);
        let t = Scale::new(0.0213, 0.0871, 0.0, 1.0).ticks(5);
        assert!(t.iter().all(|v| (0.0213..=0.0871).contains(v)) && t.len() >= 3, "{t:?}");
        // A flat series still gets a usable scale instead of a division by zero.
        let flat = Scale::new(2.0, 2.0, 0.0, 100.0);
        assert!(flat.map(2.0).is_finite() && flat.lo < 2.0 && flat.hi > 2.0);
        assert!(Scale::new(f64::NAN, 1.0, 0.0, 1.0).map(0.5).is_finite());
    }

    #[test]
    fn numbers_format_compactly() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(2.5e9), "2.5G");
        assert_eq!(format_number(12000.0), "12k");
        assert_eq!(format_number(999_950.0), "1.0M");
        assert_eq!(format_number(0.125), "0.125");
        assert_eq!(format_number(1.25), "1.25");
        assert_eq!(format_number(0.6), "0.6");
        assert_eq!(format_number(-2.5), "-2.5");
        // Ticks 0.005 apart around 2.32 would print 2.33 twice with 3 significant digits.
        let narrow = Scale::new(2.308, 2.331, 0.0, 1.0).ticks(5);
        assert_eq!(tick_labels(&narrow), ["2.310", "2.315", "2.320", "2.325", "2.330"]);
        assert_eq!(tick_labels(&[0.0, 0.5, 1.0]), ["0", "0.5", "1"]);
    }

    #[test]
    fn a_plot_escapes_text_and_skips_non_finite_points() {
        let mut p = Plot::new("a <b> & c", "epoch", "loss", (0.0, 1.0), (0.0, 1.0), 200.0);
        p.line(&[(0.0, 0.0), (0.5, f64::NAN), (1.0, 1.0)], "train", PALETTE[0], false);
        let svg = p.finish();
        assert!(svg.contains("a &lt;b&gt; &amp; c") && !svg.contains("NaN"), "{svg}");
        assert!(svg.contains("M58.0,156.0L624.0,28.0"), "{svg}");
        assert!(!svg.contains("<circle"), "a line of two points needs no dot");
        // A single point (a run after its first epoch) is drawn as a dot.
        let mut p = Plot::new("acc", "epoch", "acc", (0.0, 1.0), (0.0, 1.0), 200.0);
        p.line(&[(1.0, 1.0), (0.5, f64::NAN)], "model", PALETTE[0], false);
        assert!(p.finish().contains("<circle cx=\"624.0\" cy=\"28.0\""));
    }
}
