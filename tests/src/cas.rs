//! What the probe's `casclient` recorded (issue 26): clients on every node reading the cache
//! key `counter` with `get_latest` and adding one to it by compare-and-set, each app appending
//! every invocation and response to a history file of its own (`<node>-<pid>.history` in one
//! folder) as it happens, so that a kill -9 loses nothing it recorded:
//!
//! ```text
//! invoke <client> <id> <ns> read | cas <expected|-> <new> | final
//! ok <id> <ns> read <value|-> | cas <true|false> | final <value|->
//! err <id> <ns> <error>
//! ```
//!
//! `<client>` is `<pid>:<task>`, `<id>` unique in its file, `<ns>` nanoseconds since the Unix
//! epoch (every node runs on the test's host, on one clock). An operation answered with an
//! error, or never answered (its app was killed), has an unknown outcome. `final` is the read
//! each app makes once every client everywhere has stopped.
//!
//! [`Recorded`] is every history of a run as the linearizability checker's operations
//! ([`crate::linearizability`]), with who made each; [`Recorded::assert_no_lost_update`] holds a
//! run to what issue 26 asks of a compare-and-set whatever happens to the cache's primary:
//!
//! - the history is linearizable from an absent key;
//! - no value was won twice: each successful compare-and-set's new value is its own (the
//!   counter only grows by one, so two wins of one value are a lost update);
//! - the final value is at least the wins and at most the wins and the compare-and-sets of
//!   unknown outcome.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::linearizability::{Op, Operation, check};

/// A client: the node its app ran on, and `<pid>:<task>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub node: String,
    pub name: String,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.name)
    }
}

/// Every operation of a run's clients, with who made each.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Each operation's `client` is its index in `clients`.
    pub history: Vec<Operation<u64>>,
    pub clients: Vec<Client>,
    /// The indexes in `history` of the final reads.
    pub finals: Vec<usize>,
    /// How many operations were answered with an error, and the first few errors.
    pub errors: usize,
    pub first_errors: Vec<String>,
}

/// How many of a run's operations were what.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub reads: usize,
    pub won: usize,
    pub lost: usize,
    /// Compare-and-sets of unknown outcome.
    pub unknown: usize,
    /// Operations answered with an error (any kind).
    pub errors: usize,
}

/// How many values won twice a report shows (the first ones).
const SHOWN_TWICE: usize = 10;

/// How many errors a report quotes.
const QUOTED_ERRORS: usize = 5;

