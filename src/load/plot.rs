//! The run on one page: arrival rate (offered and sent), outcomes, and the queue's depth,
//! one panel each over the same seconds, drawn by `plotters` into an SVG string (or that
//! SVG inside a small HTML page).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::record::Row;

type Panel<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Failure = Box<dyn std::error::Error>;

/// One line of a panel.
struct Line {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// The page as SVG.
pub(crate) fn svg(rows: &[Row], title: &str) -> Result<String, String> {
    let mut out = String::new();
    draw(&mut out, rows, title).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The page as HTML, the SVG inline.
pub(crate) fn html(rows: &[Row], title: &str) -> Result<String, String> {
    let svg = svg(rows, title)?;
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n\
         <body style=\"margin:0\">\n{svg}\n</body></html>\n",
        escape(title)
    ))
}

fn draw(out: &mut String, rows: &[Row], title: &str) -> Result<(), Failure> {
    let root = SVGBackend::with_string(out, (1000, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));
    // Each second's value at its middle.
    let series = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .enumerate()
            .filter_map(|(i, r)| f(r).map(|v| (i as f64 + 0.5, v)))
            .collect()
    };
    let seconds = rows.len().max(1) as f64;
    let count = |f: fn(&Row) -> u64| move |r: &Row| Some(f(r) as f64);
    panel(
        &panels[0],
        "Arrival rate (requests/s: offered and sent by intended send time, delivered as counted)",
        seconds,
        vec![
            Line {
                name: "offered",
                color: RGBColor(31, 119, 180),
                points: series(&count(|r| r.counts.offered)),
            },
            Line {
                name: "sent",
                color: RGBColor(255, 127, 14),
                points: series(&count(|r| r.counts.sent)),
            },
            Line {
                name: "delivered to workers (daemon)",
                color: RGBColor(44, 160, 44),
                points: series(&|r| r.queue.as_ref().map(|q| q.delta.delivered as f64)),
            },
        ],
    )?;
    panel(
        &panels[1],
        "Outcomes (requests/s, by intended send time)",
        seconds,
        vec![
            Line {
                name: "2xx",
                color: RGBColor(44, 160, 44),
                points: series(&count(|r| r.counts.ok)),
            },
            Line {
                name: "503",
                color: RGBColor(255, 127, 14),
                points: series(&count(|r| r.counts.unavailable)),
            },
            Line {
                name: "reset",
                color: RGBColor(214, 39, 40),
                points: series(&count(|r| r.counts.resets)),
            },
            Line {
                name: "timeout",
                color: RGBColor(148, 103, 189),
                points: series(&count(|r| r.counts.timeouts)),
            },
            Line {
                name: "not sent",
                color: RGBColor(127, 127, 127),
                points: series(&count(|r| r.counts.not_sent)),
            },
        ],
    )?;
    panel(
        &panels[2],
        "Queue depth (requests waiting, at the end of each second)",
        seconds,
        vec![
            Line {
                name: "depth",
                color: RGBColor(31, 119, 180),
                points: series(&|r| r.queue.as_ref().map(|q| q.depth as f64)),
            },
            Line {
                name: "queue length",
                color: RGBColor(160, 160, 160),
                points: series(&|r| r.queue.as_ref().map(|q| f64::from(q.length))),
            },
        ],
    )?;
    root.present()?;
    Ok(())
}

fn panel(area: &Panel<'_>, caption: &str, seconds: f64, lines: Vec<Line>) -> Result<(), Failure> {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, 0f64..top * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points, color.stroke_width(2)))?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Text made safe for XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
