//! (f) Each key is a linearizable register with revisions, checked against the bucket's whole
//! stream; (g) what refused compare-and-sets report.
//!
//! A WGL search (Knossos, Porcupine) tries orders of the operations until one explains every
//! answer. Here NATS gives the order of the writes: revision order is the order in which they
//! took effect, bucket-wide, and the test's bucket keeps every message, so the stream lists them
//! all, those of writes whose caller never learned their fate included. What remains is whether
//! each write can be given a moment inside its own call, in revision order, such that every strong
//! read and every refused compare-and-set has a moment inside its call at which the key was in
//! the state it reported. A read of the state that message `j` created needs `j`'s moment before
//! the read ended and the key's next message's moment after it began: bounds on the writes'
//! moments. One pass in revision order, each moment as early as its bounds allow, decides whether
//! all bounds can hold, which is what the search would find, without its exponential cost.

use std::collections::HashMap;

use super::check::{Consistency, Kind, Op, Outcome, Time, Violation};

/// One message of the bucket's stream.
#[derive(Debug, Clone)]
pub struct Message {
    pub revision: u64,
    pub key: String,
    /// `None` for a delete or purge marker.
    pub value: Option<String>,
}

/// When message `i` may have taken effect, and which operations say so.
#[derive(Debug, Clone, Copy)]
struct Window {
    earliest: Time,
    earliest_by: Option<usize>,
    latest: Time,
    latest_by: Option<usize>,
}

impl Window {
    fn not_before(&mut self, t: Time, op: usize) {
        if t > self.earliest {
            (self.earliest, self.earliest_by) = (t, Some(op));
        }
    }

    fn not_after(&mut self, t: Time, op: usize) {
        if t < self.latest {
            (self.latest, self.latest_by) = (t, Some(op));
        }
    }
}

/// The stream as the check needs it: messages in revision order, by key.
struct Stream<'a> {
    messages: &'a [Message],
    position: HashMap<u64, usize>,
    /// Each key's messages, as positions in `messages`.
    by_key: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Stream<'a> {
    fn new(messages: &'a [Message]) -> Self {
        let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut position = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            position.insert(m.revision, i);
            by_key.entry(m.key.as_str()).or_default().push(i);
        }
        Stream {
            messages,
            position,
            by_key,
        }
    }

    /// The key's message before and after position `i` (which is one of the key's).
    fn neighbours(&self, key: &str, i: usize) -> (Option<usize>, Option<usize>) {
        let Some(list) = self.by_key.get(key) else {
            return (None, None);
        };
        let at = list.partition_point(|&p| p < i);
        let before = at.checked_sub(1).map(|b| list[b]);
        let after = list
            .get(at + usize::from(list.get(at) == Some(&i)))
            .copied();
        (before, after)
    }

    /// The key's first message at or after position `i`.
    fn next_of_key(&self, key: &str, i: usize) -> Option<usize> {
        let list = self.by_key.get(key)?;
        list.get(list.partition_point(|&p| p < i)).copied()
    }

    /// The key's last message at or before revision `revision`.
    fn last_of_key_by(&self, key: &str, revision: u64) -> Option<usize> {
        let list = self.by_key.get(key)?;
        let n = list.partition_point(|&p| self.messages[p].revision <= revision);
        n.checked_sub(1).map(|n| list[n])
    }
}

pub fn check_linearizable(history: &[Op], messages: &[Message]) -> Vec<Violation> {
    let stream = Stream::new(messages);
    let mut violations = Vec::new();
    let mut windows = writers(history, &stream, &mut violations);
    check_conditions(history, &stream, &windows, &mut violations);
    no_value_refusals(history, &stream, &windows, &mut violations);
    observations(history, &stream, &mut windows, &mut violations);
    order_in_time(&stream, &windows, &mut violations);
    violations
}