impl Recorded {
    /// Every `*.history` file in `dir`, each named `<node>-<pid>.history`.
    pub fn read_dir(dir: &Path) -> Result<Recorded, String> {
        let mut recorded = Recorded::default();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "history"))
            .collect();
        files.sort();
        for path in files {
            let stem = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or_default();
            let node = stem.rsplit_once('-').map_or(stem, |(node, _pid)| node);
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            recorded
                .add(node, &text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(recorded)
    }

    /// Adds the history `text` of an app on `node`. A last line without its newline is left
    /// out: the app was killed while writing it, so the call it announced was never made, or
    /// its answer stays unknown.
    pub fn add(&mut self, node: &str, text: &str) -> Result<(), String> {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        // This file's operations by id: their index in `history`, and whether a final read.
        let mut open: HashMap<u64, (usize, bool)> = HashMap::new();
        for (number, line) in complete.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            let words: Vec<&str> = line.split(' ').collect();
            let number_at = |i: usize| -> Result<u64, String> {
                words
                    .get(i)
                    .and_then(|word| word.parse().ok())
                    .ok_or_else(|| fail(&format!("no number at word {}", i + 1)))
            };
            match words[0] {
                "invoke" => {
                    let client = *words.get(1).ok_or_else(|| fail("no client"))?;
                    let (id, at) = (number_at(2)?, number_at(3)?);
                    let (op, is_final) = match words.get(4..) {
                        Some(["read"]) => (Op::Read(None), false),
                        Some(["final"]) => (Op::Read(None), true),
                        Some(["cas", expected, new]) => {
                            let expected = value(expected).ok_or_else(|| fail("a bad value"))?;
                            let new = new.parse().map_err(|_| fail("a bad value"))?;
                            let swapped = false;
                            let op = Op::CompareAndSet {
                                expected,
                                new,
                                swapped,
                            };
                            (op, false)
                        }
                        _ => return Err(fail("an unknown operation")),
                    };
                    let client = self.client(node, client);
                    if open.insert(id, (self.history.len(), is_final)).is_some() {
                        return Err(fail("an id used twice"));
                    }
                    if is_final {
                        self.finals.push(self.history.len());
                    }
                    self.history.push(Operation::unknown(client, at, op));
                }
                "ok" => {
                    let (id, at) = (number_at(1)?, number_at(2)?);
                    let (index, is_final) = *open
                        .get(&id)
                        .ok_or_else(|| fail("an answer to no invocation"))?;
                    let operation = &mut self.history[index];
                    if operation.responded.is_some() {
                        return Err(fail("a second answer"));
                    }
                    if at < operation.invoked {
                        return Err(fail("an answer before its invocation"));
                    }
                    match (&mut operation.op, words.get(3..)) {
                        (Op::Read(read), Some(["read", seen])) if !is_final => {
                            *read = value(seen).ok_or_else(|| fail("a bad value"))?;
                        }
                        (Op::Read(read), Some(["final", seen])) if is_final => {
                            *read = value(seen).ok_or_else(|| fail("a bad value"))?;
                        }
                        (Op::CompareAndSet { swapped, .. }, Some(["cas", answer])) => {
                            *swapped = answer.parse().map_err(|_| fail("a bad answer"))?;
                        }
                        _ => return Err(fail("an answer of another kind than its invocation")),
                    }
                    operation.responded = Some(at);
                }
                "err" => {
                    let id = number_at(1)?;
                    if !open.contains_key(&id) {
                        return Err(fail("an error answering no invocation"));
                    }
                    self.errors += 1;
                    if self.first_errors.len() < QUOTED_ERRORS {
                        let error = words.get(3..).unwrap_or_default().join(" ");
                        self.first_errors.push(format!("{node}: {error}"));
                    }
                }
                _ => return Err(fail("an unknown line")),
            }
        }
        Ok(())
    }

    /// The index of the client `name` of `node`, added if new.
    fn client(&mut self, node: &str, name: &str) -> usize {
        let client = Client {
            node: node.to_string(),
            name: name.to_string(),
        };
        match self.clients.iter().position(|known| *known == client) {
            Some(index) => index,
            None => {
                self.clients.push(client);
                self.clients.len() - 1
            }
        }
    }

    /// How many operations were what.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally {
            errors: self.errors,
            ..Tally::default()
        };
        for operation in &self.history {
            match (&operation.op, operation.responded) {
                (Op::Read(_), Some(_)) => tally.reads += 1,
                (Op::CompareAndSet { .. }, None) => tally.unknown += 1,
                (Op::CompareAndSet { swapped: true, .. }, Some(_)) => tally.won += 1,
                (Op::CompareAndSet { swapped: false, .. }, Some(_)) => tally.lost += 1,
                _ => {}
            }
        }
        tally
    }

    /// The compare-and-sets that answered that they swapped.
    pub fn wins(&self) -> impl Iterator<Item = &Operation<u64>> {
        self.history.iter().filter(|operation| {
            operation.responded.is_some()
                && matches!(operation.op, Op::CompareAndSet { swapped: true, .. })
        })
    }

    /// The wins made by clients of `node` that were invoked at or after `from` and answered by
    /// `to` (nanoseconds since the Unix epoch).
    pub fn wins_of(&self, node: &str, from: u64, to: u64) -> Vec<&Operation<u64>> {
        self.wins()
            .filter(|operation| self.clients[operation.client].node == node)
            .filter(|operation| operation.invoked >= from && operation.responded <= Some(to))
            .collect()
    }

    /// The wins by clients of nodes other than `node` answered between `from` and `to`.
    pub fn wins_elsewhere(&self, node: &str, from: u64, to: u64) -> Vec<&Operation<u64>> {
        self.wins()
            .filter(|operation| self.clients[operation.client].node != node)
            .filter(|operation| {
                operation
                    .responded
                    .is_some_and(|at| (from..=to).contains(&at))
            })
            .collect()
    }

    /// Each new value more than one compare-and-set won, with those that won it.
    pub fn won_twice(&self) -> Vec<(u64, Vec<&Operation<u64>>)> {
        let mut by_value: HashMap<u64, Vec<&Operation<u64>>> = HashMap::new();
        for operation in self.wins() {
            if let Op::CompareAndSet { new, .. } = operation.op {
                by_value.entry(new).or_default().push(operation);
            }
        }
        let mut twice: Vec<(u64, Vec<&Operation<u64>>)> = by_value
            .into_iter()
            .filter(|(_, wins)| wins.len() > 1)
            .collect();
        twice.sort_by_key(|(value, _)| *value);
        twice
    }

    /// The value the last final read to be answered saw (`Some(None)`: the key was absent);
    /// `None` if no final read was answered.
    pub fn final_value(&self) -> Option<Option<u64>> {
        self.finals
            .iter()
            .map(|index| &self.history[*index])
            .filter_map(|operation| Some((operation.responded?, &operation.op)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, op)| match op {
                Op::Read(value) => *value,
                _ => unreachable!("a final read is a read"),
            })
    }

    /// `operation`, with its client's node and name, and times in ms since `origin` (ns).
    pub fn describe(&self, operation: &Operation<u64>, origin: u64) -> String {
        let ms = |at: u64| at.saturating_sub(origin) as f64 / 1e6;
        let client = &self.clients[operation.client];
        let answered = match operation.responded {
            Some(at) => format!("{:.3} ms", ms(at)),
            None => "no answer".to_string(),
        };
        let what = match &operation.op {
            Op::Read(value) if operation.responded.is_some() => format!("read -> {value:?}"),
            Op::Read(_) => "read -> ?".to_string(),
            Op::Write(value) => format!("write {value}"),
            Op::CompareAndSet { expected, new, .. } if operation.responded.is_none() => {
                format!("compare-and-set {expected:?} to {new} -> ?")
            }
            Op::CompareAndSet {
                expected,
                new,
                swapped,
            } => format!("compare-and-set {expected:?} to {new} -> {swapped}"),
        };
        format!(
            "{client} [{:.3} ms, {answered}]: {what}",
            ms(operation.invoked)
        )
    }

    /// The earliest invocation: the origin of the times a report shows.
    pub fn origin(&self) -> u64 {
        self.history
            .iter()
            .map(|operation| operation.invoked)
            .min()
            .unwrap_or(0)
    }

    /// Checks the run (see the module's documentation); answers its tally, or everything that
    /// is wrong with it, with the evidence. The linearizability check gets `budget` to finish.
    pub fn verdict(&self, budget: Duration) -> Result<Tally, String> {
        let tally = self.tally();
        let origin = self.origin();
        let mut wrong = String::new();
        if tally.won == 0 {
            wrong.push_str("no compare-and-set won: the clients did nothing\n");
        }
        let twice = self.won_twice();
        if !twice.is_empty() {
            let _ = writeln!(
                wrong,
                "{} values were won more than once (lost updates):",
                twice.len()
            );
            for (value, wins) in twice.iter().take(SHOWN_TWICE) {
                let _ = writeln!(wrong, "  {value}, won by:");
                for operation in wins {
                    let _ = writeln!(wrong, "    {}", self.describe(operation, origin));
                }
            }
            if twice.len() > SHOWN_TWICE {
                let _ = writeln!(wrong, "  ... and {} more", twice.len() - SHOWN_TWICE);
            }
        }
        match self.final_value() {
            None => wrong.push_str("no final read was answered\n"),
            Some(value) => {
                let last = value.unwrap_or(0) as usize;
                if last < tally.won || last > tally.won + tally.unknown {
                    let _ = writeln!(
                        wrong,
                        "the final value {last} is not between the {} compare-and-sets won and \
                         those and the {} of unknown outcome ({})",
                        tally.won,
                        tally.unknown,
                        tally.won + tally.unknown
                    );
                }
            }
        }
        // A history already shown to have lost updates needs no long search to be refuted:
        // the search's report is only a second opinion then.
        let budget = match wrong.is_empty() {
            true => budget,
            false => budget.min(SECOND_OPINION),
        };
        if let Err(why) = self.linearizable(budget) {
            wrong.push_str(&why);
        }
        match wrong.is_empty() {
            true => Ok(tally),
            false => Err(format!(
                "{wrong}({tally:?}; times in ms since the first invocation; {} errors answered, such as {:?})",
                self.errors, self.first_errors
            )),
        }
    }

    /// Whether the history is linearizable from an absent key: if not, the violation (its times
    /// in ns since the first invocation) with the clients it names; also an error if the check
    /// takes more than `budget`.
    pub fn linearizable(&self, budget: Duration) -> Result<(), String> {
        let origin = self.origin();
        let history: Vec<Operation<u64>> = self
            .history
            .iter()
            .map(|operation| Operation {
                invoked: operation.invoked - origin,
                responded: operation.responded.map(|at| at - origin),
                ..operation.clone()
            })
            .collect();
        let (send, receive) = std::sync::mpsc::channel();
        // On a thread of its own, so that a search that takes too long fails the test rather
        // than hanging it (the thread is left to finish with the process).
        std::thread::spawn(move || {
            let _ = send.send(check(&history, None));
        });
        match receive.recv_timeout(budget) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(violation)) => {
                let mut why = format!("(times in ns since the first invocation) {violation}");
                let mut named: Vec<usize> = violation
                    .prefix
                    .iter()
                    .chain(&violation.next)
                    .map(|operation| operation.client)
                    .collect();
                named.sort_unstable();
                named.dedup();
                why.push_str("where\n");
                for client in named {
                    let _ = writeln!(why, "  client {client} is {}", self.clients[client]);
                }
                Err(why)
            }
            Err(_) => Err(format!(
                "the linearizability check of {} operations did not finish within {budget:?}\n",
                self.history.len()
            )),
        }
    }

    /// Fails the test with the evidence unless the run lost no update (see [`Recorded::verdict`]);
    /// prints and answers its tally.
    pub fn assert_no_lost_update(&self) -> Tally {
        match self.verdict(CHECK_BUDGET) {
            Ok(tally) => {
                println!(
                    "{} operations by {} clients: {tally:?}; final value {:?}",
                    self.history.len(),
                    self.clients.len(),
                    self.final_value()
                );
                tally
            }
            Err(why) => panic!("a compare-and-set lost an update:\n{why}"),
        }
    }
}

