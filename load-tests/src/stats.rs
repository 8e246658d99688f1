//! Counters, the latency histogram, the once-per-second report in emqtt-bench's format, and the
//! end-of-run summary (`--json`).
//!
//! Clients only add to counters and record latency samples; the reporter alone reads them. A
//! line is printed for a counter only when it changed since its last line, as
//! `<elapsed> <name> total=<n> rate=<r>/sec`, where `<elapsed>` is emqtt-bench's `1m5s` form and
//! the rate is the change divided by the time since that counter's previous line (so a counter
//! that moves again after a pause reports its average over the pause, as emqtt-bench does).
//! emqtt-bench's `publish_latency avg=<n>ms` line is extended with p50/p90/p99/max.
//!
//! Two more distributions appear in the summary only (no per-second line): CONNECT→CONNACK
//! latency per connection, and, with `--expect-lifetime`, how late the server closed each
//! connection after the instant its credential was expected to expire (CONNECT written +
//! the lifetime).
//!
//! Not here: what the counters mean for each MQTT flow (that is `client.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// Every counter, in the order lines are printed: emqtt-bench's order first, then ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Recv,
    Sub,
    SubFail,
    Pub,
    PubFail,
    PubOverrun,
    PubSucc,
    ConnectSucc,
    ConnectFail,
    ConnectRetried,
    Unreachable,
    ConnectionRefused,
    ConnectionTimeout,
    // ---- not in emqtt-bench ----
    /// An established connection closed without us asking (broker DISCONNECT, reset, EOF).
    ConnectionLost,
    ReauthSucc,
    ReauthFail,
    /// A `cnt64` header skipped ahead of the previous one + 1 on the same topic (loss).
    Cnt64Gap,
    /// A `cnt64` header not above the previous one on the same topic (duplicate or reorder).
    Cnt64Dup,
}

pub const COUNTERS: usize = 18;

impl Counter {
    pub const ALL: [Counter; COUNTERS] = [
        Counter::Recv,
        Counter::Sub,
        Counter::SubFail,
        Counter::Pub,
        Counter::PubFail,
        Counter::PubOverrun,
        Counter::PubSucc,
        Counter::ConnectSucc,
        Counter::ConnectFail,
        Counter::ConnectRetried,
        Counter::Unreachable,
        Counter::ConnectionRefused,
        Counter::ConnectionTimeout,
        Counter::ConnectionLost,
        Counter::ReauthSucc,
        Counter::ReauthFail,
        Counter::Cnt64Gap,
        Counter::Cnt64Dup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Recv => "recv",
            Counter::Sub => "sub",
            Counter::SubFail => "sub_fail",
            Counter::Pub => "pub",
            Counter::PubFail => "pub_fail",
            Counter::PubOverrun => "pub_overrun",
            Counter::PubSucc => "pub_succ",
            Counter::ConnectSucc => "connect_succ",
            Counter::ConnectFail => "connect_fail",
            Counter::ConnectRetried => "connect_retried",
            Counter::Unreachable => "unreachable",
            Counter::ConnectionRefused => "connection_refused",
            Counter::ConnectionTimeout => "connection_timeout",
            Counter::ConnectionLost => "connection_lost",
            Counter::ReauthSucc => "reauth_succ",
            Counter::ReauthFail => "reauth_fail",
            Counter::Cnt64Gap => "cnt64_gap",
            Counter::Cnt64Dup => "cnt64_dup",
        }
    }
}

/// One counter per cache line: every client task on every worker thread bumps these.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// When a counter first and last moved, in nanoseconds since the Unix epoch (0: never). Kept
/// only for the counters in [`WINDOWED`], marked once per batch rather than per message, so the
/// benchmark harness can compute rates over the interval where work happened (connection setup
/// and the final drain excluded) and line up a publisher's first message with a subscriber's
/// last one across processes.
#[derive(Default)]
struct Window {
    first: AtomicU64,
    last: AtomicU64,
}

