//! A training run as the page shows it: `log.jsonl`, `summary.json` and `compare.json` read
//! through the core library's run-log types, and the panels drawn from them (stage timeline,
//! curves, searches, compute against the `none` baseline, the network's growth).
//!
//! Everything here is plain Rust (no browser), so it is unit-tested natively.

use std::collections::BTreeMap;
use std::fmt::Write;

use autoprog::prog::grow::grow_depth;
use autoprog::runlog::{
    parse_log, Compare, EpochEvent, Event, GrowthEvent, SearchEvent, StageEvent, StageSummary, StepEvent, Summary,
};
use serde::Serialize;

use crate::chart::{escape, format_number, Plot, PALETTE};

/// Step losses are averaged into at most this many points per curve: a 100 000-step run
/// draws as fast as a short one and the curve is smoother.
const MAX_CURVE_POINTS: usize = 600;

/// Deeper stacks than this (only a damaged log has them) are not drawn.
const MAX_DRAWN_DEPTH: usize = 256;

/// A parsed run.
#[derive(Debug, Default)]
pub struct Run {
    pub steps: Vec<StepEvent>,
    /// One per epoch (a resumed run's repeated epochs keep the last).
    pub epochs: Vec<EpochEvent>,
    /// One per stage index (the last logged).
    pub stages: Vec<StageEvent>,
    pub growths: Vec<GrowthEvent>,
    pub searches: Vec<SearchEvent>,
    pub schedule: String,
    pub adapter: String,
    /// How searches costed candidates: `time` (step ms) or `flops` (GFLOPs per step).
    pub search_cost: String,
    pub summary: Option<Summary>,
    pub compare: Option<Compare>,
    /// What could not be read, for the page to show.
    pub warnings: Vec<String>,
    /// [`Run::steps_per_epoch`], computed once.
    per_epoch: f64,
}

/// The panels, ready to insert into the page.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub schedule: String,
    pub adapter: String,
    /// Stages trained: `summary.json`'s `stages` when present, else the stage events.
    pub stage_count: usize,
    pub epochs: usize,
    pub final_val_acc: Option<f64>,
    pub warnings: Vec<String>,
    pub timeline: String,
    pub curves: String,
    pub searches: String,
    pub compute: String,
    pub network: String,
}

impl Run {
    /// Reads a run from its files' text; a missing file is `None`. Never fails on bad
    /// content: unreadable lines and files become warnings. An empty log is an error, since
    /// there is nothing to show.
    pub fn parse(log: &str, summary: Option<&str>, compare: Option<&str>) -> Result<Run, String> {
        let parsed = parse_log(log);
        let mut run = Run::default();
        for (line, reason) in parsed.skipped.iter().take(5) {
            run.warnings.push(format!("log.jsonl line {line} skipped: {reason}"));
        }
        if parsed.skipped.len() > 5 {
            run.warnings.push(format!("… and {} more unreadable lines in log.jsonl", parsed.skipped.len() - 5));
        }
        if parsed.events.is_empty() {
            let why = if parsed.skipped.is_empty() {
                "it is empty".to_string()
            } else {
                format!("none of its {} lines is a log event", parsed.skipped.len())
            };
            return Err(format!("log.jsonl has nothing to show: {why}. Is it a log written by `autoprog train`?"));
        }
        let mut epochs = BTreeMap::new();
        let mut stages = BTreeMap::new();
        for event in parsed.events {
            match event {
                Event::RunStart(e) => {
                    run.schedule = e.schedule;
                    run.adapter = e.adapter;
                    run.search_cost = e.config["recipe"]["search_cost"].as_str().unwrap_or("time").to_string();
                }
                Event::Step(e) => run.steps.push(e),
                Event::Epoch(e) => {
                    epochs.insert(e.epoch, e);
                }
                Event::Stage(e) => {
                    stages.insert(e.stage, e);
                }
                Event::Growth(e) => {
                    if !run.growths.iter().any(|g| g.step == e.step && g.to_depth == e.to_depth) {
                        run.growths.push(e)
                    }
                }
                Event::Search(e) => {
                    run.searches.retain(|s| s.stage != e.stage);
                    run.searches.push(e)
                }
                Event::Warning(e) => run.warnings.push(format!("training warned: {}", e.message)),
                Event::DataWarning(e) => {
                    run.warnings.push(format!("training skipped {} in epoch {}: {}", e.file, e.epoch + 1, e.reason))
                }
                Event::Checkpoint(_) | Event::RunEnd(_) => {}
            }
        }
        // A resumed run repeats the steps after its last checkpoint: keep the later ones.
        let mut seen = std::collections::HashSet::new();
        let mut steps: Vec<StepEvent> = run.steps.drain(..).rev().filter(|s| seen.insert(s.step)).collect();
        steps.reverse();
        steps.sort_by_key(|s| s.step);
        run.steps = steps;
        run.epochs = epochs.into_values().collect();
        run.stages = stages.into_values().collect();
        run.per_epoch = run.steps_per_epoch();
        run.summary = summary.and_then(|text| match serde_json::from_str::<Summary>(text) {
            Ok(s) => Some(s),
            Err(e) => {
                run.warnings.push(format!("summary.json is not readable ({e}); showing the log alone"));
                None
            }
        });
        run.compare = compare.and_then(|text| match serde_json::from_str::<Compare>(text) {
            Ok(c) => Some(c),
            Err(e) => {
                run.warnings.push(format!("compare.json is not readable ({e}); no baseline shown"));
                None
            }
        });
        Ok(run)
    }

