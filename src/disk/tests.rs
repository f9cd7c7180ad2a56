//! Tests of the data directory: each fault the module docs name, on the
//! real disk (a temp dir, removed after) where that makes sense and on
//! [`MemFs`], plus crashes at random points over many seeds.

use super::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Raw access to a file, to damage it the way a test needs.
trait Poke: Fs {
    fn get(&self, path: &Path) -> Vec<u8>;
    fn put(&self, path: &Path, data: Vec<u8>);
    fn delete(&self, path: &Path);
}

impl Poke for RealFs {
    fn get(&self, path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }
    fn put(&self, path: &Path, data: Vec<u8>) {
        std::fs::write(path, data).unwrap()
    }
    fn delete(&self, path: &Path) {
        std::fs::remove_file(path).unwrap()
    }
}

impl Poke for MemFs {
    fn get(&self, path: &Path) -> Vec<u8> {
        self.contents(path).unwrap()
    }
    fn put(&self, path: &Path, data: Vec<u8>) {
        self.set_contents(path, data)
    }
    fn delete(&self, path: &Path) {
        Fs::remove(self, path).unwrap();
        self.sync_dir(path.parent().unwrap()).unwrap();
    }
}

/// Opens a real data dir, waiting out a lock held only by a forked child:
/// while another test spawns a process (`another_process_cannot_take_the_
/// lock`), the child holds copies of every open file of this process until
/// it execs, the LOCK of a data dir just dropped here included (flock locks
/// belong to the open file, which the copy keeps alive). doozerd spawns no
/// processes, so this is the tests' own race.
fn open_real(dir: &Path) -> Result<DataDir<RealFs>, DiskError> {
    let mut tries = 0;
    loop {
        match DataDir::open(dir) {
            Err(DiskError::Locked { .. }) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn mem() -> (MemFs, PathBuf) {
    (MemFs::new(), PathBuf::from("/data/node"))
}

/// Runs `body` on MemFs and on a real temp dir.
fn both(body: impl Fn(&dyn Fn() -> Case)) {
    let (fs, dir) = mem();
    body(&|| Case::Mem(fs.clone(), dir.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    body(&|| Case::Real(dir.clone()));
}

enum Case {
    Mem(MemFs, PathBuf),
    Real(PathBuf),
}

/// A `DataDir` over either file system, with small segments.
enum Dd {
    Mem(DataDir<MemFs>),
    Real(DataDir<RealFs>),
}

macro_rules! on {
    ($dd:expr, $d:ident => $e:expr) => {
        match $dd {
            Dd::Mem($d) => $e,
            Dd::Real($d) => $e,
        }
    };
}

impl Case {
    fn open(&self) -> Result<Dd, DiskError> {
        Ok(match self {
            Case::Mem(fs, dir) => Dd::Mem(small(DataDir::open_with(fs.clone(), dir)?)),
            Case::Real(dir) => Dd::Real(small(open_real(dir)?)),
        })
    }
    fn dir(&self) -> PathBuf {
        match self {
            Case::Mem(_, d) | Case::Real(d) => d.clone(),
        }
    }
    fn get(&self, name: &str) -> Vec<u8> {
        match self {
            Case::Mem(fs, d) => fs.get(&d.join(name)),
            Case::Real(d) => RealFs.get(&d.join(name)),
        }
    }
    fn put(&self, name: &str, data: Vec<u8>) {
        match self {
            Case::Mem(fs, d) => fs.put(&d.join(name), data),
            Case::Real(d) => RealFs.put(&d.join(name), data),
        }
    }
    fn delete(&self, name: &str) {
        match self {
            Case::Mem(fs, d) => fs.delete(&d.join(name)),
            Case::Real(d) => RealFs.delete(&d.join(name)),
        }
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Case::Mem(fs, d) => fs.list(d).unwrap(),
            Case::Real(d) => RealFs.list(d).unwrap(),
        }
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        v.sort();
        v
    }
    fn segments(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|n| n.starts_with("wal-"))
            .collect()
    }
}

fn small<F: Fs>(mut d: DataDir<F>) -> DataDir<F> {
    d.set_segment_target(300);
    d
}

impl Dd {
    fn recover(&mut self) -> Result<Recovered, DiskError> {
        on!(self, d => d.recover())
    }
    fn append(&mut self, p: &[u8]) -> Result<u64, DiskError> {
        on!(self, d => d.append(p))
    }
    fn image(&mut self, payload: &[u8]) -> Result<u64, DiskError> {
        on!(self, d => d.start_image()?.write(payload))
    }
    fn identity(&self) -> Result<Option<Identity>, DiskError> {
        on!(self, d => d.identity())
    }
    fn write_identity(&mut self, id: &Identity) -> Result<(), DiskError> {
        on!(self, d => d.write_identity(id))
    }
    fn disk_bytes(&self) -> u64 {
        on!(self, d => d.disk_bytes())
    }
    fn since_image(&self) -> u64 {
        on!(self, d => d.log_bytes_since_image())
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!("batch {i};").repeat(i % 9 + 1).into_bytes()
}

fn corrupt_at(e: DiskError, file: &str, offset: u64) -> String {
    let msg = e.to_string();
    match e {
        DiskError::Corrupt {
            path, offset: o, ..
        } => {
            assert!(path.ends_with(file), "{msg}");
            assert_eq!(o, offset, "{msg}");
            assert!(msg.contains("refusing to start: move"), "{msg}");
            assert!(msg.contains("empty -data-dir"), "{msg}");
            assert!(msg.contains(file), "{msg}");
        }
        other => panic!("expected Corrupt in {file} at {offset}, got {other}"),
    }
    msg
}

/// Offsets of the frames of a segment (salt-free walk by length).
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = format::SEG_HEADER_LEN;
    let mut v = Vec::new();
    while at + FRAME_HEADER_LEN <= bytes.len() {
        v.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += FRAME_HEADER_LEN + len;
    }
    v
}

#[test]
fn identity_round_trips_and_checks_the_cluster() {
    both(|case| {
        let c = case();
        let mut d = c.open().unwrap();
        assert_eq!(d.identity().unwrap(), None);
        let id = Identity {
            id: "abc".into(),
            cluster: "prod".into(),
            incarnation: 4,
        };
        d.write_identity(&id).unwrap();
        drop(d);
        let d = c.open().unwrap();
        let got = d.identity().unwrap().unwrap();
        assert_eq!(got, id);
        got.check_cluster(&c.dir(), "prod").unwrap();
        let e = got.check_cluster(&c.dir(), "test").unwrap_err();
        assert!(matches!(e, DiskError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("\"prod\""), "{e}");
        assert!(!c.files().iter().any(|n| n.ends_with(".tmp")));
    });
}

#[test]
fn batches_round_trip_across_segments() {
    both(|case| {
        let c = case();
        let mut d = c.open().unwrap();
        assert_eq!(d.recover().unwrap(), Recovered::default());
        let mut all = Vec::new();
        for i in 0..60 {
            all.push(payload(i));
            d.append(&payload(i)).unwrap();
        }
        d.append(b"").unwrap();
        all.push(Vec::new());
        drop(d);
        assert!(c.segments().len() > 5, "{:?}", c.segments());
        let mut d = c.open().unwrap();
        assert_eq!(d.recover().unwrap().batches, all);
        for i in 60..80 {
            all.push(payload(i));
            d.append(&payload(i)).unwrap();
        }
        drop(d);
        let mut d = c.open().unwrap();
        let r = d.recover().unwrap();
        assert_eq!((r.image, r.batches, r.repairs), (None, all, vec![]));
    });
}

#[test]
fn images_compact_the_log_and_bound_disk_use() {
    both(|case| {
        let c = case();
        let mut d = c.open().unwrap();
        d.recover().unwrap();
        let (mut max_bytes, mut max_before) = (0, 0);
        for round in 0..30 {
            for i in 0..20 {
                d.append(&payload(round * 20 + i)).unwrap();
            }
            assert!(d.since_image() > 0);
            max_before = max_before.max(d.disk_bytes());
            d.image(format!("state after round {round}").as_bytes())
                .unwrap();
            assert!(d.since_image() < 100, "{}", d.since_image());
            let files = c.files();
            let images: Vec<_> = files.iter().filter(|n| n.starts_with("image-")).collect();
            assert_eq!(images.len(), 1, "{files:?}");
            assert_eq!(c.segments().len(), 1, "{files:?}");
            max_bytes = max_bytes.max(d.disk_bytes());
        }
        // Right after an image: one image and one empty segment. Before it:
        // that plus one round of 20 batches (about 2 KiB), however many
        // rounds (some 40 KiB in all) went before.
        assert!(max_bytes < 200, "disk bytes grew to {max_bytes}");
        assert!(max_before < 4000, "disk bytes grew to {max_before}");
        d.append(b"after").unwrap();
        drop(d);
        let mut d = c.open().unwrap();
        let r = d.recover().unwrap();
        assert_eq!(r.image.as_deref(), Some(&b"state after round 29"[..]));
        assert_eq!(r.batches, vec![b"after".to_vec()]);
    });
}

#[test]
fn an_image_is_written_on_another_thread_while_the_log_goes_on() {
    let (fs, dir) = mem();
    let mut d = small(DataDir::open_with(fs.clone(), &dir).unwrap());
    d.recover().unwrap();
    d.append(b"one").unwrap();
    let ticket = d.start_image().unwrap();
    assert!(matches!(d.start_image(), Err(DiskError::ImageBusy { .. })));
    d.append(b"two").unwrap();
    std::thread::spawn(move || ticket.write(b"state: one").unwrap())
        .join()
        .unwrap();
    d.append(b"three").unwrap();
    // A dropped ticket frees the slot too.
    drop(d.start_image().unwrap());
    drop(d);
    let mut d = DataDir::open_with(fs, &dir).unwrap();
    let r = d.recover().unwrap();
    assert_eq!(r.image.as_deref(), Some(&b"state: one"[..]));
    assert_eq!(r.batches, vec![b"two".to_vec(), b"three".to_vec()]);
}

/// Writes five batches and returns the last segment's name and bytes.
fn five_batches(c: &Case) -> (String, Vec<u8>) {
    let mut d = c.open().unwrap();
    d.recover().unwrap();
    for i in 0..5 {
        d.append(&payload(i)).unwrap();
    }
    drop(d);
    let last = c.segments().pop().unwrap();
    let bytes = c.get(&last);
    (last, bytes)
}

#[test]
fn a_torn_last_batch_is_truncated_at_every_cut_point() {
    let run = |c: Case| {
        let (last, bytes) = five_batches(&c);
        let offs = frame_offsets(&bytes);
        let start = *offs.last().unwrap();
        let step = if matches!(c, Case::Real(_)) { 7 } else { 1 };
        for cut in (start + 1..bytes.len()).step_by(step) {
            c.put(&last, bytes[..cut].to_vec());
            let mut d = c.open().unwrap();
            let r = d.recover().unwrap();
            assert_eq!(r.batches.len(), 4, "cut at {cut}");
            assert_eq!(r.repairs.len(), 1);
            let note = &r.repairs[0];
            assert!(
                note.contains(&last) && note.contains(&format!("offset {start}")),
                "{note}"
            );
            assert_eq!(c.get(&last).len(), start, "truncated at the torn batch");
            d.append(b"again").unwrap();
            drop(d);
            let mut d = c.open().unwrap();
            let r = d.recover().unwrap();
            assert_eq!(r.batches.len(), 5);
            assert!(r.repairs.is_empty());
            assert_eq!(r.batches[4], b"again");
            drop(d);
            c.put(&last, bytes.clone());
        }
    };
    let (fs, dir) = mem();
    run(Case::Mem(fs, dir));
    let tmp = tempfile::tempdir().unwrap();
    run(Case::Real(tmp.path().join("node")));
}

#[test]
fn garbled_last_bytes_are_a_torn_tail() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs, dir);
    let (last, bytes) = five_batches(&c);
    let start = *frame_offsets(&bytes).last().unwrap();
    for i in start..bytes.len() {
        let mut g = bytes.clone();
        g[i] ^= 0x40;
        c.put(&last, g);
        let mut d = c.open().unwrap();
        assert_eq!(d.recover().unwrap().batches.len(), 4, "flip at {i}");
        drop(d);
    }
}

#[test]
fn a_flipped_byte_in_a_middle_batch_is_corruption() {
    both(|case| {
        let c = case();
        let (last, bytes) = five_batches(&c);
        let offs = frame_offsets(&bytes);
        assert!(offs.len() >= 2, "{offs:?}");
        let victim = offs[offs.len() - 2];
        let mut g = bytes.clone();
        g[victim + FRAME_HEADER_LEN] ^= 1;
        c.put(&last, g);
        let mut d = c.open().unwrap();
        let msg = corrupt_at(d.recover().unwrap_err(), &last, victim as u64);
        assert!(msg.contains("followed by a valid one"), "{msg}");
        assert!(msg.contains(&c.dir().display().to_string()), "{msg}");
        drop(d);
        // Refused again, and nothing was truncated.
        let mut d = c.open().unwrap();
        assert!(d.recover().is_err());
        assert_eq!(c.get(&last).len(), bytes.len());
    });
}

#[test]
fn damage_in_an_older_segment_is_corruption() {
    both(|case| {
        let c = case();
        let mut d = c.open().unwrap();
        d.recover().unwrap();
        for i in 0..40 {
            d.append(&payload(i)).unwrap();
        }
        drop(d);
        let segs = c.segments();
        assert!(segs.len() >= 3);
        // The last batch of the first segment: bad, with nothing valid after
        // it in that file, but it is not the last segment.
        let first = &segs[0];
        let bytes = c.get(first);
        let at = *frame_offsets(&bytes).last().unwrap();
        let mut g = bytes.clone();
        *g.last_mut().unwrap() ^= 1;
        c.put(first, g);
        let mut d = c.open().unwrap();
        let msg = corrupt_at(d.recover().unwrap_err(), first, at as u64);
        assert!(msg.contains("not the last"), "{msg}");
        drop(d);
        c.put(first, bytes.clone());
        // A bad header in a segment that is not the newest.
        let mut g = bytes.clone();
        g[10] ^= 1;
        c.put(first, g);
        let mut d = c.open().unwrap();
        corrupt_at(d.recover().unwrap_err(), first, 0);
        drop(d);
        c.put(first, bytes);
        // A missing segment in the middle.
        c.delete(&segs[1]);
        let mut d = c.open().unwrap();
        corrupt_at(d.recover().unwrap_err(), &segs[1], 0);
    });
}

#[test]
fn a_damaged_image_or_identity_is_corruption() {
    both(|case| {
        let c = case();
        let mut d = c.open().unwrap();
        d.recover().unwrap();
        d.write_identity(&Identity {
            id: "n1".into(),
            cluster: "c".into(),
            incarnation: 0,
        })
        .unwrap();
        d.append(b"x").unwrap();
        d.image(b"the image").unwrap();
        drop(d);
        let img = c
            .files()
            .into_iter()
            .find(|n| n.starts_with("image-"))
            .unwrap();
        let bytes = c.get(&img);
        let mut g = bytes.clone();
        g[35] ^= 1;
        c.put(&img, g);
        let mut d = c.open().unwrap();
        corrupt_at(d.recover().unwrap_err(), &img, 0);
        drop(d);
        c.put(&img, bytes);
        let id = c.get(IDENTITY_FILE);
        let mut g = id.clone();
        g[17] ^= 1;
        c.put(IDENTITY_FILE, g);
        let d = c.open().unwrap();
        corrupt_at(d.identity().unwrap_err(), IDENTITY_FILE, 0);
        // A huge identity file is refused before it is read.
        c.put(IDENTITY_FILE, vec![0; 1 << 20]);
        corrupt_at(d.identity().unwrap_err(), IDENTITY_FILE, 0);
    });
}

#[test]
fn a_missing_segment_after_the_image_is_corruption() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs, dir);
    let mut d = c.open().unwrap();
    d.recover().unwrap();
    d.append(b"x").unwrap();
    d.image(b"img").unwrap();
    drop(d);
    let seg = c.segments().pop().unwrap();
    c.delete(&seg);
    let mut d = c.open().unwrap();
    corrupt_at(d.recover().unwrap_err(), &seg, 0);
}

