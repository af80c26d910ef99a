//! Port-versus-time pictures of recorded events, as SVG.
//!
//! Each successful port choice is a dot at (seconds since the first event, local port),
//! coloured by its stream (`analysis::StreamKey`, as in `analyze`): the destination
//! `daddr:dport` for connects, else `op proto` (e.g. `bind tcp`). The points of a destination series are
//! joined by a thin line, so a kernel that steps through the range per destination shows
//! rising staircases, one global counter shows interleaved steps, and random choice
//! shows a cloud. Failures are red crosses along the bottom of the range. The ephemeral
//! range, when known, is a shaded band.
//!
//! Text is written as SVG `<text>` elements (plotters' font-less layout), so no font files
//! are needed to draw; the viewer picks the font.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{analysis::StreamKey, event::Event};

/// How the picture is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOptions {
    /// Picture size in pixels.
    pub width: u32,
    pub height: u32,
    /// The ephemeral port range (low, high), shaded; the y axis spans it.
    pub range: Option<(u16, u16)>,
    pub title: String,
    /// How many of the busiest series get their own colour; the rest are "other".
    pub max_series: usize,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            width: 1200,
            height: 700,
            range: None,
            title: "source ports chosen by the kernel".into(),
            max_series: 12,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no events to plot")]
    Empty,
    #[error("cannot draw the plot: {0}")]
    Draw(String),
    #[error("cannot write {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Name of the series that gathers everything past `max_series`.
const OTHER: &str = "other";
/// Width of the legend panel at the right, in pixels.
const LEGEND_WIDTH: u32 = 300;
const FONT: &str = "sans-serif";
const LEGEND_ROW: i32 = 20;

/// Distinct colours, none of them red (failures) or grey ("other").
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 128, 0),
    RGBColor(0, 128, 128),
    RGBColor(255, 187, 120),
];
const OTHER_COLOR: RGBColor = RGBColor(150, 150, 150);
const FAIL_COLOR: RGBColor = RGBColor(220, 0, 0);
const RANGE_COLOR: RGBColor = RGBColor(70, 130, 180);

/// Successful events drawn in one colour.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    /// A destination series: its points are joined by a line.
    destination: bool,
    /// How many series were merged into this one (1 unless it is "other").
    merged: usize,
    /// (seconds, port), in time order.
    points: Vec<(f64, f64)>,
}

/// The series an event belongs to (its stream), named for the legend, and whether it is a
/// destination.
fn series_key(e: &Event) -> (String, bool) {
    let key = StreamKey::of(e);
    match key.daddr.zip(key.dport) {
        Some((addr, port)) => (SocketAddr::new(addr, port).to_string(), true),
        None => (format!("{} {}", key.op, key.proto), false),
    }
}

fn seconds(e: &Event, t0: u64) -> f64 {
    e.ts_ns.saturating_sub(t0) as f64 / 1e9
}

