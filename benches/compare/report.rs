//! The table and the JSON: one row per figure, a column per server, the
//! ratio of Tower's figure to the best of the others', and Tower's target.

use serde_json::Value;

/// The servers, in the table's order.
pub const PEERS: [&str; 3] = ["Tower", "Icecast", "Liquidsoap"];

/// Which way a figure is better, to pick the best peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
    /// Neither: no ratio.
    Neither,
}

/// One line of the table: the figure of each of [`PEERS`].
pub struct Row {
    figure: String,
    values: [Option<f64>; 3],
    unit: &'static str,
    better: Better,
    /// The target, and whether Tower met it.
    target: Option<(String, bool)>,
}

impl Row {
    /// The best of the peers' (not Tower's) figures.
    fn best_peer(&self) -> Option<f64> {
        let peers = self.values[1..].iter().flatten().copied().filter(|v| v.is_finite());
        match self.better {
            Better::Lower => peers.min_by(f64::total_cmp),
            Better::Higher => peers.max_by(f64::total_cmp),
            Better::Neither => None,
        }
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    pub json: serde_json::Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    /// A row where lower is better.
    pub fn row(&mut self, figure: impl Into<String>, unit: &'static str, values: [Option<f64>; 3]) {
        self.row_better(figure, unit, values, Better::Lower);
    }

    pub fn row_better(
        &mut self,
        figure: impl Into<String>,
        unit: &'static str,
        values: [Option<f64>; 3],
        better: Better,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            values,
            unit,
            better,
            target: None,
        });
    }

    /// A row of Tower's alone.
    pub fn tower_row(&mut self, figure: impl Into<String>, unit: &'static str, value: f64) {
        self.row_better(figure, unit, [Some(value), None, None], Better::Neither);
    }

    /// Sets the target of the last row; `met` says whether Tower met it.
    pub fn target(&mut self, text: impl Into<String>, met: bool) {
        if let Some(r) = self.rows.last_mut() {
            r.target = Some((text.into(), met));
        }
    }

    /// Tower's figure and the best peer's of the last row.
    pub fn last_against_best(&self) -> Option<(f64, f64)> {
        let r = self.rows.last()?;
        Some((r.values[0]?, r.best_peer()?))
    }

    /// Sets the target "≤ best peer's" on the last row (a lower-is-better one).
    pub fn target_best_peer(&mut self) {
        let met = self.last_against_best().is_some_and(|(t, best)| t <= best);
        self.target("≤ best peer's", met);
    }

    /// Sets the target "≤ `ratio` × best peer's" on the last row (a
    /// lower-is-better one); below 1, Tower must lead by that much.
    pub fn target_ratio(&mut self, ratio: f64) {
        let met = self.last_against_best().is_some_and(|(t, best)| t <= ratio * best);
        self.target(format!("≤ {ratio} × best peer's"), met);
    }

    pub fn markdown(&self) -> String {
        let fmt = |v: Option<f64>, unit: &str| match v {
            Some(x) if x.is_finite() => {
                let digits = if x.abs() >= 100.0 {
                    0
                } else if x.abs() >= 10.0 {
                    1
                } else {
                    2
                };
                format!("{x:.digits$}{unit}")
            }
            Some(_) => "n/a".into(),
            None => "–".into(),
        };
        let mut out = format!(
            "| figure | {} | {} | {} | Tower ÷ best peer | Tower target |\n|---|---|---|---|---|---|\n",
            PEERS[0], PEERS[1], PEERS[2]
        );
        for r in &self.rows {
            let ratio = match (r.values[0], r.best_peer()) {
                (Some(t), Some(b)) if b.abs() > 1e-9 && t.is_finite() => format!("{:.2}", t / b),
                _ => "–".into(),
            };
            let target = r.target.as_ref().map_or_else(
                || "–".into(),
                |(t, met)| format!("{t} {}", if *met { "**met**" } else { "**missed**" }),
            );
            let cells: Vec<String> = r.values.iter().map(|v| fmt(*v, r.unit)).collect();
            out.push_str(&format!(
                "| {} | {} | {ratio} | {target} |\n",
                r.figure,
                cells.join(" | ")
            ));
        }
        out
    }
}