/// The counters with a [`Window`], as they are named in `--json`'s `windows_unix`.
pub const WINDOWED: [Counter; 4] = [
    Counter::Recv,
    Counter::Pub,
    Counter::ConnectSucc,
    Counter::ReauthSucc,
];

/// Latency is recorded in microseconds, up to an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// `--expect-lifetime`: per connection the server closed, close time − (CONNECT written + the
/// expected lifetime). The server starts the lifetime when it decides, after CONNECT was
/// written, so this is an upper bound of the real delay, too high by at most that
/// connection's CONNECT→CONNACK time. A close before the reference instant is an *early*
/// close: it counts as 0 in the histogram, and `min_us` keeps the signed smallest delay.
struct ExpiryDelay {
    lifetime_secs: f64,
    histogram: Mutex<Histogram<u64>>,
    early: AtomicU64,
    min_us: AtomicI64,
}

pub struct Stats {
    slots: [Slot; COUNTERS],
    windows: [Window; WINDOWED.len()],
    /// Sharded so that subscribers on different threads rarely wait for each other; the
    /// reporter drains every shard once a second.
    latency: Box<[Mutex<Histogram<u64>>]>,
    /// CONNECT written → CONNACK (success) decoded, µs. One sample per connection, so one lock
    /// is enough (a few thousand samples a second).
    connect_latency: Mutex<Histogram<u64>>,
    expiry: Option<ExpiryDelay>,
}

