//! ABAC policy tests: one per rule of broker-spec §4.2, citing the acceptance scenarios (§10).

use super::*;
use crate::auth::test_principal as principal;

fn policy(yaml: &str) -> AbacPolicy {
    let spec: Value = serde_yaml::from_str(yaml).expect("yaml");
    AbacPolicy::compile("p", &spec).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(yaml: &str) -> Vec<AuthzError> {
    let spec: Value = serde_yaml::from_str(yaml).expect("yaml");
    AbacPolicy::compile("p", &spec).expect_err("must be rejected")
}

/// The spec §5 tutorial policy.
const TUTORIAL: &str = r#"
authorizationPolicies:
  cache: Enabled
  rules:
    - principals: {attributes: [{group: thermostat_group}]}
      brokerResources:
        - {method: Connect}
        - {method: Publish, topics: [sensor/temperature]}
    - principals: {attributes: [{group: hygrometer_group}]}
      brokerResources:
        - {method: Connect}
        - {method: Publish, topics: [sensor/humidity]}
    - principals: {attributes: [{manufacturer: fabrikam}]}
      brokerResources:
        - {method: Connect}
        - {method: Publish, topics: [health/heartbeat]}
    - principals: {usernames: [heater]}
      brokerResources:
        - {method: Connect}
        - {method: Subscribe, topics: [sensor/temperature, sensor/humidity]}
"#;

#[test]
fn tutorial_rules_scenarios_30_32_39() {
    let p = policy(TUTORIAL);
    let thermostat = p
        .connect(
            "t1",
            &principal(Some("thermostat"), &[("group", "thermostat_group")]),
        )
        .unwrap();
    assert!(thermostat.may_publish("sensor/temperature"));
    assert!(!thermostat.may_publish("sensor/humidity"), "scenario 30");
    assert!(
        !thermostat.may_publish("health/heartbeat"),
        "scenario 39: leaf attributes only"
    );
    let heater = p.connect("h", &principal(Some("heater"), &[])).unwrap();
    assert!(heater.may_subscribe("sensor/temperature"));
    assert!(!heater.may_subscribe("health/heartbeat"), "scenario 32");
    assert!(!heater.may_publish("sensor/temperature"));
    let lightbulb = p
        .connect(
            "l",
            &principal(Some("lightbulb"), &[("manufacturer", "fabrikam")]),
        )
        .unwrap();
    assert!(lightbulb.may_publish("health/heartbeat"), "scenario 39");
    assert!(
        p.connect("x", &principal(Some("stranger"), &[])).is_err(),
        "nothing matched: CONNECT denied"
    );
}

#[test]
fn no_rules_deny_every_connect_scenario_29() {
    for yaml in [
        "authorizationPolicies: {rules: []}",
        "authorizationPolicies: {}",
    ] {
        let p = policy(yaml);
        assert!(
            p.connect("c", &principal(Some("u"), &[("a", "b")]))
                .is_err()
        );
    }
}

#[test]
fn attribute_maps_need_every_pair_scenario_33() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {attributes: [{city: seattle, organization: contoso}]}
      brokerResources: [{method: Connect}]
"#,
    );
    assert!(
        p.connect("c", &principal(None, &[("organization", "contoso")]))
            .is_err()
    );
    assert!(
        p.connect(
            "c",
            &principal(None, &[("organization", "contoso"), ("city", "seattle")])
        )
        .is_ok()
    );
}

#[test]
fn client_id_substitution_in_topics_scenario_34() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {clientIds: [c1, c2]}
      brokerResources:
        - {method: Connect}
        - {method: Publish, topics: ["clients/{principal.clientId}/#"]}
        - {method: Subscribe, topics: ["replies/{principal.username}/+"]}
"#,
    );
    let c1 = p.connect("c1", &principal(Some("u1"), &[])).unwrap();
    assert!(c1.may_publish("clients/c1/t"));
    assert!(!c1.may_publish("clients/c2/t"));
    assert!(c1.may_subscribe("replies/u1/x"));
    assert!(!c1.may_subscribe("replies/u2/x"));
    // A missing username never matches: the filter is simply absent.
    let anonymous = p.connect("c2", &principal(None, &[])).unwrap();
    assert!(!anonymous.may_subscribe("replies//x"));
    assert!(!anonymous.may_subscribe("replies/+/x"));
}

#[test]
fn connect_client_id_prefix_from_attribute_scenario_35() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {attributes: [{building: building22}]}
      brokerResources:
        - {method: Connect, clientIds: ["{principal.attributes.building}*"]}
"#,
    );
    let who = principal(None, &[("building", "building22")]);
    assert!(p.connect("building22-x", &who).is_ok());
    assert!(p.connect("building23-x", &who).is_err());
}

#[test]
fn principals_with_substitution_scenario_36() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {usernames: ["{principal.clientId}"]}
      brokerResources: [{method: Connect}]
"#,
    );
    assert!(p.connect("a", &principal(Some("a"), &[])).is_ok());
    assert!(p.connect("b", &principal(Some("a"), &[])).is_err());
}

