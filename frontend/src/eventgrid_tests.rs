//! Event Grid model tests: one per rule of broker-spec §6.3, citing the acceptance scenarios
//! (§10) where there is one.

use super::*;
use crate::auth::test_principal as principal;

fn policy(yaml: &str) -> EventGridPolicy {
    let spec: Value = serde_yaml::from_str(yaml).expect("yaml");
    EventGridPolicy::compile("eg", &spec).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn errors(yaml: &str) -> Vec<AuthzError> {
    let spec: Value = serde_yaml::from_str(yaml).expect("yaml");
    EventGridPolicy::compile("eg", &spec).expect_err("must be rejected")
}

fn fields(e: &[AuthzError]) -> Vec<&str> {
    e.iter().map(|e| e.field.as_str()).collect()
}

/// A policy with one group defined by `query`, bound Publisher to `things/#`.
fn group_policy(query: &str) -> EventGridPolicy {
    policy(&format!(
        r#"
eventGrid:
  clientGroups:
    - name: grp
      query: {query:?}
  topicSpaces:
    - {{name: things, topicTemplates: ["things/#"]}}
  permissionBindings:
    - {{name: grp-pub, clientGroupName: grp, topicSpaceName: things, permission: Publisher}}
"#
    ))
}

/// Whether a client with these attributes (and authentication name `dev`) is in the group.
fn member(query: &str, attrs: &[(&str, &str)]) -> bool {
    group_policy(query)
        .connect("c", &principal(Some("dev"), attrs))
        .is_ok()
}

fn query_error(query: &str) -> AuthzError {
    let spec = serde_json::json!({"eventGrid": {
        "clientGroups": [{"name": "grp", "query": query}],
    }});
    let e = EventGridPolicy::compile("eg", &spec).expect_err(query);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().expect("one error")
}

const MACHINES: &str = r#"
eventGrid:
  topicSpaces:
    - name: telemetry
      topicTemplates: ['machines/${client.authenticationName}/telemetry']
  permissionBindings:
    - {name: all-telemetry, clientGroupName: $all, topicSpaceName: telemetry, permission: Publisher}
"#;

#[test]
fn authentication_name_template_scenario_57() {
    let p = policy(MACHINES);
    let machine1 = p.connect("s1", &principal(Some("machine1"), &[])).unwrap();
    assert!(machine1.may_publish("machines/machine1/telemetry"));
    assert!(!machine1.may_publish("machines/machine2/telemetry"));
    assert!(!machine1.may_publish("machines/machine1/other"));
    assert!(
        !machine1.may_subscribe("machines/machine1/telemetry"),
        "a Publisher binding grants no subscription"
    );
    assert_eq!(machine1.authentication_name(), "machine1");
    assert_eq!(machine1.groups(), ["$all"]);
    // The client id is the session name, not the identity: it plays no part.
    let other_session = p
        .connect("machine2", &principal(Some("machine1"), &[]))
        .unwrap();
    assert!(!other_session.may_publish("machines/machine2/telemetry"));
    // Through the Authorizer seam, as a port uses it.
    let authorizer = EventGridAuthorizer::new(Arc::new(p));
    let perms =
        crate::auth::Authorizer::connect(&authorizer, "s1", &principal(Some("machine2"), &[]))
            .unwrap();
    assert!(perms.may_publish("machines/machine2/telemetry"));
    assert!(!perms.may_publish("machines/machine1/telemetry"));
}

#[test]
fn authentication_name_from_an_attribute_scenario_56() {
    // The X509 method resolves the name from certificate fields into an attribute; the policy
    // reads it from there instead of the username.
    let p = policy(
        r#"
eventGrid:
  authenticationNameAttribute: authenticationName
  topicSpaces:
    - name: telemetry
      topicTemplates: ['machines/${client.authenticationName}/telemetry']
  clientGroups:
    - {name: named, query: 'authenticationName IN ["dev1", "dev2"]'}
  permissionBindings:
    - {name: named-pub, clientGroupName: named, topicSpaceName: telemetry, permission: Publisher}
"#,
    );
    assert_eq!(
        p.authentication_name_attribute(),
        Some("authenticationName")
    );
    let who = principal(Some("CN=dev1,O=x"), &[("authenticationName", "dev1")]);
    assert_eq!(p.authentication_name(&who), Some("dev1"));
    let dev1 = p.connect("s", &who).unwrap();
    assert!(dev1.may_publish("machines/dev1/telemetry"));
    assert!(!dev1.may_publish("machines/CN=dev1,O=x/telemetry"));
    // No such attribute: no identity, no CONNECT, whatever the username.
    let e = p
        .connect("s", &principal(Some("dev1"), &[]))
        .err()
        .expect("denied");
    assert!(e.contains("authenticationName"), "{e}");
    // A name outside the group's list.
    assert!(
        p.connect("s", &principal(None, &[("authenticationName", "dev3")]))
            .is_err()
    );
    // Without the setting the username is the name; no username, no CONNECT.
    let p = policy(MACHINES);
    assert_eq!(p.authentication_name_attribute(), None);
    assert!(p.connect("s", &principal(None, &[])).is_err());
    assert!(p.connect("s", &principal(Some(""), &[])).is_err());
}

#[test]
fn group_query_membership_scenario_59() {
    let q = r#"attributes.floor <= 5 and attributes.type = "sensor""#;
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("floor", "3"), ("type", "sensor")], true),
        (&[("floor", "5"), ("type", "sensor")], true),
        (&[("floor", "-2"), ("type", "sensor")], true),
        (&[("floor", "6"), ("type", "sensor")], false),
        (&[("floor", "10"), ("type", "sensor")], false),
        (&[("floor", "3"), ("type", "actuator")], false),
        (&[("floor", "3"), ("type", "Sensor")], false),
        (&[("floor", "3")], false),
        (&[("type", "sensor")], false),
        (&[], false),
    ];
    for (attrs, want) in cases {
        assert_eq!(member(q, attrs), *want, "{attrs:?}");
    }
    // Membership is evaluated on every CONNECT and re-authentication (the connection calls
    // `connect` again): the same identity with new attributes gets new permissions.
    let p = group_policy(q);
    let before = principal(Some("dev"), &[("floor", "3"), ("type", "sensor")]);
    let after = principal(Some("dev"), &[("floor", "7"), ("type", "sensor")]);
    assert!(p.connect("c", &before).unwrap().may_publish("things/x"));
    assert!(p.connect("c", &after).is_err());
    assert_eq!(p.groups_of(&before), vec!["$all", "grp"]);
    assert_eq!(p.groups_of(&after), vec!["$all"]);
}

