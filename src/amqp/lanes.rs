//! Ordered parallel lanes: documents are prepared in parallel and committed in arrival order,
//! except that a document that is slow or failing never holds back other document keys.
//!
//! - [`document_key`]: the document key (sender, noun, document ID), read by a cheap scan of
//!   the raw bytes before anything is parsed. `None` when the scan cannot tell: such a
//!   document is a *barrier* (nothing overtakes it and it overtakes nothing).
//! - [`Lanes`]: `n` prepare workers, threads of their own named `bodflow-lane-<i>`.
//!   [`Pipeline::prepare`] is pure, so any lane may prepare any document; a delivery goes to
//!   the lane with the least work queued, so a huge document occupies one lane while the
//!   others go on.
//! - [`Sequencer`]: the deliveries of a session in arrival order, each preparing, ready,
//!   committing or waiting for a retry. [`Sequencer::take_group`] picks what may be committed
//!   now: the ready documents from the front, in order, stopping at the first one still being
//!   prepared — unless that one is *large* (over [`RunOptions::large_bytes`]) or *waiting*
//!   for a retry after a failed commit: those are stepped over, and so is every later
//!   document with the same key (or after a barrier). Normally nothing is stepped over and
//!   the commit order is the arrival order, exactly as `replay` applies the same inputs; a
//!   slow or failing document only reorders *different* keys, which DESIGN §4 allows.
//!
//! [`Pipeline::prepare`]: crate::pipeline::Pipeline::prepare
//! [`RunOptions::large_bytes`]: super::RunOptions::large_bytes

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::telemetry::events::{emit, LaneActivity};

/// Only this much of a document is scanned for its key.
const KEY_SCAN_BYTES: usize = 64 * 1024;

/// The document key of a raw BOD: a hash of the sender's logical ID, the noun and the first
/// ID of the first noun (`PartyIDs/ID`, `IDs/ID`). Different verbs on the same noun share a
/// key (a `Sync` and a `Process` of one account are ordered). Hash collisions only add
/// ordering; `None` (not a BOD, or the ID not in the first 64 KiB) makes a barrier.
pub fn document_key(bytes: &[u8]) -> Option<u64> {
    let bytes = bytes.get(..bytes.len().min(KEY_SCAN_BYTES))?;
    let mut tags = Tags { bytes, at: 0 };
    let root = tags.find(|t| t.kind == TagKind::Start)?;
    let (verb, noun) = split_verb_noun(local(root.name))?;
    let mut sender = None;
    let mut depth = 0usize;
    // Walk the root's children: ApplicationArea (sender), DataArea (verb, then noun).
    while let Some(tag) = tags.next() {
        match tag.kind {
            TagKind::End if depth == 0 => return None,
            TagKind::End => depth -= 1,
            TagKind::Empty => {}
            TagKind::Start => {
                depth += 1;
                let name = local(tag.name);
                if sender.is_none() && name == b"LogicalID" {
                    sender = Some(trim(tags.text()));
                } else if depth == 1 && name == b"DataArea" {
                    let id = tags.first_noun_id(verb)?;
                    let mut h = DefaultHasher::new();
                    (sender?, noun, id).hash(&mut h);
                    return Some(h.finish());
                }
            }
        }
    }
    None
}

fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b':') {
        Some(i) => name.get(i + 1..).unwrap_or_default(),
        None => name,
    }
}

/// `SyncCustomerPartyMaster` → (`Sync`, `CustomerPartyMaster`): split before the second
/// capital letter.
fn split_verb_noun(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = name
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, b)| b.is_ascii_uppercase())
        .map(|(i, _)| i)?;
    Some(name.split_at(at))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    Start,
    End,
    Empty,
}

struct Tag<'a> {
    kind: TagKind,
    name: &'a [u8],
}

