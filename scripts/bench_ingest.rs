//! Ingest on a default-configuration cluster (BENCH_ONLY=ingest-default): dialpad.ingest_webhook
//! with JWT verification against plain JSON, same deliveries, same run; and plain JSON against
//! the last release's build when BENCH_DRAIN_LAST_RELEASE names its package (as for the drain).

use super::*;

/// Deliveries per figure: the events of this many calls.
const CALLS: usize = 10_000;

/// A default-configuration cluster of `package` (None: the build installed here), with the
/// sample deliveries as JSON text.
fn start(tag: &str, package: Option<&std::path::Path>) -> (Option<PgInstall>, Cluster, Client, Vec<String>) {
    let (install, cluster) = cluster_of(tag, package, &["fsync = on", "dialpad.workers = 1", "dialpad.enabled = off"]);
    let mut c = cluster.ready();
    let bodies = sample_bodies(&mut c, CALLS);
    (install, cluster, c, bodies)
}

/// Plain JSON deliveries through dialpad.ingest_webhook, 2 sessions, into an empty inbox.
fn plain_rate(cluster: &Cluster, c: &mut Client, bodies: &[String]) -> f64 {
    exec(c, "TRUNCATE dialpad.webhook_events");
    ingest_rate(cluster, bodies, 2, "SELECT dialpad.ingest_webhook($1)")
}

/// The same deliveries signed (HS256) and verified through the only webhook source.
fn jwt_rate(cluster: &Cluster, c: &mut Client, jwts: &[String]) -> f64 {
    exec(c, "TRUNCATE dialpad.webhook_events; SELECT dialpad.add_source('bench', 'bench-secret')");
    let rate = ingest_rate(cluster, jwts, 2, "SELECT dialpad.ingest_webhook($1)");
    exec(c, "SELECT dialpad.drop_source('bench')");
    rate
}

pub(crate) fn ingest_default_bench(report: &mut Report, runs: usize) {
    let (_, cluster, mut c, bodies) = start("ingest-default", None);
    let jwts: Vec<String> = bodies.iter().map(|b| sign(b, b"bench-secret")).collect();
    let (mut jwt, mut plain) = (Vec::new(), Vec::new());
    for round in 0..runs {
        // Alternating which goes first: a slow spell of the machine touches both.
        if round % 2 == 0 {
            jwt.push(jwt_rate(&cluster, &mut c, &jwts));
            plain.push(plain_rate(&cluster, &mut c, &bodies));
        } else {
            plain.push(plain_rate(&cluster, &mut c, &bodies));
            jwt.push(jwt_rate(&cluster, &mut c, &jwts));
        }
        println!("ingest-default round {round}: JWT {:.0}/s, plain {:.0}/s", jwt[round], plain[round]);
    }
    let (j, p) = (median(jwt), median(plain.clone()));
    report.add(
        "default config: ingest_webhook JWT-verified vs plain JSON, 2 sessions",
        eps(j),
        format!("plain {}", eps(p)),
        format!("{:.2}×", j / p),
        "≥ 0.9×",
        Some(j / p >= 0.9),
    );
    drop(c);
    drop(cluster);
    if let Some((version, dir)) = last_release() {
        let (_install, old_cluster, mut old, old_bodies) = start("ingest-default-last", Some(&dir));
        let mut theirs = Vec::new();
        for _ in 0..runs {
            theirs.push(plain_rate(&old_cluster, &mut old, &old_bodies));
        }
        drop(old);
        drop(old_cluster);
        // This build again after the release's rounds, so that both sides span the run.
        let (_, cluster, mut c, bodies) = start("ingest-default-again", None);
        for _ in 0..runs {
            plain.push(plain_rate(&cluster, &mut c, &bodies));
        }
        let (ours, theirs) = (median(plain), median(theirs));
        report.add(
            &format!("default config: ingest_webhook plain JSON, this build vs {version}"),
            eps(ours),
            format!("{version} {}", eps(theirs)),
            format!("{:.2}×", ours / theirs),
            "≥ 0.97×",
            Some(ours / theirs >= 0.97),
        );
    }
    report.notes.push(format!(
        "Ingest on a default-configuration cluster (shared_buffers 128 MB, autovacuum on, fsync on): the events of \
         {CALLS} calls, 2 sessions calling dialpad.ingest_webhook, 100 deliveries per transaction, into an empty \
         inbox, medians of {runs} rounds; JWT rounds verify HS256 through the only webhook source."
    ));
}