/// Each message's window from the call that wrote it: from its start to its answer (or for ever,
/// when the caller never learned its fate).
fn writers(
    history: &[Op],
    stream: &Stream,
    violations: &mut Vec<Violation>,
) -> Vec<(Window, Option<usize>)> {
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    let mut by_revision: HashMap<u64, usize> = HashMap::new();
    // Deletes whose fate is unknown, per key: any of them may have written an unclaimed marker.
    let mut unknown_deletes: HashMap<&str, Time> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if let Kind::Put { value, .. } = &op.kind {
            by_value.insert(value.as_str(), i);
        }
        match (&op.kind, &op.outcome) {
            (
                Kind::Put { .. } | Kind::Delete { .. },
                Outcome::Written(rev) | Outcome::StoredLate(rev),
            ) => {
                by_revision.insert(*rev, i);
            }
            (Kind::Delete { .. }, Outcome::Unknown(_)) => {
                let earliest = unknown_deletes.entry(op.key.as_str()).or_insert(op.invoked);
                *earliest = (*earliest).min(op.invoked);
            }
            _ => {}
        }
    }
    let mut windows = Vec::with_capacity(stream.messages.len());
    for m in stream.messages {
        let writer = match &m.value {
            Some(value) => by_value.get(value.as_str()).copied(),
            None => by_revision.get(&m.revision).copied(),
        };
        let window = match writer.map(|w| (w, &history[w])) {
            Some((w, op)) => {
                let latest = match op.outcome {
                    Outcome::Written(rev) | Outcome::StoredLate(rev) if rev == m.revision => {
                        op.completed
                    }
                    Outcome::Unknown(_) => Time::MAX,
                    _ => {
                        violations.push(Violation {
                            rule: "(f) linearizability",
                            detail: format!(
                                "revision {} of `{}` was written by this call, which was answered {:?}",
                                m.revision, m.key, op.outcome
                            ),
                            ops: vec![w],
                        });
                        Time::MAX
                    }
                };
                Window {
                    earliest: op.invoked,
                    earliest_by: Some(w),
                    latest,
                    latest_by: Some(w),
                }
            }
            None => match (m.value.is_none(), unknown_deletes.get(m.key.as_str())) {
                (true, Some(&earliest)) => Window {
                    earliest,
                    earliest_by: None,
                    latest: Time::MAX,
                    latest_by: None,
                },
                _ => {
                    violations.push(Violation {
                        rule: "(f) linearizability",
                        detail: format!(
                            "revision {} of `{}` ({:?}) was written by no call of the history",
                            m.revision, m.key, m.value
                        ),
                        ops: vec![],
                    });
                    Window {
                        earliest: 0,
                        earliest_by: None,
                        latest: Time::MAX,
                        latest_by: None,
                    }
                }
            },
        };
        windows.push((window, writer));
    }
    windows
}

fn expectation(kind: &Kind) -> Option<u64> {
    match kind {
        Kind::Put { expect, .. } | Kind::Delete { expect } => *expect,
        Kind::Get(_) => None,
    }
}

/// A compare-and-set that was stored found the key as it expected: the key's previous message
/// had the expected revision, or (expecting 0) there was none or it was a marker.
fn check_conditions(
    history: &[Op],
    stream: &Stream,
    windows: &[(Window, Option<usize>)],
    violations: &mut Vec<Violation>,
) {
    for (i, (_, writer)) in windows.iter().enumerate() {
        let Some(w) = *writer else { continue };
        let Some(expected) = expectation(&history[w].kind) else {
            continue;
        };
        let m = &stream.messages[i];
        let (before, _) = stream.neighbours(&m.key, i);
        let previous = before.map(|b| &stream.messages[b]);
        let fine = match (expected, previous) {
            (0, None) => true,
            (0, Some(p)) => p.value.is_none(),
            (n, Some(p)) => p.revision == n,
            (_, None) => false,
        };
        if !fine {
            let mut ops = vec![w];
            ops.extend(before.and_then(|b| windows[b].1));
            violations.push(Violation {
                rule: "(f) compare-and-set against the stream",
                detail: format!(
                    "a write to `{}` expecting {expected} was stored at {}, after {:?}",
                    m.key,
                    m.revision,
                    previous.map(|p| (p.revision, &p.value))
                ),
                ops,
            });
        }
    }
}