#[test]
fn operators_precedence_and_missing_attributes() {
    let a = &[("a", "1"), ("b", "x"), ("c", "hello")];
    let cases: &[(&str, bool)] = &[
        ("$all", true),
        ("attributes.a = 1", true),
        ("attributes.a = '1'", true),
        ("attributes.a = \"01\"", true),
        ("attributes.a <> 1", false),
        ("attributes.a != 2", true),
        ("attributes.a < 2", true),
        ("attributes.a > 0", true),
        ("attributes.a >= 1", true),
        ("attributes.a <= 0", false),
        ("attributes.b = 'x'", true),
        ("attributes.b = 'X'", false),
        ("attributes.a=1 AND attributes.b='x'", true),
        // `and` binds tighter than `or`.
        (
            "attributes.a = 2 and attributes.b = 'y' or attributes.c = 'hello'",
            true,
        ),
        (
            "attributes.a = 2 and (attributes.b = 'y' or attributes.c = 'hello')",
            false,
        ),
        (
            "attributes.c = 'nope' or attributes.a = 2 or attributes.b = 'x'",
            true,
        ),
        ("not attributes.a = 2", true),
        ("NOT (attributes.a = 1 and attributes.b = 'x')", false),
        ("attributes.b IN ['w', 'x']", true),
        ("attributes.b in ['w']", false),
        ("attributes.a IN [3, 2, 1]", true),
        ("attributes.b NOT IN ['x']", false),
        ("attributes.b not in ['y']", true),
        ("authenticationName = 'dev'", true),
        ("authenticationName IN ['client1', 'dev']", true),
        ("authenticationName = 'DEV'", false),
        ("$all and attributes.a = 2", false),
        ("(((attributes.a = 1)))", true),
        // A missing attribute makes every comparison false, `<>` and IN included...
        ("attributes.missing = 'x'", false),
        ("attributes.missing <> 'x'", false),
        ("attributes.missing IN ['x']", false),
        ("attributes.missing < 5", false),
        // ...and only an explicit `not` turns that around.
        ("not attributes.missing = 'x'", true),
        ("attributes.missing NOT IN ['x']", true),
    ];
    for (q, want) in cases {
        assert_eq!(member(q, a), *want, "{q}");
    }
    // Escapes inside strings.
    assert!(member(r#"attributes.q = 'it\'s'"#, &[("q", "it's")]));
    assert!(member(
        r#"attributes.q = "say \"hi\"""#,
        &[("q", "say \"hi\"")]
    ));
    assert!(member(
        r#"attributes.q = "back\\slash""#,
        &[("q", "back\\slash")]
    ));
}

#[test]
fn numeric_versus_string_comparison() {
    // Both sides integers: numeric. "10" > "9" although it sorts first as text.
    assert!(member("attributes.n > 9", &[("n", "10")]));
    assert!(member("attributes.n > '9'", &[("n", "10")]));
    assert!(member("attributes.n = 10", &[("n", "+10")]));
    assert!(member("attributes.n >= -3", &[("n", "-3")]));
    // One side not an integer: byte-wise text comparison.
    assert!(!member("attributes.n > 9", &[("n", "10x")]));
    assert!(member("attributes.n < 'b'", &[("n", "abc")]));
    assert!(member("attributes.n > 'abc'", &[("n", "abd")]));
    assert!(!member("attributes.n = 10", &[("n", "ten")]));
    assert!(member("attributes.n <> 10", &[("n", "ten")]));
    // Integers beyond 64 bits are refused in a query; in an attribute they compare as text.
    assert!(member("attributes.n > 5", &[("n", "99999999999999999999")]));
    assert!(!member(
        "attributes.n > 5",
        &[("n", "10000000000000000000")]
    ));
}

#[test]
fn array_attributes_in_and_membership() {
    for tags in [
        r#"["motion","humidity"]"#,
        "[motion, humidity]",
        "['motion','humidity']",
    ] {
        let a = &[("sensors", tags)];
        assert!(member("attributes.sensors = 'motion'", a), "{tags}");
        assert!(member("attributes.sensors = 'humidity'", a), "{tags}");
        assert!(!member("attributes.sensors = 'light'", a), "{tags}");
        assert!(
            member("attributes.sensors IN ['light', 'humidity']", a),
            "{tags}"
        );
        assert!(
            !member("attributes.sensors IN ['light', 'sound']", a),
            "{tags}"
        );
        assert!(member("attributes.sensors <> 'light'", a), "{tags}");
        assert!(!member("attributes.sensors <> 'motion'", a), "{tags}");
        assert!(member("attributes.sensors NOT IN ['light']", a), "{tags}");
    }
    // Integer arrays compare numerically element by element; ordering means "some element".
    let floors = &[("floors", "[1, 7]")];
    assert!(member("attributes.floors = 7", floors));
    assert!(member("attributes.floors < 2", floors));
    assert!(!member("attributes.floors > 7", floors));
    assert!(member("attributes.floors = 7", &[("floors", "[1,7]")]));
    assert!(member("attributes.floors IN [7]", &[("floors", "[1,7]")]));
    // An empty list holds nothing.
    assert!(!member("attributes.t = ''", &[("t", "[]")]));
    assert!(!member("attributes.t IN ['a']", &[("t", "[ ]")]));
    assert!(member("attributes.t <> 'a'", &[("t", "[]")]));
    // The documented form of scenario 58's `tags=[a]`.
    assert!(member("attributes.tags = 'a'", &[("tags", "[a]")]));
    // A value merely containing brackets is a single value.
    assert!(member("attributes.t = 'a[1]'", &[("t", "a[1]")]));
    // The query's own IN list over a scalar attribute (Event Grid's documented example).
    assert!(member(
        r#"attributes.sensors IN ["motion", "humidity", "temperature"] and attributes.floor <= 5"#,
        &[("sensors", "humidity"), ("floor", "2")]
    ));
}

#[test]
fn query_errors_name_the_field_and_the_column() {
    let cases: &[(&str, &str)] = &[
        ("", "empty query"),
        ("   ", "empty query"),
        (
            "attributes.floor <=",
            "at column 20: expected a string or an integer, found the end",
        ),
        (
            "attributes.floor <= 5 and",
            "at column 26: expected attributes.NAME",
        ),
        (
            "attributes.floor <= 5 attributes.x = 1",
            "at column 23: expected 'and', 'or'",
        ),
        (
            "attributes.floor 5",
            "at column 18: expected a comparison (=, <>, !=, <, >, <=, >=) or IN after attributes.floor, found number 5",
        ),
        (
            "(attributes.a = 1",
            "at column 18: expected ')', found the end",
        ),
        (
            "attributes.a = 1)",
            "at column 17: expected 'and', 'or' or the end of the query, found ')'",
        ),
        ("floor = 1", "at column 1: unknown operand \"floor\""),
        (
            "attributes. = 1",
            "at column 1: an attribute name is missing",
        ),
        ("attributes.a.b = 1", "at column 1: attribute name \"a.b\""),
        ("attributes.a = 'open", "at column 16: unterminated string"),
        (
            "attributes.a == 1",
            "at column 15: expected a string or an integer, found '='",
        ),
        (
            "attributes.a ! 1",
            "at column 14: '!' must be followed by '='",
        ),
        (
            "attributes.a = 1 & attributes.b = 2",
            "at column 18: unexpected character '&'",
        ),
        (
            "attributes.a IN 1",
            "at column 17: expected '[' starting the list of values",
        ),
        (
            "attributes.a IN []",
            "at column 18: expected a string or an integer, found ']'",
        ),
        ("attributes.a IN [1 2]", "at column 20: expected ',' or ']'"),
        (
            "attributes.a = x",
            "at column 16: expected a string or an integer, found 'x'",
        ),
        (
            "attributes.a = 12ab",
            "at column 16: \"12ab\" is not a number",
        ),
        (
            "attributes.a = 99999999999999999999",
            "at column 16: 99999999999999999999 is out of range",
        ),
        ("$any", "at column 1: unknown name \"$any\""),
        (
            "and attributes.a = 1",
            "at column 1: expected attributes.NAME, authenticationName, $all",
        ),
        ("not", "at column 4: expected attributes.NAME"),
        // Columns count characters, not bytes.
        (
            "attributes.a = 'ü' or",
            "at column 22: expected attributes.NAME",
        ),
    ];
    for (q, want) in cases {
        let e = query_error(q);
        assert_eq!(e.field, "spec.eventGrid.clientGroups[0].query", "{q}");
        assert_eq!(e.policy, "eg");
        assert!(
            e.reason.contains(want),
            "{q:?}: {:?} lacks {want:?}",
            e.reason
        );
    }
    let shown = query_error("attributes.floor <=").to_string();
    assert!(
        shown.starts_with(
            r#"BrokerAuthorization "eg" spec.eventGrid.clientGroups[0].query: at column 20"#
        ),
        "{shown}"
    );
}

#[test]
fn hostile_queries_are_refused_without_panicking() {
    let deep = format!(
        "{}attributes.a = 1{}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(query_error(&deep).reason.contains("nested more than"));
    let nots = format!("{}attributes.a = 1", "not ".repeat(10_000));
    assert!(query_error(&nots).reason.contains("nested more than"));
    // Nesting within the limit is fine.
    assert!(member(
        &format!("{}attributes.a = 1{}", "(".repeat(20), ")".repeat(20)),
        &[("a", "1")]
    ));
    // Every string of up to four characters from the query alphabet parses or is refused.
    let alphabet = [
        "(", ")", "[", "]", ",", "=", "<", ">", "!", "'", "\"", "\\", "-", "1", "$", "a", " ", "ü",
    ];
    let mut queries = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for q in &queries {
            for c in alphabet {
                next.push(format!("{q}{c}"));
            }
        }
        for q in &next {
            let _ = parse_query(q);
            let _ = parse_query(&format!("attributes.x {q}"));
        }
        queries = next;
    }
}

#[test]
fn partial_segment_templates() {
    let p = policy(
        r#"
eventGrid:
  topicSpaces:
    - name: plant
      topicTemplates:
        - 'machines/${client.authenticationName}.factory1/temp'
        - 'site-${client.attributes.site}/${client.authenticationName}-${client.attributes.line}/+'
        - 'fleet/${client.attributes.fleet}/#'
  permissionBindings:
    - {name: plant-pub, clientGroupName: $all, topicSpaceName: plant, permission: Publisher}
    - {name: plant-sub, clientGroupName: $all, topicSpaceName: plant, permission: Subscriber}
"#,
    );
    let m1 = p
        .connect(
            "s",
            &principal(
                Some("m1"),
                &[("site", "berlin"), ("line", "7"), ("fleet", "f1")],
            ),
        )
        .unwrap();
    assert!(m1.may_publish("machines/m1.factory1/temp"));
    assert!(!m1.may_publish("machines/m2.factory1/temp"));
    assert!(!m1.may_publish("machines/m1.factory2/temp"));
    assert!(m1.may_publish("site-berlin/m1-7/status"));
    assert!(!m1.may_publish("site-paris/m1-7/status"));
    assert!(!m1.may_publish("site-berlin/m1-8/status"));
    assert!(m1.may_publish("fleet/f1/a/b/c"));
    assert!(m1.may_publish("fleet/f1"));
    assert!(!m1.may_publish("fleet/f2/a"));
    assert!(m1.may_subscribe("site-berlin/m1-7/+"));
    assert!(m1.may_subscribe("fleet/f1/#"));
    assert!(!m1.may_subscribe("site-berlin/+/+"));
    // Missing attributes: those templates do not apply, the others still do.
    let m2 = p.connect("s", &principal(Some("m2"), &[])).unwrap();
    assert!(m2.may_publish("machines/m2.factory1/temp"));
    assert!(!m2.may_publish("site-/m2-/status"));
    assert!(!m2.may_publish("fleet//x"));
}

#[test]
fn substituted_values_cannot_widen_access() {
    let p = policy(
        r#"
eventGrid:
  topicSpaces:
    - name: own
      topicTemplates:
        - 'machines/${client.authenticationName}/telemetry'
        - 'fleet/${client.attributes.fleet}/status'
        - 'pre-${client.attributes.fleet}/x'
  permissionBindings:
    - {name: own-pub, clientGroupName: $all, topicSpaceName: own, permission: Publisher}
    - {name: own-sub, clientGroupName: $all, topicSpaceName: own, permission: Subscriber}
"#,
    );
    for bad in [
        "+", "#", "a/+", "a/#", "a/b", "x+", "/", "", "[a,b]", "a\0b",
    ] {
        let c = p
            .connect("s", &principal(Some(bad), &[("fleet", bad)]))
            .map(Some)
            .unwrap_or(None);
        // An empty username is no identity at all; the others connect with nothing rendered.
        let Some(c) = c else {
            assert_eq!(bad, "");
            continue;
        };
        for topic in [
            "machines/m1/telemetry",
            "machines/a/b/telemetry",
            "machines/a/x/telemetry",
            "fleet/f1/status",
            "fleet/a/b/status",
            "pre-a/b/x",
            "pre-x/x",
        ] {
            assert!(!c.may_publish(topic), "value {bad:?} reached {topic}");
        }
        for filter in ["machines/+/telemetry", "fleet/#", "#", "fleet/a/+/status"] {
            assert!(!c.may_subscribe(filter), "value {bad:?} reached {filter}");
        }
    }
    // A client whose name is clean but whose attribute is hostile keeps its own template.
    let c = p
        .connect("s", &principal(Some("m1"), &[("fleet", "+")]))
        .unwrap();
    assert!(c.may_publish("machines/m1/telemetry"));
    assert!(!c.may_publish("fleet/f1/status"));
    assert!(!c.may_subscribe("fleet/+/status"));
}

#[test]
fn subscriber_coverage_and_shared_subscriptions() {
    let p = policy(
        r#"
eventGrid:
  topicSpaces:
    - name: fleet
      topicTemplates: ['fleet/${client.attributes.fleet}/#', 'alerts/+']
  permissionBindings:
    - {name: fleet-sub, clientGroupName: $all, topicSpaceName: fleet, permission: Subscriber}
"#,
    );
    let c = p
        .connect("s", &principal(Some("app"), &[("fleet", "f1")]))
        .unwrap();
    assert!(c.may_subscribe("fleet/f1/#"));
    assert!(c.may_subscribe("fleet/f1/+/temp"));
    assert!(c.may_subscribe("fleet/f1"));
    assert!(!c.may_subscribe("fleet/#"));
    assert!(!c.may_subscribe("fleet/+/x"));
    assert!(!c.may_subscribe("fleet/f2/x"));
    assert!(c.may_subscribe("alerts/x"));
    assert!(c.may_subscribe("alerts/+"));
    assert!(!c.may_subscribe("alerts/#"), "'+' does not cover '#'");
    assert!(c.may_subscribe("$share/workers/fleet/f1/jobs/+"));
    assert!(c.may_subscribe("$share/workers/alerts/x"));
    assert!(!c.may_subscribe("$share/workers/fleet/f2/jobs"));
    assert!(!c.may_subscribe("$share/workers/alerts/#"));
    assert!(!c.may_subscribe("$share//fleet/f1/x"), "malformed");
    assert!(!c.may_subscribe("fleet/f1/#/x"), "malformed");
    assert!(!c.may_publish("fleet/f1/x"), "Subscriber grants no publish");
}

#[test]
fn connect_needs_a_group_with_a_binding() {
    let p = policy(
        r#"
eventGrid:
  clientGroups:
    - {name: sensors, query: 'attributes.type = "sensor"'}
    - {name: unbound, query: '$all'}
  topicSpaces:
    - {name: telemetry, topicTemplates: ['t/#']}
  permissionBindings:
    - {name: sensors-pub, clientGroupName: sensors, topicSpaceName: telemetry, permission: Publisher}
"#,
    );
    assert!(
        p.connect("c", &principal(Some("s1"), &[("type", "sensor")]))
            .is_ok()
    );
    let e = p
        .connect("c", &principal(Some("app"), &[("type", "app")]))
        .err()
        .expect("denied");
    assert!(
        e.contains("no client group with a permission binding"),
        "{e}"
    );
    assert!(e.contains("$all, unbound"), "{e}");
    // No bindings at all: nobody connects (the allow-only counterpart of AIO's empty rules).
    for yaml in [
        "eventGrid: {}",
        "eventGrid: {topicSpaces: [{name: abc, topicTemplates: ['#']}]}",
    ] {
        let p = policy(yaml);
        assert!(
            p.connect("c", &principal(Some("u"), &[])).is_err(),
            "{yaml}"
        );
    }
    // A binding whose templates render nothing for the client still lets it connect.
    let p = policy(
        r#"
eventGrid:
  topicSpaces: [{name: per-site, topicTemplates: ['s/${client.attributes.site}']}]
  permissionBindings:
    - {name: all-sites, clientGroupName: $all, topicSpaceName: per-site, permission: Publisher}
"#,
    );
    let c = p.connect("c", &principal(Some("u"), &[])).unwrap();
    assert!(!c.may_publish("s/x"));
}

#[test]
fn bindings_union_over_groups_and_spaces() {
    let p = policy(
        r#"
eventGrid:
  clientGroups:
    - {name: floor-low, query: 'attributes.floor <= 5'}
    - {name: admins, query: 'authenticationName IN ["root"] or attributes.role = "admin"'}
  topicSpaces:
    - {name: low, topicTemplates: ['floors/low/#']}
    - {name: everything, topicTemplates: ['#']}
  permissionBindings:
    - {name: low-pub, clientGroupName: floor-low, topicSpaceName: low, permission: Publisher}
    - {name: low-sub, clientGroupName: $all, topicSpaceName: low, permission: Subscriber}
    - {name: admin-pub, clientGroupName: admins, topicSpaceName: everything, permission: Publisher}
  maxSessionsPerAuthenticationName: 3
"#,
    );
    assert_eq!(p.max_sessions_per_authentication_name(), 3);
    let low = p
        .connect("c", &principal(Some("d"), &[("floor", "2")]))
        .unwrap();
    assert!(low.may_publish("floors/low/x"));
    assert!(!low.may_publish("floors/high/x"));
    assert!(low.may_subscribe("floors/low/+"));
    let high = p
        .connect("c", &principal(Some("d"), &[("floor", "9")]))
        .unwrap();
    assert!(!high.may_publish("floors/low/x"));
    assert!(high.may_subscribe("floors/low/+"));
    let root = p.connect("c", &principal(Some("root"), &[])).unwrap();
    assert!(root.may_publish("anything/at/all"));
    assert!(
        !root.may_publish("$SYS/x"),
        "'#' does not reach '$' topics [MQTT-4.7.2-1]"
    );
    assert_eq!(root.groups(), ["$all", "admins"]);
}

#[test]
fn configuration_errors_name_the_field() {
    let e = errors(
        r#"
eventGrid:
  clientGroup: []
  maxSessionsPerAuthenticationName: 0
  authenticationNameAttribute: ""
  clientGroups:
    - {name: ok-group, query: '$all'}
    - {name: ok-group, query: '$all'}
    - {name: $all, query: '$all'}
    - {name: x, query: '$all'}
    - {name: has space, query: '$all'}
    - {query: '$all', extra: 1}
    - {name: no-query}
    - not-a-map
  topicSpaces:
    - {name: space-a, topicTemplates: ['a/${client.nope}']}
    - {name: space-b, topicTemplates: []}
    - {name: space-c}
    - name: space-d
      topicTemplates:
        - 'a/${client.authenticationName}+'
        - 'a/#/b'
        - '$share/g/a'
        - 5
        - 'x/${client.attributes.a'
        - 'y/${client.attributes.}'
  permissionBindings:
    - {name: bind-a, clientGroupName: nobody, topicSpaceName: nowhere, permission: Owner}
    - {name: bind-a, clientGroupName: $all, topicSpaceName: space-b, permission: Publisher}
"#,
    );
    let got: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.field.as_str(), e.reason.as_str()))
        .collect();
    let want: &[(&str, &str)] = &[
        ("spec.eventGrid.clientGroup", "unknown field"),
        ("spec.eventGrid.authenticationNameAttribute", "non-empty"),
        (
            "spec.eventGrid.maxSessionsPerAuthenticationName",
            "from 1 to 100",
        ),
        (
            "spec.eventGrid.clientGroups[1].name",
            "already the name of entry [0]",
        ),
        ("spec.eventGrid.clientGroups[2].name", "built-in group"),
        ("spec.eventGrid.clientGroups[3].name", "3 to 50"),
        ("spec.eventGrid.clientGroups[4].name", "3 to 50"),
        ("spec.eventGrid.clientGroups[5].extra", "unknown field"),
        ("spec.eventGrid.clientGroups[5].name", "required"),
        ("spec.eventGrid.clientGroups[6].query", "required"),
        ("spec.eventGrid.clientGroups[7]", "must be a map"),
        (
            "spec.eventGrid.topicSpaces[0].topicTemplates[0]",
            "at column 3: unknown variable ${client.nope}",
        ),
        (
            "spec.eventGrid.topicSpaces[1].topicTemplates",
            "at least one",
        ),
        ("spec.eventGrid.topicSpaces[2].topicTemplates", "required"),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[0]",
            "not a topic filter",
        ),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[1]",
            "not a topic filter",
        ),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[2]",
            "not a shared subscription",
        ),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[3]",
            "must be a string",
        ),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[4]",
            "at column 3: unclosed",
        ),
        (
            "spec.eventGrid.topicSpaces[3].topicTemplates[5]",
            "at column 3: an attribute name is missing",
        ),
        (
            "spec.eventGrid.permissionBindings[0].clientGroupName",
            "no such client group",
        ),
        (
            "spec.eventGrid.permissionBindings[0].topicSpaceName",
            "no such topic space",
        ),
        (
            "spec.eventGrid.permissionBindings[0].permission",
            "expected Publisher or Subscriber",
        ),
        (
            "spec.eventGrid.permissionBindings[1].name",
            "already the name of entry [0]",
        ),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((field, reason), (want_field, want_reason)) in got.iter().zip(want) {
        assert_eq!(field, want_field, "{got:#?}");
        assert!(
            reason.contains(want_reason),
            "{field}: {reason:?} lacks {want_reason:?}"
        );
    }
    for bad in ["101", "-1", "'2'", "1.5"] {
        let e = errors(&format!(
            "eventGrid: {{maxSessionsPerAuthenticationName: {bad}}}"
        ));
        assert_eq!(
            fields(&e),
            ["spec.eventGrid.maxSessionsPerAuthenticationName"],
            "{bad}"
        );
    }
    let e = errors("eventGrid: [a]");
    assert_eq!(fields(&e), ["spec.eventGrid"]);
    let e = errors("eventGrid: {clientGroups: {a: b}}");
    assert_eq!(fields(&e), ["spec.eventGrid.clientGroups"]);
}

