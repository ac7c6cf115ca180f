//! A keyed stream and its ledger, for the tests where members of a queue group come and go
//! (`rebalance.rs`, `member_crash.rs`).
//!
//! Record `seq` of key `k` carries the payload `k17:000123` (and the Kafka key `k17`). The
//! [`Ledger`] keeps every handled record in the order handled, across members (and across
//! processes: a child member's records are fed in from its stdout), and which handlers of a
//! key run at the same time. [`check_order`] then says whether anything was lost and whether
//! order per key held: the handled sequence of a key may go back only to handle again what it
//! handled already (a redelivery), and never skips ahead of what it has not handled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The Kafka key of key number `key`.
pub fn key_name(key: u32) -> String {
    format!("k{key:02}")
}

/// The payload of record `seq` of key `key`.
pub fn payload(key: u32, seq: u32) -> String {
    format!("{}:{seq:06}", key_name(key))
}

/// `(key, seq)` of a payload written by [`payload`].
pub fn parse(payload: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, seq) = text.strip_prefix('k')?.split_once(':')?;
    Some((key.parse().ok()?, seq.parse().ok()?))
}

/// One handled record.
#[derive(Clone, Copy, Debug)]
pub struct Handled {
    pub key: u32,
    pub seq: u32,
    pub member: usize,
    /// When the ledger learnt of it.
    pub at: Instant,
}

/// Counts to wait on.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Records handled, duplicates included.
    pub handled: usize,
    /// Distinct `(key, seq)` handled.
    pub distinct: usize,
    /// Records handled per member, duplicates included.
    pub per_member: BTreeMap<usize, usize>,
}

impl Progress {
    /// Records `member` handled.
    pub fn of(&self, member: usize) -> usize {
        self.per_member.get(&member).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Handled>,
    seen: HashSet<(u32, u32)>,
    /// Handlers running now, per key.
    running: HashMap<u32, usize>,
    /// `(key, seq)` of each handler that started while another handler of its key ran.
    overlaps: Vec<(u32, u32)>,
    /// Payloads that are not records of the stream.
    strays: Vec<String>,
    progress: Progress,
}

/// Every record handled, in the order handled, by every member.
#[derive(Debug)]
pub struct Ledger {
    state: watch::Sender<State>,
}

/// What the ledger holds at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub log: Vec<Handled>,
    pub overlaps: Vec<(u32, u32)>,
    pub strays: Vec<String>,
    /// Records handled per member.
    pub per_member: BTreeMap<usize, usize>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger {
            state: watch::Sender::new(State::default()),
        })
    }

    /// A handler of `(key, seq)` starts; counts an overlap when another of its key runs.
    pub fn begin(&self, key: u32, seq: u32) {
        self.state.send_if_modified(|s| {
            let running = s.running.entry(key).or_default();
            if *running > 0 {
                s.overlaps.push((key, seq));
            }
            *running += 1;
            false
        });
    }

    /// The handler of `(key, seq)` that [`begin`](Self::begin) announced finished, in `member`.
    pub fn end(&self, key: u32, seq: u32, member: usize) {
        self.state.send_modify(|s| {
            if let Some(running) = s.running.get_mut(&key) {
                *running = running.saturating_sub(1);
            }
            Self::push(s, key, seq, member);
        });
    }

    /// `member` handled `(key, seq)` (reported from elsewhere, a child process).
    pub fn record(&self, key: u32, seq: u32, member: usize) {
        self.state.send_modify(|s| Self::push(s, key, seq, member));
    }

    fn push(s: &mut State, key: u32, seq: u32, member: usize) {
        s.log.push(Handled {
            key,
            seq,
            member,
            at: Instant::now(),
        });
        s.progress.handled += 1;
        *s.progress.per_member.entry(member).or_insert(0) += 1;
        if s.seen.insert((key, seq)) {
            s.progress.distinct += 1;
        }
    }

    /// A delivery that is not a record of the stream.
    pub fn stray(&self, payload: &[u8]) {
        self.state
            .send_modify(|s| s.strays.push(String::from_utf8_lossy(payload).into_owned()));
    }

    pub fn progress(&self) -> Progress {
        self.state.borrow().progress.clone()
    }

    /// Distinct records handled so far.
    pub fn distinct(&self) -> usize {
        self.state.borrow().progress.distinct
    }

    /// Waits until `done(progress)`; panics with the progress after `timeout`.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Progress {
        let mut rx = self.state.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|s| done(&s.progress))).await {
            Ok(Ok(state)) => state.progress.clone(),
            Ok(Err(_)) => unreachable!("the ledger owns its sender"),
            Err(_) => panic!(
                "{what}: not reached within {timeout:?}; progress {:?}",
                self.progress()
            ),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.state.borrow();
        Snapshot {
            log: s.log.clone(),
            overlaps: s.overlaps.clone(),
            strays: s.strays.clone(),
            per_member: s.progress.per_member.clone(),
        }
    }
}

