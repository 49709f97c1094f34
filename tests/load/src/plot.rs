//! Plots of a run (plotters, PNG and SVG): latency percentiles over time,
//! throughput over time, and memory and CPU over time.

use crate::run::{RunResult, Slice};
use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Fonts tried for the labels, after `RELAY_LOAD_FONT`.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a TrueType font for the labels; the reason when none is found.
pub fn load_font() -> Result<PathBuf, String> {
    static FONT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let mut tried: Vec<PathBuf> = std::env::var_os("RELAY_LOAD_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        tried.extend(FONTS.iter().map(PathBuf::from));
        if let Ok(o) = std::process::Command::new("fc-match")
            .args(["-f", "%{file}", "sans-serif"])
            .output()
            && let Ok(p) = String::from_utf8(o.stdout)
            && p.ends_with(".ttf")
        {
            tried.push(PathBuf::from(p));
        }
        for p in &tried {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(p.clone());
                }
            }
        }
        Err(format!(
            "no TrueType font for the plot labels (tried {}; set RELAY_LOAD_FONT, or install fonts-dejavu-core)",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
    .clone()
}

type Line<'a> = (&'a str, RGBColor, Box<dyn Fn(&Slice) -> Option<f64> + 'a>);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    series: &[Slice],
    lines: &[Line<'_>],
    log: bool,
    marks: (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let x_max = series.iter().map(|s| s.t).fold(1.0f64, f64::max);
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| lines.iter().filter_map(move |(_, _, f)| f(s)))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let y_max = values.iter().copied().fold(1.0f64, f64::max) * 1.3;
    let y_min = if log {
        (values.iter().copied().fold(f64::INFINITY, f64::min) / 2.0).clamp(0.01, 1.0)
    } else {
        0.0
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    let chart = &mut builder;
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot: {e:?}");
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(y_label)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(err)?;
            for (name, color, f) in lines {
                let pts: Vec<(f64, f64)> = series
                    .iter()
                    .filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (s.t, v.max(y_min))))
                    .collect();
                let c = *color;
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
            }
            for x in [marks.0, marks.1] {
                chart
                    .draw_series(LineSeries::new(
                        vec![(x, y_min), (x, y_max)],
                        BLACK.mix(0.3),
                    ))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(err)?;
        }};
    }
    if log {
        draw!(
            chart
                .build_cartesian_2d(0f64..x_max, (y_min..y_max.max(1.0)).log_scale())
                .map_err(err)?
        );
    } else {
        draw!(
            chart
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(err)?
        );
    }
    Ok(())
}

fn latency<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let nz = |v: f64, n: u64| (n > 0).then_some(v);
    let lines: Vec<Line<'_>> = vec![
        (
            "ack p50",
            BLUE,
            Box::new(move |s: &Slice| nz(s.ack.p50_ms, s.ack.count)),
        ),
        (
            "ack p99",
            CYAN,
            Box::new(move |s: &Slice| nz(s.ack.p99_ms, s.ack.count)),
        ),
        (
            "delivery p50",
            RED,
            Box::new(move |s: &Slice| nz(s.delivery.p50_ms, s.delivery.count)),
        ),
        (
            "delivery p99",
            MAGENTA,
            Box::new(move |s: &Slice| nz(s.delivery.p99_ms, s.delivery.count)),
        ),
        (
            "delivery max",
            RGBColor(120, 120, 120),
            Box::new(move |s: &Slice| nz(s.delivery.max_ms, s.delivery.count)),
        ),
    ];
    panel(
        &root,
        &format!(
            "{}: latency per {} s (ms, log)",
            r.scenario.name, r.scenario.sample_secs
        ),
        "ms",
        &r.series,
        &lines,
        true,
        (r.measured_from, r.typing_until),
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn throughput<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let top_lines: Vec<Line<'_>> = vec![
        ("edits/s", BLUE, Box::new(|s: &Slice| Some(s.edits_per_sec))),
        ("acks/s", GREEN, Box::new(|s: &Slice| Some(s.acks_per_sec))),
    ];
    panel(
        &top,
        &format!("{}: edits in", r.scenario.name),
        "per second",
        &r.series,
        &top_lines,
        false,
        (r.measured_from, r.typing_until),
    )?;
    let bottom_lines: Vec<Line<'_>> = vec![(
        "deliveries/s",
        RED,
        Box::new(|s: &Slice| Some(s.deliveries_per_sec)),
    )];
    panel(
        &bottom,
        "deliveries out",
        "per second",
        &r.series,
        &bottom_lines,
        false,
        (r.measured_from, r.typing_until),
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn memory<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let top_lines: Vec<Line<'_>> = vec![
        ("server RSS", RED, Box::new(|s: &Slice| s.server_rss_mib)),
        ("tool RSS", BLUE, Box::new(|s: &Slice| Some(s.tool_rss_mib))),
        (
            "connections / 100",
            GREEN,
            Box::new(|s: &Slice| Some(s.connections as f64 / 100.0)),
        ),
    ];
    panel(
        &top,
        &format!("{}: resident memory (MiB)", r.scenario.name),
        "MiB",
        &r.series,
        &top_lines,
        false,
        (r.measured_from, r.typing_until),
    )?;
    let bottom_lines: Vec<Line<'_>> = vec![
        (
            "server CPU %",
            RED,
            Box::new(|s: &Slice| s.server_cpu_percent),
        ),
        (
            "tool CPU %",
            BLUE,
            Box::new(|s: &Slice| Some(s.tool_cpu_percent)),
        ),
    ];
    panel(
        &bottom,
        "CPU (% of one core)",
        "%",
        &r.series,
        &bottom_lines,
        false,
        (r.measured_from, r.typing_until),
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Writes latency, throughput and memory plots as PNG and SVG into `dir`;
/// returns the files written.
pub fn write(r: &RunResult, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if let Err(why) = load_font() {
        bail!("{why}");
    }
    if r.series.is_empty() {
        bail!("no samples to plot");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    type Draw = fn(&RunResult, &Path, &Path) -> anyhow::Result<()>;
    let charts: [(&str, Draw); 3] = [
        ("latency", |r, png, svg| {
            latency(BitMapBackend::new(png, (1200, 600)).into_drawing_area(), r)?;
            latency(SVGBackend::new(svg, (1200, 600)).into_drawing_area(), r)
        }),
        ("throughput", |r, png, svg| {
            throughput(BitMapBackend::new(png, (1200, 800)).into_drawing_area(), r)?;
            throughput(SVGBackend::new(svg, (1200, 800)).into_drawing_area(), r)
        }),
        ("memory", |r, png, svg| {
            memory(BitMapBackend::new(png, (1200, 800)).into_drawing_area(), r)?;
            memory(SVGBackend::new(svg, (1200, 800)).into_drawing_area(), r)
        }),
    ];
    for (name, draw) in charts {
        let png = dir.join(format!("{name}.png"));
        let svg = dir.join(format!("{name}.svg"));
        draw(r, &png, &svg).with_context(|| format!("drawing {name}"))?;
        out.push(png);
        out.push(svg);
    }
    Ok(out)
}