#[test]
fn session_settings_are_exposed_for_the_router() {
    let p = policy("eventGrid: {}");
    assert_eq!(
        p.max_sessions_per_authentication_name(),
        DEFAULT_MAX_SESSIONS
    );
    assert_eq!(p.max_sessions_per_authentication_name(), 1);
    let p = policy("eventGrid: {maxSessionsPerAuthenticationName: 100}");
    assert_eq!(p.max_sessions_per_authentication_name(), 100);
    // Scenario 54 needs the identity of a session: the same function the router will call.
    let p = policy(
        "eventGrid: {authenticationNameAttribute: egName, maxSessionsPerAuthenticationName: 2}",
    );
    assert_eq!(
        p.authentication_name(&principal(Some("ignored"), &[("egName", "app")])),
        Some("app")
    );
    assert_eq!(p.max_sessions_per_authentication_name(), 2);
}

#[test]
fn a_broker_authorization_holds_one_model() {
    use crate::authz::Policy;
    let spec: Value = serde_yaml::from_str(
        r#"
authorizationPolicies: {rules: []}
eventGrid: {}
"#,
    )
    .unwrap();
    let e = Policy::compile("both", &spec).expect_err("both models");
    assert_eq!(fields(&e), ["spec.eventGrid"]);
    assert!(
        e[0].reason.contains("cannot be combined"),
        "{}",
        e[0].reason
    );

    let spec: Value = serde_yaml::from_str(MACHINES).unwrap();
    let compiled = Policy::compile("eg", &spec).unwrap();
    assert!(matches!(compiled, Policy::EventGrid(_)));
    let perms = compiled
        .authorizer()
        .connect("s1", &principal(Some("machine1"), &[]))
        .unwrap();
    assert!(perms.may_publish("machines/machine1/telemetry"));
    assert!(!perms.may_publish("machines/machine2/telemetry"));

    let spec: Value = serde_yaml::from_str("authorizationPolicies: {rules: []}").unwrap();
    let compiled = Policy::compile("abac", &spec).unwrap();
    assert!(matches!(compiled, Policy::Abac(_)));
    assert!(
        compiled
            .authorizer()
            .connect("c", &principal(Some("u"), &[]))
            .is_err(),
        "AIO: no rules deny every CONNECT"
    );
    // Neither model: the AIO field is required, as before.
    let e = Policy::compile("none", &serde_json::json!({})).expect_err("no model");
    assert_eq!(fields(&e), ["spec.authorizationPolicies"]);
}

#[test]
fn policy_replacement_applies_to_the_next_connect() {
    let authorizer = EventGridAuthorizer::new(Arc::new(policy(MACHINES)));
    let who = principal(Some("m1"), &[]);
    let before = crate::auth::Authorizer::connect(&authorizer, "s", &who).unwrap();
    authorizer.replace(Arc::new(policy("eventGrid: {}")));
    assert!(crate::auth::Authorizer::connect(&authorizer, "s", &who).is_err());
    // Already-connected clients keep what they were granted until they reconnect.
    assert!(before.may_publish("machines/m1/telemetry"));
    assert_eq!(
        authorizer.policy().max_sessions_per_authentication_name(),
        1
    );
}