    /// The stages trained, as `summary.json` lists them, else from the stage events.
    pub fn stage_list(&self) -> Vec<StageSummary> {
        match &self.summary {
            Some(s) if !s.stages.is_empty() => s.stages.clone(),
            _ => self
                .stages
                .iter()
                .map(|s| StageSummary { start_epoch: s.epoch, resolution: s.resolution, depth: s.depth })
                .collect(),
        }
    }

    /// Epochs the run was set up for (the summary's, else the last logged epoch + 1).
    fn epoch_count(&self) -> usize {
        let logged = self.epochs.last().map_or(0, |e| e.epoch as usize + 1);
        // A run still in its first epochs has steps beyond its last finished epoch.
        let stepped = self.steps.last().map_or(0, |s| s.epoch as usize + 1);
        let summary = self.summary.as_ref().map_or(0, |s| s.epochs as usize);
        logged.max(stepped).max(summary).max(1)
    }

    /// Steps in an epoch, for steps past the last finished epoch: the last finished epoch's,
    /// else the span of the steps logged in the most-logged epoch.
    fn steps_per_epoch(&self) -> f64 {
        if let Some(last) = self.epochs.last() {
            let before = self.epochs.iter().rev().nth(1).map_or(0, |e| e.step);
            return (last.step.saturating_sub(before)).max(1) as f64;
        }
        let mut spans: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for s in &self.steps {
            let span = spans.entry(s.epoch).or_insert((s.step, s.step));
            span.0 = span.0.min(s.step);
            span.1 = span.1.max(s.step);
        }
        spans.values().map(|(lo, hi)| hi - lo + 1).max().unwrap_or(1) as f64
    }

    /// Global step → fractional epoch, by interpolating between epoch ends.
    pub fn step_to_epoch(&self, step: u64) -> f64 {
        let mut prev = (0.0, 0u64);
        for e in &self.epochs {
            let end = (e.epoch as f64 + 1.0, e.step);
            if step <= e.step {
                let span = (end.1 - prev.1).max(1) as f64;
                return prev.0 + (end.0 - prev.0) * (step - prev.1) as f64 / span;
            }
            prev = end;
        }
        // Past the last finished epoch (or before any): extrapolate.
        prev.0 + (step - prev.1) as f64 / self.per_epoch
    }

    /// Each search's window in epochs: from its stage's start to the step it ended at (a
    /// search of a fraction of an epoch ends inside one).
    fn search_windows(&self) -> Vec<(f64, f64, String)> {
        self.searches
            .iter()
            .map(|s| {
                let start =
                    self.stages.iter().find(|st| st.stage == s.stage).map_or(s.epoch as f64, |st| st.epoch as f64);
                (start, self.step_to_epoch(s.step), format!("search for stage {}: chose {}", s.stage, s.winner))
            })
            .collect()
    }

    fn mark_stages(&self, plot: &mut Plot) {
        for (start, end, label) in self.search_windows() {
            plot.band(start, end, &label);
        }
        for (i, s) in self.stage_list().iter().enumerate().skip(1) {
            plot.vline(s.start_epoch as f64, &format!("stage {i}"));
        }
    }

