//! The figure model every plot of the report is built as ([`Figure`]: named series of points on
//! two axes) and its drawing into an SVG string with `plotters`' SVG backend (text as SVG
//! `<text>`, no fonts read).
//!
//! Drawing contract, which the tests read back from the SVG: every point of a marked series is one
//! filled `<circle>` of radius [`MARKER_RADIUS`] in the series' colour (unique within a figure); a
//! series with `line` also gets a `<polyline>` through its points; a ring (an unfilled circle of
//! radius [`RING_RADIUS`]) marks each point of [`Figure::rings`]; a bar series draws one filled
//! `<rect>` per point (plus one in its legend); a [`Figure::limits`] line is a two-point polyline
//! without markers.

use plotters::coord::Shift;
use plotters::prelude::*;

/// Radius of a data point's marker, in pixels.
pub const MARKER_RADIUS: u32 = 4;
/// Radius of the ring that marks a highlighted point.
pub const RING_RADIUS: u32 = 8;

/// Size of one figure in pixels.
pub const SIZE: (u32, u32) = (900, 460);

/// Distinct series colours (Tableau 10, then six more).
pub const PALETTE: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 63, 125),
    RGBColor(128, 0, 0),
    RGBColor(0, 128, 128),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(197, 176, 213),
];

/// `#RRGGBB` of a colour, as the SVG backend writes it.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A marker per point.
    Markers,
    /// Markers joined by a line in point order.
    Path,
    /// A bar per point from 0 to y, centred on x.
    Bars,
}

/// One named series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub colour: RGBColor,
    pub style: Style,
    pub points: Vec<(f64, f64)>,
    /// Per-point marker colours (e.g. by MACs); the series colour when empty.
    pub point_colours: Vec<RGBColor>,
}

impl Series {
    pub fn new(label: impl Into<String>, colour: RGBColor, style: Style) -> Series {
        Series {
            label: label.into(),
            colour,
            style,
            points: Vec::new(),
            point_colours: Vec::new(),
        }
    }

    pub fn with_points(mut self, points: Vec<(f64, f64)>) -> Series {
        self.points = points;
        self
    }
}

/// A horizontal line across the plot at `y` (e.g. a stop limit).
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub label: String,
    pub y: f64,
    pub colour: RGBColor,
}

/// One plot: axes, series, limit lines and ringed points.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub limits: Vec<Limit>,
    /// Points to ring (e.g. the answer, a layer's representative).
    pub rings: Vec<(f64, f64)>,
    /// Bar width in x units (bar series).
    pub bar_width: f64,
    /// Label only whole x values (e.g. layer numbers).
    pub integer_x: bool,
}

impl Figure {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Figure {
        Figure {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            limits: Vec::new(),
            rings: Vec::new(),
            bar_width: 0.0,
            integer_x: false,
        }
    }

    /// Adds a series in the next palette colour.
    pub fn push(&mut self, label: impl Into<String>, style: Style, points: Vec<(f64, f64)>) {
        let colour = PALETTE[self.series.len() % PALETTE.len()];
        self.series
            .push(Series::new(label, colour, style).with_points(points));
    }

    /// Axis ranges covering every point, limit, ring and bar (with a margin).
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        for s in &self.series {
            for &(x, y) in &s.points {
                if s.style == Style::Bars {
                    xs.extend([x - self.bar_width, x + self.bar_width]);
                    ys.push(0.0);
                } else {
                    xs.push(x);
                }
                ys.push(y);
            }
        }
        for &(x, y) in &self.rings {
            xs.push(x);
            ys.push(y);
        }
        ys.extend(self.limits.iter().map(|l| l.y));
        (padded(&xs), padded(&ys))
    }
}

fn padded(values: &[f64]) -> std::ops::Range<f64> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.08 * span)..(hi + 0.08 * span)
}

/// A drawing failure, as text (plotters' error types are generic over the backend).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drawing {figure}: {detail}")]
pub struct DrawError {
    pub figure: String,
    pub detail: String,
}

/// The figure as a standalone SVG document.
pub fn render(figure: &Figure) -> Result<String, DrawError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(figure, &root).map_err(|detail| DrawError {
            figure: figure.title.clone(),
            detail,
        })?;
        root.present().map_err(|e| DrawError {
            figure: figure.title.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(svg)
}

/// Several figures side by side in one SVG (`columns` per row), e.g. one panel per iteration.
pub fn render_panels(
    title: &str,
    panels: &[Figure],
    columns: usize,
    caption: &str,
) -> Result<String, DrawError> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (
        (SIZE.0 / 2).max(380) * columns as u32,
        (SIZE.1 * 3 / 4) * rows as u32 + 60,
    );
    let error = |detail: String| DrawError {
        figure: title.to_string(),
        detail,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
        root.draw(&Text::new(
            caption.to_string(),
            (10, size.1 as i32 - 30),
            ("sans-serif", 13),
        ))
        .map_err(|e| error(e.to_string()))?;
        let (body, _) = root.split_vertically(size.1 as i32 - 50);
        let body = body
            .titled(title, ("sans-serif", 20))
            .map_err(|e| error(e.to_string()))?;
        let areas = body.split_evenly((rows, columns));
        for (figure, area) in panels.iter().zip(&areas) {
            draw(figure, area).map_err(&error)?;
        }
        root.present().map_err(|e| error(e.to_string()))?;
    }
    Ok(svg)
}

/// Width of the legend column right of a plot, in pixels.
const LEGEND_WIDTH: u32 = 230;

