//! The checker: what a recorded history must satisfy. Pure functions over the operations, so
//! that its own tests can feed it histories with known violations.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Nanoseconds since the start of the run.
pub type Time = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Cached,
    MinRevision(u64),
    Strong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Put {
        value: String,
        /// `Some` for a compare-and-set.
        expect: Option<u64>,
    },
    Delete {
        /// `Some` for a conditional delete.
        expect: Option<u64>,
    },
    Get(Consistency),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write NATS acknowledged and the sidecar answered with its revision.
    Written(u64),
    /// A write NATS stored at this revision, answered with `timeout` before the mirror showed it.
    StoredLate(u64),
    /// A compare-and-set that lost, with the `current_revision` it reported.
    Conflict { current: u64 },
    /// A write whose fate is unknown (`unavailable`, `timeout`, a broken connection).
    Unknown(String),
    /// A read: the entry (value, revision) if any, and the mirror revision it reflects.
    Read {
        entry: Option<(String, u64)>,
        mirror: u64,
    },
    /// A read that failed; it says nothing about the data.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub sidecar: usize,
    pub key: String,
    pub kind: Kind,
    pub invoked: Time,
    pub completed: Time,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>9.3} ms .. {:>9.3} ms] client {} via sidecar {}: {:?} {} -> {:?}",
            self.invoked as f64 / 1e6,
            self.completed as f64 / 1e6,
            self.client,
            self.sidecar,
            self.kind,
            self.key,
            self.outcome
        )
    }
}

/// A broken promise, with the operations that show it (indices into the history).
#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
    pub ops: Vec<usize>,
}

impl Violation {
    /// The violation and its minimal sub-history: only the operations involved, in time order.
    pub fn render(&self, history: &[Op]) -> String {
        let mut ops = self.ops.clone();
        ops.sort_by_key(|&i| (history[i].invoked, i));
        ops.dedup();
        let mut text = format!("{}: {}\n", self.rule, self.detail);
        for i in ops {
            text.push_str(&format!("    #{i} {}\n", history[i]));
        }
        text
    }
}

/// A write whose revision is known: acknowledged, stored late, or revealed by a read.
#[derive(Debug, Clone)]
struct KnownWrite {
    op: usize,
    key: String,
    /// `None` for a delete.
    value: Option<String>,
}

/// Every revision known to hold a write, by revision.
fn known_writes(history: &[Op]) -> BTreeMap<u64, KnownWrite> {
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    let mut known = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        let value = match &op.kind {
            Kind::Put { value, .. } => {
                by_value.insert(value.as_str(), i);
                Some(value.clone())
            }
            Kind::Delete { .. } => None,
            Kind::Get(_) => continue,
        };
        if let Outcome::Written(rev) | Outcome::StoredLate(rev) = op.outcome {
            let key = op.key.clone();
            known.insert(rev, KnownWrite { op: i, key, value });
        }
    }
    // Writes of unknown fate that a read saw: the read tells their revision.
    for op in history {
        if let Outcome::Read {
            entry: Some((value, rev)),
            ..
        } = &op.outcome
        {
            if let Some(&writer) = by_value.get(value.as_str()) {
                known.entry(*rev).or_insert_with(|| KnownWrite {
                    op: writer,
                    key: history[writer].key.clone(),
                    value: Some(value.clone()),
                });
            }
        }
    }
    known
}

/// Checks (a) to (d) on a history; (e) needs the final state, see [`check_final`].
pub fn check(history: &[Op]) -> Vec<Violation> {
    let known = known_writes(history);
    let mut violations = Vec::new();
    check_values_match_revisions(history, &known, &mut violations);
    check_read_your_writes(history, &mut violations);
    check_monotonic_reads(history, &mut violations);
    check_compare_and_set(history, &mut violations);
    check_strong_reads(history, &mut violations);
    violations
}

/// A read's entry must be the value written at the revision it reports.
fn check_values_match_revisions(
    history: &[Op],
    known: &BTreeMap<u64, KnownWrite>,
    violations: &mut Vec<Violation>,
) {
    for (i, op) in history.iter().enumerate() {
        let Outcome::Read {
            entry: Some((value, rev)),
            ..
        } = &op.outcome
        else {
            continue;
        };
        match known.get(rev) {
            Some(w) if w.key == op.key && w.value.as_deref() == Some(value.as_str()) => {}
            Some(w) => violations.push(Violation {
                rule: "read matches the write at its revision",
                detail: format!(
                    "read {value:?} at revision {rev} of `{}`, but revision {rev} holds {:?} of `{}`",
                    op.key, w.value, w.key
                ),
                ops: vec![i, w.op],
            }),
            None => violations.push(Violation {
                rule: "read matches the write at its revision",
                detail: format!("read {value:?} at revision {rev}, which no write produced"),
                ops: vec![i],
            }),
        }
    }
}

