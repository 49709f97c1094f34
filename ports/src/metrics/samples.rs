//! Exported samples as Prometheus reads them (`name{labels} value`), to
//! read an adapter back: the metrics contract and tests compare what was
//! recorded with what is exported.

use std::collections::BTreeMap;

/// One exported sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one read-out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses Prometheus's text exposition format (comments skipped; label
    /// values with `\"`, `\\` and `\n` escapes). Panics on a malformed
    /// line: an adapter that writes one breaks the contract.
    pub fn parse_prometheus(text: &str) -> Samples {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("malformed metrics line: {line}"),
            };
            let mut labels = BTreeMap::new();
            let rest = if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices();
                let mut end = None;
                loop {
                    // label name
                    let mut key = String::new();
                    for (i, c) in chars.by_ref() {
                        match c {
                            '=' => break,
                            '}' if key.is_empty() => {
                                end = Some(i);
                                break;
                            }
                            ',' | ' ' if key.is_empty() => {}
                            c => key.push(c),
                        }
                    }
                    if end.is_some() {
                        break;
                    }
                    assert_eq!(chars.next().map(|c| c.1), Some('"'), "malformed: {line}");
                    let mut value = String::new();
                    let mut escaped = false;
                    for (_, c) in chars.by_ref() {
                        match (escaped, c) {
                            (true, 'n') => {
                                value.push('\n');
                                escaped = false;
                            }
                            (true, c) => {
                                value.push(c);
                                escaped = false;
                            }
                            (false, '\\') => escaped = true,
                            (false, '"') => break,
                            (false, c) => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                }
                &body[end.expect("labels end with }") + 1..]
            } else {
                rest
            };
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value: {line}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            out.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Samples(out)
    }

    /// The samples named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum of the matching samples (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample is named `name` with these labels.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_parsed_with_labels_and_escapes() {
        let s = Samples::parse_prometheus(
            "# HELP x y\n# TYPE x counter\nx_total 3\ny{a=\"1\",b=\"q\\\"\\\\z\"} 2.5\nh_bucket{le=\"+Inf\"} 4\nz{} 1\n",
        );
        assert_eq!(s.sum("x_total", &[]), 3.0);
        assert_eq!(s.sum("y", &[("b", "q\"\\z")]), 2.5);
        assert_eq!(s.sum("y", &[("a", "2")]), 0.0);
        assert_eq!(s.sum("h_bucket", &[("le", "+Inf")]), 4.0);
        assert!(s.has("z", &[]));
    }
}
