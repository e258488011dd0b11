//! The viewer opens run files from any server the page is pointed at: damaged or hostile
//! `log.jsonl`, `summary.json` and `compare.json` must become an error or warnings on the
//! page, never a panic (which would kill the page's wasm instance).

use autoprog::runlog::{Compare, Summary};
use autoprog_viewer::run::Run;

#[path = "../../tests/support/mutate.rs"]
mod mutate;
use mutate::Mutator;

/// One line of every event type, as docs/runlog.md gives them, and a few steps and epochs
/// more so that the charts have something to scale.
fn seed_log() -> String {
    let mut lines: Vec<String> = include_str!("../../docs/runlog.md")
        .lines()
        .filter(|l| l.starts_with("{\"event\""))
        .map(String::from)
        .collect();
    for step in 0..20 {
        lines.push(format!(
            concat!(
                r#"{{"event":"step","step":{step},"epoch":{},"loss":{},"lr":0.001,"images_per_second":100,"#,
                r#""resolution":24,"depth":4}}"#,
            ),
            step / 5,
            2.0 - step as f64 * 0.05,
            step = step,
        ));
    }
    lines.join("\n") + "\n"
}

#[test]
fn fuzzed_run_files_become_errors_or_panels() {
    let log = seed_log();
    let summary = serde_json::to_string(&Summary { epochs: 4, val_acc: 0.5, ..Default::default() }).unwrap();
    let runs = ["none", "auto"].map(|schedule| Summary {
        schedule: schedule.into(),
        wall_seconds: 10.0,
        ..Default::default()
    });
    let compare = serde_json::to_string(&Compare::from_runs(runs.to_vec(), "none")).unwrap();
    Run::parse(&log, Some(&summary), Some(&compare)).expect("the seed files read").report();

    let mut mutator = Mutator::new(29);
    let (mut cases, mut opened) = (0, 0);
    for round in 0..1500 {
        let log = if round % 3 == 0 { log.clone() } else { mutator.text(&log) };
        let summary = (round % 2 == 0).then(|| mutator.text(&summary));
        let compare = (round % 5 == 0).then(|| mutator.text(&compare));
        cases += 1;
        match Run::parse(&log, summary.as_deref(), compare.as_deref()) {
            Ok(run) => {
                let report = run.report();
                serde_json::to_string(&report).expect("a report serialises");
                opened += 1;
            }
            Err(error) => assert!(!error.trim().is_empty(), "round {round}: an empty error"),
        }
    }
    eprintln!("{cases} fuzzed runs, {opened} opened");
    assert!(opened > 0);
}