/// A minimal tag scanner: element start, end and empty tags; comments, processing
/// instructions, CDATA and DOCTYPE are skipped. Not a parser: it only has to find the same
/// key in documents of the same shape, and gives up (None) on anything odd.
struct Tags<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Tags<'a> {
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    fn skip_past(&mut self, end: &[u8]) -> Option<()> {
        let rest = self.rest();
        let i = rest.windows(end.len()).position(|w| w == end)?;
        self.at += i + end.len();
        Some(())
    }

    /// The text from here to the next `<`.
    fn text(&mut self) -> &'a [u8] {
        let rest = self.rest();
        let end = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
        self.at += end;
        rest.get(..end).unwrap_or_default()
    }

    /// Inside `DataArea`: skips the verb element, then returns the text of the first `ID`
    /// element inside the next (noun) element.
    fn first_noun_id(&mut self, verb: &[u8]) -> Option<&'a [u8]> {
        let first = self.next()?;
        if first.kind == TagKind::End || local(first.name) != verb {
            return None;
        }
        if first.kind == TagKind::Start {
            let mut depth = 1usize;
            while depth > 0 {
                match self.next()?.kind {
                    TagKind::Start => depth += 1,
                    TagKind::End => depth -= 1,
                    TagKind::Empty => {}
                }
            }
        }
        let noun = self.next()?;
        if noun.kind != TagKind::Start {
            return None;
        }
        let mut depth = 1usize;
        while depth > 0 {
            let tag = self.next()?;
            match tag.kind {
                TagKind::Start if local(tag.name) == b"ID" => return Some(trim(self.text())),
                TagKind::Start => depth += 1,
                TagKind::End => depth -= 1,
                TagKind::Empty => {}
            }
        }
        None
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Tag<'a>;

    fn next(&mut self) -> Option<Tag<'a>> {
        loop {
            let rest = self.rest();
            let open = rest.iter().position(|&b| b == b'<')?;
            self.at += open + 1;
            let rest = self.rest();
            if rest.starts_with(b"!--") {
                self.skip_past(b"-->")?;
                continue;
            }
            if rest.starts_with(b"![CDATA[") {
                self.skip_past(b"]]>")?;
                continue;
            }
            if rest.starts_with(b"?") || rest.starts_with(b"!") {
                self.skip_past(b">")?;
                continue;
            }
            let (kind, name_at) = match rest.first() {
                Some(b'/') => (TagKind::End, 1),
                _ => (TagKind::Start, 0),
            };
            let tail = rest.get(name_at..)?;
            let name_len = tail
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')?;
            let name = tail.get(..name_len)?;
            // The end of the tag: the first `>` outside quotes.
            let mut quote = None;
            let mut close = None;
            for (i, &b) in rest.iter().enumerate() {
                match (quote, b) {
                    (None, b'"' | b'\'') => quote = Some(b),
                    (Some(q), _) if b == q => quote = None,
                    (None, b'>') => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let close = close?;
            let empty = kind == TagKind::Start && close > 0 && rest.get(close - 1) == Some(&b'/');
            self.at += close + 1;
            if name.is_empty() {
                return None;
            }
            return Some(Tag {
                kind: if empty { TagKind::Empty } else { kind },
                name,
            });
        }
    }
}

/// Where a delivery is in the sequencer.
#[derive(Debug)]
enum Slot<T> {
    /// Handed to a lane.
    Preparing,
    /// Prepared, waiting for its turn.
    Ready(T),
    /// Taken into the commit in flight.
    Committing,
    /// Its commit failed; retried (alone) from `due` on.
    Waiting { item: T, due: Instant },
    /// Committed or given up; removed once it reaches the front.
    Done,
}

#[derive(Debug)]
struct Entry<T> {
    seq: u64,
    key: Option<u64>,
    large: bool,
    slot: Slot<T>,
}

/// The deliveries of one session in arrival order (module docs). `T` is what a prepared
/// delivery carries; the sequencer only moves it around.
#[derive(Debug)]
pub struct Sequencer<T> {
    entries: VecDeque<Entry<T>>,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer {
            entries: VecDeque::new(),
        }
    }
}

impl<T> Sequencer<T> {
    /// A new delivery, handed to a lane. `seq` must grow with arrival (delivery tags do).
    pub fn push(&mut self, seq: u64, key: Option<u64>, large: bool) {
        self.entries.push_back(Entry {
            seq,
            key,
            large,
            slot: Slot::Preparing,
        });
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Entry<T>> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.entries.get_mut(i)
    }

    /// A lane prepared `seq`; or a commit left it to go again in order (it was stepped over).
    pub fn ready(&mut self, seq: u64, item: T) {
        if let Some(e) = self.entry(seq) {
            e.slot = Slot::Ready(item);
        }
    }

    /// Its commit failed: it is retried alone from `due` on; until then its key is held.
    pub fn wait(&mut self, seq: u64, item: T, due: Instant) {
        if let Some(e) = self.entry(seq) {
            e.slot = Slot::Waiting { item, due };
        }
    }

    /// Committed (or given up): no longer holds anything back.
    pub fn done(&mut self, seq: u64) {
        if let Some(e) = self.entry(seq) {
            e.slot = Slot::Done;
        }
        while matches!(self.entries.front(), Some(e) if matches!(e.slot, Slot::Done)) {
            self.entries.pop_front();
        }
    }

