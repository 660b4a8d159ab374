//! Charts as SVG files: several named series of (x, y) points on one
//! picture (perplexity against position, one line per attention mode), and
//! a grid of pass/fail cells (passkey: length x depth).

use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Lines on a linear y axis, or a logarithmic one when the values span
/// more than a factor of 10 (perplexity past the training context can grow
/// a hundredfold, and would flatten the other lines).
fn draw(root: &Area, chart: &Chart, series: &[Series]) -> DrawResult {
    root.fill(&WHITE)?;
    let (x_range, y_range, log) = bounds(series, chart.marker.map(|m| m.0));
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64);
    match log {
        true => {
            let ctx = builder.build_cartesian_2d(x_range, y_range.clone().log_scale())?;
            draw_lines(ctx, chart, series, y_range)
        }
        false => {
            let ctx = builder.build_cartesian_2d(x_range, y_range.clone())?;
            draw_lines(ctx, chart, series, y_range)
        }
    }
}

/// Line colours that stand out on white (then plotters' palette).
const LINE_COLORS: [RGBColor; 5] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

fn line_color(i: usize) -> RGBAColor {
    LINE_COLORS.get(i).map_or(Palette99::pick(i).to_rgba(), |c| c.to_rgba())
}

/// A number as an axis shows it: no decimals from 100 on.
fn label(v: &f64) -> String {
    match v.abs() >= 100.0 || v.fract() == 0.0 {
        true => format!("{v:.0}"),
        false => format!("{v:.1}"),
    }
}

fn draw_lines<'a, Y>(
    mut ctx: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    chart: &Chart,
    series: &[Series],
    y_range: std::ops::Range<f64>,
) -> DrawResult
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = line_color(i);
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

/// Axis ranges that hold every point (and the marker), with some room
/// around, and whether the y axis is logarithmic (values over 10x apart).
fn bounds(series: &[Series], marker: Option<f64>) -> (std::ops::Range<f64>, std::ops::Range<f64>, bool) {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).chain(marker).fold(1.0f64, f64::max);
    let finite_y = || points().map(|p| p.1).filter(|y| y.is_finite());
    let y_max = finite_y().fold(f64::MIN, f64::max);
    let y_min = finite_y().fold(f64::MAX, f64::min);
    let (lo, hi) = match y_max >= y_min {
        true => (y_min, y_max),
        false => (0.0, 1.0),
    };
    let x = 0.0..x_max * 1.02;
    if lo > 0.0 && hi > 10.0 * lo {
        return (x, lo / 1.2..hi * 1.2, true);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-3);
    (x, (lo - pad).max(0.0)..hi + pad, false)
}

/// One cell of a grid chart: its column and row, and how many of its trials
/// passed.
pub struct GridCell {
    pub col: usize,
    pub row: usize,
    pub passed: usize,
    pub trials: usize,
}

/// A grid chart: named columns left to right, named rows top to bottom.
pub struct Grid<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub columns: Vec<String>,
    pub rows: Vec<String>,
    pub cells: Vec<GridCell>,
    /// A dashed vertical line before this column (e.g. the first length
    /// past the training context; the title says what it means).
    pub divider: Option<usize>,
}

pub const PASS_COLOR: RGBColor = RGBColor(46, 160, 67);
pub const FAIL_COLOR: RGBColor = RGBColor(218, 54, 51);

/// A cell's colour: green when every trial passed, red when none did, in
/// between by the fraction passed.
pub fn cell_color(passed: usize, trials: usize) -> RGBColor {
    let f = passed as f64 / trials.max(1) as f64;
    let mix = |fail: u8, pass: u8| (f64::from(fail) + f * (f64::from(pass) - f64::from(fail))).round() as u8;
    RGBColor(
        mix(FAIL_COLOR.0, PASS_COLOR.0),
        mix(FAIL_COLOR.1, PASS_COLOR.1),
        mix(FAIL_COLOR.2, PASS_COLOR.2),
    )
}

