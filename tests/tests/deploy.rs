//! The deployment files are valid: alert rules pass promtool's checks and their unit tests,
//! the Grafana dashboard is JSON whose queries use only documented metrics.

use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS"));
}

#[test]
fn every_alert_has_passing_unit_tests() {
    promtool(&["test", "rules", "alerts_test.yml"]);
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy().join("prometheus/alerts_test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            let name = name.trim();
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "no promtool test for {name}"
            );
        }
    }
}

#[test]
fn dashboard_uses_documented_metrics() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/port-trace.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let doc = std::fs::read_to_string(deploy().join("../docs/metrics.md")).unwrap();
    let text = dash.to_string();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("port_trace_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Histograms expose _bucket/_sum/_count series.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            doc.contains(&format!("`{base}`")),
            "{name} is not in docs/metrics.md"
        );
        rest = &rest[i + name.len()..];
    }
}