/// Groups the successful events into series, busiest first; past `max_series` they
/// are merged into one last "other" series.
fn group(events: &[Event], t0: u64, max_series: usize) -> Vec<Series> {
    let mut by_name: HashMap<String, Series> = HashMap::new();
    for e in events.iter().filter(|e| e.is_ok()) {
        let (name, destination) = series_key(e);
        by_name
            .entry(name)
            .or_insert_with_key(|name| Series {
                name: name.clone(),
                destination,
                merged: 1,
                points: Vec::new(),
            })
            .points
            .push((seconds(e, t0), f64::from(e.port)));
    }
    let mut all: Vec<Series> = by_name.into_values().collect();
    all.sort_by(|a, b| {
        b.points
            .len()
            .cmp(&a.points.len())
            .then_with(|| a.name.cmp(&b.name))
    });
    if all.len() > max_series {
        let rest = all.split_off(max_series);
        all.push(Series {
            name: OTHER.into(),
            destination: false,
            merged: rest.len(),
            points: rest.into_iter().flat_map(|s| s.points).collect(),
        });
    }
    for s in &mut all {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    all
}

/// The y axis: the ephemeral range (widened to any port outside it) or the ports seen,
/// with a margin.
fn y_axis(ports: &[u16], range: Option<(u16, u16)>) -> (f64, f64) {
    let seen = ports.iter().min().zip(ports.iter().max());
    let (lo, hi) = match (range, seen) {
        (Some((a, b)), Some((&pmin, &pmax))) => (a.min(b).min(pmin), a.max(b).max(pmax)),
        (Some((a, b)), None) => (a.min(b), a.max(b)),
        (None, Some((&pmin, &pmax))) => (pmin, pmax),
        (None, None) => (0, u16::MAX),
    };
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let margin = ((hi - lo) * 0.04).max(5.0);
    (lo - margin, hi + margin)
}

/// The x axis: seconds from a little before 0 to a little past the last event.
fn x_axis(t_max: f64) -> (f64, f64) {
    let hi = if t_max > 0.0 { t_max * 1.02 } else { 1.0 };
    (-hi * 0.01, hi)
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn colour(i: usize, s: &Series) -> RGBColor {
    if s.name == OTHER {
        OTHER_COLOR
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

/// Renders the events as an SVG picture and returns its text.
pub fn render_svg(events: &[Event], opts: &PlotOptions) -> Result<String, PlotError> {
    if events.is_empty() {
        return Err(PlotError::Empty);
    }
    let t0 = events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let t_max = events.iter().map(|e| seconds(e, t0)).fold(0.0, f64::max);
    let series = group(events, t0, opts.max_series);
    let ok_ports: Vec<u16> = events
        .iter()
        .filter(|e| e.is_ok())
        .map(|e| e.port)
        .collect();
    let failures: Vec<f64> = events
        .iter()
        .filter(|e| !e.is_ok())
        .map(|e| seconds(e, t0))
        .collect();
    let (x_lo, x_hi) = x_axis(t_max);
    let (y_lo, y_hi) = y_axis(&ok_ports, opts.range);
    // Failures sit on the bottom edge of the range, or of the axis when none is given.
    let y_fail = opts
        .range
        .map(|(a, b)| f64::from(a.min(b)))
        .unwrap_or(y_lo + (y_hi - y_lo) * 0.01);

    let width = opts.width.max(LEGEND_WIDTH + 200);
    let height = opts.height.max(200);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot_area, legend_area) = root.split_horizontally(width - LEGEND_WIDTH);

        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&opts.title, (FONT, 26))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("local port")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(draw_err)?;

        if let Some((a, b)) = opts.range {
            let (lo, hi) = (a.min(b), a.max(b));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x_lo, f64::from(lo)), (x_hi, f64::from(hi))],
                    RANGE_COLOR.mix(0.12).filled(),
                )))
                .map_err(draw_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("ephemeral range {lo}-{hi}"),
                    (x_lo + (x_hi - x_lo) * 0.01, f64::from(hi)),
                    (FONT, 15).into_font().color(&RANGE_COLOR),
                )))
                .map_err(draw_err)?;
        }

        for (i, s) in series.iter().enumerate() {
            if s.destination && s.points.len() > 1 {
                let c = colour(i, s);
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        c.mix(0.6).stroke_width(1),
                    ))
                    .map_err(draw_err)?;
            }
        }
        for (i, s) in series.iter().enumerate() {
            let c = colour(i, s);
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 2, c.filled())))
                .map_err(draw_err)?;
        }
        chart
            .draw_series(
                failures
                    .iter()
                    .map(|&x| Cross::new((x, y_fail), 4, FAIL_COLOR.stroke_width(2))),
            )
            .map_err(draw_err)?;

        draw_legend(&legend_area, &series, failures.len(), opts.range)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The legend panel: one row per series, then failures and the range.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    series: &[Series],
    failures: usize,
    range: Option<(u16, u16)>,
) -> Result<(), PlotError> {
    let text = (FONT, 15).into_font().color(&BLACK);
    let mut y = 50;
    let label = |y: i32, s: String| area.draw(&Text::new(s, (34, y - 7), text.clone()));
    label(y, "series (successful events)".into()).map_err(draw_err)?;
    y += LEGEND_ROW + 4;

    // Keep room for the failure and range rows.
    let (_, height) = area.dim_in_pixel();
    let rows = ((height as i32 - y - 3 * LEGEND_ROW) / LEGEND_ROW).max(1) as usize;
    let shown = if series.len() > rows {
        rows - 1
    } else {
        series.len()
    };
    for (i, s) in series.iter().enumerate().take(shown) {
        let c = colour(i, s);
        if s.destination {
            area.draw(&PathElement::new(vec![(6, y), (28, y)], c.stroke_width(1)))
                .map_err(draw_err)?;
        }
        area.draw(&Circle::new((17, y), 3, c.filled()))
            .map_err(draw_err)?;
        let name = if s.name == OTHER {
            format!("{OTHER}: {} series ({})", s.merged, s.points.len())
        } else {
            format!("{} ({})", s.name, s.points.len())
        };
        label(y, name).map_err(draw_err)?;
        y += LEGEND_ROW;
    }
    if shown < series.len() {
        label(y, format!("... {} more", series.len() - shown)).map_err(draw_err)?;
        y += LEGEND_ROW;
    }

    y += 4;
    area.draw(&Cross::new((17, y), 4, FAIL_COLOR.stroke_width(2)))
        .map_err(draw_err)?;
    label(y, format!("failures: {failures}")).map_err(draw_err)?;
    y += LEGEND_ROW;
    if let Some((a, b)) = range {
        area.draw(&Rectangle::new(
            [(8, y - 6), (26, y + 6)],
            RANGE_COLOR.mix(0.25).filled(),
        ))
        .map_err(draw_err)?;
        label(y, format!("ephemeral range {}-{}", a.min(b), a.max(b))).map_err(draw_err)?;
    }
    Ok(())
}

