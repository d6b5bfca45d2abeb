//! `hull compare --plot FILE.svg`: the latency and idle-memory rows as a
//! two-panel bar chart, drawn with plotters' SVG backend.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::compare::{ModeReport, Report};

/// Errors drawing the chart.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters failed (its errors are generic over the backend: kept as
    /// text).
    #[error("Drawing {0}: {1}")]
    Draw(PathBuf, String),
}

const VM_COLOR: RGBColor = RGBColor(0x3b, 0x6e, 0xa8);
const CT_COLOR: RGBColor = RGBColor(0xe0, 0x8a, 0x2c);

/// Writes the chart of `r` to `path`.
pub fn plot(r: &Report, path: &Path) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw(path.to_path_buf(), e.to_string());
    let root = SVGBackend::new(path, (960, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = format!(
        "hull compare {} {} (n={}) · {}",
        r.image,
        r.command.join(" "),
        r.n,
        r.machine["kvm"].as_str().unwrap_or("")
    );
    let root = root
        .titled(&title, ("sans-serif", 16))
        .map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(480);
    latency_panel(&left, &r.vm, &r.container).map_err(|e| fail(&e))?;
    memory_panel(&right, &r.vm, &r.container).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Median start-to-exit latency per mode, with the min–max range.
fn latency_panel(area: &Area<'_>, vm: &ModeReport, ct: &ModeReport) -> DrawResult {
    let top = vm.latency_s.max.max(ct.latency_s.max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "start-to-exit latency, s (median; line: min–max)",
            ("sans-serif", 14),
        )
        .margin(16)
        .y_label_area_size(50)
        .x_label_area_size(10)
        .build_cartesian_2d(0f64..2f64, 0f64..top.max(0.001))?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).draw()?;
    for (i, (m, color)) in [(vm, VM_COLOR), (ct, CT_COLOR)].into_iter().enumerate() {
        let x = i as f64;
        let s = &m.latency_s;
        chart.draw_series([Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, s.median)],
            color.filled(),
        )])?;
        chart.draw_series([PathElement::new(
            vec![(x + 0.5, s.min), (x + 0.5, s.max)],
            BLACK.stroke_width(2),
        )])?;
        let label = format!("{} {:.3} s", m.isolation, s.median);
        chart.draw_series([Text::new(
            label,
            (x + 0.22, s.max + top * 0.04),
            ("sans-serif", 14),
        )])?;
    }
    Ok(())
}

/// Idle PSS per mode: the network stack process and the rest, stacked.
fn memory_panel(area: &Area<'_>, vm: &ModeReport, ct: &ModeReport) -> DrawResult {
    let mib = |k: u64| k as f64 / 1024.0;
    let top = mib(vm.idle_pss_kib.max(ct.idle_pss_kib)) * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "idle instance PSS, MiB (light: passt/pasta)",
            ("sans-serif", 14),
        )
        .margin(16)
        .y_label_area_size(50)
        .x_label_area_size(10)
        .build_cartesian_2d(0f64..2f64, 0f64..top.max(0.001))?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).draw()?;
    for (i, (m, color)) in [(vm, VM_COLOR), (ct, CT_COLOR)].into_iter().enumerate() {
        let x = i as f64;
        let rest = mib(m.idle_pss_kib.saturating_sub(m.idle_pss_network_kib));
        let total = mib(m.idle_pss_kib);
        chart.draw_series([
            Rectangle::new([(x + 0.2, 0.0), (x + 0.8, rest)], color.filled()),
            Rectangle::new(
                [(x + 0.2, rest), (x + 0.8, total)],
                color.mix(0.35).filled(),
            ),
        ])?;
        let label = format!("{} {:.1} MiB", m.isolation, total);
        chart.draw_series([Text::new(
            label,
            (x + 0.22, total + top * 0.04),
            ("sans-serif", 14),
        )])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::compare::{Probes, Spread};
    use super::*;

    fn mode(isolation: &'static str, median: f64, pss: u64) -> ModeReport {
        ModeReport {
            isolation,
            first_start_s: 1.0,
            prepared_before: false,
            latency_s: Spread {
                median,
                min: median * 0.9,
                max: median * 1.5,
            },
            exit_code: 0,
            idle_pss_kib: pss,
            idle_pss_network_kib: pss / 2,
            uname_r: "x".into(),
            probes: Probes::default(),
        }
    }

    #[test]
    fn the_chart_is_an_svg_with_both_modes() {
        let r = Report {
            machine: serde_json::json!({"kvm": "PVM"}),
            image: "busybox".into(),
            command: vec!["true".into()],
            n: 20,
            vm: mode("vm", 1.9, 35_000),
            container: mode("container", 0.08, 36_000),
            verdicts: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        plot(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("vm 1.900 s") && svg.contains("container 0.080 s"));
        assert!(svg.contains("vm 34.2 MiB") && svg.contains("container 35.2 MiB"));
        assert!(svg.matches("<rect").count() >= 6, "bars drawn");
        let bad = plot(&r, Path::new("/nonexistent/dir/c.svg")).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("Drawing /nonexistent/dir/c.svg"),
            "{bad}"
        );
    }
}