/// Strong reads and refused compare-and-sets: each saw the key in one state, which bounds the
/// moments of the message that made that state and of the key's next message.
fn observations(
    history: &[Op],
    stream: &Stream,
    windows: &mut [(Window, Option<usize>)],
    violations: &mut Vec<Violation>,
) {
    // The state `state` (a position, or None for "before the key's first message") was seen
    // by op `o` of `key`.
    let mut bound = |o: usize, key: &str, state: Option<usize>| {
        let op = &history[o];
        if let Some(j) = state {
            windows[j].0.not_after(op.completed, o);
        }
        let next = match state {
            Some(j) => stream.neighbours(key, j).1,
            None => stream.next_of_key(key, 0),
        };
        if let Some(next) = next {
            windows[next].0.not_before(op.invoked, o);
        }
    };
    for (o, op) in history.iter().enumerate() {
        let key = op.key.as_str();
        match (&op.kind, &op.outcome) {
            (Kind::Get(Consistency::Strong), Outcome::Read { entry, mirror }) => match entry {
                Some((_, rev)) => {
                    if let Some(&j) = stream.position.get(rev) {
                        bound(o, key, Some(j));
                    }
                }
                // The key had no value: in the state at the mirror's revision when that was a
                // marker or nothing; otherwise the answer came from a later marker, left open.
                None => match stream.last_of_key_by(key, *mirror) {
                    None => bound(o, key, None),
                    Some(j) if stream.messages[j].value.is_none() => bound(o, key, Some(j)),
                    Some(_) => {}
                },
            },
            (kind, Outcome::Conflict { current }) => {
                let expected = expectation(kind).unwrap_or(0);
                refusal(
                    history, stream, o, expected, *current, violations, &mut bound,
                );
            }
            _ => {}
        }
    }
}

/// A refused compare-and-set reported `current`: a state the key was in during the call, and
/// one in which the write's condition fails.
fn refusal(
    history: &[Op],
    stream: &Stream,
    o: usize,
    expected: u64,
    current: u64,
    violations: &mut Vec<Violation>,
    bound: &mut impl FnMut(usize, &str, Option<usize>),
) {
    let op = &history[o];
    let key = op.key.as_str();
    let mut fail = |detail: String| {
        violations.push(Violation {
            rule: "(g) refused compare-and-set",
            detail,
            ops: vec![o],
        })
    };
    if current == 0 {
        // A create refused because the key had no value is the one answer that can never be
        // right; the other refusals reporting no value are checked in `no_value_refusals`.
        if expected == 0 {
            fail(format!(
                "a create of `{key}` was refused, reporting that the key had no value"
            ));
        }
        return;
    }
    if current == expected {
        fail(format!(
            "a write to `{key}` expecting {expected} was refused, reporting the key at {current}"
        ));
        return;
    }
    match stream.position.get(&current) {
        Some(&j) if stream.messages[j].key == key && stream.messages[j].value.is_some() => {
            bound(o, key, Some(j));
        }
        _ => fail(format!(
            "a refused write to `{key}` reported current_revision {current}, which is not a \
             revision at which the key had a value"
        )),
    }
}

/// A compare-and-set expecting N > 0, refused with `current_revision` 0: the key must have had
/// no value at some moment of the call, in a state other than N's own marker (in which the write
/// would have succeeded). Checked against the writers' windows alone, which only narrows later.
fn no_value_refusals(
    history: &[Op],
    stream: &Stream,
    windows: &[(Window, Option<usize>)],
    violations: &mut Vec<Violation>,
) {
    let mut spans: HashMap<&str, NoValueSpans> = HashMap::new();
    for (o, op) in history.iter().enumerate() {
        let Outcome::Conflict { current: 0 } = op.outcome else {
            continue;
        };
        let expected = expectation(&op.kind).unwrap_or(0);
        if expected == 0 {
            continue;
        }
        let key = op.key.as_str();
        let spans = spans
            .entry(key)
            .or_insert_with(|| NoValueSpans::new(stream, windows, key));
        if !spans.overlap(op.invoked, op.completed, expected) {
            violations.push(Violation {
                rule: "(g) refused compare-and-set",
                detail: format!(
                    "a write to `{key}` expecting {expected} was refused with current_revision 0, \
                     but the key had a value throughout the call"
                ),
                ops: vec![o],
            });
        }
    }
}

