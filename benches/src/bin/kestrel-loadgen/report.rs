//! The figures of a run (rates, latency percentiles, a per-second timeline), the JSON report and
//! the SVG chart.

use crate::track::{ACCEPTED, Tracker};
use plotters::prelude::*;
use serde::Serialize;
use std::{collections::BTreeMap, path::Path, sync::atomic::Ordering::Relaxed};

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut us: Vec<u64>) -> Option<Self> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Some(Self {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// One second of the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Second {
    pub t_s: u64,
    pub submitted: u64,
    pub included: u64,
    pub finalized: u64,
    /// Submission to finality of the transactions finalized in this second.
    pub finality_p50_ms: Option<f64>,
    pub finality_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub offered_tps: Option<f64>,
    pub submitted_tps: f64,
    pub included_tps: f64,
    pub finalized_tps: f64,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub txs: usize,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub included: u64,
    pub finalized: u64,
    pub send_seconds: f64,
    pub rates: Rates,
    pub latency_to_inclusion: Option<Latency>,
    pub latency_to_finality: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
}

pub fn figures(tracker: &Tracker, offered_tps: Option<f64>) -> Figures {
    let n = tracker.len();
    let get = |v: &[std::sync::atomic::AtomicU64], i| Tracker::get(v, i);
    let (mut first_submit, mut last_submit) = (u64::MAX, 0);
    let (mut last_included, mut last_finalized) = (0, 0);
    let mut to_inclusion = Vec::new();
    let mut to_finality = Vec::new();
    let mut seconds: BTreeMap<u64, (Second, Vec<u64>)> = BTreeMap::new();
    for i in 0..n {
        let Some(sub) = get(&tracker.submitted_us, i) else {
            continue;
        };
        first_submit = first_submit.min(sub);
        last_submit = last_submit.max(sub);
        seconds.entry(sub / 1_000_000).or_default().0.submitted += 1;
        if tracker.outcome[i].load(Relaxed) != ACCEPTED {
            continue;
        }
        if let Some(inc) = get(&tracker.included_us, i) {
            last_included = last_included.max(inc);
            to_inclusion.push(inc.saturating_sub(sub));
            seconds.entry(inc / 1_000_000).or_default().0.included += 1;
        }
        if let Some(fin) = get(&tracker.finalized_us, i) {
            last_finalized = last_finalized.max(fin);
            to_finality.push(fin.saturating_sub(sub));
            let (second, lat) = seconds.entry(fin / 1_000_000).or_default();
            second.finalized += 1;
            lat.push(fin.saturating_sub(sub));
        }
    }
    let rate = |count: usize, until: u64| {
        if count == 0 || until <= first_submit {
            return 0.0;
        }
        count as f64 / ((until - first_submit) as f64 / 1e6)
    };
    let timeline = seconds
        .into_iter()
        .map(|(t, (mut s, lat))| {
            s.t_s = t;
            if let Some(l) = Latency::of(lat) {
                s.finality_p50_ms = Some(l.p50_ms);
                s.finality_p99_ms = Some(l.p99_ms);
            }
            s
        })
        .collect();
    let c = &tracker.counters;
    let submitted = c.submitted.load(Relaxed);
    Figures {
        txs: n,
        submitted,
        accepted: c.accepted.load(Relaxed),
        rejected: c.rejected.load(Relaxed),
        included: c.included.load(Relaxed),
        finalized: c.finalized.load(Relaxed),
        send_seconds: last_submit.saturating_sub(first_submit) as f64 / 1e6,
        rates: Rates {
            offered_tps,
            submitted_tps: rate(submitted as usize, last_submit),
            included_tps: rate(to_inclusion.len(), last_included),
            finalized_tps: rate(to_finality.len(), last_finalized),
        },
        latency_to_inclusion: Latency::of(to_inclusion),
        latency_to_finality: Latency::of(to_finality),
        errors: tracker.errors.lock().expect("errors lock").clone(),
        timeline,
    }
}

/// A named line of a panel: its colour and its points (second, value).
type Line = (&'static str, RGBColor, Vec<(u64, f64)>);

/// Two panels over the run: transactions per second (submitted, included, finalized) and
/// submission-to-finality latency (p50, p99) of the transactions finalized in each second.
pub fn chart(path: &Path, title: &str, timeline: &[Second]) -> eyre::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(350);
    let t_max = timeline.last().map_or(1, |s| s.t_s + 1);
    let points = |f: fn(&Second) -> Option<f64>| -> Vec<(u64, f64)> {
        timeline
            .iter()
            .filter_map(|s| Some((s.t_s, f(s)?)))
            .collect()
    };
    panel(
        &top,
        t_max,
        "tx/s",
        vec![
            ("submitted", BLUE, points(|s| Some(s.submitted as f64))),
            ("included", GREEN, points(|s| Some(s.included as f64))),
            ("finalized", RED, points(|s| Some(s.finalized as f64))),
        ],
    )?;
    panel(
        &bottom,
        t_max,
        "ms to finality",
        vec![
            ("p50", BLUE, points(|s| s.finality_p50_ms)),
            ("p99", RED, points(|s| s.finality_p99_ms)),
        ],
    )?;
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    t_max: u64,
    y_desc: &str,
    lines: Vec<Line>,
) -> eyre::Result<()>
where
    DB::ErrorType: 'static,
{
    let y_max = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..t_max, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()?;
    for (name, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
