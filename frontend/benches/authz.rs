//! Cost of the per-PUBLISH authorization check for a client whose policy has 100 rules.
//!
//! `cargo bench -p frontend --bench authz` prints nanoseconds per check for a matching topic, a
//! denied topic, and the same with the decision cache on and off. Plain `std::time` timing
//! (no bench framework): the loop is long enough that timer resolution does not matter, and
//! `black_box` keeps the work from being optimised away. Results go to docs/benchmarks.md.

use std::hint::black_box;
use std::time::Instant;

use frontend::auth::Principal;
use frontend::authz::AbacPolicy;

fn policy(cache: bool) -> AbacPolicy {
    // 100 rules that all apply to the client (via its attributes), each granting two
    // publish filters with substitution and wildcards: the worst case for one client.
    let mut rules = String::new();
    for i in 0..100 {
        rules.push_str(&format!(
            "    - principals: {{attributes: [{{group: g}}]}}\n      brokerResources:\n        \
             - {{method: Connect}}\n        \
             - {{method: Publish, topics: [\"site/{i}/{{principal.clientId}}/+/telemetry\", \"fleet/{i}/#\"]}}\n"
        ));
    }
    let yaml = format!(
        "authorizationPolicies:\n  cache: {}\n  rules:\n{rules}",
        if cache { "Enabled" } else { "Disabled" }
    );
    let spec: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
    AbacPolicy::compile("bench", &spec).expect("policy")
}

fn measure(label: &str, iterations: u32, mut f: impl FnMut() -> bool) {
    // Warm up caches and branch predictors first.
    for _ in 0..iterations / 10 {
        black_box(f());
    }
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    println!("{label:<48} {ns:>8.1} ns/check");
}

fn main() {
    let principal = Principal {
        username: Some("device-1".into()),
        attributes: [("group".to_string(), "g".to_string())].into(),
    };
    let n = 2_000_000;
    for cache in [false, true] {
        let p = policy(cache);
        let perms = p.connect("dev1", &principal).expect("connect allowed");
        let suffix = if cache { "cache on" } else { "cache off" };
        let allowed = "site/57/dev1/engine/telemetry";
        let denied = "site/57/dev2/engine/telemetry";
        assert!(perms.may_publish(allowed) && !perms.may_publish(denied));
        measure(&format!("allowed topic, 100 rules, {suffix}"), n, || {
            perms.may_publish(black_box(allowed))
        });
        measure(&format!("denied topic, 100 rules, {suffix}"), n, || {
            perms.may_publish(black_box(denied))
        });
    }
    let p = policy(false);
    let start = Instant::now();
    let k = 10_000;
    for _ in 0..k {
        black_box(p.connect("dev1", &principal).is_ok());
    }
    println!(
        "{:<48} {:>8.1} µs/connect",
        "compile permissions at CONNECT, 100 rules",
        start.elapsed().as_secs_f64() * 1e6 / f64::from(k)
    );
}