/// A key's spans without a value (before its first message, and from each marker to the key's
/// next message), as windows: the earliest a span may begin, the latest it may end. Sorted by
/// beginning, with the two latest ends so far (of different markers), so that "does a span other
/// than marker N's overlap this call" is one binary search.
struct NoValueSpans {
    begins: Vec<Time>,
    /// Up to each position: the latest end, and the latest end of another marker, with their
    /// marker revisions (0 for the span before the first message).
    best: Vec<[(Time, u64); 2]>,
}

impl NoValueSpans {
    fn new(stream: &Stream, windows: &[(Window, Option<usize>)], key: &str) -> Self {
        let list = stream.by_key.get(key).map_or(&[][..], Vec::as_slice);
        let end = |next: Option<usize>| next.map_or(Time::MAX, |n| windows[n].0.latest);
        let mut spans = vec![(0, end(list.first().copied()), 0)];
        for &j in list {
            if stream.messages[j].value.is_none() {
                let next = stream.neighbours(key, j).1;
                spans.push((
                    windows[j].0.earliest,
                    end(next),
                    stream.messages[j].revision,
                ));
            }
        }
        spans.sort_unstable();
        let mut best = Vec::with_capacity(spans.len());
        let mut top = [(0, u64::MAX), (0, u64::MAX)];
        for &(_, end, marker) in &spans {
            if end >= top[0].0 {
                if marker != top[0].1 {
                    top[1] = top[0];
                }
                top[0] = (end, marker);
            } else if end >= top[1].0 && marker != top[0].1 {
                top[1] = (end, marker);
            }
            best.push(top);
        }
        NoValueSpans {
            begins: spans.iter().map(|&(begin, ..)| begin).collect(),
            best,
        }
    }

    /// Whether a span other than marker `except`'s may overlap `[from, to]`.
    fn overlap(&self, from: Time, to: Time, except: u64) -> bool {
        let n = self.begins.partition_point(|&begin| begin <= to);
        let Some(top) = n.checked_sub(1).map(|i| self.best[i]) else {
            return false;
        };
        top.iter()
            .any(|&(end, marker)| marker != u64::MAX && marker != except && end >= from)
    }
}