    /// All panels.
    pub fn report(&self) -> RunReport {
        RunReport {
            schedule: if self.schedule.is_empty() {
                self.summary.as_ref().map(|s| s.schedule.clone()).unwrap_or_default()
            } else {
                self.schedule.clone()
            },
            adapter: self.adapter.clone(),
            stage_count: self.stage_list().len(),
            epochs: self.epoch_count(),
            // The log's last epoch; the summary (whose fields default to 0) only without one.
            final_val_acc: self
                .epochs
                .last()
                .and_then(|e| e.val_acc)
                .or_else(|| self.summary.as_ref().map(|s| s.val_acc)),
            warnings: self.warnings.clone(),
            timeline: self.timeline(),
            curves: self.curves(),
            searches: self.search_panels(),
            compute: self.compute(),
            network: self.network(),
        }
    }

    /// Resolution and depth over the epochs as step lines, searches shaded.
    pub fn timeline(&self) -> String {
        let end = self.epoch_count() as f64;
        let stages = self.stage_list();
        let mut out = String::new();
        for (title, unit, pick) in [
            (
                "Input resolution",
                "resolution (px)",
                (|s: &StageSummary| s.resolution as f64) as fn(&StageSummary) -> f64,
            ),
            ("Depth", "depth (blocks)", |s: &StageSummary| s.depth as f64),
        ] {
            let mut points: Vec<(f64, f64)> = stages.iter().map(|s| (s.start_epoch as f64, pick(s))).collect();
            if points.is_empty() {
                points = self
                    .epochs
                    .iter()
                    .map(|e| {
                        (e.epoch as f64, if unit.starts_with("res") { e.resolution as f64 } else { e.depth as f64 })
                    })
                    .collect();
            }
            let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
            let mut plot = Plot::new(title, "epoch", unit, (0.0, end), (0.0, max * 1.15), 190.0);
            self.mark_stages(&mut plot);
            plot.step_line(&points, end, "trained", PALETTE[0]);
            out.push_str(&plot.finish());
        }
        out
    }

    /// Training and validation loss, and validation accuracy of the model and its EMAs.
    pub fn curves(&self) -> String {
        let end = self.epoch_count() as f64;
        let train: Vec<(f64, f64)> = bucket_means(&self.steps, MAX_CURVE_POINTS)
            .into_iter()
            .map(|(step, loss)| (self.step_to_epoch(step), loss))
            .collect();
        let val: Vec<(f64, f64)> =
            self.epochs.iter().filter_map(|e| Some((e.epoch as f64 + 1.0, e.val_loss?))).collect();
        let losses = train.iter().chain(&val).map(|p| p.1).filter(|v| v.is_finite());
        let max_loss = losses.fold(0.0, f64::max);
        let mut loss_plot = Plot::new("Loss", "epoch", "cross-entropy", (0.0, end), (0.0, max_loss * 1.05), 240.0);
        self.mark_stages(&mut loss_plot);
        loss_plot.line(&train, "train", PALETTE[0], false);
        loss_plot.line(&val, "validation", PALETTE[1], false);

        let mut acc_plot = Plot::new("Validation accuracy", "epoch", "top-1 accuracy", (0.0, end), (0.0, 1.0), 240.0);
        self.mark_stages(&mut acc_plot);
        let model: Vec<(f64, f64)> =
            self.epochs.iter().filter_map(|e| Some((e.epoch as f64 + 1.0, e.val_acc?))).collect();
        acc_plot.line(&model, "model", PALETTE[0], false);
        let mut decays: Vec<f64> = self.epochs.iter().flat_map(|e| e.val_acc_ema.iter().map(|a| a.decay)).collect();
        decays.sort_by(f64::total_cmp);
        decays.dedup();
        for (i, decay) in decays.iter().enumerate() {
            let points: Vec<(f64, f64)> = self
                .epochs
                .iter()
                .filter_map(|e| Some((e.epoch as f64 + 1.0, e.val_acc_ema.iter().find(|a| a.decay == *decay)?.acc)))
                .collect();
            acc_plot.line(&points, &format!("EMA {decay}"), PALETTE[(i + 1) % PALETTE.len()], true);
        }
        loss_plot.finish() + &acc_plot.finish()
    }

