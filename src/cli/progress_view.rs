//! How a job's progress reads for people, shared by `ccsrp watch` and `ccsrp run`: on a terminal a
//! bar over the job's steps (a total known up front, so it never moves backwards) with the phase
//! and an estimate of the time left, and one line per generation with the search's state; elsewhere
//! (a log, a pipe, a Kubernetes pod) the same lines as plain text, each with a UTC time stamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccsrp_proto::v1::JobStatus;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over the job's steps drawn on `target` (hidden when `target` is hidden).
pub fn steps_bar(target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Moves `bar` to the status: steps done of the total, and [`bar_message`].
pub fn update_bar(bar: &ProgressBar, s: &JobStatus) {
    bar.set_length(u64::from(s.steps_total.max(1)));
    bar.set_position(u64::from(s.steps_done));
    bar.set_message(bar_message(s));
}

/// The phase, iteration, generation, tasks in flight and the time left, for the bar.
pub fn bar_message(s: &JobStatus) -> String {
    let mut message = format!(
        "{} | iteration {}/{} | generation {}/{} | tasks {} done, {} pending",
        s.phase,
        s.iteration,
        s.iterations,
        s.generation,
        s.generations,
        s.tasks_done,
        s.tasks_pending
    );
    if let Some(left) = s.remaining_seconds.filter(|_| !s.done) {
        message.push_str(&format!(" | ~{} left", duration_text(left)));
    }
    message
}

/// A line with where the search stands: position, each layer's best of the current generation
/// (filters kept, clean and adversarial accuracy on the eval split) and the best network so far
/// (validation clean and PGD accuracy, MACs kept of the dense network's).
pub fn generation_line(s: &JobStatus) -> String {
    let mut line = format!(
        "{}: iteration {}/{} generation {}/{} ({}/{} steps, {:.1}%)",
        s.phase,
        s.iteration,
        s.iterations,
        s.generation,
        s.generations,
        s.steps_done,
        s.steps_total,
        s.percent_done
    );
    if !s.generation_best.is_empty() {
        let layers: Vec<String> = s
            .generation_best
            .iter()
            .map(|b| {
                format!(
                    "L{} {}/{} clean {:.1}% adv {:.1}%",
                    b.layer, b.kept, b.filters, b.clean_percent, b.adversarial_percent
                )
            })
            .collect();
        line.push_str(&format!(" | layer bests: {}", layers.join(", ")));
    }
    if let Some(best) = &s.best {
        let kept = match &s.dense {
            Some(d) if d.macs > 0 => {
                format!("{:.1}%", 100.0 * best.macs as f64 / d.macs as f64)
            }
            _ => format!("{:.3e}", best.macs as f64),
        };
        line.push_str(&format!(
            " | best network (iteration {}): validation clean {:.2}% PGD {:.2}%, MACs kept {kept}",
            best.iteration, best.val_clean_percent, best.val_pgd_percent
        ));
    }
    if let Some(left) = s.remaining_seconds.filter(|_| !s.done) {
        line.push_str(&format!(" | ~{} left", duration_text(left)));
    }
    line
}

/// `text` prefixed with the UTC time `unix_ms` (RFC 3339, seconds).
pub fn timestamped(unix_ms: u64, text: &str) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    format!("{} {text}", humantime::format_rfc3339_seconds(at))
}

/// `text` stamped with the time now.
pub fn timestamped_now(text: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    timestamped(ms, text)
}

/// Seconds as people read them: `45 s`, `12 min`, `2 h 05 min`.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccsrp_proto::v1::{LayerBest, NetworkPoint};

    #[test]
    fn lines_carry_the_state_of_the_search_with_a_utc_stamp() {
        let s = JobStatus {
            phase: "coevolution".into(),
            iteration: 1,
            iterations: 2,
            generation: 2,
            generations: 3,
            steps_done: 3,
            steps_total: 13,
            percent_done: 23.1,
            generation_best: vec![LayerBest {
                layer: 0,
                kept: 5,
                filters: 8,
                clean_percent: 90.3,
                adversarial_percent: 41.0,
                ..Default::default()
            }],
            dense: Some(NetworkPoint {
                macs: 1000,
                ..Default::default()
            }),
            best: Some(NetworkPoint {
                iteration: 1,
                macs: 620,
                val_clean_percent: 91.0,
                val_pgd_percent: 40.25,
                ..Default::default()
            }),
            remaining_seconds: Some(150.0),
            ..Default::default()
        };
        let line = generation_line(&s);
        assert_eq!(
            line,
            "coevolution: iteration 1/2 generation 2/3 (3/13 steps, 23.1%) | layer bests: \
             L0 5/8 clean 90.3% adv 41.0% | best network (iteration 1): validation clean 91.00% \
             PGD 40.25%, MACs kept 62.0% | ~3 min left"
        );
        assert_eq!(
            timestamped(1_764_531_637_250, "job done"),
            "2025-11-30T19:40:37Z job done"
        );
        assert_eq!(duration_text(45.4), "45 s");
        assert_eq!(duration_text(7530.0), "2 h 05 min");
    }
}