impl Stats {
    pub fn new(latency_shards: usize) -> Stats {
        Stats {
            slots: Default::default(),
            windows: Default::default(),
            latency: (0..latency_shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            connect_latency: Mutex::new(new_histogram()),
            expiry: None,
        }
    }

    /// Measure, for every connection the server closes, how long after CONNECT + `lifetime`
    /// that happened (`--expect-lifetime`).
    pub fn with_expected_lifetime(mut self, lifetime_secs: f64) -> Stats {
        self.expiry = Some(ExpiryDelay {
            lifetime_secs,
            histogram: Mutex::new(new_histogram()),
            early: AtomicU64::new(0),
            min_us: AtomicI64::new(i64::MAX),
        });
        self
    }

    /// The `--expect-lifetime` value, if any.
    pub fn expected_lifetime_secs(&self) -> Option<f64> {
        self.expiry.as_ref().map(|e| e.lifetime_secs)
    }

    /// One CONNECT→CONNACK sample (µs).
    pub fn record_connect_latency(&self, us: u64) {
        lock(&self.connect_latency).saturating_record(us);
    }

    /// One server close, `delay_us` after the expected expiry instant (negative: before it).
    /// A no-op without `--expect-lifetime`.
    pub fn record_expiry_delay(&self, delay_us: i64) {
        let Some(e) = &self.expiry else { return };
        if delay_us < 0 {
            e.early.fetch_add(1, Ordering::Relaxed);
        }
        e.min_us.fetch_min(delay_us, Ordering::Relaxed);
        lock(&e.histogram).saturating_record(delay_us.max(0).unsigned_abs());
    }

    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    pub fn add(&self, c: Counter, n: u64) {
        if n > 0 {
            self.slots[c as usize].0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.slots[c as usize].0.load(Ordering::Relaxed)
    }

    /// Note that `c` moved at `now_ns` (nanoseconds since the Unix epoch). A no-op for a counter
    /// outside [`WINDOWED`].
    pub fn mark(&self, c: Counter, now_ns: u64) {
        let Some(i) = WINDOWED.iter().position(|&w| w == c) else {
            return;
        };
        let w = &self.windows[i];
        if w.first.load(Ordering::Relaxed) == 0 {
            let _ = w
                .first
                .compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed);
        }
        w.last.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// `(first, last)` marks of a windowed counter, if it was ever marked.
    fn window(&self, c: Counter) -> Option<(u64, u64)> {
        let i = WINDOWED.iter().position(|&w| w == c)?;
        let w = &self.windows[i];
        match (
            w.first.load(Ordering::Relaxed),
            w.last.load(Ordering::Relaxed),
        ) {
            (0, _) => None,
            (first, last) => Some((first, last.max(first))),
        }
    }

    /// Record a batch of latency samples (µs) under one lock.
    pub fn record_latency(&self, shard: usize, samples_us: &[u64]) {
        if samples_us.is_empty() {
            return;
        }
        let mut h = self.latency[shard % self.latency.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &s in samples_us {
            h.saturating_record(s);
        }
    }

    /// Move every recorded sample into `into`.
    fn drain_latency(&self, into: &mut Histogram<u64>) {
        for shard in self.latency.iter() {
            let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
            if !h.is_empty() {
                // Same bounds on both sides, so this cannot fail.
                let _ = into.add(&*h);
                h.reset();
            }
        }
    }
}

fn lock(h: &Mutex<Histogram<u64>>) -> std::sync::MutexGuard<'_, Histogram<u64>> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// A latency distribution in milliseconds, as `--json` writes it; `null` when empty.
fn histogram_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "min": ms(h.min()),
        "avg": round3(h.mean() / 1000.0),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// `expiry_delay_ms`: `null` without `--expect-lifetime`; otherwise the lifetime, how many
/// closes were seen and how many were early, the signed minimum, and the distribution (early
/// closes as 0).
fn expiry_json(e: &ExpiryDelay) -> Value {
    let h = lock(&e.histogram);
    let mut v = json!({
        "expected_lifetime_secs": e.lifetime_secs,
        "reference": "CONNECT written + expected_lifetime_secs",
        "count": h.len(),
        "early": e.early.load(Ordering::Relaxed),
        "min": Value::Null,
    });
    if !h.is_empty() {
        let min_us = e.min_us.load(Ordering::Relaxed);
        v["min"] = json!(min_us as f64 / 1000.0);
        for (k, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            v[k] = json!(ms(h.value_at_quantile(q)));
        }
        v["avg"] = json!(round3(h.mean() / 1000.0));
        v["max"] = json!(ms(h.max()));
    }
    v
}

/// emqtt-bench's elapsed-time form: `45s`, `1m5s`, `2h0m3s`, `1d0h0m0s`. emqtt-bench prints an
/// empty string at zero seconds; we print `0s`.
pub fn fmt_elapsed(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    let mut t = secs;
    for (factor, unit) in [(60, "s"), (60, "m"), (24, "h"), (u64::MAX, "d")] {
        if t == 0 {
            break;
        }
        parts.push(format!("{}{unit}", t % factor));
        t /= factor;
    }
    parts.reverse();
    parts.concat()
}

/// One counter line, exactly as emqtt-bench prints it (`~s ~s total=~w rate=~.2f/sec`).
pub fn counter_line(elapsed: &str, name: &str, total: u64, rate: f64) -> String {
    format!("{elapsed} {name} total={total} rate={rate:.2}/sec")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// emqtt-bench's `publish_latency avg=<n>ms` line, with percentiles added.
pub fn latency_line(elapsed: &str, h: &Histogram<u64>) -> String {
    format!(
        "{elapsed} publish_latency avg={:.3}ms p50={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms",
        h.mean() / 1000.0,
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}

/// The once-per-second printer. Keeps, per counter, the value and time of its last line.
pub struct Reporter {
    start: Instant,
    /// `start` as seconds since the Unix epoch.
    start_unix: f64,
    last: [(Instant, u64); COUNTERS],
    peak: [f64; COUNTERS],
    window: Histogram<u64>,
    total: Histogram<u64>,
}

impl Reporter {
    pub fn new(start: Instant) -> Reporter {
        let since_start = start.elapsed().as_secs_f64();
        Reporter {
            start,
            start_unix: crate::payload::now_ns() as f64 / 1e9 - since_start,
            last: [(start, 0); COUNTERS],
            peak: [0.0; COUNTERS],
            window: new_histogram(),
            total: new_histogram(),
        }
    }

    /// The lines for this tick: latency first (as emqtt-bench), then each changed counter.
    pub fn tick(&mut self, stats: &Stats, now: Instant) -> Vec<String> {
        let elapsed = fmt_elapsed(now.duration_since(self.start).as_secs());
        let mut lines = Vec::new();
        self.window.reset();
        stats.drain_latency(&mut self.window);
        if !self.window.is_empty() {
            let _ = self.total.add(&self.window);
            lines.push(latency_line(&elapsed, &self.window));
        }
        for c in Counter::ALL {
            let cur = stats.get(c);
            let (last_at, last_val) = self.last[c as usize];
            let since_ms = now.duration_since(last_at).as_millis();
            if cur == last_val || since_ms == 0 {
                continue;
            }
            let rate = (cur - last_val) as f64 * 1000.0 / since_ms as f64;
            lines.push(counter_line(&elapsed, c.name(), cur, rate));
            self.last[c as usize] = (now, cur);
            // Only whole-second windows make a fair peak; the final partial tick does not.
            if since_ms >= 900 {
                self.peak[c as usize] = self.peak[c as usize].max(rate);
            }
        }
        lines
    }

    /// Every latency sample seen so far.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.total
    }

    /// The machine-readable summary written by `--json`.
    pub fn summary(&self, stats: &Stats, now: Instant, command: &str, args: &[String]) -> Value {
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let mut counters = Map::new();
        let mut rates = Map::new();
        let mut peaks = Map::new();
        for c in Counter::ALL {
            let total = stats.get(c);
            counters.insert(c.name().into(), json!(total));
            let rate = if elapsed > 0.0 {
                total as f64 / elapsed
            } else {
                0.0
            };
            rates.insert(c.name().into(), json!(round2(rate)));
            peaks.insert(c.name().into(), json!(round2(self.peak[c as usize])));
        }
        let latency = histogram_ms(&self.total);
        let connect_latency = histogram_ms(&lock(&stats.connect_latency));
        let expiry = stats.expiry.as_ref().map_or(Value::Null, expiry_json);
        let mut windows = Map::new();
        for c in WINDOWED {
            let w = stats.window(c).map(
                |(first, last)| json!({"first": first as f64 / 1e9, "last": last as f64 / 1e9}),
            );
            windows.insert(c.name().into(), w.unwrap_or(Value::Null));
        }
        let cpu = own_cpu();
        json!({
            "tool": "gatehouse-bench",
            "command": command,
            "args": args,
            "elapsed_secs": round3(elapsed),
            "started_at_unix": self.start_unix,
            "windows_unix": windows,
            "counters": counters,
            "rates_per_sec": rates,
            "peak_rates_per_sec": peaks,
            "latency_ms": latency,
            "connect_latency_ms": connect_latency,
            "expiry_delay_ms": expiry,
            "cpu": {
                "user_secs": round3(cpu.user_secs),
                "system_secs": round3(cpu.system_secs),
                "total_secs": round3(cpu.user_secs + cpu.system_secs),
                "percent_of_one_core": if elapsed > 0.0 {
                    round2(100.0 * (cpu.user_secs + cpu.system_secs) / elapsed)
                } else { 0.0 },
            },
            "max_rss_kb": cpu.max_rss_kb,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// This process's CPU time and peak memory so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user_secs: f64,
    pub system_secs: f64,
    pub max_rss_kb: u64,
}

pub fn own_cpu() -> Cpu {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Cpu::default();
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let ru = unsafe { ru.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Cpu {
        user_secs: secs(ru.ru_utime),
        system_secs: secs(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn elapsed_like_emqtt_bench() {
        assert_eq!(fmt_elapsed(0), "0s");
        assert_eq!(fmt_elapsed(1), "1s");
        assert_eq!(fmt_elapsed(59), "59s");
        assert_eq!(fmt_elapsed(60), "1m0s");
        assert_eq!(fmt_elapsed(65), "1m5s");
        assert_eq!(fmt_elapsed(3600), "1h0m0s");
        assert_eq!(fmt_elapsed(3723), "1h2m3s");
        assert_eq!(fmt_elapsed(86_400 + 61), "1d0h1m1s");
    }

    #[test]
    fn line_format() {
        assert_eq!(
            counter_line("1s", "connect_succ", 100, 100.0),
            "1s connect_succ total=100 rate=100.00/sec"
        );
        assert_eq!(
            counter_line("1m5s", "pub", 7, 1.0 / 3.0),
            "1m5s pub total=7 rate=0.33/sec"
        );
        let mut h = new_histogram();
        for us in [100, 200, 300, 400, 5000] {
            h.record(us).unwrap();
        }
        let line = latency_line("2s", &h);
        assert!(
            line.starts_with("2s publish_latency avg=1.200ms p50=0.300ms p90="),
            "{line}"
        );
        assert!(line.ends_with("max=5.003ms"), "{line}");
    }

    #[test]
    fn only_changed_counters_are_printed() {
        let stats = Stats::new(2);
        let t0 = Instant::now();
        let mut r = Reporter::new(t0);
        stats.add(Counter::ConnectSucc, 100);
        stats.add(Counter::Pub, 50);
        let lines = r.tick(&stats, t0 + Duration::from_millis(1000));
        assert_eq!(
            lines,
            vec![
                "1s pub total=50 rate=50.00/sec",
                "1s connect_succ total=100 rate=100.00/sec",
            ]
        );
        stats.add(Counter::Pub, 25);
        let lines = r.tick(&stats, t0 + Duration::from_millis(2000));
        assert_eq!(lines, vec!["2s pub total=75 rate=25.00/sec"]);
        // A counter that was quiet reports its rate over the whole pause.
        stats.add(Counter::ConnectSucc, 30);
        let lines = r.tick(&stats, t0 + Duration::from_millis(4000));
        assert_eq!(lines, vec!["4s connect_succ total=130 rate=10.00/sec"]);
        assert!(r.tick(&stats, t0 + Duration::from_millis(5000)).is_empty());
    }

    #[test]
    fn latency_is_drained_per_tick_and_kept_in_total() {
        let stats = Stats::new(3);
        let t0 = Instant::now();
        let mut r = Reporter::new(t0);
        stats.record_latency(0, &[1000, 2000]);
        stats.record_latency(5, &[3000]);
        let lines = r.tick(&stats, t0 + Duration::from_secs(1));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("1s publish_latency avg=2.000ms"),
            "{}",
            lines[0]
        );
        assert!(r.tick(&stats, t0 + Duration::from_secs(2)).is_empty());
        assert_eq!(r.latency().len(), 3);
    }

    #[test]
    fn summary_has_totals_rates_latency_and_cpu() {
        let stats = Stats::new(1);
        let t0 = Instant::now();
        let mut r = Reporter::new(t0);
        stats.add(Counter::Recv, 500);
        stats.record_latency(0, &[250; 10]);
        r.tick(&stats, t0 + Duration::from_secs(1));
        let v = r.summary(&stats, t0 + Duration::from_secs(2), "sub", &["-c".into()]);
        assert_eq!(v["command"], "sub");
        assert_eq!(v["counters"]["recv"], 500);
        assert_eq!(v["counters"]["pub_succ"], 0);
        assert_eq!(v["rates_per_sec"]["recv"], 250.0);
        assert_eq!(v["peak_rates_per_sec"]["recv"], 500.0);
        assert_eq!(v["latency_ms"]["count"], 10);
        assert_eq!(v["latency_ms"]["p50"], 0.25);
        assert_eq!(v["elapsed_secs"], 2.0);
        assert!(v["cpu"]["total_secs"].as_f64().unwrap() >= 0.0);
        assert!(v["max_rss_kb"].as_u64().unwrap() > 0);
        assert!(v["windows_unix"]["recv"].is_null(), "{v}");
        assert!(v["started_at_unix"].as_f64().unwrap() > 1.6e9);
    }

    #[test]
    fn windows_keep_the_first_and_last_mark() {
        let stats = Stats::new(1);
        stats.mark(Counter::Recv, 2_000_000_000);
        stats.mark(Counter::Recv, 5_500_000_000);
        stats.mark(Counter::Recv, 3_000_000_000);
        stats.mark(Counter::Sub, 1_000_000_000); // not windowed: ignored
        let t0 = Instant::now();
        let r = Reporter::new(t0);
        let v = r.summary(&stats, t0, "sub", &[]);
        assert_eq!(v["windows_unix"]["recv"]["first"], 2.0);
        assert_eq!(v["windows_unix"]["recv"]["last"], 5.5);
        assert!(v["windows_unix"]["pub"].is_null());
        assert!(v["windows_unix"]["connect_succ"].is_null());
        assert!(v["windows_unix"]["reauth_succ"].is_null());
        assert!(v["windows_unix"].get("sub").is_none());
    }

    #[test]
    fn connect_latency_is_summarised_once_recorded() {
        let stats = Stats::new(1);
        let t0 = Instant::now();
        let r = Reporter::new(t0);
        let v = r.summary(&stats, t0, "conn", &[]);
        assert!(v["connect_latency_ms"].is_null(), "{v}");
        assert!(v["expiry_delay_ms"].is_null(), "{v}");
        // Below 2048 µs the histogram is exact; above, it reports a bucket's highest value.
        for us in [200, 300, 400, 500, 1_900] {
            stats.record_connect_latency(us);
        }
        let v = r.summary(&stats, t0, "conn", &[]);
        let c = &v["connect_latency_ms"];
        assert_eq!(c["count"], 5);
        assert_eq!(c["min"], 0.2);
        assert_eq!(c["p50"], 0.4);
        assert_eq!(c["max"], 1.9);
        // It does not appear as the publish latency, and no per-second line prints it.
        assert!(v["latency_ms"].is_null());
        let mut r = Reporter::new(t0);
        assert!(r.tick(&stats, t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn expiry_delay_counts_early_closes_and_keeps_the_signed_minimum() {
        let stats = Stats::new(1);
        // Without --expect-lifetime nothing is kept.
        stats.record_expiry_delay(5_000);
        let stats = stats.with_expected_lifetime(2.5);
        assert_eq!(stats.expected_lifetime_secs(), Some(2.5));
        for us in [-300, 1_000, 1_200, 1_500, 2_000] {
            stats.record_expiry_delay(us);
        }
        let t0 = Instant::now();
        let v = Reporter::new(t0).summary(&stats, t0, "conn", &[]);
        let e = &v["expiry_delay_ms"];
        assert_eq!(e["expected_lifetime_secs"], 2.5);
        assert_eq!(e["count"], 5);
        assert_eq!(e["early"], 1);
        assert_eq!(e["min"], -0.3);
        // The early close counts as 0 in the distribution.
        assert_eq!(e["p50"], 1.2);
        assert_eq!(e["max"], 2.0);
        assert_eq!(e["p99"], 2.0);

        let none = Stats::new(1).with_expected_lifetime(1.0);
        let v = Reporter::new(t0).summary(&none, t0, "conn", &[]);
        assert_eq!(v["expiry_delay_ms"]["count"], 0);
        assert!(v["expiry_delay_ms"]["min"].is_null());
        assert!(v["expiry_delay_ms"]["p99"].is_null());
    }
}