/// What [`check_order`] found.
#[derive(Debug, Default)]
pub struct OrderCheck {
    /// `(key, seq)` never handled.
    pub missing: Vec<(u32, u32)>,
    /// Handlings of a `(key, seq)` handled before.
    pub duplicates: usize,
    /// Times a key went back to handle again what it had handled (a redelivered run starts).
    pub rewinds: usize,
    /// `(key, expected, got)`: a key jumped ahead of a seq it had not handled yet.
    pub skips: Vec<(u32, u32, u32)>,
    /// `(key, seq)` handled for the first time after a later seq of its key.
    pub late: Vec<(u32, u32)>,
}

impl OrderCheck {
    /// Lost nothing and kept order per key.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.skips.is_empty() && self.late.is_empty()
    }

    /// Panics, naming the first offenders, unless every delivery was a record, none was lost
    /// and order per key held.
    pub fn assert_complete(&self, snapshot: &Snapshot) {
        assert!(
            snapshot.strays.is_empty(),
            "deliveries that are not records: {:?}",
            snapshot.strays
        );
        assert!(
            self.missing.is_empty(),
            "{} records never handled, the first: {:?}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(10)]
        );
        assert!(
            self.skips.is_empty() && self.late.is_empty(),
            "order per key broken: skips (key, expected, got) {:?}; handled after a later seq \
             (key, seq) {:?}",
            &self.skips[..self.skips.len().min(10)],
            &self.late[..self.late.len().min(10)]
        );
    }
}

/// Checks a log of `keys` keys with seqs `0..per_key` each: every record handled at least
/// once; per key, each record either is the next one not handled yet, or one handled before
/// (a redelivery, which restarts at an earlier seq and then proceeds).
pub fn check_order(log: &[Handled], keys: u32, per_key: u32) -> OrderCheck {
    let mut check = OrderCheck::default();
    // per key: which seqs were handled, the next one never handled, the last one handled
    let mut seen = vec![vec![false; per_key as usize]; keys as usize];
    let mut next = vec![0u32; keys as usize];
    let mut last: Vec<Option<u32>> = vec![None; keys as usize];
    for h in log {
        let (k, s) = (h.key as usize, h.seq);
        assert!(
            k < keys as usize && s < per_key,
            "a record outside the stream: {h:?}"
        );
        if last[k].is_some_and(|l| s <= l) {
            check.rewinds += 1;
        }
        last[k] = Some(s);
        if seen[k][s as usize] {
            check.duplicates += 1;
            continue;
        }
        seen[k][s as usize] = true;
        if s == next[k] {
            next[k] += 1;
        } else if s > next[k] {
            check.skips.push((h.key, next[k], s));
            next[k] = s + 1;
        } else {
            check.late.push((h.key, s));
        }
    }
    for (k, seen) in seen.iter().enumerate() {
        for (s, seen) in seen.iter().enumerate() {
            if !seen {
                check.missing.push((k as u32, s as u32));
            }
        }
    }
    check
}
