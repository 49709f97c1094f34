//! What a run does: a scenario, read from a TOML or JSON file and/or the
//! command line (the command line wins), written back into the result so a
//! run can be repeated exactly.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Connections and documents opening and closing while the run goes on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Connections closed (with `leave`) and replaced per second.
    pub per_sec: f64,
    /// Share (0 to 1) of replacements that open a new document instead of
    /// rejoining the one they left.
    pub new_document_share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The server's base WebSocket URL (`ws://host:port`; documents are
    /// at `/collab/<id>`), or several instances' URLs separated by commas:
    /// the j-th client of each document connects to instance j mod k (see
    /// [`Scenario::instance_of`]), so every document with more than one
    /// client has clients on several instances. Empty when the tool starts
    /// the server itself (`--relay`).
    pub url: String,
    pub connections: usize,
    pub documents: usize,
    /// Share (0 to 1) of each document's clients that only watch.
    pub viewers: f64,
    /// Connections opened per second; 0 opens them as fast as the server
    /// accepts (at most `connect_concurrency` at a time).
    pub connect_rate: f64,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
    /// Loopback source addresses (127.0.0.1, 127.0.0.2, ...); 0 picks
    /// enough for `connections` from the ephemeral port range.
    pub source_addresses: usize,
    /// Edits per second per editor (open loop: a fixed schedule).
    pub rate: f64,
    /// Typing time, warm-up included.
    pub duration_secs: f64,
    /// The first seconds of typing are not measured.
    pub warmup_secs: f64,
    /// A trace name (looked up in the shared traces beside the checkout)
    /// or a path; absent:
    /// automerge-paper, or the shipped trace when the shared ones are not
    /// there.
    pub trace: Option<String>,
    /// Longest insert an edit carries (a trace's pastes are cut to it).
    pub max_insert: usize,
    /// Editors send their caret after each edit (the server throttles).
    pub cursors: bool,
    /// Editors send `typing` while they type (at most every 250 ms).
    pub typing: bool,
    pub churn: Churn,
    /// Seeds the trace slices, schedule offsets and churn choices
    /// (document and user ids are new every run).
    pub seed: u64,
    /// At the end, every client must reach the server's version and hold
    /// the same text as a late joiner.
    pub verify: bool,
    /// How long the end may take: acks still in flight, deliveries, the
    /// late joiners.
    pub settle_secs: f64,
    /// Seconds between samples of the time series (and of /proc).
    pub sample_secs: f64,
    /// A soak's recovery check (0: none): after the run, wait up to this
    /// long for every server to report no connection and no open document
    /// (`/health`), then its RSS must be within 10% of its level after the
    /// warm-up and its open file descriptors back at their level before the
    /// run (plus the pools' connections opened meanwhile, see
    /// [`FD_POOL_ALLOWANCE`]).
    pub recover_secs: f64,
    /// Whether the recovery check holds RSS to 1.10 x its warm-up level
    /// (false: RSS is measured and reported only).
    pub recover_rss_check: bool,
    /// Every `error` an honest client receives fails the run (a soak: the
    /// load itself must never be refused).
    pub no_errors: bool,
    /// With several instances: how many of each document's clients each
    /// instance takes in turn (`[1, 50]`: one on the first for every fifty
    /// on the second). Empty: one each, round robin.
    pub instance_weights: Vec<usize>,
}

/// Descriptors a server may hold after a soak beyond its count before the
/// run: pooled connections opened during the run and kept idle (the
/// PostgreSQL pool's default 20 and Redis's at most 8), which are reused,
/// not leaked.
pub const FD_POOL_ALLOWANCE: u64 = 28;

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            url: String::new(),
            connections: 100,
            documents: 10,
            viewers: 0.0,
            connect_rate: 0.0,
            connect_concurrency: 64,
            source_addresses: 0,
            rate: 2.0,
            duration_secs: 10.0,
            warmup_secs: 2.0,
            trace: None,
            max_insert: 64,
            cursors: true,
            typing: true,
            churn: Churn::default(),
            seed: 1,
            verify: true,
            settle_secs: 30.0,
            sample_secs: 1.0,
            recover_secs: 0.0,
            recover_rss_check: true,
            no_errors: false,
            instance_weights: Vec::new(),
        }
    }
}

