//! The subscription trie: every (filter, key) subscription in the broker, indexed by filter level
//! so that one PUBLISH finds all matching subscriptions without scanning them all.
//!
//! It is an index, not a policy: it does not validate filters (the caller runs
//! [`crate::topic::validate_topic_filter`] first), does not know about shared subscriptions (the
//! router strips `$share/{group}/` and puts the group into the key), does not deduplicate a
//! client that matches through several filters (the router does, per client, because it must
//! also merge QoS and subscription identifiers), and does not lock (the owner decides how it is
//! shared between threads). [`crate::topic::matches`] is the reference semantics; the tests hold
//! the trie to it.

use std::collections::HashMap;
use std::hash::Hash;

/// Subscriptions keyed by (filter, `K`), each carrying a `V`.
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

/// One filter level.
///
/// '#' is always the last level of a filter, so it needs no node of its own: `hash` holds the
/// subscriptions whose filter is this node's path followed by '#'. '+' gets its own child
/// because it is visited for every topic level, and looking it up in `children` would cost a
/// hash per level per PUBLISH.
///
/// Entries are a `HashMap<K, V>` rather than a small Vec. Most nodes hold one or two
/// subscribers, where a Vec would be a little faster to iterate, but the broker's worst cases
/// are exactly the crowded nodes (thousands of devices on one broadcast filter, monitoring tools
/// on "#"), and a reconnect storm on those would make a Vec's O(n) insert/remove quadratic. An
/// empty `HashMap` does not allocate, so the maps cost nothing on nodes that hold none.
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Filters ending at this node.
    values: HashMap<K, V>,
    /// Filters ending at this node followed by "/#" (or "#" alone, at the root).
    hash: HashMap<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            values: HashMap::new(),
            hash: HashMap::new(),
        }
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.hash.is_empty() && self.child_count() == 0
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self.plus.as_ref().map_or(0, |p| p.count())
            + self.children.values().map(Node::count).sum::<usize>()
    }
}

/// Dismantles the subtree with a work list. The derived drop would recurse once per level, and
/// the depth is the client's to choose (one 65535-byte filter is 32768 '+' levels): unsubscribing
/// it must not overflow the stack. For the same reason the trie is neither `Clone` nor
/// structurally `Debug`.
impl<K, V> Drop for Node<K, V> {
    fn drop(&mut self) {
        fn detach<K, V>(node: &mut Node<K, V>, into: &mut Vec<Node<K, V>>) {
            if let Some(plus) = node.plus.take() {
                into.push(*plus);
            }
            into.extend(node.children.drain().map(|(_, child)| child));
        }
        if self.child_count() == 0 {
            return;
        }
        let mut pending = Vec::new();
        detach(self, &mut pending);
        // Each popped node is childless by the time it is dropped, so its own `drop` returns
        // at once.
        while let Some(mut node) = pending.pop() {
            detach(&mut node, &mut pending);
        }
    }
}

/// A filter split into the levels that lead to its node, and whether it ends in '#'.
fn split_filter(filter: &str) -> (impl Iterator<Item = &str> + Clone, bool) {
    let (path, hash) = if filter == "#" {
        (None, true)
    } else if let Some(prefix) = filter.strip_suffix("/#") {
        (Some(prefix), true)
    } else {
        (Some(filter), false)
    };
    (path.into_iter().flat_map(|p| p.split('/')), hash)
}

/// Frames of the depth-first match walk: a node whose path matched the topic so far, and the
/// byte offset in the topic where the next level starts ([`END`] once no level is left).
///
/// An explicit stack rather than recursion because depth is attacker-controlled: a client may
/// subscribe "+/+/+/..." with 30 000 levels and publish a topic that deep, and recursion would
/// overflow a 2 MiB thread stack. The stack grows by at most one frame per level, so the inline
/// part covers any sane topic and only pathological ones spill to the heap.
const INLINE_FRAMES: usize = 32;
const END: usize = usize::MAX;