/// One legend entry: label, colour, whether it is a bar (a filled square) or a line.
type Entry = (String, RGBColor, bool);

fn draw(figure: &Figure, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    area.fill(&WHITE).map_err(e)?;
    let mut entries: Vec<Entry> = figure
        .limits
        .iter()
        .map(|l| (l.label.clone(), l.colour, false))
        .collect();
    entries.extend(
        figure
            .series
            .iter()
            .filter(|s| !s.label.is_empty())
            .map(|s| (s.label.clone(), s.colour, s.style == Style::Bars)),
    );
    let width = area.dim_in_pixel().0;
    let legend_width = if entries.is_empty() {
        0
    } else {
        LEGEND_WIDTH.min(width / 3)
    };
    let (plot, legend) = area.split_horizontally(width.saturating_sub(legend_width) as i32);
    let (xr, yr) = figure.ranges();
    let mut chart = ChartBuilder::on(&plot)
        .caption(&figure.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(xr.clone(), yr)
        .map_err(e)?;
    let whole = |x: &f64| {
        if (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&figure.x_label)
        .y_desc(&figure.y_label)
        .light_line_style(WHITE.mix(0.0));
    if figure.integer_x {
        let whole_values = (xr.end - xr.start).ceil().max(1.0) as usize + 1;
        mesh.x_labels(whole_values).x_label_formatter(&whole);
    }
    mesh.draw().map_err(e)?;
    for limit in &figure.limits {
        chart
            .draw_series(LineSeries::new(
                [(xr.start, limit.y), (xr.end, limit.y)],
                limit.colour.stroke_width(1),
            ))
            .map_err(e)?;
    }
    for s in &figure.series {
        let colour = s.colour;
        if s.style == Style::Path && s.points.len() > 1 {
            chart
                .draw_series(LineSeries::new(s.points.clone(), colour.stroke_width(2)))
                .map_err(e)?;
        }
        if s.style == Style::Bars {
            let half = figure.bar_width / 2.0;
            chart
                .draw_series(s.points.iter().map(|&(x, y)| {
                    Rectangle::new([(x - half, 0.0), (x + half, y)], colour.filled())
                }))
                .map_err(e)?;
        } else {
            chart
                .draw_series(s.points.iter().enumerate().map(|(i, &p)| {
                    let c = s.point_colours.get(i).copied().unwrap_or(colour);
                    Circle::new(p, MARKER_RADIUS, c.filled())
                }))
                .map_err(e)?;
        }
    }
    if !figure.rings.is_empty() {
        chart
            .draw_series(
                figure
                    .rings
                    .iter()
                    .map(|&p| Circle::new(p, RING_RADIUS, BLACK.stroke_width(2))),
            )
            .map_err(e)?;
    }
    draw_legend(&legend, &entries)
}

/// The legend column: a line (or a square for bars) in each entry's colour, then its label.
fn draw_legend(area: &DrawingArea<SVGBackend<'_>, Shift>, entries: &[Entry]) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut y = 44;
    for (label, colour, bar) in entries {
        if *bar {
            area.draw(&Rectangle::new([(4, y - 5), (16, y + 5)], colour.filled()))
                .map_err(e)?;
        } else {
            area.draw(&PathElement::new(
                vec![(2, y), (18, y)],
                colour.stroke_width(2),
            ))
            .map_err(e)?;
        }
        area.draw(&Text::new(label.clone(), (24, y - 6), ("sans-serif", 12)))
            .map_err(e)?;
        y += 18;
    }
    Ok(())
}

/// A colour for `value` on a dark-blue (low) to yellow (high) scale between `lo` and `hi`.
pub fn scale_colour(value: f64, lo: f64, hi: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 4] = [
        (68.0, 1.0, 84.0),
        (49.0, 104.0, 142.0),
        (53.0, 183.0, 121.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if hi > lo {
        ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circles(svg: &str, fill: &str) -> usize {
        let doc = roxmltree::Document::parse(svg).unwrap();
        doc.descendants()
            .filter(|n| n.has_tag_name("circle"))
            .filter(|n| {
                n.attribute("fill")
                    .is_some_and(|f| f.eq_ignore_ascii_case(fill))
            })
            .count()
    }

    #[test]
    fn every_point_is_one_marker_in_its_series_colour() {
        let mut f = Figure::new("t", "x", "y");
        f.push("a", Style::Path, vec![(1.0, 2.0), (2.0, 3.0), (3.0, 1.0)]);
        f.push("b", Style::Markers, vec![(1.5, 2.5)]);
        f.limits.push(Limit {
            label: "limit".into(),
            y: 0.5,
            colour: BLACK,
        });
        f.rings.push((2.0, 3.0));
        let svg = render(&f).unwrap();
        assert_eq!(circles(&svg, &hex(PALETTE[0])), 3);
        assert_eq!(circles(&svg, &hex(PALETTE[1])), 1);
        assert_eq!(circles(&svg, "none"), 1, "the ring");
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for label in ["a", "b", "limit", "t"] {
            assert!(texts.contains(&label), "{label} not in {texts:?}");
        }
    }

    #[test]
    fn the_colour_scale_runs_from_dark_to_yellow() {
        assert_eq!(scale_colour(0.0, 0.0, 1.0), RGBColor(68, 1, 84));
        assert_eq!(scale_colour(1.0, 0.0, 1.0), RGBColor(253, 231, 37));
        assert_eq!(scale_colour(5.0, 5.0, 5.0), scale_colour(0.5, 0.0, 1.0));
    }
}
