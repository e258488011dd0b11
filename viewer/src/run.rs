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

use autoprog::train::options::{self, Schedule, SearchCost};

use crate::chart::{bucket_means, escape, format_number, Plot, PALETTE};

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
    /// Stages the run was set up with (its config), when the log says.
    pub planned_stages: Option<usize>,
    /// Whether the log's last session has ended (finished, stopped or failed); a run still
    /// training (in a page, or natively) has not.
    pub ended: bool,
    /// How searches costed candidates: step time (ms) or GFLOPs per step.
    pub search_cost: SearchCost,
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
    /// The log's last session has not ended: the run is training (or was cut off).
    pub running: bool,
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
                    run.ended = false;
                    run.planned_stages = e.config["recipe"]["stages"].as_u64().map(|n| n as usize);
                    run.schedule = e.schedule;
                    run.adapter = e.adapter;
                    // Older logs record the cost only in the run's config.
                    let configured = e.config["recipe"]["search_cost"].as_str().and_then(options::parse);
                    run.search_cost = configured.unwrap_or_default();
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
                    if let Some(cost) = e.search_cost {
                        run.search_cost = cost;
                    }
                    run.searches.retain(|s| s.stage != e.stage);
                    run.searches.push(e)
                }
                Event::Warning(e) => run.warnings.push(format!("training warned: {}", e.message)),
                Event::DataWarning(e) => {
                    run.warnings.push(format!("training skipped {} in epoch {}: {}", e.file, e.epoch + 1, e.reason))
                }
                Event::RunEnd(_) => run.ended = true,
                Event::Checkpoint(_) => {}
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
            _ => self.stages.iter().map(|s| self.trained_in(s)).collect(),
        }
    }

    /// What a stage trained: its search's winner where a search opened it, else what its
    /// event records.
    fn trained_in(&self, stage: &StageEvent) -> StageSummary {
        let winner = self
            .searches
            .iter()
            .filter(|s| s.stage == stage.stage)
            .find_map(|s| s.candidates.iter().find(|c| c.name == s.winner).map(|c| c.sub_network));
        let (resolution, depth) =
            winner.map_or((stage.resolution, stage.depth), |c| (c.resolution as u32, c.depth as u32));
        StageSummary { start_epoch: stage.epoch, resolution, depth }
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
    /// search of a fraction of an epoch ends inside one); the search still running, so far.
    fn search_windows(&self) -> Vec<(f64, f64, String)> {
        let ended = self.searches.iter().map(|s| {
            let start = self.stages.iter().find(|st| st.stage == s.stage).map_or(s.epoch as f64, |st| st.epoch as f64);
            (start, self.step_to_epoch(s.step), format!("search for stage {}: chose {}", s.stage, s.winner))
        });
        ended.chain(self.search_in_progress()).collect()
    }

    /// The search that opens the last logged stage, while it runs: an `auto` run still
    /// training, in a stage before its last that no search has ended for and that did not
    /// choose without one. Its window from the stage's start to the last logged step.
    pub fn search_in_progress(&self) -> Option<(f64, f64, String)> {
        let stage = self.stages.last()?;
        let searching = self.schedule == options::name(&Schedule::Auto)
            && !self.ended
            && stage.chosen_without_search.is_none()
            && self.planned_stages.is_some_and(|n| stage.stage as usize + 1 < n)
            && !self.searches.iter().any(|s| s.stage == stage.stage);
        let last = self.steps.last().filter(|s| s.step >= stage.step)?;
        let label = format!("searching for stage {} (in progress)", stage.stage);
        searching.then(|| (stage.epoch as f64, self.step_to_epoch(last.step + 1), label))
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
            // The log's last validated epoch (a run may validate every few epochs); the summary
            // (whose fields default to 0) only without one.
            final_val_acc: self
                .epochs
                .iter()
                .rev()
                .find_map(|e| e.val_acc)
                .or_else(|| self.summary.as_ref().map(|s| s.val_acc)),
            running: !self.ended && self.summary.is_none(),
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
            out.push_str(
                "<table><thead><tr><th>schedule</th><th>runs</th><th>wall time (s)</th><th>training \
                FLOPs</th><th>val acc</th><th>val acc (EMA)</th><th>speedup</th><th>Δ acc</th></tr></thead><tbody>",
            );
            for (name, m) in &c.by_schedule {
                let _ = write!(
                    out,
                    concat!(
                        "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td>",
                        "<td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>"
                    ),
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
            out.push_str(
                "<p class=\"empty\">No <code>compare.json</code> next to this run: run <code>autoprog \
                compare</code> to see it against the <code>none</code> baseline.</p>",
            );
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
            let auto = options::parse(&self.schedule) == Some(Schedule::Auto);
            let supernet = auto && self.searches.iter().any(|s| s.step > g.step);
            let what = if supernet { "supernet" } else { "grown" };
            columns.push((format!("epoch {}: {what}, {} blocks", g.epoch, g.to_depth), g.to_depth as usize, Some(g)));
        }
        let max_depth = columns.iter().map(|c| c.1).max().unwrap_or(1);
        if max_depth > MAX_DRAWN_DEPTH {
            return format!(
                "<p class=\"empty\">The log names {max_depth} blocks; the network is drawn up to \
                {MAX_DRAWN_DEPTH}.</p>"
            );
        }
        let (col_w, row_h, top) = (190.0, 22.0, 40.0);
        let width = 20.0 + col_w * columns.len() as f64;
        let height = top + row_h * max_depth as f64 + 20.0;
        let mut svg = format!(
            "<svg viewBox=\"0 0 {width} {height}\" class=\"chart network\" role=\"img\" \
            aria-label=\"layer stacks and MoGrow mappings\">"
        );
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
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"70\" height=\"{:.1}\" rx=\"3\" class=\"{class}\"/><text \
                        x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">block {block}</text>",
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
                        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" class=\"mapping\"><title>new block \
                            {new} copies block {old} ({})</title></line>",
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
        out.push_str(
            "<p class=\"note\">Lines: MoGrow copies each old block into the new stack; shaded blocks are the \
            second copies. Both copies start from the growth's source weights (named in each line's tooltip).</p>",
        );
        for s in &self.searches {
            let Some(g) = self.growths.iter().rev().find(|g| g.step <= s.step) else { continue };
            let Ok(growth) = grow_depth(g.from_depth as usize, g.to_depth as usize) else { continue };
            let _ = write!(
                out,
                "<h3>Stage {} search: blocks each candidate ran</h3><table \
                    class=\"active\"><thead><tr><th>candidate</th>",
                s.stage
            );
            for b in 0..growth.to {
                let _ = write!(out, "<th>{b}</th>");
            }
            out.push_str("</tr></thead><tbody>");
            for c in &s.candidates {
                let active = growth.active(c.sub_network.depth).unwrap_or_default();
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

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
