//! Topic names and topic filters: validation, one-filter-against-one-topic matching, filter
//! containment, and the `$share/{group}/{filter}` prefix (MQTT 5.0 §4.7 and §4.8.2).
//!
//! This module is pure string logic. It is not the subscription index (matching one topic
//! against every subscription is [`crate::trie`]), it does not decode UTF-8 (the codec hands
//! us `&str`), and it knows nothing of protocol versions, sessions or authorization: whether
//! `$share/` means anything for a 3.1.1 client, and whether a client may subscribe to a filter,
//! are the caller's decisions. [`matches`] and [`covers`] trust their inputs to be valid; run
//! the validators on anything that came off the wire first.

use crate::ProtocolError;

/// The longest topic name or filter, in bytes: the length prefix of an MQTT string is a u16
/// [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65535;

const SHARE_PREFIX: &str = "$share/";

/// A PUBLISH topic name: non-empty, no '+' or '#', no U+0000 ([MQTT-4.7.3-1], [MQTT-3.3.2-2]).
pub fn validate_topic_name(name: &str) -> Result<(), ProtocolError> {
    check_string(name)?;
    if name.contains(['+', '#']) {
        return Err(ProtocolError::WildcardInTopicName(name.to_owned()));
    }
    Ok(())
}

/// A SUBSCRIBE/UNSUBSCRIBE filter: non-empty, '#' only as the last whole level, '+' only whole
/// levels, including the `$share/{group}/{filter}` form (group non-empty, no '+', '#' or '/';
/// inner filter non-empty and valid) [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn validate_topic_filter(filter: &str) -> Result<(), ProtocolError> {
    check_string(filter)?;
    if parse_shared(filter)?.is_none() {
        check_levels(filter, filter)?;
    }
    Ok(())
}

/// If `filter` is a shared subscription `$share/group/inner`, returns `Some((group, inner))`;
/// malformed => `Err`.
///
/// A shared filter is validated completely (group and inner filter), because the caller is about
/// to put `inner` into the trie. Anything not starting with `$share/` is `Ok(None)` without
/// being judged: that is [`validate_topic_filter`]'s job. A bare `$share` (no slash) is an
/// ordinary filter that matches the topic `$share`, since the spec only reserves the `$share/`
/// prefix.
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, ProtocolError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let malformed = || ProtocolError::InvalidSharedSubscription(filter.to_owned());
    // Splitting at the first '/' is what makes "no '/' in the group" hold by construction.
    let (group, inner) = rest.split_once('/').ok_or_else(malformed)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(malformed());
    }
    check_string(filter)?;
    check_levels(inner, filter)?;
    Ok(Some((group, inner)))
}

