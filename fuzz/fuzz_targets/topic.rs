//! Topic validation and matching. The input, if UTF-8, is split at its first '\n' into a
//! filter and a topic name (no '\n': the whole input is both):
//! - the validators and `parse_shared` never panic, on either string;
//! - for a valid non-shared filter and a valid topic name, `matches` does not panic, agrees
//!   with `covers` (a topic name is a filter that matches exactly itself), and `covers(f, f)`.
//!
//! The same bytes are then read a second way, over the alphabet `a b $ / + #` that makes
//! wildcard structure likely, as two filters and a topic: `covers(outer, inner)` must be
//! sound, i.e. never claim to cover a filter that matches a topic `outer` does not match.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt::topic::{covers, matches, parse_shared, validate_topic_filter, validate_topic_name};

/// Validates both ways: (is a valid non-shared filter, is a valid topic name).
fn classify(s: &str) -> (bool, bool) {
    let filter_ok = validate_topic_filter(s).is_ok();
    let shared = parse_shared(s);
    if filter_ok {
        // A valid filter's `$share/` form parses, so its validity is decided by parse_shared.
        assert!(shared.is_ok(), "valid filter {s:?} but parse_shared: {shared:?}");
    }
    let plain_filter = filter_ok && matches!(shared, Ok(None));
    if let Ok(Some((group, inner))) = shared {
        assert!(filter_ok, "parse_shared accepted {s:?} but the validator did not");
        // (`inner` is judged as a plain filter, so it need not pass `validate_topic_filter`:
        // `$share/g/$share/x` shares the plain filter `$share/x`.)
        assert!(
            !group.is_empty() && !group.contains(['/', '+', '#']) && !inner.is_empty(),
            "parse_shared({s:?}) = ({group:?}, {inner:?})"
        );
    }
    (plain_filter, validate_topic_name(s).is_ok())
}

fn check_pair(filter: &str, topic: &str) {
    let (filter_ok, _) = classify(filter);
    let (_, topic_ok) = classify(topic);
    if filter_ok {
        assert!(covers(filter, filter), "covers({filter:?}, itself) is false");
    }
    if filter_ok && topic_ok {
        let m = matches(filter, topic);
        assert_eq!(
            m,
            covers(filter, topic),
            "matches({filter:?}, {topic:?}) = {m} but covers disagrees"
        );
    }
}

const ALPHABET: [char; 6] = ['a', 'b', '$', '/', '+', '#'];

fn small(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()])
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (filter, topic) = s.split_once('\n').unwrap_or((s, s));
        check_pair(filter, topic);
        check_pair(topic, filter);
    }

    // Alphabet form: bytes 0xFF separate outer | inner | topic.
    let mut parts = data.splitn(3, |&b| b == 0xFF).map(small);
    let (Some(outer), Some(inner), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    check_pair(&outer, &topic);
    check_pair(&inner, &topic);
    let (outer_ok, _) = classify(&outer);
    let (inner_ok, _) = classify(&inner);
    let (_, topic_ok) = classify(&topic);
    if outer_ok && inner_ok && topic_ok && covers(&outer, &inner) && matches(&inner, &topic) {
        assert!(
            matches(&outer, &topic),
            "covers({outer:?}, {inner:?}) but {inner:?} matches {topic:?} and {outer:?} does not"
        );
    }
});