/// Ports one loopback source address can use towards one server port: the
/// default Linux ephemeral range is 32768-60999; keep a margin for the
/// machine's other connections.
pub const PORTS_PER_ADDRESS: usize = 20_000;

impl Scenario {
    /// Reads a scenario file: TOML, or JSON (a result file's `scenario`
    /// object, or a scenario on its own) by extension.
    pub fn from_file(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let v = v.get("scenario").cloned().unwrap_or(v);
            serde_json::from_value(v).with_context(|| format!("reading {}", path.display()))
        } else {
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
    }

    /// The instances' base URLs.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Refuses what cannot be run, naming the field.
    pub fn check(&self) -> anyhow::Result<()> {
        for u in self.urls() {
            if !u.starts_with("ws://") {
                bail!(
                    "url must be ws://host:port (comma-separated for several instances), got {u:?}"
                );
            }
        }
        fn share(name: &str, v: f64) -> anyhow::Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, got {v}");
            }
            Ok(())
        }
        fn nonneg(name: &str, v: f64, max: f64) -> anyhow::Result<()> {
            if !v.is_finite() || v < 0.0 || v > max {
                bail!("{name} must be between 0 and {max}, got {v}");
            }
            Ok(())
        }
        if self.connections == 0 || self.connections > 1_000_000 {
            bail!(
                "connections must be 1 to 1,000,000, got {}",
                self.connections
            );
        }
        if self.documents == 0 || self.documents > self.connections {
            bail!(
                "documents must be 1 to connections ({}), got {}",
                self.connections,
                self.documents
            );
        }
        share("viewers", self.viewers)?;
        share("churn.new_document_share", self.churn.new_document_share)?;
        nonneg("connect_rate", self.connect_rate, 1e6)?;
        nonneg("rate", self.rate, 1000.0)?;
        nonneg("duration_secs", self.duration_secs, 86_400.0)?;
        nonneg("warmup_secs", self.warmup_secs, self.duration_secs)?;
        nonneg("churn.per_sec", self.churn.per_sec, 1e5)?;
        nonneg("settle_secs", self.settle_secs, 3600.0)?;
        nonneg("recover_secs", self.recover_secs, 3600.0)?;
        if !(0.05..=60.0).contains(&self.sample_secs) {
            bail!("sample_secs must be 0.05 to 60, got {}", self.sample_secs);
        }
        if self.connect_concurrency == 0 || self.connect_concurrency > 100_000 {
            bail!("connect_concurrency must be 1 to 100,000");
        }
        if self.source_addresses > 250 {
            bail!("source_addresses must be at most 250 (127.0.0.1-127.0.0.250)");
        }
        if self.max_insert == 0 || self.max_insert > 1 << 20 {
            bail!("max_insert must be 1 to 1,048,576");
        }
        Ok(())
    }

    /// Source addresses to use.
    pub fn addresses(&self) -> usize {
        if self.source_addresses > 0 {
            self.source_addresses
        } else {
            self.connections.div_ceil(PORTS_PER_ADDRESS).max(1)
        }
    }

    /// The instance (of `instances`) client `slot` connects to: client i is
    /// the (i / documents)-th client of document i mod documents, and a
    /// document's clients take the instances in turn. A replacement (churn)
    /// keeps its slot's instance.
    pub fn instance_of(&self, slot: usize, instances: usize) -> usize {
        let k = slot / self.documents.max(1);
        let weights = &self.instance_weights;
        let total: usize = weights.iter().sum();
        if weights.len() != instances || total == 0 {
            return k % instances.max(1);
        }
        let mut at = k % total;
        for (i, w) in weights.iter().enumerate() {
            if at < *w {
                return i;
            }
            at -= w;
        }
        unreachable!("at is below the total of the weights")
    }

    /// Editors among a document's `n` clients: the rest watch. At least one
    /// edits unless every client is a viewer.
    pub fn editors_of(&self, n: usize) -> usize {
        if self.viewers >= 1.0 || n == 0 {
            return 0;
        }
        (((n as f64) * (1.0 - self.viewers)).round() as usize).clamp(1, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_scenario_reads_and_unknown_fields_are_refused() {
        let s: Scenario = toml::from_str(
            "name = \"x\"\nconnections = 10\ndocuments = 2\nrate = 5.0\n[churn]\nper_sec = 1.5\n",
        )
        .unwrap();
        assert_eq!(s.connections, 10);
        assert_eq!(s.churn.per_sec, 1.5);
        assert_eq!(s.viewers, 0.0);
        s.check().unwrap();
        let e = toml::from_str::<Scenario>("connection = 10\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                Scenario {
                    viewers: 1.5,
                    ..Default::default()
                },
                "viewers",
            ),
            (
                Scenario {
                    documents: 0,
                    ..Default::default()
                },
                "documents",
            ),
            (
                Scenario {
                    documents: 1000,
                    ..Default::default()
                },
                "documents",
            ),
            (
                Scenario {
                    rate: f64::NAN,
                    ..Default::default()
                },
                "rate",
            ),
            (
                Scenario {
                    rate: -1.0,
                    ..Default::default()
                },
                "rate",
            ),
            (
                Scenario {
                    warmup_secs: 20.0,
                    ..Default::default()
                },
                "warmup_secs",
            ),
            (
                Scenario {
                    source_addresses: 300,
                    ..Default::default()
                },
                "source_addresses",
            ),
        ];
        for (s, field) in cases {
            let e = s.check().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn enough_source_addresses_for_the_connections() {
        let s = |n| Scenario {
            connections: n,
            documents: 1,
            ..Default::default()
        };
        assert_eq!(s(10_000).addresses(), 1);
        assert_eq!(s(20_001).addresses(), 2);
        assert_eq!(s(100_000).addresses(), 5);
        let fixed = Scenario {
            source_addresses: 3,
            ..s(10)
        };
        assert_eq!(fixed.addresses(), 3);
    }

    #[test]
    fn several_instances_are_comma_separated() {
        let s = Scenario {
            url: "ws://127.0.0.1:1/, ws://127.0.0.1:2".into(),
            ..Default::default()
        };
        assert_eq!(s.urls(), ["ws://127.0.0.1:1", "ws://127.0.0.1:2"]);
        s.check().unwrap();
        let bad = Scenario {
            url: "ws://127.0.0.1:1,http://x".into(),
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().to_string().starts_with("url"));
    }

    #[test]
    fn every_document_has_clients_on_every_instance() {
        let s = Scenario {
            connections: 80,
            documents: 20,
            ..Default::default()
        };
        for d in 0..s.documents {
            let on: Vec<usize> = (d..s.connections)
                .step_by(s.documents)
                .map(|i| s.instance_of(i, 2))
                .collect();
            assert_eq!(on, [0, 1, 0, 1], "document {d}");
        }
        let hot = Scenario {
            connections: 5,
            documents: 1,
            ..Default::default()
        };
        let on: Vec<usize> = (0..5).map(|i| hot.instance_of(i, 2)).collect();
        assert_eq!(on, [0, 1, 0, 1, 0]);
        assert_eq!(hot.instance_of(3, 1), 0);
    }

    #[test]
    fn instance_weights_share_a_documents_clients_unevenly() {
        let s = Scenario {
            connections: 12,
            documents: 2,
            instance_weights: vec![1, 2],
            ..Default::default()
        };
        // Document 0's clients are slots 0, 2, 4, ...
        let on: Vec<usize> = (0..12).step_by(2).map(|i| s.instance_of(i, 2)).collect();
        assert_eq!(on, [0, 1, 1, 0, 1, 1]);
        // Weights for another number of instances are not used.
        assert_eq!(s.instance_of(2, 3), 1);
    }

    #[test]
    fn viewers_share_leaves_an_editor() {
        let s = Scenario {
            viewers: 0.9,
            ..Default::default()
        };
        assert_eq!(s.editors_of(10), 1);
        assert_eq!(s.editors_of(3), 1);
        let all = Scenario {
            viewers: 1.0,
            ..Default::default()
        };
        assert_eq!(all.editors_of(10), 0);
        let none = Scenario::default();
        assert_eq!(none.editors_of(7), 7);
    }

    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::from_file(&p).unwrap().check().unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "{n} scenarios");
    }
}
