//! Progress of a run on stderr: a spinner per running task on a terminal,
//! plain timestamped lines otherwise (CI logs, pipes).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use infra_core::plan::{Observer, Outcome, TaskKind};

pub struct Progress {
    started: Instant,
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
}

impl Progress {
    /// Spinners when stderr is a terminal, lines otherwise.
    pub fn new() -> Progress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (MultiProgress::new(), Mutex::new(HashMap::new())));
        Progress {
            started: Instant::now(),
            bars,
        }
    }

    fn line(&self, text: &str) {
        let line = format!("[{:>6.1}s] {text}", self.started.elapsed().as_secs_f64());
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Clears the spinners (before printing the report).
    pub fn finish(&self) {
        if let Some((multi, bars)) = &self.bars {
            for (_, bar) in bars
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .drain()
            {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}

impl Observer for Progress {
    #[allow(clippy::expect_used, reason = "a constant, valid template")]
    fn started(&self, task: &str, _kind: TaskKind) {
        match &self.bars {
            Some((multi, bars)) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("a valid template"),
                );
                bar.set_message(task.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(task.to_string(), bar);
            }
            None => self.line(&format!("start  {task}")),
        }
    }

    fn finished(&self, task: &str, outcome: &Outcome, seconds: f64) {
        self.remove(task);
        let cached = if outcome.cached { ", cached" } else { "" };
        let note = outcome
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        self.line(&format!("done   {task} ({seconds:.1}s{cached}){note}"));
    }

    fn failed(&self, task: &str, error: &str, seconds: f64) {
        self.remove(task);
        let first = error.lines().next().unwrap_or_default();
        self.line(&format!("FAILED {task} ({seconds:.1}s): {first}"));
    }
}

impl Progress {
    fn remove(&self, task: &str) {
        if let Some((_, bars)) = &self.bars
            && let Some(bar) = bars
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(task)
        {
            bar.finish_and_clear();
        }
    }
}
