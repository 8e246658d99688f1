//! emqtt-bench's naming rules: client ids (`--prefix`, `--shortids`) and topic placeholders.
//!
//! Placeholders are replaced only where they make up a whole topic level, exactly as
//! emqtt-bench's `feed_var` does: `bench/%i` becomes `bench/7`, while `bench%i` stays as it is.
//! `%i` is the client's sequence number, `%c` its client id, `%u` its username (left as `%u`
//! without one), `%s` the number of messages published so far by this process plus one, and
//! `%rand_N` a random number in 1..=N drawn per rendering. Unknown `%x` levels stay literal.

use std::fmt::Write;

use rand::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Lit(String),
    Seq,
    ClientId,
    Username,
    MsgSeq,
    Rand(u64),
}

/// A parsed `-t` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

/// The per-client values a topic can refer to.
#[derive(Clone, Copy, Debug)]
pub struct ClientVars<'a> {
    pub seq: u64,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl TopicTemplate {
    pub fn parse(topic: &str) -> Result<TopicTemplate, String> {
        let levels = topic
            .split('/')
            .map(|w| {
                Ok(match w {
                    "%i" => Level::Seq,
                    "%c" => Level::ClientId,
                    "%u" => Level::Username,
                    "%s" => Level::MsgSeq,
                    _ => match w.strip_prefix("%rand_") {
                        Some(n) => match n.parse::<u64>() {
                            Ok(n) if n > 0 => Level::Rand(n),
                            _ => {
                                return Err(format!(
                                    "bad placeholder {w:?} in topic {topic:?}: %rand_N needs N >= 1"
                                ));
                            }
                        },
                        None => Level::Lit(w.to_owned()),
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(TopicTemplate { levels })
    }

    /// Whether the topic can change from one message to the next (otherwise a client renders
    /// it once).
    pub fn per_message(&self) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::MsgSeq | Level::Rand(_)))
    }

    /// Render into `out` (cleared first). `msg_seq` is what `%s` becomes.
    pub fn render(&self, vars: &ClientVars, msg_seq: u64, out: &mut String) {
        out.clear();
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match level {
                Level::Lit(s) => out.push_str(s),
                Level::Seq => {
                    let _ = write!(out, "{}", vars.seq);
                }
                Level::ClientId => out.push_str(vars.client_id),
                Level::Username => out.push_str(vars.username.unwrap_or("%u")),
                Level::MsgSeq => {
                    let _ = write!(out, "{msg_seq}");
                }
                Level::Rand(n) => {
                    let _ = write!(out, "{}", rand::rng().random_range(1..=*n));
                }
            }
        }
    }

    /// Render to a new string.
    pub fn to_topic(&self, vars: &ClientVars, msg_seq: u64) -> String {
        let mut s = String::new();
        self.render(vars, msg_seq, &mut s);
        s
    }
}

/// emqtt-bench's client id for client number `seq` of command `cmd`:
/// - default: `<host>_bench_<cmd>_<random>_<seq>`, where host is the source address from
///   `--ifaddr` or else the machine's host name, and `random` is drawn per client;
/// - `--prefix P`: `P_bench_<cmd>_<seq>`;
/// - `--shortids`: `<seq>`, or `P<seq>` with a prefix.
pub fn client_id(
    cmd: &str,
    seq: u64,
    prefix: Option<&str>,
    shortids: bool,
    host: &str,
    random: u32,
) -> String {
    let prefix = prefix.filter(|p| !p.is_empty());
    match (shortids, prefix) {
        (false, None) => format!("{host}_bench_{cmd}_{random}_{seq}"),
        (false, Some(p)) => format!("{p}_bench_{cmd}_{seq}"),
        (true, None) => seq.to_string(),
        (true, Some(p)) => format!("{p}{seq}"),
    }
}

/// This machine's host name, for default client ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: ClientVars = ClientVars {
        seq: 7,
        client_id: "cid",
        username: Some("alice"),
    };

    fn render(t: &str, vars: &ClientVars, msg_seq: u64) -> String {
        TopicTemplate::parse(t).unwrap().to_topic(vars, msg_seq)
    }

    #[test]
    fn whole_level_placeholders() {
        assert_eq!(render("bench/%i", &VARS, 1), "bench/7");
        assert_eq!(render("%c/%u/%i/%s", &VARS, 42), "cid/alice/7/42");
        assert_eq!(render("t/%i/x/%i", &VARS, 1), "t/7/x/7");
        // Only whole levels are placeholders, as in emqtt-bench.
        assert_eq!(render("bench%i/a%c", &VARS, 1), "bench%i/a%c");
        assert_eq!(render("%x/%", &VARS, 1), "%x/%");
    }

    #[test]
    fn wildcards_and_empty_levels_survive() {
        assert_eq!(render("bench/+/#", &VARS, 1), "bench/+/#");
        assert_eq!(render("/a//%i/", &VARS, 1), "/a//7/");
        assert_eq!(render("$share/g/bench/%i", &VARS, 1), "$share/g/bench/7");
    }

    #[test]
    fn username_missing_leaves_the_placeholder() {
        let vars = ClientVars {
            username: None,
            ..VARS
        };
        assert_eq!(render("u/%u", &vars, 1), "u/%u");
    }

    #[test]
    fn random_levels() {
        let t = TopicTemplate::parse("r/%rand_5").unwrap();
        assert!(t.per_message());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let s = t.to_topic(&VARS, 1);
            let n: u64 = s.strip_prefix("r/").unwrap().parse().unwrap();
            assert!((1..=5).contains(&n), "{s}");
            seen.insert(n);
        }
        assert_eq!(seen.len(), 5, "all of 1..=5 should show up in 500 draws");
        assert_eq!(render("r/%rand_1", &VARS, 1), "r/1");
        for bad in ["r/%rand_0", "r/%rand_", "r/%rand_x"] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn per_message_only_with_s_or_rand() {
        assert!(!TopicTemplate::parse("a/%i/%c/%u").unwrap().per_message());
        assert!(TopicTemplate::parse("a/%s").unwrap().per_message());
    }

    #[test]
    fn client_ids() {
        assert_eq!(
            client_id("pub", 3, None, false, "box", 99),
            "box_bench_pub_99_3"
        );
        assert_eq!(
            client_id("sub", 3, Some("p"), false, "box", 99),
            "p_bench_sub_3"
        );
        assert_eq!(client_id("conn", 3, None, true, "box", 99), "3");
        assert_eq!(client_id("conn", 3, Some("dev-"), true, "box", 99), "dev-3");
        // An empty prefix counts as none.
        assert_eq!(client_id("conn", 3, Some(""), true, "box", 99), "3");
        assert!(!hostname().is_empty());
    }
}