#[test]
fn a_batch_sequence_gap_is_corruption() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs, dir);
    let (last, bytes) = five_batches(&c);
    let offs = frame_offsets(&bytes);
    // Drop the middle batch of the segment, keeping every frame intact.
    let (a, b) = (offs[0], offs[1]);
    let mut g = bytes[..a].to_vec();
    g.extend_from_slice(&bytes[b..]);
    c.put(&last, g);
    let mut d = c.open().unwrap();
    let msg = corrupt_at(d.recover().unwrap_err(), &last, a as u64);
    assert!(msg.contains("where batch"), "{msg}");
}

#[test]
fn a_copy_of_a_frame_inside_a_payload_is_never_taken_as_a_batch() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs.clone(), dir.clone());
    let mut d = c.open().unwrap();
    d.recover().unwrap();
    d.append(b"first").unwrap();
    // A value holding well-formed frames for the next sequence numbers, under
    // other salts (the client cannot know this segment's).
    let mut evil = b"prefix".to_vec();
    for salt in 0..50u64 {
        evil.extend(format::encode_frame(salt, 3, b"forged"));
        evil.extend(format::encode_frame(salt, 2, b"forged"));
    }
    d.append(&evil).unwrap();
    drop(d);
    let mut d = c.open().unwrap();
    assert_eq!(
        d.recover().unwrap().batches,
        vec![b"first".to_vec(), evil.clone()]
    );
    drop(d);
    // Tear the evil batch anywhere: always a torn tail, never a forged batch.
    let last = c.segments().pop().unwrap();
    let bytes = c.get(&last);
    let start = frame_offsets(&bytes)[1];
    for cut in (start + 1..bytes.len()).step_by(13) {
        c.put(&last, bytes[..cut].to_vec());
        let mut d = c.open().unwrap();
        assert_eq!(
            d.recover().unwrap().batches,
            vec![b"first".to_vec()],
            "cut {cut}"
        );
        drop(d);
    }
}