/// Draws `grid` into an SVG file at `path`.
pub fn write_grid_svg(path: &Path, grid: &Grid) -> anyhow::Result<()> {
    anyhow::ensure!(
        !grid.columns.is_empty() && !grid.rows.is_empty(),
        "--plot {}: a grid needs a column and a row",
        path.display()
    );
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw_grid(&root, grid).map_err(|e| anyhow::anyhow!("--plot {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("--plot {}: {e}", path.display()))
}

/// A grid chart's axis of `n` cells: cell i spans [i - 0.5, i + 0.5] and
/// is labelled at i. Continuous, because plotters' segmented axis of one
/// segment maps every edge to one point (it divides by its size - 1).
struct CellAxis(RangedCoordf64, usize);

impl CellAxis {
    fn new(n: usize) -> Self {
        Self((-0.5..n as f64 - 0.5).into(), n)
    }
}

impl Ranged for CellAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.0.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.1).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.0.range()
    }
}

fn draw_grid(root: &DrawingArea<SVGBackend, plotters::coord::Shift>, grid: &Grid) -> DrawResult {
    root.fill(&WHITE)?;
    let (n_cols, n_rows) = (grid.columns.len(), grid.rows.len());
    let mut ctx = ChartBuilder::on(root)
        .caption(grid.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d(CellAxis::new(n_cols), CellAxis::new(n_rows))?;
    // Row 0 at the top: the y axis counts upwards.
    let top_down = |r: usize| (n_rows - 1 - r) as f64;
    let name = |names: &[String], v: f64| names.get(v.round() as usize).cloned().unwrap_or_default();
    ctx.configure_mesh()
        .disable_mesh()
        .x_labels(n_cols)
        .y_labels(n_rows)
        .x_label_formatter(&|v| name(&grid.columns, *v))
        .y_label_formatter(&|v| name(&grid.rows, top_down(v.round() as usize)))
        .x_desc(grid.x_label)
        .y_desc(grid.y_label)
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 18))
        .draw()?;
    ctx.draw_series(grid.cells.iter().map(|c| {
        let (x, y) = (c.col as f64, top_down(c.row));
        let corners = [(x - 0.5, y + 0.5), (x + 0.5, y - 0.5)];
        let mut cell = Rectangle::new(corners, cell_color(c.passed, c.trials).filled());
        cell.set_margin(1, 1, 1, 1); // a white gap between cells
        cell
    }))?;
    ctx.draw_series(grid.cells.iter().map(|c| {
        let label = match (c.passed, c.trials) {
            (p, 1) => if p == 1 { "pass" } else { "FAIL" }.to_string(),
            (p, t) => format!("{p}/{t}"),
        };
        let style = ("sans-serif", 20)
            .into_font()
            .color(&WHITE)
            .pos(Pos::new(HPos::Center, VPos::Center));
        Text::new(label, (c.col as f64, top_down(c.row)), style)
    }))?;
    if let Some(col) = grid.divider {
        let x = col as f64 - 0.5;
        let ends = [(x, -0.5), (x, n_rows as f64 - 0.5)];
        ctx.draw_series(DashedLineSeries::new(ends, 8, 5, BLACK.stroke_width(3)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filled rectangles of an SVG file but the background: (x, y, fill).
    fn rects(svg: &str) -> Vec<(i64, i64, String)> {
        let attr = |tag: &str, name: &str| {
            let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            tag[from..from + tag[from..].find('"').unwrap()].to_string()
        };
        svg.split("<rect ")
            .skip(1)
            .map(|t| format!(" {}", t.split("/>").next().unwrap()))
            .map(|t| {
                (
                    attr(&t, "x").parse().unwrap(),
                    attr(&t, "y").parse().unwrap(),
                    attr(&t, "fill"),
                )
            })
            .filter(|r| r.2 != "#FFFFFF")
            .collect()
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// The texts of an SVG file's `<text>` elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text ")
            .skip(1)
            .map(|t| {
                t.split_once('>')
                    .unwrap()
                    .1
                    .split("</text>")
                    .next()
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect()
    }

    fn line_chart_labels(ys: [f64; 3]) -> Vec<String> {
        let path = std::env::temp_dir().join(format!("infllm-lines-{}-{}.svg", std::process::id(), ys[2]));
        let series = [Series {
            name: "s".into(),
            points: ys.iter().enumerate().map(|(i, &y)| (i as f64 * 1000.0, y)).collect(),
        }];
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            marker: None,
        };
        write_svg(&path, &chart, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        texts(&svg)
    }

    /// Values over more than a factor of 10 get a logarithmic y axis (labels
    /// at powers of 10); closer ones a linear one. Whole numbers show no
    /// decimals.
    #[test]
    fn a_wide_range_of_values_gets_a_logarithmic_axis() {
        // Title, axis names, then the y labels, then the x labels (from 0).
        let y_labels = |t: Vec<String>| t[3..t.iter().position(|l| l == "0").unwrap()].to_vec();
        assert_eq!(y_labels(line_chart_labels([8.0, 12.0, 3000.0])), ["10", "100", "1000"]);
        let close = y_labels(line_chart_labels([8.0, 12.0, 30.0]));
        assert!(close.len() > 3 && close.contains(&"15".to_string()), "{close:?}");
    }

    #[test]
    fn cell_colours_go_from_red_to_green_by_the_share_passed() {
        assert_eq!(cell_color(0, 3), FAIL_COLOR);
        assert_eq!(cell_color(3, 3), PASS_COLOR);
        let half = cell_color(1, 2);
        assert_eq!(half, RGBColor(132, 107, 59));
    }

    /// One length: the two cells span the plot's width (a one-column
    /// segmented axis drew them with a width of -2) and the length is named.
    #[test]
    fn a_grid_of_one_column_fills_the_plot() {
        let path = std::env::temp_dir().join(format!("infllm-grid1-{}.svg", std::process::id()));
        let cell = |row| GridCell {
            col: 0,
            row,
            passed: 1,
            trials: 1,
        };
        let grid = Grid {
            title: "t",
            x_label: "length",
            y_label: "depth",
            columns: vec!["32768".into()],
            rows: vec!["10%".into(), "90%".into()],
            cells: vec![cell(0), cell(1)],
            divider: None,
        };
        write_grid_svg(&path, &grid).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let widths: Vec<i64> = svg
            .split("<rect ")
            .skip(2)
            .map(|t| {
                let w = &t[t.find("width=\"").unwrap() + 7..];
                w[..w.find('"').unwrap()].parse().unwrap()
            })
            .collect();
        assert_eq!(widths.len(), 2, "{svg}");
        assert!(widths.iter().all(|&w| w > 700), "{widths:?}");
        assert!(svg.contains("32768") && svg.contains("90%"), "{svg}");
    }

    /// Three lengths by two depths: each cell lands in its column (left to
    /// right) and row (top to bottom) with its colour.
    #[test]
    fn a_grid_has_one_cell_per_column_and_row_in_place() {
        let path = std::env::temp_dir().join(format!("infllm-grid-{}.svg", std::process::id()));
        let passed = [[2, 0], [1, 2], [0, 1]];
        let cells = (0..3)
            .flat_map(|col| (0..2).map(move |row| (col, row)))
            .map(|(col, row)| GridCell {
                col,
                row,
                passed: passed[col][row],
                trials: 2,
            })
            .collect();
        let grid = Grid {
            title: "t",
            x_label: "length",
            y_label: "depth",
            columns: vec!["a".into(), "b".into(), "c".into()],
            rows: vec!["10%".into(), "90%".into()],
            cells,
            divider: Some(2),
        };
        write_grid_svg(&path, &grid).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let found = rects(&svg);
        assert_eq!(found.len(), 6, "{svg}");
        let mut xs: Vec<i64> = found.iter().map(|r| r.0).collect();
        let mut ys: Vec<i64> = found.iter().map(|r| r.1).collect();
        xs.sort_unstable();
        xs.dedup();
        ys.sort_unstable();
        ys.dedup();
        assert_eq!((xs.len(), ys.len()), (3, 2), "{found:?}");
        for (x, y, fill) in &found {
            let (col, row) = (xs.binary_search(x).unwrap(), ys.binary_search(y).unwrap());
            assert_eq!(*fill, hex(cell_color(passed[col][row], 2)), "cell {col},{row}");
        }
        for label in ["a", "b", "c", "10%", "90%", "2/2", "0/2", "1/2", "stroke-width=\"3\""] {
            assert!(svg.contains(label), "{label} missing: {svg}");
        }
    }
}
