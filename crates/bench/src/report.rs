//! The results of one run: JSON for tools, Markdown for people (and for docs/SPEC.md, whose
//! measured section is replaced between its markers).

use serde::Serialize;

use crate::machine::Machine;

/// One run of the harness.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    pub machine: Machine,
    /// `full` or `quick`.
    pub mode: String,
    /// The command that reproduces it.
    pub command: String,
    pub scenarios: Vec<Scenario>,
}

/// What one scenario measured.
#[derive(Debug, Default, Serialize)]
pub struct Scenario {
    pub name: String,
    /// How it was measured, one sentence.
    pub method: String,
    pub metrics: Vec<Metric>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    /// Wall time of the scenario.
    pub seconds: f64,
    /// Set when the scenario could not finish; its metrics are what it had.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A target of DESIGN.md §7 against what was measured.
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    /// The limit (the measured value must not exceed it).
    pub limit: f64,
    pub measured: f64,
    pub unit: String,
    pub met: bool,
}

impl Scenario {
    pub fn new(name: &str, method: &str) -> Scenario {
        Scenario {
            name: name.into(),
            method: method.into(),
            ..Scenario::default()
        }
    }

    pub fn metric(&mut self, name: impl Into<String>, value: f64, unit: &str) {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit: unit.into(),
        });
    }

    /// Records a target: met when `measured <= limit`.
    pub fn target(&mut self, what: &str, limit: f64, measured: f64, unit: &str) {
        self.targets.push(Target {
            what: what.into(),
            limit,
            measured,
            unit: unit.into(),
            met: measured.is_finite() && measured <= limit,
        });
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

/// A number with as many decimals as its size needs.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    /// The Markdown form: the machine, then each scenario's targets and metrics.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "Measured {} ({} mode) with `{}`.\n\nMachine: {}; {} CPUs; {} GiB RAM; kernel {}; {}; accelerator {}; kuvirt {} ({} build).\n\n",
            self.date,
            self.mode,
            self.command,
            m.cpu,
            m.cpus,
            num(m.memory_gib),
            m.kernel,
            m.qemu,
            m.accel,
            m.commit,
            m.profile,
        );
        let targets: Vec<(&Scenario, &Target)> = self
            .scenarios
            .iter()
            .flat_map(|sc| sc.targets.iter().map(move |t| (sc, t)))
            .collect();
        let unfinished: Vec<&Scenario> = self
            .scenarios
            .iter()
            .filter(|sc| sc.error.is_some() && sc.targets.is_empty())
            .collect();
        if !targets.is_empty() || !unfinished.is_empty() {
            s.push_str("| Target | Limit | Measured | |\n|---|---|---|---|\n");
            for sc in &unfinished {
                s.push_str(&format!(
                    "| the target of {} | | did not finish | **not measured** |\n",
                    sc.name
                ));
            }
            for (sc, t) in targets {
                s.push_str(&format!(
                    "| {} ({}) | ≤ {} {} | {} {} | {} |\n",
                    t.what,
                    sc.name,
                    num(t.limit),
                    t.unit,
                    num(t.measured),
                    t.unit,
                    if t.met { "met" } else { "**missed**" }
                ));
            }
            s.push('\n');
        }
        for sc in &self.scenarios {
            s.push_str(&format!(
                "#### {}\n\n{} ({} s)\n\n",
                sc.name,
                sc.method,
                num(sc.seconds)
            ));
            if let Some(e) = &sc.error {
                s.push_str(&format!("**Did not finish:** {e}\n\n"));
            }
            if !sc.metrics.is_empty() {
                s.push_str("| Metric | Value |\n|---|---|\n");
                for mt in &sc.metrics {
                    s.push_str(&format!(
                        "| {} | {} {} |\n",
                        mt.name,
                        num(mt.value),
                        mt.unit
                    ));
                }
                s.push('\n');
            }
            for n in &sc.notes {
                s.push_str(&format!("- {n}\n"));
            }
            if !sc.notes.is_empty() {
                s.push('\n');
            }
        }
        s
    }
}

/// Where the measured section of docs/SPEC.md starts and ends.
pub const BEGIN: &str = "<!-- bench:begin (written by kuvirt-bench --update-spec; do not edit) -->";
pub const END: &str = "<!-- bench:end -->";

/// `spec` with the text between the markers replaced by `section`; None without the markers.
pub fn splice(spec: &str, section: &str) -> Option<String> {
    let start = spec.find(BEGIN)? + BEGIN.len();
    let end = start + spec[start..].find(END)?;
    Some(format!(
        "{}\n{}\n{}",
        &spec[..start],
        section.trim_end(),
        &spec[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_between_markers() {
        let spec = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        let out = splice(&spec, "new\n").unwrap_or_default();
        assert_eq!(out, format!("a\n{BEGIN}\nnew\n{END}\nb\n"));
        assert!(splice("no markers", "x").is_none());
    }

    #[test]
    fn targets_are_judged() {
        let mut s = Scenario::new("x", "y");
        s.target("t", 1.5, 1.6, "×");
        s.target("u", 1.5, 1.5, "×");
        s.target("v", 1.5, f64::NAN, "×");
        let met: Vec<bool> = s.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, vec![false, true, false]);
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(f64::NAN), "n/a");
    }
}
