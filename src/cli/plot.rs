//! Line charts as SVG files: several named series of (x, y) points on one
//! picture (perplexity or accuracy against position, one line per
//! attention mode).

use std::path::Path;

use plotters::prelude::*;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows besides its lines.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// A dashed vertical marker and its name (e.g. the training context).
    pub marker: Option<(f64, &'a str)>,
}

const SIZE: (u32, u32) = (960, 540);
const MARKER_COLOR: RGBColor = RGBColor(128, 128, 128);

/// Checks that `path` can be written later (its folder exists), before any
/// long computation.
pub fn check_target(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "--plot {}: folder {} does not exist",
        path.display(),
        dir.display()
    );
    anyhow::ensure!(!path.is_dir(), "--plot {}: is a folder", path.display());
    Ok(())
}

/// Draws `series` into an SVG file at `path`.
pub fn write_svg(path: &Path, chart: &Chart, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(&root, chart, series).map_err(|e| anyhow::anyhow!("--plot {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("--plot {}: {e}", path.display()))
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(root: &DrawingArea<SVGBackend, plotters::coord::Shift>, chart: &Chart, series: &[Series]) -> DrawResult {
    root.fill(&WHITE)?;
    let (x_range, y_range) = bounds(series, chart.marker.map(|m| m.0));
    let mut ctx = ChartBuilder::on(root)
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range.clone())?;
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)).point_size(3))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if let Some((x, name)) = chart.marker {
        let line = DashedLineSeries::new(
            [(x, y_range.start), (x, y_range.end)],
            6,
            4,
            MARKER_COLOR.stroke_width(1),
        );
        ctx.draw_series(line)?
            .label(name)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], MARKER_COLOR.stroke_width(1)));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
}

/// Axis ranges that hold every point (and the marker), with some room above.
fn bounds(series: &[Series], marker: Option<f64>) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).chain(marker).fold(1.0f64, f64::max);
    let finite_y = || points().map(|p| p.1).filter(|y| y.is_finite());
    let y_max = finite_y().fold(f64::MIN, f64::max);
    let y_min = finite_y().fold(f64::MAX, f64::min);
    let (lo, hi) = match y_max >= y_min {
        true => (y_min, y_max),
        false => (0.0, 1.0),
    };
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-3);
    (0.0..x_max * 1.02, (lo - pad).max(0.0)..hi + pad)
}