/// One pass in revision order: each message's moment as early as its window and its
/// predecessor allow; a moment past its window's end means no order in time explains the
/// history.
fn order_in_time(
    stream: &Stream,
    windows: &[(Window, Option<usize>)],
    violations: &mut Vec<Violation>,
) {
    let mut previous: Option<Time> = None;
    // Where the current run of moments forced by their predecessors began.
    let mut run_start = 0;
    for (i, (window, writer)) in windows.iter().enumerate() {
        let after_previous = previous.map_or(0, |t| t.saturating_add(1));
        let moment = if window.earliest >= after_previous {
            run_start = i;
            window.earliest
        } else {
            after_previous
        };
        if moment > window.latest {
            let m = &stream.messages[i];
            let mut ops: Vec<usize> = Vec::new();
            ops.extend(*writer);
            ops.extend(window.latest_by);
            ops.extend(windows[run_start].1);
            ops.extend(windows[run_start].0.earliest_by);
            violations.push(Violation {
                rule: "(f) linearizability",
                detail: format!(
                    "revision {} of `{}` cannot take effect in time: after revisions {}..{} it is \
                     due at {:.3} ms at the earliest, but an answer needs it by {:.3} ms",
                    m.revision,
                    m.key,
                    stream.messages[run_start].revision,
                    m.revision,
                    moment as f64 / 1e6,
                    window.latest as f64 / 1e6
                ),
                ops,
            });
            previous = Some(window.latest.max(after_previous));
        } else {
            previous = Some(moment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::tests::{cas, op, put, read};
    use super::*;

    fn message(revision: u64, key: &str, value: Option<&str>) -> Message {
        Message {
            revision,
            key: key.to_string(),
            value: value.map(str::to_string),
        }
    }

    fn delete(expect: Option<u64>) -> Kind {
        Kind::Delete { expect }
    }

    fn strong() -> Kind {
        Kind::Get(Consistency::Strong)
    }

    fn rules(violations: &[Violation]) -> Vec<&'static str> {
        violations.iter().map(|v| v.rule).collect()
    }

    /// put a@1, delete@2, create b@3; reads and refusals that fit.
    fn base() -> (Vec<Op>, Vec<Message>) {
        let history = vec![
            op(0, "k", put("a"), (0, 10), Outcome::Written(1)),
            op(1, "k", delete(None), (20, 30), Outcome::Written(2)),
            op(0, "k", cas("b", 0), (40, 50), Outcome::Written(3)),
            // Overlaps the delete: may see a@1 or nothing.
            op(1, "k", strong(), (25, 35), read("a", 1, 1)),
            op(
                2,
                "k",
                strong(),
                (32, 38),
                Outcome::Read {
                    entry: None,
                    mirror: 2,
                },
            ),
            // A create refused while b@3 is there.
            op(
                2,
                "k",
                cas("c", 0),
                (55, 60),
                Outcome::Conflict { current: 3 },
            ),
            // Expecting 1 after the delete: refused with "no value".
            op(
                3,
                "k",
                cas("d", 1),
                (32, 39),
                Outcome::Conflict { current: 0 },
            ),
        ];
        let stream = vec![
            message(1, "k", Some("a")),
            message(2, "k", None),
            message(3, "k", Some("b")),
        ];
        (history, stream)
    }

    #[test]
    fn a_linearizable_history_passes() {
        let (history, stream) = base();
        let found = check_linearizable(&history, &stream);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_create_refused_on_a_key_without_value_is_caught() {
        let (mut history, stream) = base();
        history.push(op(
            4,
            "k",
            cas("e", 0),
            (32, 38),
            Outcome::Conflict { current: 0 },
        ));
        assert_eq!(
            rules(&check_linearizable(&history, &stream)),
            ["(g) refused compare-and-set"]
        );
    }

    #[test]
    fn a_current_revision_the_key_never_had_during_the_call_is_caught() {
        let (mut history, stream) = base();
        // Revision 1 was deleted at 30 at the latest; this call began at 45.
        history.push(op(
            4,
            "k",
            cas("e", 7),
            (45, 48),
            Outcome::Conflict { current: 1 },
        ));
        // Revision 2 is a marker, not a value.
        history.push(op(
            5,
            "k",
            cas("f", 7),
            (45, 48),
            Outcome::Conflict { current: 2 },
        ));
        // "No value" while a@1 was there: stored by 10, deleted from 20 on.
        history.push(op(
            6,
            "k",
            delete(Some(9)),
            (12, 15),
            Outcome::Conflict { current: 0 },
        ));
        let found = check_linearizable(&history, &stream);
        assert_eq!(
            rules(&found),
            [
                "(g) refused compare-and-set",
                "(g) refused compare-and-set",
                "(f) linearizability"
            ],
            "{found:?}"
        );
    }

    #[test]
    fn a_strong_read_of_a_deleted_value_is_caught_with_the_ops_involved() {
        let (mut history, stream) = base();
        // The delete was acknowledged at 30; a strong read from 31 to 33 still sees a@1.
        history.push(op(4, "k", strong(), (31, 33), read("a", 1, 1)));
        let found = check_linearizable(&history, &stream);
        assert_eq!(rules(&found), ["(f) linearizability"], "{found:?}");
        let text = found[0].render(&history);
        assert!(text.contains("#1 ") && text.contains("#7 "), "{text}");
    }

    #[test]
    fn a_compare_and_set_stored_against_the_wrong_revision_is_caught() {
        let (mut history, mut stream) = base();
        history.push(op(4, "k", cas("x", 1), (70, 80), Outcome::Written(4)));
        stream.push(message(4, "k", Some("x")));
        assert_eq!(
            rules(&check_linearizable(&history, &stream)),
            ["(f) compare-and-set against the stream"]
        );
    }

    #[test]
    fn an_unclaimed_message_is_caught_and_unknown_deletes_may_claim_markers() {
        let (mut history, mut stream) = base();
        stream.push(message(4, "k", Some("nobody wrote this")));
        assert_eq!(
            rules(&check_linearizable(&history, &stream)),
            ["(f) linearizability"]
        );
        stream.pop();
        history.push(op(
            4,
            "k",
            delete(None),
            (70, 80),
            Outcome::Unknown("timeout".into()),
        ));
        stream.push(message(4, "k", None));
        assert!(check_linearizable(&history, &stream).is_empty());
    }
}
