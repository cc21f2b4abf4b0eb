//! The journal: what is committed is there after reopening it, however it was closed.

use super::*;

fn put(queue: &str, seq: u64, text: &str) -> JournalOp {
    JournalOp::Put {
        queue: queue.to_string(),
        seq,
        record: Bytes::copy_from_slice(text.as_bytes()),
    }
}

#[tokio::test]
async fn what_is_committed_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    {
        let (journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.pages.is_empty());
        journal
            .commit(vec![put("/queue/a", 1, "one"), put("/queue/a", 2, "two")])
            .await
            .unwrap();
        journal
            .commit(vec![
                put("/queue/b", 3, "three"),
                JournalOp::PutMeta {
                    key: "destination:/queue/a".into(),
                    value: Bytes::from_static(b"queue"),
                },
            ])
            .await
            .unwrap();
        journal.submit(vec![JournalOp::Delete {
            queue: "/queue/a".into(),
            seq: 1,
        }]);
        // A number used and gone is never used again.
        journal
            .commit(vec![put("/queue/z", 10, "z")])
            .await
            .unwrap();
        journal.submit(vec![JournalOp::Delete {
            queue: "/queue/z".into(),
            seq: 10,
        }]);
        // A commit after a submit means the submit is on disk too.
        journal.commit(vec![]).await.unwrap();
    }
    // The writer thread lets go of the file once its handles are dropped.
    let (_, recovered) = reopen(&path);
    assert_eq!(recovered.max_seq, 10);
    assert!(!recovered.pages.contains_key("/queue/z"));
    assert_eq!(
        recovered.pages["/queue/a"].records,
        [(2, Bytes::from_static(b"two"))]
    );
    assert_eq!(
        recovered.pages["/queue/b"].records,
        [(3, Bytes::from_static(b"three"))]
    );
    assert_eq!(
        recovered.meta["destination:/queue/a"],
        Bytes::from_static(b"queue")
    );
}

#[tokio::test]
async fn concurrent_commits_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    {
        let (journal, _) = Journal::open(&path).unwrap();
        let commits = (0..200u64).map(|seq| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.commit(vec![put("/queue/c", seq, "x")]).await })
        });
        for commit in commits {
            commit.await.unwrap().unwrap();
        }
    }
    let (_, recovered) = reopen(&path);
    assert_eq!(recovered.pages["/queue/c"].records.len(), 200);
}

#[tokio::test]
async fn a_deep_queue_is_read_back_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let deep = PAGE_MESSAGES as u64 * 2 + 10;
    {
        let (journal, _) = Journal::open(&path).unwrap();
        let ops = (1..=deep).map(|seq| put("/queue/deep", seq, "x")).collect();
        journal
            .commit(vec![put("/queue/after", deep + 1, "y")])
            .await
            .unwrap();
        journal.commit(ops).await.unwrap();
    }
    let (journal, recovered) = reopen(&path);
    assert_eq!(recovered.max_seq, deep + 1);
    let first = &recovered.pages["/queue/deep"];
    assert_eq!(first.records.len(), PAGE_MESSAGES);
    assert!(first.more);
    assert!(!recovered.pages["/queue/after"].more);
    let second = journal
        .read("/queue/deep", PAGE_MESSAGES as u64 + 1, u64::MAX)
        .unwrap();
    assert_eq!(second.records[0].0, PAGE_MESSAGES as u64 + 1);
    assert!(second.more);
    let last = journal
        .read("/queue/deep", 2 * PAGE_MESSAGES as u64 + 1, u64::MAX)
        .unwrap();
    assert_eq!(last.records.len(), 10);
    assert!(!last.more);
    // Short of a message being stored.
    let short = journal.read("/queue/deep", 1, 6).unwrap();
    assert_eq!(short.records.len(), 5);
    // What lay beyond the first page was counted.
    let (queue, count) = recovered.beyond_first_page.recv().unwrap();
    let beyond = deep - PAGE_MESSAGES as u64;
    assert_eq!((queue.as_str(), count), ("/queue/deep", beyond));
}

/// Opens the journal again, waiting for the last handle's threads to let go of the file (the
/// database's thread saves what it took in first: a while on a busy machine).
fn reopen(path: &Path) -> (Journal, Recovered) {
    for _ in 0..1000 {
        if let Ok(opened) = Journal::open(path) {
            return opened;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Journal::open(path).unwrap()
}

#[tokio::test]
async fn what_the_log_holds_past_the_last_checkpoint_is_taken_in_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    drop(reopen(&path));
    // As a crash leaves it: records synced in the log that the database never took in.
    {
        let (mut log, logged, _) =
            WriteAheadLog::open(&wal::paths(&path), wal::FILE_BYTES, 0).unwrap();
        assert!(logged.is_empty());
        for (record, ops) in [
            (
                1,
                vec![put("/queue/l", 1, "one"), put("/queue/l", 2, "two")],
            ),
            (
                2,
                vec![JournalOp::Delete {
                    queue: "/queue/l".into(),
                    seq: 1,
                }],
            ),
        ] {
            log.prepare(record, ops.iter());
            log.write(record).unwrap();
        }
    }
    {
        let (journal, recovered) = reopen(&path);
        assert_eq!(
            recovered.pages["/queue/l"].records,
            [(2, Bytes::from_static(b"two"))]
        );
        assert_eq!(recovered.max_seq, 2);
        // The log goes on past what it held: this commit is not mistaken for an old record.
        journal
            .commit(vec![put("/queue/l", 3, "three")])
            .await
            .unwrap();
    }
    let (_, recovered) = reopen(&path);
    assert_eq!(recovered.pages["/queue/l"].records.len(), 2);
}

#[tokio::test]
async fn commits_read_back_at_once_and_survive_the_log_going_round_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let text = "x".repeat(200);
    {
        // Files of 1 KB: a few records each, so the log comes back to each file many times.
        let (journal, _) = Journal::open_with_log(&path, 1024).unwrap();
        for seq in 1..=100 {
            journal
                .commit(vec![put("/queue/r", seq, &text)])
                .await
                .unwrap();
            let read = journal.read("/queue/r", seq, u64::MAX).unwrap();
            assert_eq!(read.records.len(), 1, "record {seq} is read back at once");
        }
        journal.close().await;
        assert!(
            journal
                .commit(vec![put("/queue/r", 101, "late")])
                .await
                .is_err()
        );
    }
    let (_, recovered) = reopen(&path);
    assert_eq!(recovered.pages["/queue/r"].records.len(), 100);
    assert_eq!(recovered.max_seq, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sees_what_was_committed_before_it_while_commits_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let (journal, _) = Journal::open(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let committers: Vec<_> = (0..16u64)
        .map(|committer| {
            let (journal, stop) = (journal.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = committer << 32;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    journal
                        .commit(vec![put("/queue/busy", seq, "x")])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for seq in 1..=20u64 {
        journal
            .commit(vec![put("/queue/read", seq, "r")])
            .await
            .unwrap();
        let reader = journal.clone();
        let read = tokio::task::spawn_blocking(move || reader.read("/queue/read", seq, u64::MAX));
        // It waits only for what was committed before it, not for the commits going on.
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("a read waits for the commits before it only")
            .unwrap()
            .unwrap();
        assert_eq!(read.records.len(), 1);
    }
    stop.store(true, Ordering::Relaxed);
    for committer in committers {
        committer.await.unwrap();
    }
}