    /// The lowest sequence not done yet: every delivery below it has been committed or
    /// given up (what a `multiple` ack may cover).
    pub fn low(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| !matches!(e.slot, Slot::Done))
            .map(|e| e.seq)
    }

    /// Some delivery is still with a lane.
    pub fn preparing(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.slot, Slot::Preparing))
    }

    /// Nothing is being prepared, ready or committing (only retries may be waiting).
    pub fn settled(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.slot, Slot::Done | Slot::Waiting { .. }))
    }

    /// How many deliveries are not done.
    pub fn unfinished(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !matches!(e.slot, Slot::Done))
            .count()
    }

    /// The earliest retry time of a waiting delivery.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match e.slot {
                Slot::Waiting { due, .. } => Some(due),
                _ => None,
            })
            .min()
    }

    /// What may be committed now, in order, at most `max` (module docs). A waiting delivery
    /// whose retry is due is taken alone. `retry = false` (shutting down) steps over waiting
    /// ones without retrying them. Taken entries are `Committing` until `done`, `ready` or
    /// `wait` is called for them.
    pub fn take_group(&mut self, now: Instant, max: usize, retry: bool) -> Vec<(u64, T)> {
        let mut held: Vec<u64> = Vec::new();
        let mut picked: Vec<usize> = Vec::new();
        let mut alone = None;
        for (i, e) in self.entries.iter().enumerate() {
            if picked.len() >= max {
                break;
            }
            let blocked = match e.key {
                Some(k) => held.contains(&k),
                // A barrier waits for everything before it.
                None => !held.is_empty(),
            };
            let stuck = match &e.slot {
                Slot::Done | Slot::Committing => continue,
                Slot::Preparing if e.large => true,
                Slot::Preparing => break,
                Slot::Waiting { due, .. } => {
                    if retry && !blocked && *due <= now && picked.is_empty() {
                        alone = Some(i);
                        break;
                    }
                    true
                }
                Slot::Ready(_) => blocked,
            };
            if stuck {
                match e.key {
                    Some(k) => held.push(k),
                    None => break,
                }
            } else {
                picked.push(i);
            }
        }
        if let Some(i) = alone {
            picked = vec![i];
        }
        let mut group = Vec::with_capacity(picked.len());
        for i in picked {
            if let Some(e) = self.entries.get_mut(i) {
                match std::mem::replace(&mut e.slot, Slot::Committing) {
                    Slot::Ready(item) | Slot::Waiting { item, .. } => group.push((e.seq, item)),
                    other => e.slot = other,
                }
            }
        }
        group
    }
}

/// A delivery on its way through a lane.
pub struct Job<I> {
    pub seq: u64,
    /// How much work it is (its size in bytes): lanes are chosen by queued weight.
    pub weight: usize,
    pub input: I,
}

/// What is queued on one lane.
#[derive(Default)]
struct Load {
    jobs: AtomicUsize,
    weight: AtomicUsize,
}

/// The prepare workers of one session (module docs). Dropping it lets them finish what they
/// were given and stop.
pub struct Lanes<I> {
    senders: Vec<std_mpsc::Sender<Job<I>>>,
    load: Arc<Vec<Load>>,
}