    /// Per search: candidates as (step time, loss) points, the fitted power law, the winner,
    /// and the score table.
    pub fn search_panels(&self) -> String {
        if self.searches.is_empty() {
            return "<p class=\"empty\">No searches in this run (only <code>--schedule auto</code> searches).</p>"
                .into();
        }
        let mut out = String::new();
        for s in &self.searches {
            let unit = if self.search_cost == "flops" { "GFLOPs per step" } else { "step time (ms)" };
            let points: Vec<(f64, f64, String, bool)> = s
                .candidates
                .iter()
                .map(|c| {
                    let loss = mean(&c.losses);
                    (
                        c.step_ms,
                        loss,
                        format!("{}: loss {loss:.4}, {}: {:.2}, score {:.4}", c.name, unit, c.step_ms, c.score),
                        c.name == s.winner,
                    )
                })
                .collect();
            let (t_lo, t_hi) = min_max(points.iter().map(|p| p.0));
            let (l_lo, l_hi) = min_max(points.iter().map(|p| p.1));
            let pad_t = (t_hi - t_lo).max(t_hi * 0.05) * 0.1;
            let pad_l = (l_hi - l_lo).max(l_hi * 0.02) * 0.15;
            let mut plot = Plot::new(
                &format!("Search for stage {}", s.stage),
                unit,
                "mean loss",
                ((t_lo - pad_t).max(0.0), t_hi + pad_t),
                (l_lo - pad_l, l_hi + pad_l),
                260.0,
            );
            if s.fit.a.is_finite() && s.fit.b.is_finite() {
                let curve: Vec<(f64, f64)> = (0..=60)
                    .map(|i| {
                        let t = plot.x.lo + (plot.x.hi - plot.x.lo) * i as f64 / 60.0;
                        (t, s.fit.a * t.max(1e-9).powf(s.fit.b))
                    })
                    .filter(|p| p.1 >= plot.y.lo && p.1 <= plot.y.hi)
                    .collect();
                plot.line(&curve, &format!("fit {:.3}·t^{:.3}", s.fit.a, s.fit.b), PALETTE[1], true);
            }
            plot.points(&points, PALETTE[0]);
            if let Some(w) = points.iter().find(|p| p.3 && p.0.is_finite() && p.1.is_finite()) {
                plot.label(w.0, w.1, &s.winner);
            }
            let _ = write!(
                out,
                "<div class=\"search\"><h3>Stage {}: chose <span data-testid=\"search-winner\">{}</span></h3>{}",
                s.stage,
                escape(&s.winner),
                plot.finish()
            );
            let _ = write!(
                out,
                "<table><thead><tr><th>candidate</th><th>resolution</th><th>depth</th><th>mean loss</th><th>{}</th><th title=\"mean loss · t^w, the lowest wins\">score (w = {})</th></tr></thead><tbody>",
                escape(unit),
                format_number(s.w)
            );
            let mut rows: Vec<_> = s.candidates.iter().collect();
            rows.sort_by(|a, b| a.score.total_cmp(&b.score));
            for c in rows {
                let _ = write!(
                    out,
                    "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.2}</td><td>{:.4}</td></tr>",
                    if c.name == s.winner { " class=\"winner\"" } else { "" },
                    escape(&c.name),
                    c.resolution,
                    c.depth,
                    mean(&c.losses),
                    c.step_ms,
                    c.score
                );
            }
            let scored_with = match s.scored_with.as_deref() {
                Some("weights") => {
                    " Losses measured with the weights (the EMA is too slow for this search).".to_string()
                }
                Some(ema) => format!(" Losses measured with {}.", escape(ema)),
                None => String::new(),
            };
            let rule = match s.lowest_score.as_deref() {
                Some(lowest) if lowest != s.winner => format!(
                    "the lowest, {}, ties with the cheaper {} within the evaluation noise (two standard errors of their paired difference), so {} wins.",
                    escape(lowest),
                    escape(&s.winner),
                    escape(&s.winner)
                ),
                Some(_) => "the lowest wins; no cheaper candidate ties with it within the evaluation noise.".into(),
                None => "the lowest wins.".into(),
            };
            let overhead = match (s.evaluation_seconds, s.timing_seconds) {
                (Some(eval), Some(timing)) => format!(
                    " Scoring took {eval:.1} s and timing {timing:.1} s of the search; the rest trained the supernet."
                ),
                _ => String::new(),
            };
            out.push_str(&format!("</tbody></table><p class=\"note\">score = mean loss · t<sup>w</sup> with w = max(−b, 0) from the fit; {rule}{scored_with}{overhead}</p></div>"));
        }
        out
    }