/// (a) A client's read through its sidecar reflects every write of its own acknowledged before.
fn check_read_your_writes(history: &[Op], violations: &mut Vec<Violation>) {
    let mut by_client: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_client.entry(op.client).or_default().push(i);
    }
    for ops in by_client.values() {
        // The client's latest acknowledged write overall, and per key.
        let mut latest: Option<(u64, usize)> = None;
        let mut per_key: HashMap<&str, (u64, usize, bool)> = HashMap::new();
        for &i in ops {
            let op = &history[i];
            match (&op.kind, &op.outcome) {
                (Kind::Put { .. }, Outcome::Written(rev))
                | (Kind::Delete { .. }, Outcome::Written(rev)) => {
                    latest = latest.max(Some((*rev, i)));
                    let is_put = matches!(op.kind, Kind::Put { .. });
                    per_key.insert(op.key.as_str(), (*rev, i, is_put));
                }
                (Kind::Get(_), Outcome::Read { entry, mirror }) => {
                    if let Some((rev, w)) = latest {
                        if *mirror < rev {
                            violations.push(Violation {
                                rule: "(a) read-your-writes",
                                detail: format!(
                                    "the read reflects mirror revision {mirror}, before the client's own \
                                     acknowledged write at {rev}"
                                ),
                                ops: vec![w, i],
                            });
                        }
                    }
                    if let (Some(&(rev, w, _)), Some((_, seen))) =
                        (per_key.get(op.key.as_str()), entry)
                    {
                        if *seen < rev {
                            violations.push(Violation {
                                rule: "(a) read-your-writes",
                                detail: format!(
                                    "read `{}` at revision {seen}, older than the client's own write at {rev}",
                                    op.key
                                ),
                                ops: vec![w, i],
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// (b) Successive reads of one client (bound to one sidecar) never go back in time.
fn check_monotonic_reads(history: &[Op], violations: &mut Vec<Violation>) {
    let mut last: HashMap<(usize, usize), (u64, usize)> = HashMap::new();
    let mut last_per_key: HashMap<(usize, &str), (u64, usize)> = HashMap::new();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| (history[i].client, history[i].invoked));
    for i in order {
        let op = &history[i];
        let Outcome::Read { entry, mirror } = &op.outcome else {
            continue;
        };
        let slot = last.entry((op.client, op.sidecar)).or_insert((0, i));
        if *mirror < slot.0 {
            violations.push(Violation {
                rule: "(b) monotonic reads",
                detail: format!("mirror revision went back from {} to {mirror}", slot.0),
                ops: vec![slot.1, i],
            });
        } else {
            *slot = (*mirror, i);
        }
        if let Some((_, rev)) = entry {
            let slot = last_per_key
                .entry((op.client, op.key.as_str()))
                .or_insert((0, i));
            if *rev < slot.0 {
                violations.push(Violation {
                    rule: "(b) monotonic reads",
                    detail: format!("`{}` went back from revision {} to {rev}", op.key, slot.0),
                    ops: vec![slot.1, i],
                });
            } else {
                *slot = (*rev, i);
            }
        }
    }
}

/// (c) No two compare-and-sets succeeded on the same expected revision N > 0 of a key. That
/// each one replaced exactly the revision it expected is checked against the whole stream by
/// (f), which also sees the markers of deletes whose callers never learned their fate.
fn check_compare_and_set(history: &[Op], violations: &mut Vec<Violation>) {
    let mut winners: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        let expected = match (&op.kind, &op.outcome) {
            (
                Kind::Put { expect, .. } | Kind::Delete { expect },
                Outcome::Written(_) | Outcome::StoredLate(_),
            ) => *expect,
            _ => None,
        };
        // Expecting 0 ("no value") may succeed again after each delete.
        let Some(expected) = expected.filter(|&n| n != 0) else {
            continue;
        };
        if let Some(&other) = winners.get(&(op.key.as_str(), expected)) {
            violations.push(Violation {
                rule: "(c) compare-and-set",
                detail: format!(
                    "two compare-and-sets of `{}` expecting revision {expected} both succeeded",
                    op.key
                ),
                ops: vec![other, i],
            });
        }
        winners.insert((op.key.as_str(), expected), i);
    }
}

/// The highest revision acknowledged by each point in time: acknowledgements sorted by time,
/// with a running maximum, so "the latest write acknowledged before t" is one binary search.
struct AckedBefore {
    /// (completion time, highest revision acknowledged by then, the op that wrote it)
    points: Vec<(Time, u64, usize)>,
}

impl AckedBefore {
    fn new(mut acked: Vec<(Time, u64, usize)>) -> Self {
        acked.sort_unstable();
        let mut best = (0, usize::MAX);
        let points = acked
            .into_iter()
            .map(|(done, rev, op)| {
                if rev > best.0 {
                    best = (rev, op);
                }
                (done, best.0, best.1)
            })
            .collect();
        AckedBefore { points }
    }

    /// The highest revision acknowledged before `t`, and its op.
    fn at(&self, t: Time) -> Option<(u64, usize)> {
        let before = self.points.partition_point(|&(done, _, _)| done < t);
        before
            .checked_sub(1)
            .map(|i| (self.points[i].1, self.points[i].2))
    }
}

/// (d) A strong read reflects every write acknowledged (to anyone) before it began.
fn check_strong_reads(history: &[Op], violations: &mut Vec<Violation>) {
    let acked = |key: Option<&str>| {
        AckedBefore::new(
            history
                .iter()
                .enumerate()
                .filter(|(_, op)| key.is_none_or(|k| op.key == k))
                .filter_map(|(i, op)| match op.outcome {
                    Outcome::Written(rev) => Some((op.completed, rev, i)),
                    _ => None,
                })
                .collect(),
        )
    };
    let all = acked(None);
    let mut per_key: HashMap<&str, AckedBefore> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        let (Kind::Get(Consistency::Strong), Outcome::Read { entry, mirror }) =
            (&op.kind, &op.outcome)
        else {
            continue;
        };
        if let Some((rev, w)) = all.at(op.invoked) {
            if *mirror < rev {
                violations.push(Violation {
                    rule: "(d) strong reads",
                    detail: format!(
                        "a strong read reflects revision {mirror}, but revision {rev} was \
                         acknowledged before it began"
                    ),
                    ops: vec![w, i],
                });
            }
        }
        let key = per_key
            .entry(op.key.as_str())
            .or_insert_with(|| acked(Some(op.key.as_str())));
        if let (Some((rev, w)), Some((_, seen))) = (key.at(op.invoked), entry) {
            if *seen < rev {
                violations.push(Violation {
                    rule: "(d) strong reads",
                    detail: format!(
                        "a strong read of `{}` returned revision {seen}, but {rev} was acknowledged \
                         before it began",
                        op.key
                    ),
                    ops: vec![w, i],
                });
            }
        }
    }
}

/// A key's state at the end, as a plain NATS client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalEntry {
    /// The latest message's revision, 0 if the key never had one.
    pub revision: u64,
    /// `None` for a delete or purge marker.
    pub value: Option<String>,
}

/// (e) No acknowledged write is missing: the final state of each key is its latest acknowledged
/// write or something newer, and every acknowledged write is in the stream's history (`stored`
/// says what the stream holds at a revision: `Some((key, value))`, or `None` once removed).
pub fn check_final(
    history: &[Op],
    final_state: &HashMap<String, FinalEntry>,
    stored: &HashMap<u64, Option<(String, Option<String>)>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut latest: HashMap<&str, (u64, usize)> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        let (Outcome::Written(rev) | Outcome::StoredLate(rev)) = op.outcome else {
            continue;
        };
        let slot = latest.entry(op.key.as_str()).or_insert((rev, i));
        if rev >= slot.0 {
            *slot = (rev, i);
        }
        let expected = match &op.kind {
            Kind::Put { value, .. } => Some(value.clone()),
            _ => None,
        };
        match stored.get(&rev) {
            Some(Some((key, value))) if *key == op.key && *value == expected => {}
            Some(None) => {}
            other => violations.push(Violation {
                rule: "(e) no acknowledged write lost",
                detail: format!(
                    "revision {rev} should hold {expected:?} of `{}`, but the stream has {other:?}",
                    op.key
                ),
                ops: vec![i],
            }),
        }
    }
    for (key, (rev, i)) in latest {
        let state = final_state.get(key);
        let expected = match &history[i].kind {
            Kind::Put { value, .. } => Some(value.clone()),
            _ => None,
        };
        let fine =
            state.is_some_and(|s| s.revision > rev || (s.revision == rev && s.value == expected));
        if !fine {
            violations.push(Violation {
                rule: "(e) no acknowledged write lost",
                detail: format!(
                    "`{key}` ends as {state:?}, but its last acknowledged write was revision {rev}"
                ),
                ops: vec![i],
            });
        }
    }
    violations
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn op(
        client: usize,
        key: &str,
        kind: Kind,
        at: (Time, Time),
        outcome: Outcome,
    ) -> Op {
        Op {
            client,
            sidecar: client % 2,
            key: key.to_string(),
            kind,
            invoked: at.0,
            completed: at.1,
            outcome,
        }
    }

    pub(crate) fn put(value: &str) -> Kind {
        Kind::Put {
            value: value.to_string(),
            expect: None,
        }
    }

    pub(crate) fn cas(value: &str, expect: u64) -> Kind {
        Kind::Put {
            value: value.to_string(),
            expect: Some(expect),
        }
    }

    pub(crate) fn read(value: &str, rev: u64, mirror: u64) -> Outcome {
        Outcome::Read {
            entry: Some((value.to_string(), rev)),
            mirror,
        }
    }

    fn rules(violations: &[Violation]) -> Vec<&'static str> {
        violations.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn a_correct_history_passes() {
        let history = vec![
            op(0, "k", put("a"), (0, 10), Outcome::Written(1)),
            op(
                0,
                "k",
                Kind::Get(Consistency::Cached),
                (11, 12),
                read("a", 1, 1),
            ),
            op(1, "k", cas("b", 1), (13, 20), Outcome::Written(2)),
            op(
                1,
                "k",
                cas("c", 1),
                (14, 21),
                Outcome::Conflict { current: 2 },
            ),
            op(
                0,
                "k",
                Kind::Get(Consistency::Strong),
                (22, 30),
                read("b", 2, 2),
            ),
        ];
        assert!(check(&history).is_empty(), "{:?}", check(&history));
    }

    #[test]
    fn each_broken_promise_is_caught_with_its_sub_history() {
        let history = vec![
            op(0, "k", put("a"), (0, 10), Outcome::Written(5)),
            // (a): its own write is missing.
            op(
                0,
                "k",
                Kind::Get(Consistency::Cached),
                (11, 12),
                read("old", 3, 4),
            ),
            op(2, "k", put("old"), (0, 1), Outcome::Written(3)),
            // (d): a strong read after an acknowledged write misses it.
            op(
                1,
                "k",
                Kind::Get(Consistency::Strong),
                (20, 25),
                read("old", 3, 4),
            ),
            // (c): two winners on the same expected revision.
            op(1, "j", cas("x", 7), (30, 31), Outcome::Written(8)),
            op(3, "j", cas("y", 7), (30, 32), Outcome::Written(9)),
            op(2, "j", put("base"), (0, 1), Outcome::Written(7)),
            // (b): client 2 reads back in time.
            op(
                2,
                "j",
                Kind::Get(Consistency::Cached),
                (40, 41),
                read("y", 9, 9),
            ),
            op(
                2,
                "j",
                Kind::Get(Consistency::Cached),
                (42, 43),
                read("x", 8, 8),
            ),
        ];
        let found = check(&history);
        let rules = rules(&found);
        for rule in [
            "(a) read-your-writes",
            "(b) monotonic reads",
            "(c) compare-and-set",
            "(d) strong reads",
        ] {
            assert!(rules.contains(&rule), "{rule} not caught: {found:?}");
        }
        let text = found[0].render(&history);
        assert!(text.contains("#0") && text.contains("#1"), "{text}");
        assert!(!text.contains("#4"), "only the ops involved: {text}");
    }

    #[test]
    fn a_lost_write_is_caught() {
        let history = vec![op(0, "k", put("a"), (0, 10), Outcome::Written(1))];
        let final_state = HashMap::from([(
            "k".to_string(),
            FinalEntry {
                revision: 0,
                value: None,
            },
        )]);
        let stored = HashMap::new();
        let found = check_final(&history, &final_state, &stored);
        assert_eq!(found.len(), 2, "{found:?}");
        let stored = HashMap::from([(1, Some(("k".to_string(), Some("a".to_string()))))]);
        let final_state = HashMap::from([(
            "k".to_string(),
            FinalEntry {
                revision: 1,
                value: Some("a".to_string()),
            },
        )]);
        assert!(check_final(&history, &final_state, &stored).is_empty());
    }
}
