//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::collections::HashMap;
use std::fmt::Write as _;

/// Builds the exposition text. Each family gets its HELP and TYPE once:
/// samples written under a name already written join that family, so two
/// stages can each add their samples of a shared family (the sources'
/// `tidewell_ingest_records_total{source=...}`).
#[derive(Default)]
pub struct MetricsWriter {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
}

struct Family {
    head: String,
    samples: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl MetricsWriter {
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Labels, f64)]) {
        let out = self.samples_of(name, kind, help);
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{} {value}", label_text(labels));
        }
    }

    /// [`MetricsWriter::family`] with owned label lists.
    pub fn family_owned(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: Vec<(Vec<(&str, &str)>, f64)>,
    ) {
        let borrowed: Vec<(Labels, f64)> =
            samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        self.family(name, kind, help, &borrowed);
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[(&[], value as f64)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help, &[(&[], value)]);
    }

    /// A histogram from per-bucket counts (not cumulative) with upper bounds in
    /// seconds; the last count is the overflow bucket.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        let out = self.samples_of(name, "histogram", help);
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }

    /// The text, families in the order they were first written.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for family in self.families {
            out.push_str(&family.head);
            out.push_str(&family.samples);
        }
        out
    }

    fn samples_of(&mut self, name: &str, kind: &str, help: &str) -> &mut String {
        let index = *self.by_name.entry(name.to_string()).or_insert_with(|| {
            self.families.push(Family {
                head: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
                samples: String::new(),
            });
            self.families.len() - 1
        });
        &mut self.families[index].samples
    }
}

fn label_text(labels: Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_one_family_from_two_writers_share_one_head() {
        let mut w = MetricsWriter::default();
        w.family("x_total", "counter", "X.", &[(&[("source", "a")], 1.0)]);
        w.gauge("y", "Y.", 2.0);
        w.family("x_total", "counter", "X.", &[(&[("source", "b")], 3.0)]);
        assert_eq!(
            w.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{source=\"a\"} 1\nx_total{source=\"b\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny 2\n"
        );
    }
}
