//! The search panels of a run: per search, the candidates as (step time, loss) points with
//! the fitted power law and the winner, and the table of their scores.

use std::fmt::Write;

use autoprog::prog::search::Verdict;
use autoprog::runlog::SearchEvent;
use autoprog::train::options::{SearchCost, SearchSpace};

use crate::chart::{escape, format_number, mean, min_max, Plot, PALETTE};
use crate::run::Run;

impl Run {
    /// Per search: candidates as (step time, loss) points, the fitted power law, the winner,
    /// and the score table.
    pub fn search_panels(&self) -> String {
        if self.searches.is_empty() {
            return "<p class=\"empty\">No searches in this run (only <code>--schedule auto</code> searches).</p>"
                .into();
        }
        let mut out = String::new();
        for s in &self.searches {
            let unit = match self.search_cost {
                SearchCost::Flops => "GFLOPs per step",
                SearchCost::Time => "step time (ms)",
            };
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
                "<table><thead><tr><th>candidate</th><th>resolution</th><th>depth</th><th>mean loss</th><th>{}</th><th \
                    title=\"mean loss · t^w, the lowest wins\">score (w = {})</th></tr></thead><tbody>",
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
                    c.sub_network.resolution,
                    c.sub_network.depth,
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
            let rule = rule_explained(s);
            let overhead = match (s.evaluation_seconds, s.timing_seconds) {
                (Some(eval), Some(timing)) => format!(
                    " Scoring took {eval:.1} s and timing {timing:.1} s of the search; the rest trained the supernet."
                ),
                _ => String::new(),
            };
            out.push_str(&format!(
                "</tbody></table><p class=\"note\">score = mean loss · t<sup>w</sup> with w = \
                max(−b, 0) from the fit; {rule}{scored_with}{overhead}</p></div>"
            ));
        }
        out
    }
}

/// Why the search's winner won, by the rule of its search space and the branch of it that
/// chose (inferred for older logs, which did not record it).
fn rule_explained(s: &SearchEvent) -> String {
    const NOISE: &str = "the evaluation noise (two standard errors of their paired difference)";
    let thrifty = s.search_space == Some(SearchSpace::Thrifty);
    let winner = escape(&s.winner);
    let weighs = |anchor: &str| match thrifty {
        true => format!("the search weighs cheaper networks against the prog schedule's {}", escape(anchor)),
        false => format!("the search is anchored on the prog schedule's {}", escape(anchor)),
    };
    match (verdict(s), s.anchor.as_deref(), s.lowest_score.as_deref()) {
        (Verdict::AnchorKept, Some(anchor), _) if thrifty => format!(
            "{}: every cheaper candidate scores above it beyond {NOISE}, and none below it, so it is kept.",
            weighs(anchor)
        ),
        (Verdict::AnchorKept, Some(anchor), _) => {
            format!("{}, which no candidate scores below beyond {NOISE}, so it is kept.", weighs(anchor))
        }
        (Verdict::NotWorseThanAnchor, Some(anchor), _) => format!(
            "{}: none scores below it beyond {NOISE}, and {winner} is the cheapest candidate that scores no worse \
                than it beyond the noise, so it wins.",
            weighs(anchor)
        ),
        (Verdict::BelowAnchor, Some(anchor), _) => format!(
            "{}: {winner} scores below it beyond {NOISE}, the cheapest such candidate within the noise of the \
                lowest, so it wins.",
            weighs(anchor)
        ),
        (_, _, Some(lowest)) if lowest != s.winner => {
            format!("the lowest, {}, ties with the cheaper {winner} within {NOISE}, so {winner} wins.", escape(lowest))
        }
        (_, _, Some(_)) => "the lowest wins; no cheaper candidate ties with it within the evaluation noise.".into(),
        (_, _, None) => "the lowest wins.".into(),
    }
}

/// The branch of the rule that chose the winner: logged since the verdict was recorded,
/// else inferred. An older thrifty log cannot tell a cheaper winner that scored below the
/// anchor from one that scored no worse; it is taken to be the latter.
fn verdict(s: &SearchEvent) -> Verdict {
    let step_ms = |name: &str| s.candidates.iter().find(|c| c.name == name).map(|c| c.step_ms);
    match (s.verdict, s.anchor.as_deref()) {
        (Some(verdict), _) => verdict,
        (None, Some(anchor)) if anchor == s.winner => Verdict::AnchorKept,
        (None, Some(anchor))
            if s.search_space == Some(SearchSpace::Thrifty) && step_ms(&s.winner) < step_ms(anchor) =>
        {
            Verdict::NotWorseThanAnchor
        }
        (None, Some(_)) => Verdict::BelowAnchor,
        (None, None) => Verdict::CheapestTied,
    }
}