#[test]
fn tokens_must_be_whole_segments_scenario_37() {
    let e = errors(
        r#"
authorizationPolicies:
  rules:
    - principals: {clientIds: [c]}
      brokerResources:
        - {method: Publish, topics: ["client-{principal.clientId}/#"]}
"#,
    );
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].field,
        "spec.authorizationPolicies.rules[0].brokerResources[0].topics[0]"
    );
    assert!(
        e[0].reason.contains("whole topic segment"),
        "{}",
        e[0].reason
    );
    let e = errors(
        r#"
authorizationPolicies:
  cache: Sometimes
  rules:
    - principals: {clientIds: ["{principal.nope}"]}
      brokerResources:
        - {method: Jump}
        - {method: Publish}
        - {method: Connect, topics: [a]}
        - {method: Subscribe, topics: ["a/#/b"]}
"#,
    );
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.authorizationPolicies.cache",
            "spec.authorizationPolicies.rules[0].principals.clientIds[0]",
            "spec.authorizationPolicies.rules[0].brokerResources[0].method",
            "spec.authorizationPolicies.rules[0].brokerResources[1].topics",
            "spec.authorizationPolicies.rules[0].brokerResources[2].topics",
            "spec.authorizationPolicies.rules[0].brokerResources[3].topics[0]",
        ],
        "{e:#?}"
    );
}

#[test]
fn subscribe_coverage_and_shared_subscriptions_scenario_38() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {clientIds: [c]}
      brokerResources:
        - {method: Connect}
        - {method: Subscribe, topics: ["a/#", "b/+"]}
"#,
    );
    let c = p.connect("c", &principal(None, &[])).unwrap();
    assert!(c.may_subscribe("a/+/b"));
    assert!(c.may_subscribe("a/#"));
    assert!(c.may_subscribe("b/x"));
    assert!(!c.may_subscribe("b/#"), "a/+ does not cover a/#");
    assert!(
        c.may_subscribe("$share/g/a/x"),
        "judged on the inner filter"
    );
    assert!(!c.may_subscribe("$share/g/b/#"));
}

#[test]
fn rules_are_a_union_and_cache_gives_the_same_answers_scenario_41() {
    let yaml = |cache: &str| {
        format!(
            r##"
authorizationPolicies:
  cache: {cache}
  rules:
    - principals: {{usernames: [u]}}
      brokerResources: [{{method: Connect}}, {{method: Publish, topics: [x/+]}}]
    - principals: {{attributes: [{{role: admin}}]}}
      brokerResources: [{{method: Publish, topics: ["#"]}}]
"##
        )
    };
    for cache in ["Enabled", "Disabled"] {
        let p = policy(&yaml(cache));
        let admin = p
            .connect("c", &principal(Some("u"), &[("role", "admin")]))
            .unwrap();
        let user = p.connect("d", &principal(Some("u"), &[])).unwrap();
        for _ in 0..3 {
            assert!(admin.may_publish("anything/at/all"));
            assert!(user.may_publish("x/1"));
            assert!(!user.may_publish("y/1"));
        }
    }
    // The admin rule alone grants no Connect.
    let p = policy(&yaml("Enabled"));
    assert!(
        p.connect("c", &principal(Some("v"), &[("role", "admin")]))
            .is_err()
    );
}

#[test]
fn state_store_rules_are_validated_and_kept_scenario_42() {
    let p = policy(
        r#"
authorizationPolicies:
  rules:
    - principals: {clientIds: [c]}
      brokerResources: [{method: Connect}]
      stateStoreResources:
        - {method: Read, keyType: Pattern, keys: ["clients/{principal.clientId}/*"]}
        - {method: ReadWrite, keyType: Binary, keys: [aGVsbG8=]}
"#,
    );
    assert_eq!(p.rules[0].state_store.len(), 2);
    let e = errors(
        r#"
authorizationPolicies:
  rules:
    - principals: {clientIds: [c]}
      brokerResources: [{method: Connect}]
      stateStoreResources:
        - {method: Delete, keys: [a]}
        - {method: Read, keyType: Pattern, keys: []}
"#,
    );
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.authorizationPolicies.rules[0].stateStoreResources[0].method",
            "spec.authorizationPolicies.rules[0].stateStoreResources[1].keys",
        ]
    );
}

/// Scenario 41: with the cache on, repeated publishes to one topic evaluate the rules once
/// (observable through the counters `/metrics` exports); with it off, every time. A new
/// policy gives new permissions and so a new, empty cache. (nextest runs each test in its own
/// process, so the process-wide counters start at zero here.)
#[test]
fn cache_is_observable_through_its_counters_scenario_41() {
    use std::sync::atomic::Ordering::Relaxed;
    let yaml = |cache: &str| {
        format!(
            "authorizationPolicies:\n  cache: {cache}\n  rules:\n    - principals: {{clientIds: [c]}}\n      brokerResources: [{{method: Connect}}, {{method: Publish, topics: [t/+]}}]\n"
        )
    };
    let counts = || (RULE_EVALUATIONS.load(Relaxed), CACHE_HITS.load(Relaxed));
    let start = counts();
    let cached = policy(&yaml("Enabled"))
        .connect("c", &principal(None, &[]))
        .unwrap();
    for _ in 0..3 {
        assert!(cached.may_publish("t/1"));
    }
    assert_eq!(counts(), (start.0 + 1, start.1 + 2));
    let uncached = policy(&yaml("Disabled"))
        .connect("c", &principal(None, &[]))
        .unwrap();
    for _ in 0..3 {
        assert!(uncached.may_publish("t/1"));
    }
    assert_eq!(counts(), (start.0 + 4, start.1 + 2));
    let fresh = policy(&yaml("Enabled"))
        .connect("c", &principal(None, &[]))
        .unwrap();
    assert!(fresh.may_publish("t/1"));
    assert_eq!(
        counts().0,
        start.0 + 5,
        "a new compilation starts with an empty cache"
    );
}
