//! A run record kept in memory: every event, note and summary, and the last checkpoint.
//! For hosts that forward the record elsewhere themselves (a web page) and for tests.

use super::host::RunSink;
use crate::checkpoint::Checkpoint;
use crate::runlog::{Event, Summary};

/// Everything a run handed its sink, in order.
#[derive(Default)]
pub struct MemoryRecord {
    pub events: Vec<Event>,
    pub notes: Vec<String>,
    /// The last checkpoint, and the best one (by validation accuracy of the weights).
    pub last: Option<Checkpoint>,
    pub best: Option<Checkpoint>,
    pub summary: Option<Summary>,
}

impl RunSink for MemoryRecord {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        self.events.push(event.clone());
        Ok(())
    }

    fn note(&mut self, line: &str) {
        self.notes.push(line.to_string());
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint, best: bool) -> anyhow::Result<Vec<String>> {
        self.last = Some(checkpoint.clone());
        let mut names = vec!["memory:last".to_string()];
        if best {
            self.best = Some(checkpoint.clone());
            names.push("memory:best".into());
        }
        Ok(names)
    }

    fn checkpoint_location(&self) -> String {
        "memory".into()
    }

    fn summary(&mut self, summary: &Summary) -> anyhow::Result<()> {
        self.summary = Some(summary.clone());
        Ok(())
    }
}
