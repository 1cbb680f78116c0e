//! Collecting results: printed tables, JSON records, and an SVG plot.

use std::fmt::Write as _;

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub case: String,
    pub variant: String,
    pub param: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
}

#[derive(Default)]
pub struct Report {
    pub records: Vec<Record>,
}

impl Report {
    pub fn add(
        &mut self,
        case: &str,
        variant: &str,
        param: &str,
        metric: &str,
        value: f64,
        unit: &str,
    ) {
        self.records.push(Record {
            case: case.into(),
            variant: variant.into(),
            param: param.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        });
    }

    pub fn get(&self, case: &str, variant: &str, param: &str, metric: &str) -> Option<f64> {
        self.records
            .iter()
            .find(|r| {
                r.case == case && r.variant == variant && r.param == param && r.metric == metric
            })
            .map(|r| r.value)
    }

    /// Prints the records of one case as a table: one row per (variant, param).
    pub fn print_case(&self, case: &str, title: &str) {
        let rows: Vec<&Record> = self.records.iter().filter(|r| r.case == case).collect();
        if rows.is_empty() {
            return;
        }
        let mut metrics: Vec<(String, String)> = Vec::new();
        for r in &rows {
            if !metrics.iter().any(|(m, _)| *m == r.metric) {
                metrics.push((r.metric.clone(), r.unit.clone()));
            }
        }
        let mut keys: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let k = (r.variant.clone(), r.param.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        println!("\n{title}");
        let mut head = format!("  {:<34} {:>14}", "variant", "param");
        for (m, u) in &metrics {
            let _ = write!(head, " {:>16}", format!("{m} ({u})"));
        }
        println!("{head}");
        for (v, p) in keys {
            let mut line = format!("  {v:<34} {p:>14}");
            for (m, _) in &metrics {
                match rows
                    .iter()
                    .find(|r| r.variant == v && r.param == p && r.metric == *m)
                {
                    Some(r) => {
                        let _ = write!(line, " {:>16}", fmt_value(r.value));
                    }
                    None => {
                        let _ = write!(line, " {:>16}", "-");
                    }
                }
            }
            println!("{line}");
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 || (0.01..1e7).contains(&v.abs()) {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// One plotted line: name, colour, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A log-log line plot of several (x, y) series as a standalone SVG.
pub fn svg_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 90.0, 230.0, 40.0, 60.0);
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    let decades = |v: f64| v.max(1.0).log10();
    let xmax = points
        .iter()
        .map(|p| decades(p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let ymin = points
        .iter()
        .map(|p| decades(p.1))
        .fold(f64::INFINITY, f64::min)
        .floor()
        .max(0.0);
    let ymax = points
        .iter()
        .map(|p| decades(p.1))
        .fold(1.0f64, f64::max)
        .ceil()
        .max(ymin + 1.0);
    let px = |x: f64| left + (decades(x) / xmax) * (w - left - right);
    let py = |y: f64| h - bottom - ((decades(y) - ymin) / (ymax - ymin)) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        (left + w - right) / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - right,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom
    );
    let label = |e: i32| match e {
        0 => "1".to_string(),
        1 => "10".to_string(),
        2 => "100".to_string(),
        _ => format!("1e{e}"),
    };
    for e in 0..=(xmax as i32) {
        let x = px(10f64.powi(e));
        let _ = writeln!(s, "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"black\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>", h - bottom, h - bottom + 5.0, h - bottom + 20.0, label(e));
    }
    for e in (ymin as i32)..=(ymax as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(s, "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", left, w - right, left - 8.0, y + 4.0, label(e));
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>",
        (left + w - right) / 2.0,
        h - 15.0
    );
    let mid = (top + h - bottom) / 2.0;
    let _ = writeln!(s, "<text x=\"22\" y=\"{mid}\" text-anchor=\"middle\" transform=\"rotate(-90 22 {mid})\">{y_label}</text>");
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(x),
                py(y)
            );
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        let _ = writeln!(s, "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>", w - right + 10.0, w - right + 30.0, w - right + 35.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}