struct Stack<'a, K, V> {
    inline: [Option<(&'a Node<K, V>, usize)>; INLINE_FRAMES],
    len: usize,
    spill: Vec<(&'a Node<K, V>, usize)>,
}

impl<'a, K, V> Stack<'a, K, V> {
    fn new() -> Self {
        Stack {
            inline: [None; INLINE_FRAMES],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: (&'a Node<K, V>, usize)) {
        if self.len < INLINE_FRAMES {
            self.inline[self.len] = Some(frame);
            self.len += 1;
        } else {
            self.spill.push(frame);
        }
    }

    fn pop(&mut self) -> Option<(&'a Node<K, V>, usize)> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len].take()
    }
}

/// The topic level starting at byte `at`, and where the one after it starts. Same levels as
/// `topic.split('/')`, including empty ones, but resumable from a plain offset, which keeps a
/// stack frame at two words instead of a cloned `Split`.
fn next_level(topic: &str, at: usize) -> Option<(&str, usize)> {
    if at == END {
        return None;
    }
    let rest = &topic[at..];
    Some(match rest.split_once('/') {
        Some((level, _)) => (level, at + level.len() + 1),
        None => (rest, END),
    })
}

impl<K: Hash + Eq + Clone, V> SubscriptionTrie<K, V> {
    pub fn new() -> Self {
        SubscriptionTrie {
            root: Node::new(),
            len: 0,
        }
    }

    /// Insert or replace the value for (filter, key); returns the old value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (path, hash) = split_filter(filter);
        let mut node = &mut self.root;
        for level in path {
            node = if level == "+" {
                node.plus.get_or_insert_with(|| Box::new(Node::new()))
            } else {
                // Look up before `entry` so that re-subscribing allocates no key.
                if !node.children.contains_key(level) {
                    node.children.insert(level.into(), Node::new());
                }
                node.children.get_mut(level).expect("inserted above")
            };
        }
        let entries = if hash {
            &mut node.hash
        } else {
            &mut node.values
        };
        let old = entries.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove (filter, key); prunes empty nodes so that the trie does not grow forever with
    /// churn.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (path, hash) = split_filter(filter);

        // Three short walks instead of one recursive one: recursion depth would follow the
        // filter's level count, which the client chooses.
        let mut node = &mut self.root;
        for level in path.clone() {
            node = node.child_mut(level)?;
        }
        let old = if hash {
            node.hash.remove(key)
        } else {
            node.values.remove(key)
        }?;
        self.len -= 1;
        if !node.is_empty() {
            return Some(old);
        }

        // The deepest node on the path that keeps something besides the path's next child is
        // where the now-useless branch hangs. The root is never removed.
        let mut cut = (0, None);
        let mut node = &self.root;
        for (depth, level) in path.clone().enumerate() {
            if depth == 0
                || !node.values.is_empty()
                || !node.hash.is_empty()
                || node.child_count() > 1
            {
                cut = (depth, Some(level));
            }
            node = node.child(level).expect("path walked above");
        }
        let (cut_depth, Some(cut_level)) = cut else {
            // Empty path: the entry sat on the root itself ("#").
            return Some(old);
        };

        let mut node = &mut self.root;
        for level in path.take(cut_depth) {
            node = node.child_mut(level).expect("path walked above");
        }
        if cut_level == "+" {
            node.plus = None;
        } else {
            node.children.remove(cut_level);
        }
        Some(old)
    }

    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (path, hash) = split_filter(filter);
        let mut node = &self.root;
        for level in path {
            node = node.child(level)?;
        }
        if hash {
            node.hash.get(key)
        } else {
            node.values.get(key)
        }
    }

    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let (path, hash) = split_filter(filter);
        let mut node = &mut self.root;
        for level in path {
            node = node.child_mut(level)?;
        }
        if hash {
            node.hash.get_mut(key)
        } else {
            node.values.get_mut(key)
        }
    }

    /// Call `f(filter_key, value)` for every (filter, key) whose filter matches `topic`, with the
    /// '$' rule [MQTT-4.7.2-1]. A key subscribed through several overlapping filters is reported
    /// once PER FILTER (the router deduplicates per client). Does not allocate unless the
    /// topic is deeper than 32 levels along a matching path.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a K, &'a V)) {
        let mut stack = Stack::new();
        let root = &self.root;
        // Wildcards in the first level never match a '$' topic; below the root there is no such
        // rule ("a/+" matches "a/$b").
        let dollar = topic.starts_with('$');
        let (first, after) = next_level(topic, 0).expect("offset 0 is never END");
        if !dollar {
            root.hash.iter().for_each(|(k, v)| f(k, v));
            if let Some(plus) = root.plus.as_deref() {
                stack.push((plus, after));
            }
        }
        if let Some(child) = root.children.get(first) {
            stack.push((child, after));
        }

        while let Some((node, at)) = stack.pop() {
            // "x/#" matches everything below "x" and "x" itself.
            node.hash.iter().for_each(|(k, v)| f(k, v));
            match next_level(topic, at) {
                None => node.values.iter().for_each(|(k, v)| f(k, v)),
                Some((level, after)) => {
                    if let Some(plus) = node.plus.as_deref() {
                        stack.push((plus, after));
                    }
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, after));
                    }
                }
            }
        }
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes in the trie, the root included: 1 when empty, whatever the history.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.count()
    }
}