#[test]
fn a_second_open_of_the_same_dir_is_locked() {
    both(|case| {
        let c = case();
        let d = c.open().unwrap();
        let e = c.open().err().expect("second open must fail");
        assert!(matches!(e, DiskError::Locked { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("another doozerd is using"), "{msg}");
        assert!(msg.contains("LOCK"), "{msg}");
        drop(d);
        c.open().unwrap();
    });
}

#[test]
fn another_process_cannot_take_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let d = DataDir::open(tmp.path()).unwrap();
    let lock = tmp.path().join(LOCK_FILE);
    // util-linux flock(1) uses flock(2), as File::try_lock does on Linux.
    let held = std::process::Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(&lock)
        .arg("true")
        .status();
    let Ok(held) = held else {
        eprintln!("no flock(1) here: skipped");
        return;
    };
    assert_eq!(held.code(), Some(99), "another process took the lock");
    drop(d);
    let free = std::process::Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
}

#[test]
fn a_full_disk_fails_the_log_for_good_and_recovery_keeps_what_was_acked() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs.clone(), dir.clone());
    let mut d = c.open().unwrap();
    d.recover().unwrap();
    let mut acked = Vec::new();
    fs.set_capacity(Some(2000));
    let mut err = None;
    for i in 0..1000 {
        match d.append(&payload(i)) {
            Ok(_) => acked.push(payload(i)),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the disk fills up");
    match &e {
        DiskError::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{e}")
        }
        other => panic!("expected Io, got {other}"),
    }
    fs.set_capacity(None);
    let e = d.append(b"more").unwrap_err();
    assert!(matches!(e, DiskError::Failed { .. }), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(matches!(d.image(b""), Err(DiskError::Failed { .. })));
    drop(d);
    let mut d = c.open().unwrap();
    assert_eq!(d.recover().unwrap().batches, acked);
    d.append(b"more").unwrap();
}

#[test]
fn a_failed_image_leaves_the_log_working() {
    let (fs, dir) = mem();
    let mut d = small(DataDir::open_with(fs.clone(), &dir).unwrap());
    d.recover().unwrap();
    d.append(b"a").unwrap();
    let used: u64 = d.disk_bytes();
    fs.set_capacity(Some(used + 100));
    let e = d.start_image().unwrap().write(&[7; 500]).unwrap_err();
    assert!(matches!(&e, DiskError::Io { .. }), "{e}");
    assert!(!fs
        .list(&dir)
        .unwrap()
        .iter()
        .any(|(n, _)| n.ends_with(".tmp")));
    fs.set_capacity(None);
    d.append(b"b").unwrap();
    d.start_image().unwrap().write(b"image: a b").unwrap();
    d.append(b"c").unwrap();
    drop(d);
    let mut d = DataDir::open_with(fs, &dir).unwrap();
    let r = d.recover().unwrap();
    assert_eq!(r.image.as_deref(), Some(&b"image: a b"[..]));
    assert_eq!(r.batches, vec![b"c".to_vec()]);
}

#[test]
fn the_data_dir_and_its_ticket_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<DataDir<RealFs>>();
    send::<DataDir<MemFs>>();
    send::<ImageTicket<RealFs>>();
    send::<ImageTicket<MemFs>>();
}