/// How long the linearizability check may take once the other checks have failed.
const SECOND_OPINION: Duration = Duration::from_secs(30);

/// How long the linearizability check of a run may take.
pub const CHECK_BUDGET: Duration = Duration::from_secs(120);

/// A value as the history writes it: `-` for none.
fn value(word: &str) -> Option<Option<u64>> {
    match word {
        "-" => Some(None),
        number => number.parse().ok().map(Some),
    }
}

/// Nanoseconds since the Unix epoch now, on the clock the histories use.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(10);

    /// Two apps' histories of a run without a fault: one client on each node.
    const ONE: &str = "\
invoke 10:0 0 100 read
ok 0 110 read -
invoke 10:0 1 120 cas - 1
ok 1 130 cas true
invoke 10:0 2 140 read
ok 2 150 read 1
invoke 10:0 3 160 cas 1 2
ok 3 200 cas false
invoke 10:final 4 500 final
ok 4 510 final 2
";
    const TWO: &str = "\
invoke 20:1 0 121 read
ok 0 125 read -
invoke 20:1 1 126 cas - 1
ok 1 135 cas false
invoke 20:1 2 151 read
ok 2 155 read 1
invoke 20:1 3 156 cas 1 2
ok 3 170 cas true
";

    fn run() -> Recorded {
        let mut recorded = Recorded::default();
        recorded.add("one", ONE).unwrap();
        recorded.add("two", TWO).unwrap();
        recorded
    }

    #[test]
    fn lines_become_operations_with_their_clients() {
        let recorded = run();
        assert_eq!(recorded.history.len(), 9);
        assert_eq!(
            recorded.clients,
            [("one", "10:0"), ("one", "10:final"), ("two", "20:1")].map(|(node, name)| Client {
                node: node.to_string(),
                name: name.to_string()
            })
        );
        assert_eq!(
            recorded.history[1],
            Operation::completed(
                0,
                120,
                130,
                Op::CompareAndSet {
                    expected: None,
                    new: 1,
                    swapped: true
                }
            )
        );
        assert_eq!(
            recorded.history[2],
            Operation::completed(0, 140, 150, Op::Read(Some(1)))
        );
        assert_eq!(
            recorded.history[4],
            Operation::completed(1, 500, 510, Op::Read(Some(2)))
        );
        assert_eq!(recorded.finals, [4]);
        assert_eq!(recorded.final_value(), Some(Some(2)));
        assert_eq!(
            recorded.tally(),
            Tally {
                reads: 5,
                won: 2,
                lost: 2,
                unknown: 0,
                errors: 0
            }
        );
        assert_eq!(recorded.verdict(BUDGET).unwrap(), recorded.tally());
    }

    #[test]
    fn an_error_or_a_kill_leaves_an_operation_unknown_and_a_torn_last_line_is_left_out() {
        let mut recorded = Recorded::default();
        let text = "\
invoke 7:0 0 100 read
err 0 110 the node is unreachable: reset
invoke 7:0 1 200 read
ok 1 210 read 4
invoke 7:0 2 220 cas 4 5
invoke 7:1 3 230 rea";
        recorded.add("three", text).unwrap();
        assert_eq!(recorded.history.len(), 3);
        assert_eq!(
            recorded.history[0],
            Operation::unknown(0, 100, Op::Read(None))
        );
        assert_eq!(recorded.history[2].responded, None);
        assert_eq!(recorded.errors, 1);
        assert_eq!(
            recorded.first_errors,
            ["three: the node is unreachable: reset"]
        );
        assert_eq!(recorded.tally().unknown, 1);
        assert_eq!(recorded.final_value(), None);
    }

    #[test]
    fn broken_lines_are_refused_with_their_number() {
        let refused = |text: &str| Recorded::default().add("one", text).unwrap_err();
        assert!(refused("invoke 1:0 0 5 read\nok 0 x read 1\n").starts_with("line 2:"));
        assert!(refused("ok 3 5 read 1\n").contains("no invocation"));
        assert!(refused("invoke 1:0 0 5 read\ninvoke 1:0 0 6 read\n").contains("twice"));
        assert!(refused("invoke 1:0 0 5 read\nok 0 6 cas true\n").contains("another kind"));
        assert!(refused("invoke 1:0 0 5 read\nok 0 4 read 1\n").contains("before"));
        assert!(refused("invoke 1:0 0 5 write 3\n").contains("unknown operation"));
        assert!(refused("hello\n").contains("unknown line"));
    }

    #[test]
    fn files_of_a_folder_are_read_with_their_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one-10.history"), ONE).unwrap();
        std::fs::write(dir.path().join("node-two-20.history"), TWO).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a history").unwrap();
        let recorded = Recorded::read_dir(dir.path()).unwrap();
        let nodes: Vec<&str> = recorded.clients.iter().map(|c| c.node.as_str()).collect();
        assert_eq!(nodes, ["node-two", "one", "one"]);
        assert_eq!(recorded.history.len(), 9);
        recorded.assert_no_lost_update();
    }

    #[test]
    fn a_value_won_twice_is_reported_with_both_winners() {
        let mut recorded = run();
        // A third client also wins 1 -> 2, overlapping the other win.
        recorded
            .add("three", "invoke 30:2 0 152 read\nok 0 154 read 1\ninvoke 30:2 1 157 cas 1 2\nok 1 171 cas true\n")
            .unwrap();
        let twice = recorded.won_twice();
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].0, 2);
        let why = recorded.verdict(BUDGET).unwrap_err();
        assert!(why.contains("1 values were won more than once"), "{why}");
        assert!(why.contains("two/20:1 ["), "{why}");
        assert!(why.contains("three/30:2 ["), "{why}");
        assert!(why.contains("not linearizable"), "{why}");
        assert!(why.contains("is three/30:2"), "{why}");
        assert!(why.contains("final value 2 is not between the 3"), "{why}");
    }

    #[test]
    fn a_final_value_outside_the_bounds_fails() {
        // Three wins, one unknown: 3 and 4 pass; 2 does not (and is not linearizable either).
        let text = |last: u64| {
            format!(
                "invoke 1:0 0 10 cas - 1\nok 0 11 cas true\ninvoke 1:0 1 12 cas 1 2\nok 1 13 cas true\n\
                 invoke 1:0 2 14 cas 2 3\nok 2 15 cas true\ninvoke 1:0 3 16 cas 3 4\n\
                 invoke 1:final 4 20 final\nok 4 21 final {last}\n"
            )
        };
        for last in [3, 4] {
            let mut recorded = Recorded::default();
            recorded.add("one", &text(last)).unwrap();
            let tally = recorded.verdict(BUDGET).unwrap();
            assert_eq!((tally.won, tally.unknown), (3, 1));
        }
        let mut recorded = Recorded::default();
        recorded.add("one", &text(2)).unwrap();
        let why = recorded.verdict(BUDGET).unwrap_err();
        assert!(why.contains("final value 2 is not between"), "{why}");
    }

    #[test]
    fn wins_are_counted_by_node_and_window() {
        let recorded = run();
        // One's only win was invoked at 120 and answered at 130; two's answered at 170.
        assert_eq!(recorded.wins_of("one", 120, 130).len(), 1);
        assert_eq!(recorded.wins_of("one", 121, 1000).len(), 0);
        assert_eq!(recorded.wins_of("one", 0, 129).len(), 0);
        assert_eq!(recorded.wins_elsewhere("one", 160, 170).len(), 1);
        assert_eq!(recorded.wins_elsewhere("two", 0, 1000).len(), 1);
        assert_eq!(recorded.wins_elsewhere("one", 171, 1000).len(), 0);
    }
}