impl<K, V> std::fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches, validate_topic_filter, validate_topic_name};

    /// Everything the trie reports for `topic`, as sorted (filter, key) pairs; the value stored
    /// is the filter, so the report says which filter matched.
    fn trie_matches(trie: &SubscriptionTrie<u8, String>, topic: &str) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((v.clone(), *k)));
        out.sort();
        out
    }

    fn brute_matches(entries: &[(String, u8)], topic: &str) -> Vec<(String, u8)> {
        let mut out: Vec<_> = entries
            .iter()
            .filter(|(f, _)| matches(f, topic))
            .cloned()
            .collect();
        out.sort();
        out
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "/+",
        "+/#",
        "/#",
        "/",
        "a",
        "a/",
        "a/#",
        "a/+",
        "a/b",
        "a//b",
        "a/+/b",
        "a/+/#",
        "+/b",
        "+/+/+",
        "$SYS/#",
        "$SYS/+",
        "$SYS/monitor/+",
        "+/monitor/Clients",
        "$SYS",
        "sport/tennis/player1/#",
        "sport/tennis/+",
        "sport/+",
        "sport/#",
        "sport/+/player1",
    ];

    const TOPICS: &[&str] = &[
        "a",
        "a/",
        "a/b",
        "a//b",
        "a/c/b",
        "a/b/c",
        "b",
        "/",
        "//",
        "/a",
        "/a/b",
        "$SYS",
        "$SYS/",
        "$SYS/monitor/Clients",
        "$SYS/x/y",
        "x/$SYS",
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "/finance",
    ];

    #[test]
    fn agrees_with_matches_on_table() {
        let mut trie = SubscriptionTrie::new();
        let mut entries = Vec::new();
        for (i, filter) in FILTERS.iter().enumerate() {
            validate_topic_filter(filter).unwrap();
            // Two keys on some filters, and key 0 on every filter: a key subscribed through
            // several overlapping filters must be reported once per filter.
            for key in [0, (i % 3) as u8] {
                if trie.insert(filter, key, filter.to_string()).is_none() {
                    entries.push((filter.to_string(), key));
                }
            }
        }
        assert_eq!(trie.len(), entries.len());
        for topic in TOPICS {
            validate_topic_name(topic).unwrap();
            assert_eq!(
                trie_matches(&trie, topic),
                brute_matches(&entries, topic),
                "{topic:?}"
            );
        }
        // Spot checks that the table exercises what it claims to.
        let filters_for = |topic| -> Vec<String> {
            let mut fs: Vec<_> = trie_matches(&trie, topic)
                .into_iter()
                .filter(|(_, k)| *k == 0)
                .map(|(f, _)| f)
                .collect();
            fs.dedup();
            fs
        };
        assert_eq!(filters_for("a"), ["#", "+", "+/#", "a", "a/#"]);
        assert_eq!(
            filters_for("$SYS/monitor/Clients"),
            ["$SYS/#", "$SYS/monitor/+"]
        );
        assert_eq!(filters_for("$SYS"), ["$SYS", "$SYS/#"]);
        assert_eq!(filters_for("/"), ["#", "+/#", "+/+", "/", "/#", "/+"]);
    }

    #[test]
    fn insert_replaces_and_get_finds() {
        let mut trie = SubscriptionTrie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/+", "c1", 1), None);
        assert_eq!(trie.insert("a/+", "c2", 2), None);
        assert_eq!(trie.insert("a/#", "c1", 3), None);
        assert_eq!(trie.insert("a/+", "c1", 4), Some(1));
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.get("a/+", &"c1"), Some(&4));
        assert_eq!(trie.get("a/#", &"c1"), Some(&3));
        assert_eq!(trie.get("a", &"c1"), None);
        assert_eq!(trie.get("a/+/#", &"c1"), None);
        assert_eq!(trie.get("a/b", &"c1"), None);

        let mut seen = Vec::new();
        trie.for_each_match("a/x", |k, v| seen.push((*k, *v)));
        seen.sort();
        assert_eq!(seen, [("c1", 3), ("c1", 4), ("c2", 2)]);

        assert_eq!(trie.remove("a/+", &"c1"), Some(4));
        assert_eq!(trie.remove("a/+", &"c1"), None);
        assert_eq!(trie.remove("a/b", &"c1"), None);
        assert_eq!(trie.remove("a/#", &"c2"), None);
        assert_eq!(trie.len(), 2);
    }

    #[test]
    fn removal_prunes_back_to_the_root() {
        let mut trie = SubscriptionTrie::new();
        for round in 0..3 {
            for (i, filter) in FILTERS.iter().enumerate() {
                trie.insert(filter, i, round);
                trie.insert(&format!("deep/{filter}/x/+/y"), i, round);
                trie.insert(&format!("{filter}-{round}/churn"), i, round);
            }
            assert!(trie.node_count() > FILTERS.len());
            // Remove in an order unrelated to insertion, so branches get cut at every depth.
            for (i, filter) in FILTERS.iter().enumerate().rev() {
                assert_eq!(
                    trie.remove(&format!("{filter}-{round}/churn"), &i),
                    Some(round)
                );
            }
            for (i, filter) in FILTERS.iter().enumerate() {
                assert_eq!(trie.remove(filter, &i), Some(round));
                assert_eq!(
                    trie.remove(&format!("deep/{filter}/x/+/y"), &i),
                    Some(round)
                );
            }
            assert_eq!(trie.len(), 0);
            assert_eq!(trie.node_count(), 1, "round {round}");
        }
        // A node that still holds a value keeps its parent chain; removing it then prunes all.
        trie.insert("a/b/c", 1, 0);
        trie.insert("a", 1, 0);
        trie.insert("a/b/#", 2, 0);
        assert_eq!(trie.node_count(), 4);
        trie.remove("a/b/c", &1);
        assert_eq!(trie.node_count(), 3);
        trie.remove("a", &1);
        assert_eq!(trie.node_count(), 3);
        trie.remove("a/b/#", &2);
        assert_eq!(trie.node_count(), 1);
        trie.insert("#", 1, 0);
        trie.remove("#", &1);
        assert_eq!(trie.node_count(), 1);
        assert!(trie.is_empty());
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

    fn random_levels(rng: &mut Lcg, alphabet: &[&str]) -> String {
        let depth = 1 + rng.below(4);
        let mut levels = Vec::new();
        for _ in 0..depth {
            let level = alphabet[rng.below(alphabet.len())];
            levels.push(level);
            if level == "#" {
                break;
            }
        }
        levels.join("/")
    }

    #[test]
    fn agrees_with_matches_on_random_subscriptions() {
        const FILTER_LEVELS: &[&str] = &["a", "b", "$c", "", "+", "#"];
        const TOPIC_LEVELS: &[&str] = &["a", "b", "$c", ""];
        let mut rng = Lcg(0x5eed);
        let mut trie = SubscriptionTrie::new();
        // The model: (filter, key) -> value, as a plain list.
        let mut model: Vec<((String, u8), String)> = Vec::new();

        let topics: Vec<String> = (0..300)
            .map(|_| random_levels(&mut rng, TOPIC_LEVELS))
            .filter(|t| validate_topic_name(t).is_ok())
            .collect();

        for step in 0..600 {
            let filter = random_levels(&mut rng, FILTER_LEVELS);
            if validate_topic_filter(&filter).is_err() {
                continue;
            }
            let key = rng.below(4) as u8;
            let pos = model
                .iter()
                .position(|(fk, _)| fk.0 == filter && fk.1 == key);
            // Two inserts for each removal, so the trie both grows and churns.
            if rng.below(3) == 0 {
                let want = pos.map(|p| model.swap_remove(p).1);
                assert_eq!(trie.remove(&filter, &key), want, "step {step}");
            } else {
                let value = format!("{filter}@{step}");
                let want = pos.map(|p| std::mem::replace(&mut model[p].1, value.clone()));
                assert_eq!(trie.insert(&filter, key, value), want, "step {step}");
                if pos.is_none() {
                    model.push(((filter.clone(), key), format!("{filter}@{step}")));
                }
            }
            assert_eq!(trie.len(), model.len());
        }
        assert!(model.len() > 50, "{}", model.len());

        let mut matched = 0;
        for topic in &topics {
            let mut got = Vec::new();
            trie.for_each_match(topic, |k, v| got.push((*k, v.clone())));
            got.sort();
            let mut want: Vec<_> = model
                .iter()
                .filter(|((f, _), _)| matches(f, topic))
                .map(|((_, k), v)| (*k, v.clone()))
                .collect();
            want.sort();
            assert_eq!(got, want, "{topic:?}");
            matched += want.len();
        }
        assert!(matched > topics.len(), "{matched}");

        for ((filter, key), value) in std::mem::take(&mut model) {
            assert_eq!(trie.get(&filter, &key), Some(&value));
            assert_eq!(trie.remove(&filter, &key), Some(value));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
    }

    /// Filters "x/+", "x/x/+", ... give every node on the topic's path both a literal and a '+'
    /// child, so the walk's stack grows one frame per level and must spill past the inline part.
    #[test]
    fn wide_and_deep_walk_spills_to_the_heap() {
        let depth = 3 * INLINE_FRAMES;
        let mut trie = SubscriptionTrie::new();
        let mut entries = Vec::new();
        for d in 0..depth {
            for filter in [
                format!("{}+", "x/".repeat(d)),
                format!("{}#", "x/".repeat(d)),
                format!("{}x", "x/".repeat(d)),
                format!("{}+/x", "+/".repeat(d)),
            ] {
                trie.insert(&filter, 0, filter.clone());
                entries.push((filter, 0));
            }
        }
        for d in [
            1,
            INLINE_FRAMES - 1,
            INLINE_FRAMES,
            INLINE_FRAMES + 1,
            depth,
            depth + 1,
        ] {
            let topic = vec!["x"; d].join("/");
            let got = trie_matches(&trie, &topic);
            assert!(!got.is_empty());
            assert_eq!(got, brute_matches(&entries, &topic), "depth {d}");
        }
    }

    #[test]
    fn deep_topics_spill_without_recursion() {
        let mut trie = SubscriptionTrie::new();
        let depth = 20_000;
        let filter = vec!["+"; depth].join("/");
        let topic = vec!["x"; depth].join("/");
        trie.insert(&filter, 1, ());
        trie.insert("#", 2, ());
        let mut keys = Vec::new();
        trie.for_each_match(&topic, |k, _| keys.push(*k));
        keys.sort();
        assert_eq!(keys, [1, 2]);
        assert_eq!(trie.remove(&filter, &1), Some(()));
        assert_eq!(trie.node_count(), 1);
    }
}