/// Renders the events and writes the SVG to `path`.
pub fn write_svg(events: &[Event], opts: &PlotOptions, path: &Path) -> Result<(), PlotError> {
    let svg = render_svg(events, opts)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, HookId, Op, Outcome, Proto};
    use std::net::{IpAddr, Ipv4Addr};

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn ev(ts_ns: u64, op: Op, proto: Proto, port: u16, dest: Option<(&str, u16)>) -> Event {
        Event {
            ts_ns,
            op,
            proto,
            family: Family::Inet,
            port,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            daddr: dest.map(|(a, _)| a.parse().unwrap()),
            dport: dest.map(|(_, p)| p),
            result: Outcome::Ok,
            pid: 1,
            tid: 1,
            comm: "test".into(),
            uid: 0,
            cgroup_id: 0,
            netns: 1,
            hook: HookId::PostBind4,
            latency_ns: None,
            cgroup: None,
            workload: None,
            nat: None,
        }
    }

    fn failed(mut e: Event, errno: i32) -> Event {
        e.port = 0;
        e.result = crate::event::failed(errno);
        e
    }

    /// Three destinations stepping through the range, random binds, two failures.
    fn synthetic() -> Vec<Event> {
        let dests = [("127.0.0.1", 5000), ("127.0.0.1", 5001), ("10.0.0.2", 443)];
        let mut out = Vec::new();
        let mut t = T0;
        for i in 0..40u16 {
            for (d, (addr, port)) in dests.iter().enumerate() {
                let p = 32768 + d as u16 * 9000 + i * 150;
                out.push(ev(t, Op::Connect, Proto::Tcp, p, Some((addr, *port))));
                t += SEC / 10;
            }
        }
        // A tiny LCG: deterministic "random" bind ports.
        let mut x: u32 = 12345;
        for _ in 0..30 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let p = 32768 + ((x >> 8) % (60999 - 32768)) as u16;
            out.push(ev(
                T0 + u64::from(x % 12) * SEC,
                Op::Bind,
                Proto::Tcp,
                p,
                None,
            ));
        }
        out.push(ev(T0 + 3 * SEC, Op::Autobind, Proto::Udp, 45000, None));
        out.push(failed(
            ev(
                T0 + 5 * SEC,
                Op::Connect,
                Proto::Tcp,
                0,
                Some(("127.0.0.1", 5000)),
            ),
            libc::EADDRNOTAVAIL,
        ));
        out.push(failed(
            ev(T0 + 8 * SEC, Op::Bind, Proto::Tcp, 0, None),
            libc::EADDRINUSE,
        ));
        out
    }

    fn opts() -> PlotOptions {
        PlotOptions {
            range: Some((32768, 60999)),
            title: "port-trace test".into(),
            ..PlotOptions::default()
        }
    }

    #[test]
    fn renders_series_failures_and_range() {
        let svg = render_svg(&synthetic(), &opts()).unwrap();
        assert!(svg.contains("<svg"));
        for text in [
            "port-trace test",
            "127.0.0.1:5000 (40)",
            "127.0.0.1:5001 (40)",
            "10.0.0.2:443 (40)",
            "bind tcp (30)",
            "autobind udp (1)",
            "failures: 2",
            "ephemeral range 32768-60999",
            "seconds",
            "local port",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        assert!(!svg.contains(OTHER));
        assert!(svg.contains("<text"));
        assert!(svg.contains("<circle"));
        assert!(svg.contains("<polyline"));

        let path = Path::new("/tmp/port-trace-plot-test.svg");
        write_svg(&synthetic(), &opts(), path).unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), svg);
        to_png(path);
    }

    /// Converts the test picture to PNG for a human, when a converter is at hand.
    fn to_png(svg: &Path) {
        use std::process::{Command, Stdio};
        let png = svg.with_extension("png");
        let _ = std::fs::remove_file(&png);
        let quiet = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = quiet(Command::new("rsvg-convert").arg("-o").arg(&png).arg(svg))
            || quiet(Command::new("convert").arg(svg).arg(&png));
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(
            render_svg(&[], &PlotOptions::default()),
            Err(PlotError::Empty)
        ));
        assert_eq!(PlotError::Empty.to_string(), "no events to plot");
    }

    #[test]
    fn many_destinations_merge_into_other() {
        let mut events = Vec::new();
        for d in 0..15u16 {
            // Destination d has 20 - d events, so the busiest are 0..12.
            for i in 0..(20 - d) {
                events.push(ev(
                    T0 + u64::from(i) * SEC,
                    Op::Connect,
                    Proto::Tcp,
                    40000 + d * 100 + i,
                    Some(("192.0.2.1", 8000 + d)),
                ));
            }
        }
        let opts = PlotOptions::default();
        let groups = group(&events, T0, opts.max_series);
        assert_eq!(groups.len(), 13);
        assert_eq!(groups[0].name, "192.0.2.1:8000");
        assert_eq!(groups[11].name, "192.0.2.1:8011");
        let other = &groups[12];
        assert_eq!(other.name, OTHER);
        assert_eq!(other.merged, 3);
        assert_eq!(other.points.len(), 8 + 7 + 6);
        assert!(!other.destination);
        assert!(other.points.windows(2).all(|w| w[0].0 <= w[1].0));

        let svg = render_svg(&events, &opts).unwrap();
        assert!(svg.contains("other: 3 series (21)"));
        assert!(svg.contains("192.0.2.1:8011"));
        assert!(!svg.contains("192.0.2.1:8012"));
        assert!(svg.contains("failures: 0"));
    }

    #[test]
    fn series_names() {
        let v6 = ev(T0, Op::Connect, Proto::Tcp, 1, Some(("::1", 80)));
        assert_eq!(series_key(&v6), ("[::1]:80".into(), true));
        // UDP autobind ports do not depend on the destination: one stream, as in `analyze`.
        let auto = ev(T0, Op::Autobind, Proto::Udp, 1, Some(("10.0.0.1", 53)));
        assert_eq!(series_key(&auto), ("autobind udp".into(), false));
        assert_eq!(
            series_key(&ev(T0, Op::Autobind, Proto::Udp, 1, None)),
            ("autobind udp".into(), false)
        );
        assert_eq!(
            series_key(&ev(T0, Op::Listen, Proto::Tcp, 1, None)),
            ("listen tcp".into(), false)
        );
    }

    #[test]
    fn axes() {
        assert_eq!(y_axis(&[], None), (-2621.4, 65535.0 + 2621.4));
        // The range, widened to an out-of-range port, with a margin.
        let (lo, hi) = y_axis(&[8080, 40000], Some((32768, 60999)));
        assert!(lo < 8080.0 && hi > 60999.0);
        // One port: a fixed margin keeps the axis non-empty.
        assert_eq!(y_axis(&[40000], None), (39995.0, 40005.0));
        assert_eq!(x_axis(0.0), (-0.01, 1.0));
    }

    #[test]
    fn only_failures_and_one_instant_still_render() {
        let events = vec![failed(
            ev(T0, Op::Bind, Proto::Udp, 0, None),
            libc::EADDRINUSE,
        )];
        let svg = render_svg(&events, &PlotOptions::default()).unwrap();
        assert!(svg.contains("failures: 1"));
        let tiny = PlotOptions {
            width: 10,
            height: 10,
            ..PlotOptions::default()
        };
        render_svg(&synthetic(), &tiny).unwrap();
    }

    #[test]
    fn write_error_names_the_path() {
        let err = write_svg(
            &synthetic(),
            &opts(),
            Path::new("/nonexistent-port-trace-dir/x.svg"),
        )
        .unwrap_err();
        assert!(matches!(err, PlotError::Write { .. }));
        assert!(
            crate::errors::chain(&err)
                .starts_with("cannot write /nonexistent-port-trace-dir/x.svg: ")
        );
    }
}