/// True if the (non-shared, valid) filter matches the (valid) topic name, incl. the rule that
/// topics starting with '$' are not matched by filters whose first level is '+' or '#'
/// [MQTT-4.7.2-1]; 'sport/#' matches 'sport'; '+' matches an empty level.
pub fn matches(filter: &str, topic: &str) -> bool {
    // In a valid filter a leading '+' or '#' is necessarily a whole first level.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // '#' also matches zero remaining levels, which is how "sport/#" matches "sport".
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic matched by `inner` is also matched by `outer` (both valid non-shared
/// filters). e.g. covers("a/#", "a/+/b") == true; covers("a/+", "a/#") == false;
/// covers("#", "$SYS/x") == false; covers("a/#","a")==true.
///
/// Exact, not a conservative approximation: it is tested against brute force over an
/// exhaustive set of topics, because an authorization check built on it must neither grant
/// a filter that reaches beyond the allowed one nor refuse one that does not.
pub fn covers(outer: &str, inner: &str) -> bool {
    // A leading '+'/'#' in `outer` excludes '$' topics [MQTT-4.7.2-1]. `inner` can only reach
    // them through a literal first level starting with '$'; a wildcard `inner` never does, so
    // wildcard-vs-wildcard needs no special case.
    if outer.starts_with(['+', '#']) && inner.starts_with('$') {
        return false;
    }
    // A trailing '#' in `inner` also matches the topic made of the levels before it ("a/#"
    // matches "a"), except when that topic would be the empty string, which is not a topic:
    // "#" (no levels before) and "/#" (one empty level before).
    let inner_matches_parent = inner != "#" && inner != "/#";
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            // `inner` ends in '#' here but `outer` does not yet: `inner` matches one or more
            // further levels, and maybe zero. "+/#" covers one or more but not zero, so it is
            // enough only when zero is impossible; hence covers("+/#", "#") is true.
            (Some(ol), Some("#")) => {
                return !inner_matches_parent && ol == "+" && o.next() == Some("#");
            }
            // Both '+' and a literal in `inner` stand for exactly one level.
            (Some("+"), Some(_)) => {}
            // `outer` is a literal here, so `inner` must be the same literal ('+' would reach
            // other levels too).
            (Some(ol), Some(il)) if ol == il => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Rules shared by names and filters, checked on the whole string as sent.
fn check_string(s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(ProtocolError::EmptyTopic);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(ProtocolError::TopicTooLong(s.len()));
    }
    // [MQTT-4.7.3-2]. The codec already rejects U+0000 in every string, but filters and names
    // also arrive from elsewhere (configuration, bridges, the admin API).
    if s.contains('\0') {
        return Err(ProtocolError::NullCharacter);
    }
    Ok(())
}

/// Wildcard placement in a plain filter. `whole` is what the error reports, so that a bad inner
/// filter of a shared subscription is shown as the client sent it.
fn check_levels(levels: &str, whole: &str) -> Result<(), ProtocolError> {
    let mut it = levels.split('/').peekable();
    while let Some(level) = it.next() {
        if level.contains('#') && (level != "#" || it.peek().is_some()) {
            return Err(ProtocolError::InvalidMultiLevelWildcard(whole.to_owned()));
        }
        if level.contains('+') && level != "+" {
            return Err(ProtocolError::InvalidSingleLevelWildcard(whole.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolError as E;

    #[test]
    fn topic_names() {
        let long = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, Result<(), E>)] = &[
            ("sport/tennis/player1", Ok(())),
            ("sport/tennis/player1/ranking", Ok(())),
            ("/finance", Ok(())),
            ("/", Ok(())),
            ("a//b", Ok(())),
            ("a/", Ok(())),
            ("$SYS/monitor/Clients", Ok(())),
            ("Accounts payable", Ok(())),
            ("ACCOUNTS", Ok(())),
            ("$share/g/a", Ok(())),
            ("ünï/cødé", Ok(())),
            (&long, Ok(())),
            ("", Err(E::EmptyTopic)),
            (&too_long, Err(E::TopicTooLong(MAX_TOPIC_LEN + 1))),
            ("a\0b", Err(E::NullCharacter)),
            ("sport/+", Err(E::WildcardInTopicName("sport/+".into()))),
            ("sport/#", Err(E::WildcardInTopicName("sport/#".into()))),
            ("sport+", Err(E::WildcardInTopicName("sport+".into()))),
            ("#", Err(E::WildcardInTopicName("#".into()))),
            ("+", Err(E::WildcardInTopicName("+".into()))),
        ];
        for (name, want) in cases {
            assert_eq!(&validate_topic_name(name), want, "{name:?}");
        }
    }

    #[test]
    fn topic_filters() {
        let multi = |f: &str| Err(E::InvalidMultiLevelWildcard(f.into()));
        let single = |f: &str| Err(E::InvalidSingleLevelWildcard(f.into()));
        let shared = |f: &str| Err(E::InvalidSharedSubscription(f.into()));
        let cases: &[(&str, Result<(), E>)] = &[
            // §4.7.1.2
            ("sport/tennis/player1/#", Ok(())),
            ("sport/#", Ok(())),
            ("#", Ok(())),
            ("sport/tennis/#", Ok(())),
            ("sport/tennis#", multi("sport/tennis#")),
            ("sport/tennis/#/ranking", multi("sport/tennis/#/ranking")),
            ("#/", multi("#/")),
            ("##", multi("##")),
            ("/#", Ok(())),
            // §4.7.1.3
            ("+", Ok(())),
            ("+/tennis/#", Ok(())),
            ("sport+", single("sport+")),
            ("sport/+/player1", Ok(())),
            ("+/+", Ok(())),
            ("/+", Ok(())),
            ("+/", Ok(())),
            ("++", single("++")),
            ("a/+b/c", single("a/+b/c")),
            ("+#", multi("+#")),
            // §4.7.2
            ("$SYS/#", Ok(())),
            ("$SYS/monitor/+", Ok(())),
            ("+/monitor/Clients", Ok(())),
            // plain levels, empty levels
            ("a//b", Ok(())),
            ("/", Ok(())),
            ("$share", Ok(())),
            ("$shared/g/a", Ok(())),
            ("", Err(E::EmptyTopic)),
            ("a/\0", Err(E::NullCharacter)),
            // §4.8.2
            ("$share/g/a/b", Ok(())),
            ("$share/consumer1/sport/tennis/+", Ok(())),
            ("$share/consumer1//finance", Ok(())),
            ("$share/g/#", Ok(())),
            ("$share/g/+", Ok(())),
            ("$share/g/$SYS/#", Ok(())),
            ("$share/g//", Ok(())),
            ("$share//a", shared("$share//a")),
            ("$share/g", shared("$share/g")),
            ("$share/g/", shared("$share/g/")),
            ("$share/", shared("$share/")),
            ("$share/g+/a", shared("$share/g+/a")),
            ("$share/+/a", shared("$share/+/a")),
            ("$share/#/a", shared("$share/#/a")),
            ("$share/g#/a", shared("$share/g#/a")),
            ("$share/g/a#", multi("$share/g/a#")),
            ("$share/g/#/a", multi("$share/g/#/a")),
            ("$share/g/a+", single("$share/g/a+")),
            ("$share/g\0/a", Err(E::NullCharacter)),
        ];
        for (filter, want) in cases {
            assert_eq!(&validate_topic_filter(filter), want, "{filter:?}");
        }
        let long = format!("a/{}", "+/".repeat(MAX_TOPIC_LEN / 2));
        assert_eq!(
            validate_topic_filter(&long),
            Err(E::TopicTooLong(long.len()))
        );
    }

    #[test]
    fn shared_parsing() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("$share/g/a/b", Some(("g", "a/b"))),
            ("$share/consumer1//finance", Some(("consumer1", "/finance"))),
            (
                "$share/consumer2/sport/tennis/+",
                Some(("consumer2", "sport/tennis/+")),
            ),
            ("$share/g/#", Some(("g", "#"))),
            ("$share/g/$share/h/x", Some(("g", "$share/h/x"))),
            ("$share", None),
            ("$SHARE/g/a", None),
            ("a/$share/g/a", None),
            ("sport/#", None),
            // Not judged: validate_topic_filter's job.
            ("sport+", None),
        ];
        for (filter, want) in cases {
            assert_eq!(parse_shared(filter), Ok(*want), "{filter:?}");
        }
        for bad in [
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/g/a#",
        ] {
            assert!(parse_shared(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matching() {
        // (filter, topic, matches)
        let cases: &[(&str, &str, bool)] = &[
            // §4.7.1.2
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/tennis/player1/#", "sport/tennis", false),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("#", "sport", true),
            ("#", "/", true),
            ("#", "a/b/c", true),
            // §4.7.1.3
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "finance", true),
            ("+", "/", false),
            ("+/+", "/", true),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/tennis/x/y", true),
            ("+/tennis/#", "sport/golf", false),
            // §4.7.2: '$' topics
            ("#", "$SYS/monitor/Clients", false),
            ("#", "$SYS", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("+", "$SYS", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/+", "a/$b", true),
            ("a/#", "a/$b/c", true),
            // §4.7.3: case and spaces are significant
            ("ACCOUNTS", "Accounts", false),
            ("Accounts payable", "Accounts payable", true),
            // empty levels
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/b", "a//b", false),
            ("/", "/", true),
            ("/#", "/", true),
            ("/#", "/a/b", true),
            ("/#", "a", false),
            ("a/", "a", false),
            ("a", "a/", false),
            ("a/#", "a", true),
            ("a/#", "ab", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for &(filter, topic, want) in cases {
            validate_topic_filter(filter).unwrap();
            validate_topic_name(topic).unwrap();
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn covering() {
        // (outer, inner, covers)
        let cases: &[(&str, &str, bool)] = &[
            ("a/#", "a/+/b", true),
            ("a/+", "a/#", false),
            ("#", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/b/#", true),
            ("a/b/#", "a/#", false),
            ("#", "#", true),
            ("#", "+", true),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+", "#", false),
            ("+", "+", true),
            ("+", "a", true),
            ("a", "+", false),
            ("a", "a", true),
            ("a", "b", false),
            ("a", "a/#", false),
            ("+/#", "#", true),
            ("+/+/#", "#", false),
            ("+/#", "a", true),
            ("/+/#", "/#", true),
            ("+/+/#", "/#", true),
            ("/+/#", "/", true),
            ("a/+/#", "a/b/#", true),
            ("a/+/#", "a/#", false),
            ("+/#", "$SYS/#", false),
            ("+/x", "$a/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/#", false),
            ("$SYS/#", "#", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/+/c", true),
            ("a/b/c", "a/+/c", false),
            ("+/+", "/", true),
            ("/+", "+/+", false),
            ("a/+", "a", false),
            ("a", "a/+", false),
        ];
        for &(outer, inner, want) in cases {
            assert_eq!(covers(outer, inner), want, "{outer:?} covers {inner:?}");
        }
    }

    /// Tiny deterministic LCG (Knuth's MMIX constants), so the tests need no `rand`.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    /// `covers` must equal "every topic `inner` matches, `outer` matches". Topics over
    /// {a, b, $c, "", z} with one more level than the longest filter are exhaustive here: "z"
    /// stands for every literal the filters do not mention, and beyond the filters' length only
    /// a trailing '#' can match, which treats all deeper topics alike.
    #[test]
    fn covers_agrees_with_brute_force() {
        const FILTER_LEVELS: [&str; 6] = ["a", "b", "$c", "", "+", "#"];
        const TOPIC_LEVELS: [&str; 5] = ["a", "b", "$c", "", "z"];
        const MAX_FILTER_DEPTH: usize = 3;

        let mut topics: Vec<String> = Vec::new();
        let mut frontier = vec![String::new()];
        for depth in 1..=MAX_FILTER_DEPTH + 1 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for level in TOPIC_LEVELS {
                    next.push(if depth == 1 {
                        level.to_owned()
                    } else {
                        format!("{prefix}/{level}")
                    });
                }
            }
            topics.extend(next.iter().filter(|t| !t.is_empty()).cloned());
            frontier = next;
        }

        let agrees = |outer: &str, inner: &str| -> bool {
            let want = topics
                .iter()
                .all(|t| !matches(inner, t) || matches(outer, t));
            assert_eq!(covers(outer, inner), want, "{outer:?} covers {inner:?}");
            want
        };

        // Every pair of valid filters up to two levels...
        let mut short: Vec<String> = FILTER_LEVELS.iter().map(|l| l.to_string()).collect();
        for first in FILTER_LEVELS.iter().filter(|l| **l != "#") {
            short.extend(FILTER_LEVELS.iter().map(|l| format!("{first}/{l}")));
        }
        short.retain(|f| validate_topic_filter(f).is_ok());
        for outer in &short {
            for inner in &short {
                agrees(outer, inner);
            }
        }

        // ...and random ones up to three.
        let mut rng = Lcg(7);
        let mut random_filter = || {
            let depth = 1 + rng.below(MAX_FILTER_DEPTH);
            let mut levels = Vec::new();
            for _ in 0..depth {
                let level = FILTER_LEVELS[rng.below(FILTER_LEVELS.len())];
                levels.push(level);
                if level == "#" {
                    break;
                }
            }
            levels.join("/")
        };
        let mut checked = 0;
        let mut covered = 0;
        for _ in 0..600 {
            let outer = random_filter();
            let inner = random_filter();
            if validate_topic_filter(&outer).is_err() || validate_topic_filter(&inner).is_err() {
                // Only "" (a single empty level) is invalid here.
                continue;
            }
            checked += 1;
            covered += agrees(&outer, &inner) as usize;
        }
        // The generator must exercise both outcomes, or the test proves little.
        assert!(checked > 400 && covered > 40, "{checked} {covered}");
    }
}
