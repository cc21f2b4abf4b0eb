//! A linearizability checker for one register (a cache key), for the end-to-end tests that
//! record what concurrent clients asked a cache and what it answered, and must show that the
//! answers could have come from one copy of the key changing at one instant per operation.
//!
//! # The model
//!
//! A register holds `Option<V>` (`None`: the key is absent). A history is every
//! [`Operation`] the clients made on it: who made it, when it was invoked and when its response
//! came, and what it was with what it answered ([`Op`]):
//!
//! - [`Op::Read`], `get`, which answered the value it saw;
//! - [`Op::Write`], `put`;
//! - [`Op::CompareAndSet`], which sets `new` if the register holds `expected` and answers whether it
//!   did: `put_if_absent(new)` is `expected: None`, `replace(current, new)` is
//!   `expected: Some(current)`.
//!
//! Times are `u64`s of one clock shared by all clients, in any unit (nanoseconds since the test
//! started, or since the Unix epoch for clients in other processes of the same machine). One
//! operation comes before another when its response came strictly before the other was invoked;
//! operations whose intervals touch or overlap are concurrent. The client id is only for reports.
//!
//! An operation whose response never came (timed out, connection lost) has `responded: None`:
//! it may have taken effect at any instant after its invocation, or never, and what it would
//! have answered is unknown (as Knossos and Porcupine treat Jepsen's `:info` operations). A read
//! of unknown outcome constrains nothing and is left out; a compare-and-set of unknown outcome
//! may have swapped (where the register held `expected`) or not.
//!
//! The history is linearizable if there is an order of its operations (leaving out any of
//! unknown outcome) that keeps every real-time precedence and in which each operation, applied
//! to the register in turn from `initial`, answers what it answered. [`check`] searches for one.
//!
//! # The search
//!
//! Wing and Gong's depth-first search (J. Wing, C. Gong, "Testing and verifying concurrent
//! objects", J. Parallel Distrib. Comput. 17, 1993) with Lowe's improvements (G. Lowe, "Testing
//! for linearizability", Concurrency Computat.: Pract. Exper. 29, 2017), as Porcupine
//! (<https://github.com/anishathalye/porcupine>) implements it: the invocations and responses
//! are a list in time order; the operations invoked before the first response still in the list
//! are the ones that may come next; the search tries each, removes the one that fits from the
//! list and starts again, and goes back when a response is reached before its operation found a
//! place. A set of the configurations already tried (which operations are placed, and the
//! register's value) cuts off every path that reaches one again. Porcupine keeps the placed
//! operations as a bitset; here they are the exclusive or of a 128-bit key per operation
//! (Zobrist hashing), a fifth of the time and memory for long histories. Two different sets
//! share a key with odds of about `c² / 2¹²⁸` for `c` configurations tried (`10⁻²⁶` for a
//! million), and a false match could only make the search miss a linearization, never pass a
//! history that has none.
//!
//! A linearizable history of 3,000 operations from 12 clients, all overlapping, is checked in
//! about a tenth of a second in a debug build; proving that one is not, which tries every
//! linearization of the prefix before the fault, in about a second. Many operations of unknown
//! outcome in a history that is not linearizable can make that much longer: each may be placed
//! anywhere after its invocation.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

/// What a client called, with what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<V> {
    /// `get`, which answered the value it saw (`None`: absent).
    Read(Option<V>),
    /// `put(value)`.
    Write(V),
    /// Sets `new` if the register holds `expected`; `swapped` is what it answered (ignored when
    /// the outcome is unknown).
    CompareAndSet {
        expected: Option<V>,
        new: V,
        swapped: bool,
    },
}

/// Every operation the clients made on one register, in any order.
pub type History<V> = [Operation<V>];

/// One operation of a history: client `client` invoked `op` at `invoked` and had its response
/// at `responded` (`None`: never, the outcome is unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<V> {
    pub client: usize,
    pub invoked: u64,
    pub responded: Option<u64>,
    pub op: Op<V>,
}

impl<V> Operation<V> {
    /// An operation answered at `responded`.
    pub fn completed(client: usize, invoked: u64, responded: u64, op: Op<V>) -> Self {
        Operation {
            client,
            invoked,
            responded: Some(responded),
            op,
        }
    }