    /// Cumulative training FLOPs and wall time per epoch, against the `none` baseline of a
    /// `compare.json` (which trains the full model every epoch, so its totals grow linearly).
    pub fn compute(&self) -> String {
        let end = self.epoch_count() as f64;
        let baseline = self.compare.as_ref().and_then(|c| {
            let name = c.baseline.clone().unwrap_or_else(|| "none".into());
            c.by_schedule.get(&name).map(|m| (name, m.clone()))
        });
        let mut out = String::new();
        for (title, unit, pick, base) in [
            (
                "Training compute",
                "FLOPs (cumulative)",
                (|e: &EpochEvent| e.train_flops) as fn(&EpochEvent) -> f64,
                baseline.as_ref().map(|(_, m)| m.train_flops),
            ),
            (
                "Wall time",
                "seconds (cumulative)",
                |e: &EpochEvent| e.wall_seconds,
                baseline.as_ref().map(|(_, m)| m.wall_seconds),
            ),
        ] {
            let mut points = vec![(0.0, 0.0)];
            points.extend(self.epochs.iter().map(|e| (e.epoch as f64 + 1.0, pick(e))));
            let max = points.iter().map(|p| p.1).chain(base).fold(0.0, f64::max);
            let mut plot = Plot::new(title, "epoch", unit, (0.0, end), (0.0, max * 1.08), 220.0);
            self.mark_stages(&mut plot);
            plot.line(&points, "this run", PALETTE[0], false);
            if let (Some(total), Some((name, _))) = (base, &baseline) {
                plot.line(&[(0.0, 0.0), (end, total)], &format!("{name} (mean of compare.json)"), PALETTE[1], true);
            }
            out.push_str(&plot.finish());
        }
        if let Some(c) = &self.compare {
            out.push_str("<table><thead><tr><th>schedule</th><th>runs</th><th>wall time (s)</th><th>training FLOPs</th><th>val acc</th><th>val acc (EMA)</th><th>speedup</th><th>Δ acc</th></tr></thead><tbody>");
            for (name, m) in &c.by_schedule {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(name),
                    m.runs,
                    m.wall_seconds,
                    format_number(m.train_flops),
                    m.val_acc,
                    m.val_acc_ema.map_or("–".into(), |v| format!("{v:.4}")),
                    m.speedup.map_or("–".into(), |v| format!("{v:.2}×")),
                    m.acc_delta.map_or("–".into(), |v| format!("{:+.1} pt", 100.0 * v))
                );
            }
            out.push_str("</tbody></table>");
        } else {
            out.push_str("<p class=\"empty\">No <code>compare.json</code> next to this run: run <code>autoprog compare</code> to see it against the <code>none</code> baseline.</p>");
        }
        out
    }

    /// The layer stack of each stage, MoGrow's mapping at each growth (which block each new
    /// block was cloned from) and which supernet blocks each search candidate ran.
    pub fn network(&self) -> String {
        let stages = self.stage_list();
        let first_depth = self
            .growths
            .first()
            .map(|g| g.from_depth)
            .or(stages.first().map(|s| s.depth))
            .or(self.epochs.first().map(|e| e.depth))
            .unwrap_or(0) as usize;
        if first_depth == 0 {
            return "<p class=\"empty\">The log names no depth.</p>".into();
        }
        // Columns: the starting stack, then one per growth, and where a search recycled the
        // supernet into a shallower sub-network, that sub-network before the next growth.
        let mut columns: Vec<(String, usize, Option<&GrowthEvent>)> =
            vec![(format!("start: {first_depth} blocks"), first_depth, None)];
        for g in &self.growths {
            if columns.last().is_some_and(|c| c.1 != g.from_depth as usize) {
                columns.push((format!("chosen: {} blocks", g.from_depth), g.from_depth as usize, None));
            }
            // Under `auto` every growth builds the supernet that the next search trains.
            // (The search event and the next stage's growth share a step: strictly later.)
            let supernet = self.schedule == "auto" && self.searches.iter().any(|s| s.step > g.step);
            let what = if supernet { "supernet" } else { "grown" };
            columns.push((format!("epoch {}: {what}, {} blocks", g.epoch, g.to_depth), g.to_depth as usize, Some(g)));
        }
        let max_depth = columns.iter().map(|c| c.1).max().unwrap_or(1);
        if max_depth > MAX_DRAWN_DEPTH {
            return format!("<p class=\"empty\">The log names {max_depth} blocks; the network is drawn up to {MAX_DRAWN_DEPTH}.</p>");
        }
        let (col_w, row_h, top) = (190.0, 22.0, 40.0);
        let width = 20.0 + col_w * columns.len() as f64;
        let height = top + row_h * max_depth as f64 + 20.0;
        let mut svg = format!("<svg viewBox=\"0 0 {width} {height}\" class=\"chart network\" role=\"img\" aria-label=\"layer stacks and MoGrow mappings\">");
        let x_of = |col: usize| 20.0 + col_w * col as f64;
        let y_of = |block: usize| top + row_h * block as f64;
        for (col, (label, depth, growth)) in columns.iter().enumerate() {
            let x = x_of(col);
            let _ = write!(svg, "<text x=\"{x:.1}\" y=\"20\" class=\"legend\">{}</text>", escape(label));
            let duplicates: Vec<bool> = growth
                .map(|g| g.mapping.iter().enumerate().map(|(i, &src)| i > 0 && g.mapping[i - 1] == src).collect())
                .unwrap_or_else(|| vec![false; *depth]);
            for block in 0..*depth {
                let class = if duplicates.get(block).copied().unwrap_or(false) { "block cloned" } else { "block" };
                let _ = write!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"70\" height=\"{:.1}\" rx=\"3\" class=\"{class}\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">block {block}</text>",
                    y_of(block),
                    row_h - 5.0,
                    x + 6.0,
                    y_of(block) + 12.5
                );
            }
            if let Some(g) = growth {
                for (new, &old) in g.mapping.iter().enumerate() {
                    let _ = write!(
                        svg,
                        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" class=\"mapping\"><title>new block {new} copies block {old} ({})</title></line>",
                        x_of(col - 1) + 70.0,
                        y_of(old) + 8.5,
                        y_of(new) + 8.5,
                        escape(&g.source)
                    );
                }
            }
        }
        svg.push_str("</svg>");
        let mut out = svg;
        out.push_str("<p class=\"note\">Lines: MoGrow copies each old block into the new stack; shaded blocks are the second copies. Both copies start from the growth's source weights (named in each line's tooltip).</p>");
        for s in &self.searches {
            let Some(g) = self.growths.iter().rev().find(|g| g.step <= s.step) else { continue };
            let Ok(growth) = grow_depth(g.from_depth as usize, g.to_depth as usize) else { continue };
            let _ = write!(
                out,
                "<h3>Stage {} search: blocks each candidate ran</h3><table class=\"active\"><thead><tr><th>candidate</th>",
                s.stage
            );
            for b in 0..growth.to {
                let _ = write!(out, "<th>{b}</th>");
            }
            out.push_str("</tr></thead><tbody>");
            for c in &s.candidates {
                let active = growth.active(c.depth as usize).unwrap_or_default();
                let _ = write!(
                    out,
                    "<tr{}><td>{}</td>",
                    if c.name == s.winner { " class=\"winner\"" } else { "" },
                    escape(&c.name)
                );
                for b in 0..growth.to {
                    out.push_str(if active.contains(&b) {
                        "<td class=\"on\">●</td>"
                    } else {
                        "<td class=\"off\">·</td>"
                    });
                }
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
        }
        out
    }
}

