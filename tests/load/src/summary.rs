//! The human-readable summary of a run.

use crate::run::RunResult;
use crate::stats::Percentiles;
use std::fmt::Write;

fn p(name: &str, x: &Percentiles) -> String {
    format!(
        "{name:<9} p50 {:>8.2} ms  p95 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}  ({} samples)",
        x.p50_ms, x.p95_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
    )
}

/// The summary, and whether the run passed (everyone joined and every
/// client converged).
pub fn summary(r: &RunResult) -> (String, bool) {
    let mut s = String::new();
    let c = &r.connect;
    let t = &r.typing;
    let _ = writeln!(
        s,
        "scenario {}: {} connections over {} documents ({} editors, {} viewers) at {} edits/s per editor, trace {}{}",
        r.scenario.name,
        r.scenario.connections,
        r.scenario.documents,
        t.editors,
        t.viewers,
        r.scenario.rate,
        r.trace,
        if r.trace_fallback {
            " (the shipped trace: the shared traces are not beside the checkout)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "connect  {} of {} joined on {} instance{} in {:.1} s from {}{}",
        c.joined,
        c.requested,
        c.instances,
        if c.instances == 1 { "" } else { "s" },
        c.seconds,
        c.source_addresses.join(", "),
        if c.failed > 0 {
            format!("; {} FAILED: {}", c.failed, c.failures.join("; "))
        } else {
            String::new()
        }
    );
    if let Some(fd) = &c.fd_limit
        && let Some(problem) = &fd.problem
    {
        let _ = writeln!(s, "fd limit {problem}");
    }
    let m = &r.memory;
    if let Some(conn) = m.server_rss_kib_connected {
        let _ = writeln!(
            s,
            "memory   server RSS {} KiB before, {} KiB at half, {} KiB connected, {} KiB peak: {} per connection (slope), {} overall; tool {} KiB",
            m.server_rss_kib_before.unwrap_or(0),
            m.server_rss_kib_half.map_or("-".into(), |x| x.to_string()),
            conn,
            m.server_rss_kib_peak.unwrap_or(0),
            m.server_kb_per_connection_slope
                .map_or("-".into(), |x| format!("{x:.1} KB")),
            m.server_kb_per_connection_average
                .map_or("-".into(), |x| format!("{x:.1} KB")),
            m.tool_rss_kib_connected
        );
    }
    let _ = writeln!(
        s,
        "typing   {:.1} s measured: {:.0} edits/s ({} edits in {} submits, {} acks), {:.0} deliveries/s ({} deliveries, {} unmatched), {} carets, {} typing signals sent",
        t.measured_seconds,
        t.edits_per_sec,
        t.edits,
        t.submits,
        t.acks,
        t.deliveries_per_sec,
        t.deliveries,
        t.unmatched_deliveries,
        t.cursors_sent,
        t.typing_sent
    );
    let _ = writeln!(s, "{}", p("ack", &t.ack));
    let _ = writeln!(s, "{}", p("delivery", &t.delivery));
    if let (Some(same), Some(other)) = (&t.delivery_same_instance, &t.delivery_other_instance) {
        let _ = writeln!(s, "{} to the sender's instance", p(" same", same));
        let _ = writeln!(s, "{} to another instance", p(" other", other));
    }
    for (i, ack) in t.ack_by_instance.iter().enumerate() {
        let unavailable = t.unavailable_by_instance.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{}, {unavailable} unavailable",
            p(&format!(" ack on instance {i}"), ack)
        );
    }
    if !t.errors.is_empty() || !t.closes.is_empty() {
        let _ = writeln!(s, "errors   {:?}  closes {:?}", t.errors, t.closes);
    }
    if t.churned > 0 {
        let _ = writeln!(s, "churn    {} connections replaced", t.churned);
    }
    let cpu = |name: &str, c: &crate::run::Cpu| {
        format!(
            "{name} {:.1} s CPU ({:.0}% of one core){}",
            c.seconds,
            c.percent_of_one_core,
            c.ms_per_1000_deliveries.map_or(String::new(), |x| format!(
                ", {x:.2} ms per 1,000 deliveries"
            ))
        )
    };
    let _ = writeln!(
        s,
        "cpu      {}; {} ({} cores shared)",
        r.server_cpu
            .as_ref()
            .map_or("server: no --server-pid".into(), |c| cpu("server", c)),
        cpu("tool", &r.tool_cpu),
        r.cores
    );
    let k = &r.check;
    let pass = k.ok && c.failed == 0;
    if r.scenario.verify {
        let _ = writeln!(
            s,
            "check    {}: {} of {} clients over {} documents hold the late joiner's text at its version{}",
            if k.ok { "OK" } else { "FAILED" },
            k.converged,
            k.clients,
            k.documents,
            k.expected_deliveries.map_or(String::new(), |e| format!(
                "; {} of {} expected deliveries arrived",
                t.all_deliveries, e
            ))
        );
        for problem in &k.problems {
            let _ = writeln!(s, "         {problem}");
        }
    }
    if let Some(r) = &r.recovery {
        let _ = writeln!(
            s,
            "recovery {}: drained in {:.1} s; RSS {} KiB after warm-up, {} KiB after (x{}); fds {} before, {} after",
            if r.ok { "OK" } else { "FAILED" },
            r.waited_secs,
            r.rss_kib_warm.map_or("?".into(), |v| v.to_string()),
            r.rss_kib_after.map_or("?".into(), |v| v.to_string()),
            r.rss_ratio.map_or("?".into(), |v| format!("{v:.3}")),
            r.fds_before.map_or("?".into(), |v| v.to_string()),
            r.fds_after.map_or("?".into(), |v| v.to_string()),
        );
    }
    if let Some(b) = &r.beside {
        let _ = writeln!(
            s,
            "beside   {}: `{}` ran {:.0} s",
            if b.failed_with.is_none() {
                "OK"
            } else {
                "FAILED"
            },
            b.command,
            b.ran_secs
        );
    }
    (s, pass)
}