impl<I: Send + 'static> Lanes<I> {
    /// Starts `n` (at least one) lanes, each a thread of its own; each runs `work` on its jobs in
    /// the order given and sends `(seq, Some(output))` to `done` — `None` if `work`
    /// panicked (a bug; the session ends rather than wait for a document that never comes).
    pub fn start<O: Send + 'static>(
        n: usize,
        work: impl Fn(I) -> O + Send + Sync + 'static,
        done: mpsc::UnboundedSender<(u64, Option<O>)>,
    ) -> Lanes<I> {
        let n = n.max(1);
        let load: Arc<Vec<Load>> = Arc::new((0..n).map(|_| Load::default()).collect());
        let work = Arc::new(work);
        let mut senders = Vec::with_capacity(n);
        for lane in 0..n {
            let (tx, rx) = std_mpsc::channel::<Job<I>>();
            senders.push(tx);
            let (work, done, load) = (work.clone(), done.clone(), load.clone());
            // A named thread of its own (`bodflow-lane-N` in `top -H`); if it cannot start,
            // its receiver is gone and the first dispatch to it ends the session.
            let spawned = std::thread::Builder::new()
                .name(format!("bodflow-lane-{lane}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let weight = job.weight;
                        let input = job.input;
                        let out =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(input)))
                                .ok();
                        let _ = done.send((job.seq, out));
                        if let Some(l) = load.get(lane) {
                            l.weight.fetch_sub(weight, Ordering::AcqRel);
                            if l.jobs.fetch_sub(1, Ordering::AcqRel) == 1 {
                                emit(LaneActivity { lane, busy: false });
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(lane, error = %e, "Cannot start a prepare lane");
            }
        }
        Lanes { senders, load }
    }

    /// Hands a delivery to the lane with the least work queued (by weight), so a huge
    /// document keeps one lane busy while the others take everything else. `false` when the
    /// lane is gone.
    pub fn dispatch(&self, job: Job<I>) -> bool {
        let lane = (0..self.senders.len())
            .min_by_key(|&i| {
                self.load
                    .get(i)
                    .map_or(usize::MAX, |l| l.weight.load(Ordering::Acquire))
            })
            .unwrap_or(0);
        let (Some(sender), Some(load)) = (self.senders.get(lane), self.load.get(lane)) else {
            return false;
        };
        let weight = job.weight;
        load.weight.fetch_add(weight, Ordering::AcqRel);
        if load.jobs.fetch_add(1, Ordering::AcqRel) == 0 {
            emit(LaneActivity { lane, busy: true });
        }
        if sender.send(job).is_err() {
            load.weight.fetch_sub(weight, Ordering::AcqRel);
            if load.jobs.fetch_sub(1, Ordering::AcqRel) == 1 {
                emit(LaneActivity { lane, busy: false });
            }
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn account(sender: &str, id: &str, verb: &str, variation: u32) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0"?>
<!-- a comment with <ID>decoy</ID> -->
<{verb}CustomerPartyMaster xmlns="http://schema.infor.com/InforOAGIS/2" releaseID="9.2">
  <ApplicationArea><Sender><LogicalID> {sender} </LogicalID></Sender>
    <BODID>x:{id}:{variation}</BODID></ApplicationArea>
  <DataArea>
    <{verb}><TenantID>T</TenantID><ActionCriteria><ActionExpression actionCode="Change"/></ActionCriteria></{verb}>
    <CustomerPartyMaster>
      <PartyIDs><ID accountingEntity="100" variationID="{variation}">{id}</ID></PartyIDs>
      <Name a="x>y">N</Name>
    </CustomerPartyMaster>
  </DataArea>
</{verb}CustomerPartyMaster>"#
        )
        .into_bytes()
    }

    #[test]
    fn same_sender_noun_and_id_share_a_key_whatever_the_verb_or_variation() {
        let a = document_key(&account("lid://a", "C1", "Sync", 1)).unwrap();
        assert_eq!(document_key(&account("lid://a", "C1", "Sync", 7)), Some(a));
        assert_eq!(
            document_key(&account("lid://a", "C1", "Process", 2)),
            Some(a)
        );
        assert_ne!(document_key(&account("lid://a", "C2", "Sync", 1)), Some(a));
        assert_ne!(document_key(&account("lid://b", "C1", "Sync", 1)), Some(a));
    }

    #[test]
    fn every_fixture_and_generated_document_has_a_key() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut keyed = 0;
        for entry in std::fs::read_dir(fixtures).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "xml") {
                let bytes = std::fs::read(&path).unwrap();
                if document_key(&bytes).is_some() {
                    keyed += 1;
                }
            }
        }
        assert!(keyed > 10, "only {keyed} fixtures keyed");
        let docs: Vec<_> = crate::generate::Generator::new(1, crate::generate::Mix::REALISTIC)
            .take(300)
            .collect();
        assert!(docs.iter().all(|g| document_key(&g.bytes).is_some()));
    }

    #[test]
    fn odd_input_is_a_barrier_not_a_panic() {
        for bytes in [
            &b""[..],
            b"not xml",
            b"<",
            b"<a",
            b"<SyncX><DataArea>",
            b"<?xml?><SyncCustomerPartyMaster><DataArea><Sync/><CustomerPartyMaster>",
            b"<SyncCustomerPartyMaster></SyncCustomerPartyMaster>",
        ] {
            assert_eq!(
                document_key(bytes),
                None,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let big = account("lid://a", "C1", "Sync", 1);
        let padded = [b"<!--".as_slice(), &vec![b'x'; 70_000], b"-->", &big].concat();
        assert_eq!(document_key(&padded), None, "ID beyond the scanned prefix");
    }

    fn ready_all(s: &mut Sequencer<u64>, seqs: &[u64]) {
        for &q in seqs {
            s.ready(q, q);
        }
    }

    fn seqs(group: &[(u64, u64)]) -> Vec<u64> {
        group.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn commits_follow_arrival_and_wait_for_a_small_document_still_preparing() {
        let mut s = Sequencer::default();
        for q in 1..=5 {
            s.push(q, Some(q % 2), false);
        }
        ready_all(&mut s, &[1, 3, 4]);
        let now = Instant::now();
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![1]);
        assert_eq!(s.low(), Some(1));
        s.done(1);
        ready_all(&mut s, &[2, 5]);
        assert_eq!(seqs(&s.take_group(now, 2, true)), vec![2, 3]);
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![4, 5]);
        for q in 2..=5 {
            s.done(q);
        }
        assert_eq!(s.low(), None);
        assert!(s.settled());
    }

    #[test]
    fn a_large_or_waiting_document_holds_back_its_own_key_only() {
        let mut s = Sequencer::default();
        s.push(1, Some(7), true); // large, still preparing
        s.push(2, Some(8), false);
        s.push(3, Some(7), false); // same key as 1
        s.push(4, Some(9), false);
        ready_all(&mut s, &[2, 3, 4]);
        let now = Instant::now();
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![2, 4]);
        s.done(2);
        s.done(4);
        assert_eq!(s.low(), Some(1), "nothing may be acked past the large one");

        s.ready(1, 1);
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![1, 3]);
        // 1 failed: it waits; 3 (same key) goes back in line behind it.
        let due = now + Duration::from_millis(100);
        s.wait(1, 1, due);
        s.ready(3, 3);
        s.push(5, Some(10), false);
        s.ready(5, 5);
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![5]);
        s.done(5);
        assert_eq!(s.next_due(), Some(due));
        assert!(s.take_group(now, 64, true).is_empty(), "not due yet");
        assert_eq!(
            seqs(&s.take_group(due, 64, true)),
            vec![1],
            "a retry goes alone"
        );
        s.done(1);
        assert_eq!(seqs(&s.take_group(due, 64, true)), vec![3]);
    }

    #[test]
    fn a_barrier_is_never_overtaken_and_overtakes_nothing() {
        let mut s = Sequencer::default();
        s.push(1, Some(7), true);
        s.push(2, None, false);
        s.push(3, Some(8), false);
        ready_all(&mut s, &[2, 3]);
        let now = Instant::now();
        assert!(s.take_group(now, 64, true).is_empty());
        s.ready(1, 1);
        assert_eq!(seqs(&s.take_group(now, 64, true)), vec![1, 2, 3]);

        let mut s = Sequencer::default();
        s.push(1, None, true);
        s.push(2, Some(8), false);
        s.ready(2, 2);
        assert!(s.take_group(now, 64, true).is_empty(), "unkeyed large one");
    }

    #[test]
    fn shutting_down_steps_over_retries_without_taking_them() {
        let mut s = Sequencer::default();
        s.push(1, Some(1), false);
        s.push(2, Some(2), false);
        let now = Instant::now();
        s.wait(1, 1, now);
        s.ready(2, 2);
        assert_eq!(seqs(&s.take_group(now, 64, false)), vec![2]);
        s.done(2);
        assert!(s.settled());
        assert_eq!(s.unfinished(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_prepare_in_parallel_and_return_every_job() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lanes = Lanes::start(
            2,
            |x: u64| {
                if x == 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
                // Each lane is a thread of its own, named for `top -H`.
                let name = std::thread::current().name().map(str::to_string);
                assert!(
                    name.as_deref()
                        .is_some_and(|n| n == "bodflow-lane-0" || n == "bodflow-lane-1"),
                    "{name:?}"
                );
                x * 10
            },
            tx,
        );
        for seq in 0..20 {
            let weight = if seq == 0 { 1_000_000 } else { 3_000 };
            assert!(lanes.dispatch(Job {
                seq,
                weight,
                input: seq,
            }));
        }
        // The slow job occupies one lane; the other 19 finish first on the other.
        let mut order = Vec::new();
        for _ in 0..20 {
            let (seq, out) = rx.recv().await.unwrap();
            assert_eq!(out, Some(seq * 10));
            order.push(seq);
        }
        assert_eq!(order.last(), Some(&0), "{order:?}");
        drop(lanes);
        assert!(rx.recv().await.is_none());
    }
}