/// The mean; NaN for no values (drawn as nothing rather than as a loss of 0).
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// (step, mean loss) of consecutive groups of steps, at most `max_points` groups; non-finite
/// losses are left out of the means.
pub fn bucket_means(steps: &[StepEvent], max_points: usize) -> Vec<(u64, f64)> {
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

    /// A small auto run: stage 0 at r8/d2 with a search, growth to a supernet of 4, stage 1.
    fn log() -> String {
        let mut lines = vec![
            r#"{"event":"run_start","time":1.0,"version":"0.1","config":{},"adapter":"llvmpipe (vulkan)","schedule":"auto"}"#.to_string(),
            r#"{"event":"stage","stage":0,"epoch":0,"step":0,"resolution":8,"depth":2,"regularisation":{"randaug_magnitude":0,"drop_path":0,"erase_prob":0,"mixup":0}}"#.into(),
            r#"{"event":"growth","epoch":0,"step":0,"from_depth":2,"to_depth":4,"mapping":[0,0,1,1],"source":"ema_0.99"}"#.into(),
        ];
        for step in 0..40 {
            lines.push(format!(
                r#"{{"event":"step","step":{step},"epoch":{},"loss":{},"lr":0.001,"images_per_second":100,"resolution":8,"depth":4}}"#,
                step / 10,
                2.0 - step as f64 * 0.03
            ));
            if step % 10 == 9 {
                let epoch = step / 10;
                lines.push(format!(
                    r#"{{"event":"epoch","epoch":{epoch},"step":{},"train_loss":1.5,"val_loss":1.2,"val_acc":{},"val_acc_ema":[{{"decay":0.99,"acc":0.5}}],"images_per_second":100,"wall_seconds":{},"train_flops":{},"resolution":8,"depth":4}}"#,
                    step + 1,
                    0.3 + 0.1 * epoch as f64,
                    10.0 * (epoch + 1) as f64,
                    1e9 * (epoch + 1) as f64
                ));
            }
            if step == 19 {
                lines.push(r#"{"event":"search","stage":0,"epoch":1,"step":20,"candidates":[{"name":"r8_l2","resolution":8,"depth":2,"losses":[1.5,1.4],"step_ms":10,"score":1.2},{"name":"r8_l4","resolution":8,"depth":4,"losses":[1.3,1.2],"step_ms":20,"score":1.1}],"fit":{"a":2.0,"b":-0.2},"w":0.2,"winner":"r8_l4","scored_with":"weights","evaluation_seconds":2.5,"timing_seconds":6}"#.into());
                lines.push(r#"{"event":"stage","stage":1,"epoch":2,"step":20,"resolution":16,"depth":4,"regularisation":{"randaug_magnitude":0,"drop_path":0,"erase_prob":0,"mixup":0}}"#.into());
            }
        }
        lines.join("\n") + "\n"
    }

    const SUMMARY: &str = r#"{"schedule":"auto","epochs":4,"stages":[{"start_epoch":0,"resolution":8,"depth":4},{"start_epoch":2,"resolution":16,"depth":4}],"val_acc":0.6}"#;

    #[test]
    fn a_tie_within_the_noise_is_explained() {
        let tied = log().replace(r#""winner":"r8_l4""#, r#""winner":"r8_l2","lowest_score":"r8_l4""#);
        let report = Run::parse(&tied, Some(SUMMARY), None).unwrap().report();
        assert!(report.searches.contains("<span data-testid=\"search-winner\">r8_l2</span>"), "{}", report.searches);
        assert!(report.searches.contains("the lowest, r8_l4, ties with the cheaper r8_l2"), "{}", report.searches);
    }

    #[test]
    fn a_run_reads_into_stages_searches_and_panels() {
        let run = Run::parse(&log(), Some(SUMMARY), None).unwrap();
        assert_eq!((run.steps.len(), run.epochs.len(), run.stages.len()), (40, 4, 2));
        let report = run.report();
        assert_eq!(report.stage_count, 2);
        assert_eq!((report.schedule.as_str(), report.epochs), ("auto", 4));
        assert!(report.searches.contains("<span data-testid=\"search-winner\">r8_l4</span>"), "{}", report.searches);
        assert!(report.searches.contains("measured with the weights"), "{}", report.searches);
        assert!(report.searches.contains("Scoring took 2.5 s and timing 6.0 s"), "{}", report.searches);
        assert!(report.timeline.contains("class=\"band\""), "the search window is shaded");
        assert!(report.network.contains("new block 1 copies block 0"), "{}", report.network);
        // The winner r8_l4 runs every block of the supernet; r8_l2 only the originals 0 and 2.
        assert!(report.network.contains("<td>r8_l2</td><td class=\"on\">●</td><td class=\"off\">·</td><td class=\"on\">●</td><td class=\"off\">·</td>"), "{}", report.network);
        assert!(report.compute.contains("autoprog compare"));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }

    #[test]
    fn a_recycled_sub_network_gets_a_column_before_the_next_growth() {
        let mut text = log();
        text.push_str(r#"{"event":"growth","epoch":3,"step":30,"from_depth":3,"to_depth":6,"mapping":[0,0,1,1,2,2],"source":"weights"}"#);
        text.push('\n');
        let network = Run::parse(&text, None, None).unwrap().network();
        let columns: Vec<&str> =
            ["start: 2 blocks", "epoch 0: supernet, 4 blocks", "chosen: 3 blocks", "epoch 3: grown, 6 blocks"]
                .into_iter()
                .filter(|c| network.contains(c))
                .collect();
        assert_eq!(columns.len(), 4, "{network}");
    }

    #[test]
    fn the_stage_count_follows_the_summary_else_the_log() {
        let run = Run::parse(&log(), None, None).unwrap();
        assert_eq!(run.report().stage_count, 2);
        let one = r#"{"schedule":"none","epochs":4,"stages":[{"start_epoch":0,"resolution":16,"depth":4}]}"#;
        assert_eq!(Run::parse(&log(), Some(one), None).unwrap().report().stage_count, 1);
    }

    #[test]
    fn steps_map_to_fractional_epochs() {
        let run = Run::parse(&log(), None, None).unwrap();
        assert_eq!(run.step_to_epoch(0), 0.0);
        assert_eq!(run.step_to_epoch(10), 1.0);
        assert_eq!(run.step_to_epoch(15), 1.5);
        assert_eq!(run.step_to_epoch(50), 5.0);
    }

    #[test]
    fn a_log_without_epoch_ends_places_steps_by_their_epoch() {
        // A run still in its first epochs (or a log of step events only).
        let text: String = (0..25)
            .map(|step| {
                format!(
                    "{{\"event\":\"step\",\"step\":{step},\"epoch\":{},\"loss\":1.0,\"lr\":0.001,\"images_per_second\":1,\"resolution\":8,\"depth\":2}}\n",
                    step / 10
                )
            })
            .collect();
        let run = Run::parse(&text, None, None).unwrap();
        assert_eq!(run.epoch_count(), 3);
        assert_eq!(run.step_to_epoch(15), 1.5);
        assert!(run.step_to_epoch(24) <= run.epoch_count() as f64);
    }

    #[test]
    fn broken_files_become_warnings_and_an_empty_log_an_error() {
        let mut text = log();
        text.insert_str(0, "not json\n{\"event\":\"teleport\"}\n");
        text.push_str("{\"event\":\"step\",\"ste");
        let run = Run::parse(&text, Some("{oops"), Some("42")).unwrap();
        let w = run.warnings.join("\n");
        assert!(w.contains("line 1") && w.contains("teleport") && w.contains("truncated"), "{w}");
        assert!(w.contains("summary.json") && w.contains("compare.json"), "{w}");
        assert!(Run::parse("", None, None).unwrap_err().contains("empty"));
        assert!(Run::parse("garbage\n", None, None).unwrap_err().contains("none of its 1 lines"));
    }

    #[test]
    fn a_compare_file_draws_the_baseline() {
        let compare = r#"{"runs":[],"baseline":"none","by_schedule":{"none":{"runs":2,"wall_seconds":80,"train_flops":8e9,"val_acc":0.6,"val_acc_ema":null,"speedup":null,"acc_delta":null},"auto":{"runs":2,"wall_seconds":40,"train_flops":4e9,"val_acc":0.6,"val_acc_ema":null,"speedup":2.0,"acc_delta":0.0}}}"#;
        let run = Run::parse(&log(), Some(SUMMARY), Some(compare)).unwrap();
        let compute = run.report().compute;
        assert!(compute.contains("none (mean of compare.json)") && compute.contains("2.00×"), "{compute}");
    }

    #[test]
    fn long_runs_are_bucketed() {
        let steps: Vec<StepEvent> = (0..100_000)
            .map(|i| StepEvent {
                step: i,
                epoch: 0,
                loss: if i == 5 { f64::NAN } else { 1.0 },
                lr: 0.0,
                images_per_second: 0.0,
                resolution: 8,
                depth: 2,
            })
            .collect();
        let buckets = bucket_means(&steps, MAX_CURVE_POINTS);
        assert!(buckets.len() <= MAX_CURVE_POINTS && buckets.len() > MAX_CURVE_POINTS / 2);
        assert!(buckets.iter().all(|b| b.1 == 1.0));
    }
}