    /// An operation whose response never came: it may or may not have taken effect.
    pub fn unknown(client: usize, invoked: u64, op: Op<V>) -> Self {
        Operation {
            client,
            invoked,
            responded: None,
            op,
        }
    }

    /// The register's value after this operation in a register holding `state`, if the
    /// operation can take effect there and answer what it answered. An operation of unknown
    /// outcome is placed only where it takes effect (not taking effect is never running).
    fn step(&self, state: &Option<V>) -> Option<Option<V>>
    where
        V: Clone + Eq,
    {
        match &self.op {
            Op::Read(value) => (value == state).then(|| state.clone()),
            Op::Write(value) => Some(Some(value.clone())),
            Op::CompareAndSet {
                expected,
                new,
                swapped,
            } => {
                let holds = expected == state;
                let unknown = self.responded.is_none();
                if holds && (*swapped || unknown) {
                    Some(Some(new.clone()))
                } else if !holds && !*swapped && !unknown {
                    Some(state.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl<V: fmt::Debug> fmt::Display for Operation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [{}, ", self.client, self.invoked)?;
        match self.responded {
            Some(at) => write!(f, "{at}]: ")?,
            None => write!(f, "no response): ")?,
        }
        let unknown = self.responded.is_none();
        match &self.op {
            Op::Read(_) if unknown => write!(f, "read -> ?"),
            Op::Read(value) => write!(f, "read -> {value:?}"),
            Op::Write(value) => write!(f, "write {value:?}"),
            Op::CompareAndSet { expected, new, .. } if unknown => {
                write!(f, "compare-and-set {expected:?} to {new:?} -> ?")
            }
            Op::CompareAndSet {
                expected,
                new,
                swapped,
            } => write!(f, "compare-and-set {expected:?} to {new:?} -> {swapped}"),
        }
    }
}

/// Why a history is not linearizable: the longest prefix of it that could be linearized (the
/// first the search found), and the operations that could come next in real time, none of
/// which could follow it. Its `Debug` is its `Display`, so that `check(..).unwrap()` explains
/// itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Violation<V> {
    /// How many operations the history had (reads of unknown outcome left out).
    pub operations: usize,
    /// The longest linearizable prefix, in its linearization order.
    pub prefix: Vec<Operation<V>>,
    /// The register's value after `prefix`.
    pub state: Option<V>,
    /// The operations that could come next in real time; none of them fits after `prefix`.
    pub next: Vec<Operation<V>>,
}

impl<V: fmt::Debug> fmt::Display for Violation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// How much of the prefix a report shows: its end.
        const SHOWN: usize = 10;
        writeln!(
            f,
            "not linearizable: at most {} of {} operations can be linearized",
            self.prefix.len(),
            self.operations
        )?;
        let skipped = self.prefix.len().saturating_sub(SHOWN);
        if skipped > 0 {
            writeln!(f, "  ... {skipped} earlier operations, then")?;
        }
        for operation in &self.prefix[skipped..] {
            writeln!(f, "  {operation}")?;
        }
        writeln!(
            f,
            "after which the register holds {:?}, and none of these can come next:",
            self.state
        )?;
        for operation in &self.next {
            writeln!(f, "  {operation}")?;
        }
        Ok(())
    }
}

impl<V: fmt::Debug> fmt::Debug for Violation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<V: fmt::Debug> std::error::Error for Violation<V> {}

/// Whether `history`, on a register that held `initial` before it, is linearizable; if not,
/// why. Panics if an operation responded before it was invoked (a broken recording).
pub fn check<V>(history: &History<V>, initial: Option<V>) -> Result<(), Violation<V>>
where
    V: Clone + Eq + Hash,
{
    let operations: Vec<&Operation<V>> = history
        .iter()
        .filter(|operation| operation.responded.is_some() || !matches!(operation.op, Op::Read(_)))
        .collect();
    for operation in &operations {
        if let Some(responded) = operation.responded {
            assert!(
                responded >= operation.invoked,
                "an operation of client {} responded at {responded}, before it was invoked at {}",
                operation.client,
                operation.invoked
            );
        }
    }
    let mut list = Events::new(&operations);
    let keys: Vec<u128> = (0..operations.len()).map(key).collect();
    // The operations placed, as the exclusive or of their keys.
    let mut placed = 0u128;
    let mut seen: HashSet<(u128, Option<V>)> = HashSet::new();
    // The operations placed, in order, each with the register's value before it.
    let mut stack: Vec<(usize, Option<V>)> = Vec::new();
    let mut state = initial;
    let mut unplaced = operations.iter().filter(|o| o.responded.is_some()).count();
    let mut longest: Option<Violation<V>> = None;
    let mut event = list.first();
    while unplaced > 0 {
        let (index, is_call) = list.event(event);
        if is_call {
            let operation = operations[index];
            if let Some(after) = operation.step(&state)
                && seen.insert((placed ^ keys[index], after.clone()))
            {
                placed ^= keys[index];
                stack.push((index, std::mem::replace(&mut state, after)));
                list.lift(index);
                unplaced -= usize::from(operation.responded.is_some());
                event = list.first();
                continue;
            }
            event = list.next(event);
        } else {
            // An operation's response is reached before it found a place: go back.
            if longest
                .as_ref()
                .is_none_or(|longest| stack.len() > longest.prefix.len())
            {
                longest = Some(Violation {
                    operations: operations.len(),
                    prefix: stack.iter().map(|&(i, _)| operations[i].clone()).collect(),
                    state: state.clone(),
                    next: list
                        .calls_before(event)
                        .map(|i| operations[i].clone())
                        .collect(),
                });
            }
            let Some((index, before)) = stack.pop() else {
                return Err(longest.expect("recorded at this dead end"));
            };
            placed ^= keys[index];
            state = before;
            list.unlift(index);
            unplaced += usize::from(operations[index].responded.is_some());
            event = list.next(list.call[index]);
        }
    }
    Ok(())
}

/// Operation `index`'s key for the set of placed operations: 128 bits of SplitMix64, as good as
/// random for this.
fn key(index: usize) -> u128 {
    let mix = |k: u64| {
        let mut z = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let index = index as u64;
    u128::from(mix(2 * index + 1)) << 64 | u128::from(mix(2 * index + 2))
}

/// The invocations and responses of a history in time order, a doubly linked list from which
/// an operation's two events are lifted when it is placed, and into which they go back when
/// the search goes back (Lowe's "lift" and "unlift"). Node 0 is the head; node `k + 1` is the
/// `k`th event; `nodes` (one past the last) is the end.
struct Events {
    /// For each node past the head: its operation, and whether it is the invocation.
    events: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Each operation's invocation node, and its response node if it has one.
    call: Vec<usize>,
    response: Vec<Option<usize>>,
}

impl Events {
    fn new<V>(operations: &[&Operation<V>]) -> Self {
        let mut timed: Vec<(u64, bool, usize)> = Vec::new();
        for (index, operation) in operations.iter().enumerate() {
            // At the same instant, invocations come first: such operations are concurrent.
            timed.push((operation.invoked, false, index));
            if let Some(responded) = operation.responded {
                timed.push((responded, true, index));
            }
        }
        timed.sort_unstable();
        let nodes = timed.len() + 1;
        let mut list = Events {
            events: Vec::with_capacity(nodes),
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|node| node.wrapping_sub(1)).collect(),
            call: vec![0; operations.len()],
            response: vec![None; operations.len()],
        };
        list.events.push((usize::MAX, false));
        for (node, (_, is_response, index)) in (1..).zip(timed) {
            list.events.push((index, !is_response));
            if is_response {
                list.response[index] = Some(node);
            } else {
                list.call[index] = node;
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    /// The operation of `node`, and whether it is the invocation.
    fn event(&self, node: usize) -> (usize, bool) {
        self.events[node]
    }

    /// The operations invoked before `node`, in order.
    fn calls_before(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(self.first()), |&at| Some(self.next(at)))
            .take_while(move |&at| at != node)
            .map(|at| self.events[at].0)
    }

    fn lift(&mut self, operation: usize) {
        self.unlink(self.call[operation]);
        if let Some(response) = self.response[operation] {
            self.unlink(response);
        }
    }

    /// Puts back what the last [`Events::lift`] took, in reverse order.
    fn unlift(&mut self, operation: usize) {
        if let Some(response) = self.response[operation] {
            self.relink(response);
        }
        self.relink(self.call[operation]);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next < self.events.len() {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next < self.events.len() {
            self.prev[next] = node;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(client: usize, invoked: u64, responded: u64, value: Option<u64>) -> Operation<u64> {
        Operation::completed(client, invoked, responded, Op::Read(value))
    }

    fn write(client: usize, invoked: u64, responded: u64, value: u64) -> Operation<u64> {
        Operation::completed(client, invoked, responded, Op::Write(value))
    }

    fn cas(
        client: usize,
        invoked: u64,
        responded: u64,
        expected: Option<u64>,
        new: u64,
        swapped: bool,
    ) -> Operation<u64> {
        Operation::completed(
            client,
            invoked,
            responded,
            Op::CompareAndSet {
                expected,
                new,
                swapped,
            },
        )
    }

    #[test]
    fn a_sequential_history_passes() {
        let history = [
            read(0, 0, 1, None),
            cas(1, 2, 3, None, 1, true),
            cas(0, 4, 5, None, 2, false),
            write(2, 6, 7, 5),
            read(1, 8, 9, Some(5)),
            cas(2, 10, 11, Some(5), 6, true),
            cas(0, 12, 13, Some(5), 7, false),
            read(0, 14, 15, Some(6)),
        ];
        check(&history, None).unwrap();
    }

    #[test]
    fn overlapping_operations_that_can_be_ordered_pass() {
        // The read sees the write that overlaps it; the second write's read came after both.
        let history = [
            write(0, 0, 10, 1),
            read(1, 5, 6, Some(1)),
            write(2, 2, 20, 2),
            read(1, 7, 30, Some(1)),
            read(0, 25, 26, Some(2)),
        ];
        check(&history, None).unwrap();
        // Listed in any order, and in the order that must be reversed to fit.
        let mut reversed = history.to_vec();
        reversed.reverse();
        check(&reversed, None).unwrap();
        // Two compare-and-sets from the same value, one winning, both overlapping.
        let history = [
            cas(0, 0, 10, Some(0), 1, true),
            cas(1, 1, 9, Some(0), 1, false),
            read(2, 11, 12, Some(1)),
        ];
        check(&history, Some(0)).unwrap();
        // Intervals that only touch are concurrent.
        check(&[write(0, 0, 5, 1), read(1, 5, 6, None)], None).unwrap();
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let history = [
            write(0, 0, 10, 1),
            write(0, 11, 20, 2),
            read(1, 21, 30, Some(1)),
        ];
        let violation = check(&history, None).unwrap_err();
        assert_eq!(violation.prefix.len(), 2);
        assert_eq!(violation.state, Some(2));
        assert_eq!(violation.next, [history[2].clone()]);
        let report = violation.to_string();
        assert!(report.contains("at most 2 of 3"), "{report}");
        assert!(
            report.contains("client 1 [21, 30]: read -> Some(1)"),
            "{report}"
        );
    }

    #[test]
    fn two_compare_and_sets_from_the_same_value_both_winning_fail() {
        // Issue 26's lost update: two nodes both win `replace(4, 5)`.
        let history = [
            read(0, 0, 1, Some(4)),
            read(1, 0, 1, Some(4)),
            cas(0, 2, 10, Some(4), 5, true),
            cas(1, 3, 9, Some(4), 5, true),
        ];
        let violation = check(&history, Some(4)).unwrap_err();
        assert_eq!(violation.prefix.len(), 3);
        assert_eq!(violation.state, Some(5));
        // And put_if_absent winning twice.
        let history = [cas(0, 0, 10, None, 1, true), cas(1, 0, 10, None, 2, true)];
        check(&history, None).unwrap_err();
    }

    #[test]
    fn a_read_of_a_value_never_written_fails() {
        let history = [
            write(0, 0, 10, 1),
            read(1, 0, 10, Some(3)),
            write(2, 5, 20, 2),
        ];
        let violation = check(&history, None).unwrap_err();
        assert!(violation.next.contains(&history[1]), "{violation}");
        // A read of an absent key after it was set, too.
        check(&[write(0, 0, 1, 1), read(0, 2, 3, None)], None).unwrap_err();
    }

    #[test]
    fn a_write_of_unknown_outcome_passes_either_way() {
        let lost = Operation::unknown(0, 0, Op::Write(1));
        // It took effect...
        check(&[lost.clone(), read(1, 100, 101, Some(1))], None).unwrap();
        // ... it did not ...
        check(&[lost.clone(), read(1, 100, 101, None)], None).unwrap();
        // ... or it took effect late, after another write.
        let history = [
            lost.clone(),
            write(1, 10, 20, 2),
            read(1, 30, 40, Some(2)),
            read(2, 50, 60, Some(1)),
        ];
        check(&history, None).unwrap();
        // But never before it was invoked.
        let history = [
            read(1, 0, 10, Some(1)),
            Operation::unknown(0, 20, Op::Write(1)),
        ];
        check(&history, None).unwrap_err();
        // A compare-and-set of unknown outcome swaps only where the register holds `expected`.
        let unknown_cas = Operation::unknown(
            0,
            0,
            Op::CompareAndSet {
                expected: Some(1),
                new: 2,
                swapped: false,
            },
        );
        check(&[unknown_cas.clone(), read(1, 5, 6, Some(2))], Some(1)).unwrap();
        check(&[unknown_cas.clone(), read(1, 5, 6, Some(0))], Some(0)).unwrap();
        check(&[unknown_cas, read(1, 5, 6, Some(2))], Some(0)).unwrap_err();
        // A read of unknown outcome constrains nothing.
        check(&[Operation::unknown(0, 0, Op::Read(Some(9)))], None).unwrap();
    }

    /// A small deterministic generator (xorshift64*), so the test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// A history from a simulated run of `clients` clients on one register: each operation
    /// takes effect at an instant between its invocation and its response, in the order of
    /// those instants, so the history is linearizable. Clients read, write, and increment by
    /// compare-and-set from the value they last read (often stale), and one operation in 200
    /// has no response (taking effect or not).
    fn simulated(clients: usize, operations: usize, seed: u64) -> Vec<Operation<u64>> {
        let mut rng = Rng(seed);
        // Each client's operations: (invoked, takes effect at, responded).
        let mut timed: Vec<(u64, u64, u64, usize)> = Vec::new();
        let mut free = vec![0u64; clients];
        for _ in 0..operations {
            let client = rng.below(clients as u64) as usize;
            let invoked = free[client] + rng.below(50);
            let effect = invoked + 1 + rng.below(100);
            let responded = effect + rng.below(100);
            free[client] = responded + 1;
            timed.push((effect, invoked, responded, client));
        }
        timed.sort_unstable();
        let mut register = None;
        let mut last_read = vec![None; clients];
        let mut next_value = 1000;
        let mut history = Vec::new();
        for (_, invoked, responded, client) in timed {
            // A lost response, of an operation that took effect or not.
            let unknown = rng.below(200) == 0;
            let takes_effect = !unknown || rng.below(2) == 0;
            let op = match rng.below(10) {
                0..=3 => {
                    if !unknown {
                        last_read[client] = register;
                    }
                    Op::Read(register)
                }
                4 => {
                    next_value += 1;
                    if takes_effect {
                        register = Some(next_value);
                    }
                    Op::Write(next_value)
                }
                _ => {
                    let expected = last_read[client];
                    let new = expected.map_or(0, |v| v + 1);
                    let swapped = register == expected;
                    if swapped && takes_effect {
                        register = Some(new);
                    }
                    Op::CompareAndSet {
                        expected,
                        new,
                        swapped,
                    }
                }
            };
            history.push(if unknown {
                Operation::unknown(client, invoked, op)
            } else {
                Operation::completed(client, invoked, responded, op)
            });
        }
        history
    }

    #[test]
    fn a_simulated_concurrent_run_passes() {
        for seed in 1..=3 {
            let history = simulated(12, 3000, seed);
            check(&history, None).unwrap();
        }
    }

    #[test]
    fn a_simulated_run_with_a_lost_update_fails() {
        let mut history = simulated(12, 3000, 7);
        // Well into the run, a thirteenth client wins the same compare-and-set as another, at
        // the same time.
        let won = history[1500..]
            .iter()
            .find(|operation| {
                operation.responded.is_some()
                    && matches!(operation.op, Op::CompareAndSet { swapped: true, .. })
            })
            .expect("a compare-and-set that won")
            .clone();
        history.push(Operation { client: 12, ..won });
        let violation = check(&history, None).unwrap_err();
        assert!(violation.prefix.len() > 1000, "{violation}");
    }
}