#[test]
fn a_failed_sync_fails_the_log_for_good() {
    let (fs, dir) = mem();
    let c = Case::Mem(fs.clone(), dir.clone());
    let mut d = c.open().unwrap();
    d.recover().unwrap();
    d.append(b"a").unwrap();
    fs.fail_next_sync();
    let e = d.append(b"b").unwrap_err();
    assert!(
        matches!(
            &e,
            DiskError::Io {
                op: "fdatasync",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(d.append(b"c"), Err(DiskError::Failed { .. })));
    drop(d);
    let mut d = c.open().unwrap();
    let got = d.recover().unwrap().batches;
    // "b" was written but never acknowledged: it may or may not be there.
    assert!(got == vec![b"a".to_vec()] || got == vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn a_newest_segment_torn_at_creation_is_made_again() {
    // A new segment with no header, part of one, or a whole garbled one.
    for cut in [0, 5, format::SEG_HEADER_LEN] {
        let (fs, dir) = mem();
        let c = Case::Mem(fs.clone(), dir.clone());
        let mut d = c.open().unwrap();
        d.recover().unwrap();
        for i in 0..30 {
            d.append(&payload(i)).unwrap();
        }
        drop(d);
        let last = c.segments().pop().unwrap();
        let mut h = c.get(&last)[..cut].to_vec();
        if let Some(b) = h.last_mut() {
            *b ^= 1;
        }
        let next = seg_name(parse_num(&last, "wal-", ".log").unwrap() + 1);
        let mut f = fs.create(&dir.join(&next)).unwrap();
        f.write_all(&h).unwrap();
        f.sync().unwrap();
        fs.sync_dir(&dir).unwrap();
        let mut d = c.open().unwrap();
        let r = d.recover().unwrap();
        assert_eq!(r.batches.len(), 30, "cut {cut}");
        assert!(r.repairs[0].contains(&next), "{:?}", r.repairs);
        d.append(b"x").unwrap();
        drop(d);
        let mut d = c.open().unwrap();
        assert_eq!(d.recover().unwrap().batches.len(), 31, "cut {cut}");
    }
    // With batches after it, a bad header is corruption, not a torn tail.
    let (fs, dir) = mem();
    let c = Case::Mem(fs, dir);
    let (last, bytes) = five_batches(&c);
    let mut g = bytes;
    g[3] ^= 1;
    c.put(&last, g);
    let mut d = c.open().unwrap();
    corrupt_at(d.recover().unwrap_err(), &last, 0);
}

fn encode_state(batches: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in batches {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    out
}

fn decode_state(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

fn is_simulated_death(e: &DiskError) -> bool {
    e.to_string().contains("simulated crash")
}

/// Many lives of one node on a MemFs, each ended by a crash (power cut or
/// process death) at a random point (inside an append, a segment roll, an
/// image, or recovery itself):
/// recovery never fails, and every batch whose append returned Ok is back.
#[test]
fn random_crashes_never_lose_an_acknowledged_batch() {
    // DISK_CRASH_SEEDS=5000 for a longer run.
    let seeds = std::env::var("DISK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300u64);
    let (mut images, mut repairs, mut recovered) = (0, 0, 0);
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (fs, dir) = mem();
        let mut acked: Vec<Vec<u8>> = Vec::new();
        let mut in_flight: Option<Vec<u8>> = None;
        let mut counter = 0usize;
        for life in 0..12 {
            if rng.random_bool(0.2) {
                fs.crash_after(Some(rng.random_range(1..8)));
            }
            let opened = DataDir::open_with(fs.clone(), &dir).map(small);
            let mut d = match opened {
                Ok(d) => d,
                Err(e) => panic!("seed {seed} life {life}: open: {e}"),
            };
            let r = match d.recover() {
                Ok(r) => r,
                Err(e) if is_simulated_death(&e) => {
                    drop(d);
                    fs.crash(&mut rng);
                    continue;
                }
                Err(e) => panic!("seed {seed} life {life}: {e}"),
            };
            images += usize::from(r.image.is_some());
            repairs += r.repairs.len();
            let mut state = r.image.as_deref().map(decode_state).unwrap_or_default();
            state.extend(r.batches);
            let mut with = acked.clone();
            with.extend(in_flight.take());
            assert!(
                state == acked || state == with,
                "seed {seed} life {life}: recovered {} batches, acked {}",
                state.len(),
                acked.len()
            );
            acked = state;
            recovered += acked.len();
            fs.crash_after(Some(rng.random_range(1..60)));
            for _ in 0..rng.random_range(1..40) {
                if rng.random_bool(0.15) {
                    let t = match d.start_image() {
                        Ok(t) => t,
                        Err(_) => break,
                    };
                    let snap = encode_state(&acked);
                    let mut failed = false;
                    for _ in 0..rng.random_range(0..3) {
                        counter += 1;
                        let p = payload(counter);
                        match d.append(&p) {
                            Ok(_) => acked.push(p),
                            Err(_) => {
                                in_flight = Some(p);
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed || t.write(&snap).is_err() {
                        break;
                    }
                } else {
                    counter += 1;
                    let p = payload(counter);
                    match d.append(&p) {
                        Ok(_) => acked.push(p),
                        Err(_) => {
                            in_flight = Some(p);
                            break;
                        }
                    }
                }
            }
            drop(d);
            // A power cut, or only the process dying (then recovery reads
            // unsynced bytes and must make them durable before counting on
            // them: the next life may end in a power cut).
            if rng.random_bool(0.5) {
                fs.crash(&mut rng);
            } else {
                fs.kill();
            }
        }
    }
    // The run did reach the interesting cases.
    eprintln!("{seeds} seeds: {images} recoveries from an image, {repairs} repairs, {recovered} batches recovered");
    assert!(
        images > seeds as usize && repairs > seeds as usize / 2,
        "{images} {repairs}"
    );
}

/// `DISK_BENCH_DIR=/some/dir cargo test --release --lib disk::tests::append_latency
/// -- --ignored --nocapture`: appends of 200-byte batches, each fdatasynced.
#[test]
#[ignore]
fn append_latency() {
    let base = std::env::var("DISK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::tempdir_in(base).unwrap();
    let mut d = DataDir::open(tmp.path()).unwrap();
    d.recover().unwrap();
    let n = 500;
    let t = std::time::Instant::now();
    for _ in 0..n {
        d.append(&[1; 200]).unwrap();
    }
    let per = t.elapsed() / n;
    eprintln!(
        "{}: {per:?} per 200-byte append+fdatasync",
        tmp.path().display()
    );
}
