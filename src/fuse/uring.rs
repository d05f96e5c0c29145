//! FUSE over io_uring (Linux 6.14+): per-CPU request queues, so that a request and its reply
//! are same-CPU wake-ups instead of cross-CPU ones.
//!
//! Model (the kernel's `fs/fuse/dev_uring.c`): after INIT granted `FUSE_OVER_IO_URING`, the
//! daemon registers, for every possible CPU `q` (queue id = CPU number), entries of two buffers
//! (a 288-byte header and a payload) with `IORING_OP_URING_CMD` SQEs (`SQE128`, command
//! `FUSE_IO_URING_CMD_REGISTER`) on the `/dev/fuse` fd. Once every queue has one, the kernel
//! switches: a request made by a task on CPU `q` is copied into a free entry of queue `q`, and
//! the entry's SQE completes (CQE res 0) in the ring of the thread that submitted it — here a
//! thread pinned to CPU `q`. The reply goes back with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`,
//! which also re-arms the entry. FORGET and INTERRUPT still come through `/dev/fuse`, so fuser's
//! `/dev/fuse` workers keep running beside the rings; notifications still go to `/dev/fuse`.
//!
//! Entry layout: `in_out` holds the `fuse_in_header` (request) or `fuse_out_header` (reply),
//! `op_in` the operation's first (fixed-size) argument, the payload the remaining arguments.
//! `in_header.len` counts all of them, so `op_in`'s length is `len - 40 - payload_sz`; the
//! request is rebuilt in `/dev/fuse` layout (header, `op_in`, payload) and handed to fuser's
//! parser and dispatch (`fuser::RawDispatcher`, a pvrfs patch of the vendored fuser), which
//! returns the reply bytes in `/dev/fuse` layout; they are split back into header and payload.
//!
//! Placement: per-CPU queues only keep a request on one CPU if the caller stays where it is.
//! When a queue thread's commit wakes the caller, the scheduler sees this CPU busy (the queue
//! thread still runs) and moves the caller to the other CPU if it idles — whose queue then gets
//! the next request, and every wake-up is an IPI to a halted vCPU again (measured: no faster
//! than `/dev/fuse`). So, while nothing else is runnable (`/proc/loadavg`, read at most once a
//! millisecond), a queue thread submits its commits in SCHED_IDLE: a CPU running only
//! idle-policy threads counts as idle, the caller is woken here and preempts the queue thread,
//! and when it blocks on its next request, the queue thread resumes and finds that request in
//! its ring. `PVRFS_FUSE_URING_IDLE_COMMIT=0` turns this off.
//!
//! Streaming reads are the exception: the kernel's readahead READs (up to 1 MiB each) all
//! come to the reader's queue, so the reader (allocating and copying out of the mount's page
//! cache) and its queue thread (copying out of the object's mapping into the payload, then,
//! in COMMIT_AND_FETCH, the kernel copying the payload into those pages) took turns on one
//! CPU while the other idled (the queue thread sat idle 60-65% of a cold 1 GiB read, slower
//! than on `/dev/fuse`, whose workers run beside the reader; docs/SEMANTICS.md, "Reads"). So
//! a READ of at least `OFF_CPU_READ` bytes is served, and committed, with the queue thread
//! allowed on every CPU but its own (`queue_cpus`); the next smaller request brings it back.
//! The thread only moves when the kind of request changes (one `sched_setaffinity` each way),
//! and never commits in SCHED_IDLE while away. Without root the mount's readahead window stays
//! at 128 KiB, no READ is that big, and nothing moves.
//!
//! Cold reads: a READ the file system plans as a disk read (`DirectRead::read_or_plan`: a cold object,
//! `fs::direct`) is submitted to the queue's own ring as an O_DIRECT `IORING_OP_READ` into the
//! entry's payload (page-aligned for it); the thread goes on with other requests, and the
//! completion (`DISK_READ` in its user data) writes the reply and commits it. Both entries of
//! a queue can be waiting for the disk at once, where a synchronous read would leave the disk
//! one request at a time; a read that comes back short is served by `read_into` instead.
//!
//! Invariants and failure handling:
//! - the rings are created (and URING_CMD probed) before the mount, and the capability is asked
//!   for only then: once INIT granted it, the kernel holds every request until all queues have
//!   an entry, so a ring that could not even be created must never be promised;
//! - a REGISTER the kernel refuses makes the kernel itself fall back to `/dev/fuse` (it clears
//!   `fc->io_uring` and wakes waiting requests); the daemon logs it and serves on;
//! - if the queue threads cannot all be started after INIT granted the ring, a REGISTER the
//!   kernel refuses is sent on purpose (`refuse`), so it falls back instead of holding requests;
//! - every request taken from a ring is answered (a handler that panics or does not reply
//!   gets EIO), else the caller would wait forever;
//! - a queue thread serves every request below `OFF_CPU_READ` on its own CPU (it moves back
//!   first), so the placement above holds for everything but streaming reads;
//! - a queue thread never waits in SCHED_IDLE (it returns to SCHED_OTHER before it sleeps): an
//!   idle-policy thread woken on a busy CPU would wait behind every other task there. The
//!   policy switch is used only if leaving SCHED_IDLE is allowed (root, or RLIMIT_NICE), tried
//!   first on a throwaway thread;
//! - teardown: unmount or abort completes every entry with `-ENOTCONN` and the queue threads
//!   return; `stop` (called once fuser's `/dev/fuse` workers ended) also wakes them through an
//!   eventfd every ring polls; a killed daemon's rings are cancelled by the kernel.
//!
//! Limits: one thread per queue handles its CPU's requests one at a time, so a slow request
//! holds up the other requests made on that CPU meanwhile, also those that would not wait for
//! it on `/dev/fuse` (reads through open handles; metadata operations and `fsync` take the
//! overlay's lock on either transport). A second thread per queue made `tar x` 35% slower (the
//! caller's consecutive requests then seem to alternate between the two threads). Buffers: two
//! entries per possible CPU, each with a payload of max_write (1 MiB; touched only as used).
//!
//! `PVRFS_FUSE_URING=0` keeps a mount on `/dev/fuse`. One daemon serves one mount, so the
//! transport's counters are process-wide (`status`).

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// `enum fuse_uring_cmd` (include/uapi/linux/fuse.h).
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const HEADER_SIZE: usize = 256 + 32;
/// `fuse_uring_ent_in_out`: flags u64, commit_id u64, payload_sz u32, padding u32, reserved u64.
const COMMIT_ID: usize = ENT_IN_OUT + 8;
const PAYLOAD_SZ: usize = ENT_IN_OUT + 16;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// `fuse_in_header`: len u32, opcode u32, unique u64, nodeid u64, ...
const OPCODE: usize = IN_OUT + 4;
const NODEID: usize = IN_OUT + 16;
/// `FUSE_READ`, whose `fuse_read_in` (in `op_in`) starts with fh u64, offset u64, size u32.
const FUSE_READ: u32 = 15;
/// Entries per queue: while one request is handled the next can already be copied in.
const DEPTH: usize = 2;
/// READ requests of at least this size are served off the caller's CPU (module header,
/// "Streaming reads"): the kernel's readahead sends READs of up to the window (4 MiB, in 1 MiB
/// requests) when the daemon could widen it, single pages and small files' reads stay below.
const OFF_CPU_READ: u32 = 256 << 10;
/// `user_data` of the stop eventfd's poll.
const STOP: u64 = u64::MAX;
/// `user_data` bit of a disk read into entry `i`'s payload (`DiskRead`); entries' commands
/// carry their index alone.
const DISK_READ: u64 = 1 << 32;

static OFFERED: AtomicBool = AtomicBool::new(false);
static QUEUES: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static OFF_CPU_READS: AtomicU64 = AtomicU64::new(0);
static DISK_READS: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicBool = AtomicBool::new(false);

/// What the transport of this daemon's mount is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The kernel granted `FUSE_OVER_IO_URING` at INIT.
    pub granted: bool,
    /// Queues whose entries were registered (all possible CPUs once the ring runs).
    pub queues: usize,
    /// Requests served through the rings.
    pub requests: u64,
    /// READs among them served off the caller's CPU (`OFF_CPU_READ`).
    pub off_cpu_reads: u64,
    /// READs among them read from the disk by the ring (`DiskRead`).
    pub disk_reads: u64,
    /// A registration was refused (the kernel fell back to `/dev/fuse`).
    pub failed: bool,
}

impl Status {
    /// `io_uring (Q queues, R requests, B big reads off the caller's CPU, D read from the
    /// disk)` once requests come by the rings, else `/dev/fuse` and why.
    pub fn describe(&self) -> String {
        // Granted: the kernel holds requests until every queue registered, so requests come
        // by the rings from the start (`queues` grows while the queue threads start).
        if self.granted && !self.failed {
            format!(
                "io_uring ({} queues, {} requests, {} big reads off the caller's CPU, {} read from the disk)",
                self.queues, self.requests, self.off_cpu_reads, self.disk_reads
            )
        } else if self.failed {
            "/dev/fuse (io_uring registration refused by the kernel)".into()
        } else if OFFERED.load(Ordering::Relaxed) {
            "/dev/fuse (the kernel did not grant FUSE_OVER_IO_URING)".into()
        } else {
            "/dev/fuse".into()
        }
    }
}

/// The transport status of this process's mount.
pub fn status() -> Status {
    Status {
        granted: GRANTED.load(Ordering::Relaxed),
        queues: QUEUES.load(Ordering::Relaxed),
        requests: REQUESTS.load(Ordering::Relaxed),
        off_cpu_reads: OFF_CPU_READS.load(Ordering::Relaxed),
        disk_reads: DISK_READS.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

static GRANTED: AtomicBool = AtomicBool::new(false);

/// The rings of one mount, made before the mount (one per possible CPU).
pub struct Rings {
    queues: Vec<IoUring<squeue::Entry128, cqueue::Entry>>,
    /// Set by the file system's `init` when the kernel granted the capability.
    granted: Arc<AtomicBool>,
    /// The payload size the kernel requires of every entry (from the INIT reply).
    payload: Arc<AtomicUsize>,
}

/// The file system adapter's part: ask for the capability at INIT.
#[derive(Clone, Debug)]
pub struct Offer {
    granted: Arc<AtomicBool>,
    payload: Arc<AtomicUsize>,
}

impl Offer {
    /// Ask for `FUSE_OVER_IO_URING` in `config` (call from `Filesystem::init`, after
    /// `max_write` is set to `max_write`). Returns whether the kernel offers it.
    pub fn request(&self, config: &mut fuser::KernelConfig, max_write: u32) -> bool {
        let ok = config
            .add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
            .is_ok();
        // The kernel wants each payload buffer to hold max(8 KiB, max_write, max_pages pages);
        // max_pages is at most fs.fuse.max_pages_limit.
        let pages = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(256);
        let payload = 8192.max(max_write as usize).max(pages * page_size());
        self.payload.store(payload, Ordering::Relaxed);
        self.granted.store(ok, Ordering::Relaxed);
        GRANTED.store(ok, Ordering::Relaxed);
        if !ok {
            log::info!("the kernel does not offer FUSE over io_uring (enable_uring is off?): serving on /dev/fuse");
        }
        ok
    }
}

/// A shortcut for `READ`: the file system copies the data straight into the ring entry's
/// payload buffer, which the kernel then copies into the page cache. Through fuser's dispatch
/// the bytes would be copied twice more (into a captured reply, then into the payload).
pub trait DirectRead: Send + Sync {
    /// Fill `buf` (its length is the size asked for, at most the payload) with the bytes of
    /// inode `ino` (open handle `fh`; 0 when files are opened without the daemon) at `offset`;
    /// returns how many (fewer at the end of the file) or an errno.
    fn read_into(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize, i32>;

    /// As `read_into`, except that a READ the ring should read from the disk itself, straight
    /// into `buf` (a cold object: `fs::direct`), comes back as `RingRead::Disk`, so that the
    /// queue thread need not wait for the disk and several reads are in flight.
    fn read_or_plan(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<RingRead, i32> {
        self.read_into(ino, fh, offset, buf).map(RingRead::Copied)
    }
}

/// What `DirectRead::read_or_plan` did with a READ.
pub enum RingRead {
    /// This many bytes were copied into the buffer.
    Copied(usize),
    /// The ring reads them from the disk.
    Disk(DiskRead),
}

/// A READ read from the disk by the ring (`DirectRead::read_or_plan`): `read_len` bytes at `offset` of
/// `fd` (opened with O_DIRECT) into the payload, of which the reply has `reply_len`; a read
/// that returns fewer is served by `read_into` instead.
pub struct DiskRead {
    pub fd: RawFd,
    pub offset: u64,
    pub read_len: usize,
    pub reply_len: usize,
    /// Keeps `fd` open until the read completed.
    pub keep: Box<dyn Send>,
}

/// A READ whose bytes the ring is reading from the disk into an entry's payload.
struct Pending {
    unique: u64,
    commit_id: u64,
    ino: u64,
    fh: u64,
    offset: u64,
    size: usize,
    read: DiskRead,
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// Number of possible CPUs: the kernel makes one queue per possible CPU, and switches to the
/// rings only once every one has an entry.
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim())
        .ok_or_else(|| io::Error::other(format!("unreadable CPU list '{}'", text.trim())))
}

/// Count the CPUs of a kernel CPU list (`0-3,5`).
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

impl Rings {
    /// The rings for a mount, or `None` (logged) when the mount should stay on `/dev/fuse`:
    /// `PVRFS_FUSE_URING=0`, the kernel's `enable_uring` off, or io_uring unavailable.
    pub fn prepare() -> Option<Rings> {
        if std::env::var("PVRFS_FUSE_URING").is_ok_and(|v| v == "0") {
            log::info!("PVRFS_FUSE_URING=0: serving on /dev/fuse");
            return None;
        }
        if let Ok(v) = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring") {
            if !matches!(v.trim(), "Y" | "1") {
                log::debug!("fuse enable_uring is off: serving on /dev/fuse");
                return None;
            }
        }
        match Self::create() {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("FUSE over io_uring unavailable ({e}): serving on /dev/fuse");
                None
            }
        }
    }

    fn create() -> io::Result<Rings> {
        let n = possible_cpus()?;
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_cqsize(4 * (DEPTH as u32 + 1))
                .build(2 * (DEPTH as u32 + 1))?;
            queues.push(ring);
        }
        let mut probe = io_uring::Probe::new();
        queues[0].submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::UringCmd80::CODE)
            || !probe.is_supported(opcode::PollAdd::CODE)
        {
            return Err(io::Error::other("io_uring lacks URING_CMD"));
        }
        Ok(Rings {
            queues,
            granted: Arc::new(AtomicBool::new(false)),
            payload: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// What the file system's `init` uses to ask for the capability.
    pub fn offer(&self) -> Offer {
        OFFERED.store(true, Ordering::Relaxed);
        Offer {
            granted: self.granted.clone(),
            payload: self.payload.clone(),
        }
    }

    /// Start one thread per queue, pinned to its CPU, serving requests through `dispatcher`;
    /// `fuse_fd` is the session's `/dev/fuse` fd. Nothing runs if INIT did not grant the ring.
    /// `direct_read`, when given, answers `READ` requests (`DirectRead`).
    pub fn start<FS: fuser::Filesystem>(
        self,
        fuse_fd: RawFd,
        dispatcher: fuser::RawDispatcher<FS>,
        direct_read: Option<Arc<dyn DirectRead>>,
    ) -> io::Result<RingTransport> {
        if !self.granted.load(Ordering::Relaxed) {
            return Ok(RingTransport::none());
        }
        let mut queues = self.queues;
        let n_queues = queues.len();
        // From here on the kernel holds every request until all queues registered: a failure
        // must make it fall back to /dev/fuse, never return with nothing serving.
        let stop = match rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                refuse(&mut queues[0], fuse_fd, &e.into());
                return Ok(RingTransport::none());
            }
        };
        let mut threads = Vec::new();
        let payload = self.payload.load(Ordering::Relaxed);
        let idle_commit = idle_commit_allowed();
        let fail = std::env::var("PVRFS_FUSE_URING_FAIL").unwrap_or_default();
        let mut queues = queues.into_iter().enumerate();
        while let Some((qid, mut ring)) = queues.next() {
            if fail == "start" && qid + 1 == n_queues {
                // Tests: the last queue thread "cannot be started".
                refuse(
                    &mut ring,
                    fuse_fd,
                    &io::Error::other("PVRFS_FUSE_URING_FAIL=start"),
                );
                break;
            }
            let queue = Queue {
                qid: qid as u16,
                ring,
                fuse_fd,
                stop: stop.clone(),
                payload,
                fail_register: fail == "1",
                placement: if idle_commit { Placement::new() } else { None },
                idle: false,
                cpus: n_queues,
                off_cpu: false,
                direct_read: direct_read.clone(),
            };
            let d = dispatcher.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pvrfs-ring-{qid}"))
                .spawn(move || queue.run(d));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The queue's ring went with the closure: refuse with the next one, or
                    // (for the last queue) with a fresh ring.
                    match queues.next() {
                        Some((_, mut ring)) => refuse(&mut ring, fuse_fd, &e),
                        None => match IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                            .build(2)
                        {
                            Ok(mut ring) => refuse(&mut ring, fuse_fd, &e),
                            Err(e2) => log::error!(
                                "io_uring queue {qid} not started ({e}) and no ring to refuse it ({e2}): requests may hang"
                            ),
                        },
                    }
                    break;
                }
            }
        }
        log::info!(
            "serving FUSE requests over io_uring: {} queues of {DEPTH} entries, {} KiB payloads",
            threads.len(),
            payload / 1024
        );
        Ok(RingTransport {
            stop: Some(stop),
            threads,
        })
    }
}

/// Make the kernel give up the ring (it clears `fc->io_uring`, wakes the requests it held and
/// serves on `/dev/fuse`): a REGISTER without buffers, which it refuses.
fn refuse(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>, fuse_fd: RawFd, why: &io::Error) {
    FAILED.store(true, Ordering::Relaxed);
    log::warn!("FUSE over io_uring not started ({why}): serving on /dev/fuse");
    let sqe = opcode::UringCmd80::new(types::Fd(fuse_fd), FUSE_IO_URING_CMD_REGISTER).build();
    // SAFETY: the SQE names no buffer (len 0: the kernel reads none).
    let pushed = unsafe { ring.submission().push(&sqe).is_ok() };
    if !pushed || ring.submit_and_wait(1).is_err() {
        log::error!("could not make the kernel give up FUSE over io_uring: requests may hang");
    }
}

/// The running rings (fuser's `Transport`: stopped and joined after the `/dev/fuse` workers).
pub struct RingTransport {
    stop: Option<Arc<OwnedFd>>,
    threads: Vec<JoinHandle<()>>,
}

impl RingTransport {
    /// No rings: the mount is served on `/dev/fuse` only.
    pub fn none() -> RingTransport {
        RingTransport {
            stop: None,
            threads: Vec::new(),
        }
    }
}

impl fuser::Transport for RingTransport {
    fn stop(&self) {
        let Some(stop) = &self.stop else { return };
        let _ = rustix::io::write(stop.as_ref(), &1u64.to_ne_bytes());
    }

    fn join(self) -> io::Result<()> {
        for t in self.threads {
            if t.join().is_err() {
                return Err(io::Error::other("an io_uring queue thread panicked"));
            }
        }
        Ok(())
    }
}

/// A buffer aligned for fuser's zero-copy parsing of the request structs.
struct Aligned {
    words: Vec<u64>,
}

impl Aligned {
    fn new(bytes: usize) -> Aligned {
        Aligned {
            words: vec![0; bytes.div_ceil(8)],
        }
    }
    fn bytes(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: the u64 storage is `len` initialised bytes, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), len) }
    }
}

/// One registered entry: its header and payload buffers (registered with the kernel by
/// address: they must not move while the ring lives, hence the boxes) and its iovecs.
struct Entry {
    header: Box<Aligned>,
    payload: Payload,
    iov: Box<[libc::iovec; 2]>,
    /// The READ being read from the disk into `payload`, if any.
    pending: Option<Pending>,
}

/// An entry's payload buffer: page-aligned (an anonymous mapping, touched only as used) so that
/// a cold object can be read into it with O_DIRECT; on the heap if the mapping fails.
enum Payload {
    Mapped(memmap2::MmapMut),
    Heap(Box<[u8]>),
}

impl Payload {
    fn new(len: usize) -> Payload {
        match memmap2::MmapMut::map_anon(len) {
            Ok(m) => Payload::Mapped(m),
            Err(_) => Payload::Heap(vec![0u8; len].into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Mapped(m) => m,
            Payload::Heap(b) => b,
        }
    }
}

impl std::ops::DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Payload::Mapped(m) => m,
            Payload::Heap(b) => b,
        }
    }
}

struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fuse_fd: RawFd,
    stop: Arc<OwnedFd>,
    payload: usize,
    fail_register: bool,
    /// The placement hint of `commit`, when allowed (`idle_commit_allowed`).
    placement: Option<Placement>,
    /// The thread is in SCHED_IDLE now.
    idle: bool,
    /// Possible CPUs (for `queue_cpus`).
    cpus: usize,
    /// The thread runs off its queue's CPU now (serving big READs).
    off_cpu: bool,
    /// Answers `READ` without fuser's dispatch (`DirectRead`).
    direct_read: Option<Arc<dyn DirectRead>>,
}

/// Whether other tasks are runnable, from `/proc/loadavg`'s `running/total` field (the running
/// count includes the reading thread). Reading it costs about as much as a small request, so
/// the answer is kept for `PLACEMENT_RECHECK`.
struct Placement {
    loadavg: std::fs::File,
    checked: std::time::Instant,
    quiet: bool,
}

/// How long an answer of `Placement::quiet` is used.
const PLACEMENT_RECHECK: std::time::Duration = std::time::Duration::from_millis(1);

impl Placement {
    fn new() -> Option<Placement> {
        std::fs::File::open("/proc/loadavg")
            .ok()
            .map(|loadavg| Placement {
                loadavg,
                checked: std::time::Instant::now(),
                quiet: false,
            })
    }

    /// Nothing but this thread was runnable (at most `PLACEMENT_RECHECK` ago).
    fn quiet(&mut self) -> bool {
        use std::os::unix::fs::FileExt;
        let now = std::time::Instant::now();
        if now.duration_since(self.checked) < PLACEMENT_RECHECK {
            return self.quiet;
        }
        let mut buf = [0u8; 128];
        self.quiet = self
            .loadavg
            .read_at(&mut buf, 0)
            .is_ok_and(|n| running_tasks(&buf[..n]).is_some_and(|r| r <= 1));
        self.checked = now;
        self.quiet
    }
}

/// The running count of a `/proc/loadavg` line (`0.52 0.58 0.59 2/412 12345`).
fn running_tasks(line: &[u8]) -> Option<u32> {
    let field = line.split(|&b| b == b' ').nth(3)?;
    let running = field.split(|&b| b == b'/').next()?;
    std::str::from_utf8(running).ok()?.parse().ok()
}

/// Set the calling thread's scheduling policy (priority 0); false if refused.
fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Whether queue threads may use `commit_idle`: not with `PVRFS_FUSE_URING_IDLE_COMMIT=0`,
/// and only if a thread may leave SCHED_IDLE again (root, or an RLIMIT_NICE that allows
/// nice 0) — tried on a throwaway thread, so a refusal strands nobody in SCHED_IDLE.
fn idle_commit_allowed() -> bool {
    if std::env::var("PVRFS_FUSE_URING_IDLE_COMMIT").is_ok_and(|v| v == "0") {
        return false;
    }
    std::thread::spawn(|| set_policy(libc::SCHED_IDLE) && set_policy(libc::SCHED_OTHER))
        .join()
        .unwrap_or(false)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

impl Queue {
    /// The 80-byte command area: `struct fuse_uring_cmd_req { flags, commit_id, qid, pad }`.
    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        let mut c = [0u8; 80];
        c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        c[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        c
    }

    fn register_sqe(&self, i: usize, e: &Entry) -> squeue::Entry128 {
        let mut sqe = opcode::UringCmd80::new(types::Fd(self.fuse_fd), FUSE_IO_URING_CMD_REGISTER)
            .cmd(self.cmd(0))
            .addr(Some(e.iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        // sqe->len = 2 (two iovecs); the builder has no setter. Entry128 is repr(C): the
        // 64-byte io_uring_sqe (len at byte 24) followed by the rest of the command area.
        // `PVRFS_FUSE_URING_FAIL=1` (tests) sends no iovecs: the kernel refuses the entry, as it
        // would refuse a real one, and falls back to /dev/fuse.
        let iovecs: u32 = if self.fail_register { 0 } else { 2 };
        // SAFETY: offset 24..28 lies inside the 128-byte entry; u32 written unaligned.
        unsafe {
            let p = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
            p.add(24).cast::<u32>().write_unaligned(iovecs);
        }
        sqe
    }

    fn commit_sqe(&self, i: usize, commit_id: u64) -> squeue::Entry128 {
        opcode::UringCmd80::new(types::Fd(self.fuse_fd), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
            .cmd(self.cmd(commit_id))
            .build()
            .user_data(i as u64)
    }

    /// Submit the pending commits, as a SCHED_IDLE thread when nothing else is runnable: the
    /// commit wakes the caller, and the scheduler then keeps the caller on this CPU (a CPU
    /// running only idle-policy threads counts as idle) instead of moving it to the other,
    /// halted CPU — so its next request comes to this queue again, and neither request nor
    /// reply crosses CPUs. The caller preempts this thread at once; when it blocks on its next
    /// request, this thread resumes and finds that request already in the ring (`run` looks
    /// before it waits). The policy changes only when the answer of `Placement::quiet` does.
    fn commit(&mut self) {
        // Away from the caller's CPU the hint has nothing to keep together.
        let idle = !self.off_cpu && self.placement.as_mut().is_some_and(|p| p.quiet());
        if idle != self.idle {
            self.set_idle(idle);
        }
        if let Err(e) = self.ring.submit() {
            if e.raw_os_error() != Some(libc::EINTR) {
                log::debug!("io_uring queue {}: submit: {e}", self.qid);
            }
        }
    }

    /// Enter or leave SCHED_IDLE. A queue thread never sleeps in SCHED_IDLE (`run` leaves it
    /// before waiting): an idle-policy thread woken on a busy CPU could wait for a long time.
    fn set_idle(&mut self, idle: bool) {
        let ok = set_policy(if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        });
        if ok {
            self.idle = idle;
        } else if !idle {
            log::error!("io_uring queue {}: cannot leave SCHED_IDLE", self.qid);
        }
    }

    /// Run on the queue's own CPU, or (`off_cpu`) on any other, when that changes.
    fn place(&mut self, off_cpu: bool) {
        if off_cpu == self.off_cpu {
            if off_cpu {
                OFF_CPU_READS.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(set) = queue_cpus(self.qid as usize, self.cpus, off_cpu) else {
            return;
        };
        match rustix::thread::sched_setaffinity(None, &set) {
            Ok(()) => {
                self.off_cpu = off_cpu;
                log::debug!(
                    "io_uring queue {}: {}",
                    self.qid,
                    if off_cpu {
                        "serving big READs off its CPU"
                    } else {
                        "back on its CPU"
                    }
                );
                if off_cpu {
                    OFF_CPU_READS.fetch_add(1, Ordering::Relaxed);
                }
            }
            // E.g. every other CPU offline or outside the daemon's cpuset: stay.
            Err(e) => log::debug!(
                "io_uring queue {}: cannot move (off its CPU: {off_cpu}): {e}",
                self.qid
            ),
        }
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> bool {
        // SAFETY: every buffer an SQE names lives in `entries`, which outlives the ring use.
        unsafe { self.ring.submission().push(sqe).is_ok() }
    }

    fn run<FS: fuser::Filesystem>(mut self, dispatcher: fuser::RawDispatcher<FS>) {
        pin_to_cpu(self.qid as usize);
        let mut entries: Vec<Entry> = (0..DEPTH)
            .map(|_| {
                let mut header = Box::new(Aligned::new(HEADER_SIZE));
                let mut payload = Payload::new(self.payload);
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.bytes().as_mut_ptr().cast(),
                        iov_len: HEADER_SIZE,
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload.len(),
                    },
                ]);
                Entry {
                    header,
                    payload,
                    iov,
                    pending: None,
                }
            })
            .collect();
        for (i, e) in entries.iter().enumerate() {
            let sqe = self.register_sqe(i, e);
            self.push(&sqe);
        }
        let poll = opcode::PollAdd::new(types::Fd(self.stop.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(STOP);
        self.push(&poll.into());
        QUEUES.fetch_add(1, Ordering::Relaxed);
        let mut live = DEPTH;
        let mut request = Aligned::new(IN_HEADER + 128 + self.payload);
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(DEPTH + 1);
        while live > 0 {
            // A request may already be in (see `commit`): only wait when there is none, and
            // never in SCHED_IDLE.
            let ready = !self.ring.completion().is_empty();
            if !ready && self.idle {
                self.set_idle(false);
            }
            match if ready {
                Ok(0)
            } else {
                self.ring.submit_and_wait(1)
            } {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    log::error!("io_uring queue {}: {e}; queue stops", self.qid);
                    break;
                }
            }
            done.clear();
            done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let mut commits = 0;
            let mut reads = 0;
            for &(ud, res) in &done {
                if ud == STOP {
                    live = 0;
                    break;
                }
                if ud & DISK_READ != 0 {
                    let i = (ud & !DISK_READ) as usize;
                    if let Some(commit_id) = self.disk_read_done(&mut entries[i], res) {
                        let sqe = self.commit_sqe(i, commit_id);
                        self.push(&sqe);
                        commits += 1;
                    }
                    continue;
                }
                let i = ud as usize;
                if res == 0 {
                    self.place(serve_off_cpu(entries[i].header.bytes()));
                    match self.serve(&dispatcher, &mut entries[i], &mut request) {
                        Served::Commit(commit_id) => {
                            let sqe = self.commit_sqe(i, commit_id);
                            self.push(&sqe);
                            commits += 1;
                        }
                        Served::Reading(sqe) => {
                            self.push(&sqe.user_data(DISK_READ | i as u64).into());
                            reads += 1;
                        }
                    }
                } else if res == -libc::EAGAIN || res == -libc::EINTR {
                    // Not ready yet (INIT still being processed): register again.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    let sqe = self.register_sqe(i, &entries[i]);
                    self.push(&sqe);
                } else {
                    live -= 1;
                    // The connection going away (unmount, abort) is not a refusal.
                    if !super::mounts::is_dead_errno(-res) {
                        FAILED.store(true, Ordering::Relaxed);
                        log::warn!(
                            "io_uring queue {} entry {i}: {}; the kernel serves on /dev/fuse",
                            self.qid,
                            io::Error::from_raw_os_error(-res)
                        );
                    }
                }
            }
            if commits > 0 && live > 0 {
                self.commit();
            } else if reads > 0 && live > 0 {
                if let Err(e) = self.ring.submit() {
                    log::debug!("io_uring queue {}: submit: {e}", self.qid);
                }
            }
        }
        // Dropping the ring cancels what is still submitted before the buffers go.
        drop(self.ring);
        drop(entries);
    }

    /// Answer the request in entry `e`: its commit id, or the disk read to submit first.
    fn serve<FS: fuser::Filesystem>(
        &self,
        dispatcher: &fuser::RawDispatcher<FS>,
        e: &mut Entry,
        request: &mut Aligned,
    ) -> Served {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let header = e.header.bytes();
        let commit_id = u64_at(header, COMMIT_ID);
        let unique = u64_at(header, IN_OUT + 8);
        let len = u32_at(header, IN_OUT) as usize;
        let payload_sz = u32_at(header, PAYLOAD_SZ) as usize;
        if let Some(reader) = &self.direct_read {
            // fuse_read_in: fh, offset, size (24 bytes of op_in at least).
            if u32_at(header, OPCODE) == FUSE_READ && len >= IN_HEADER + 24 + payload_sz {
                let ino = u64_at(header, NODEID);
                let fh = u64_at(header, OP_IN);
                let offset = u64_at(header, OP_IN + 8);
                let size = (u32_at(header, OP_IN + 16) as usize).min(e.payload.len());
                log::debug!(
                    "FUSE({unique:3}) ino {ino:#018x} READ fh FileHandle({fh}), offset {offset}, size {size} (io_uring, direct)"
                );
                let buf = &mut e.payload[..size];
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    reader.read_or_plan(ino, fh, offset, buf)
                }));
                let (error, n) = match read {
                    Ok(Ok(RingRead::Copied(n))) => (0, n.min(size)),
                    Ok(Ok(RingRead::Disk(read))) => {
                        if read.read_len <= e.payload.len() && read.reply_len <= size {
                            let sqe = opcode::Read::new(
                                types::Fd(read.fd),
                                e.payload.as_mut_ptr(),
                                read.read_len as u32,
                            )
                            .offset(read.offset)
                            .build();
                            e.pending = Some(Pending {
                                unique,
                                commit_id,
                                ino,
                                fh,
                                offset,
                                size,
                                read,
                            });
                            DISK_READS.fetch_add(1, Ordering::Relaxed);
                            log::debug!(
                                "io_uring queue {}: READ {unique} read from the disk",
                                self.qid
                            );
                            return Served::Reading(sqe);
                        }
                        self.copy_read(reader.as_ref(), e, ino, fh, offset, size)
                    }
                    Ok(Err(errno)) => (-errno, 0),
                    Err(_) => {
                        log::error!("io_uring queue {}: read handler panicked", self.qid);
                        (-libc::EIO, 0)
                    }
                };
                finish(e, unique, error, n);
                return Served::Commit(commit_id);
            }
        }
        let reply = match len
            .checked_sub(IN_HEADER + payload_sz)
            .filter(|&op| op <= 128 && payload_sz <= e.payload.len())
        {
            None => {
                log::error!(
                    "io_uring queue {}: malformed request (len {len}, payload {payload_sz})",
                    self.qid
                );
                None
            }
            Some(op_len) => {
                let buf = request.bytes();
                buf[..IN_HEADER].copy_from_slice(&header[IN_OUT..IN_OUT + IN_HEADER]);
                buf[IN_HEADER..IN_HEADER + op_len].copy_from_slice(&header[OP_IN..OP_IN + op_len]);
                buf[IN_HEADER + op_len..len].copy_from_slice(&e.payload[..payload_sz]);
                let data = &buf[..len];
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    dispatcher.dispatch(data)
                })) {
                    Ok(Ok(r)) => r,
                    Ok(Err(err)) => {
                        log::error!("io_uring queue {}: {err}", self.qid);
                        None
                    }
                    Err(_) => {
                        log::error!("io_uring queue {}: request handler panicked", self.qid);
                        None
                    }
                }
            }
        };
        // A reply in /dev/fuse layout: fuse_out_header (len, error, unique) then the body.
        let (error, body): (i32, &[u8]) = match &reply {
            Some(r) if r.len() >= OUT_HEADER && r.len() - OUT_HEADER <= e.payload.len() => (
                i32::from_ne_bytes(r[4..8].try_into().unwrap()),
                &r[OUT_HEADER..],
            ),
            Some(r) if r.len() >= OUT_HEADER => {
                log::error!(
                    "io_uring queue {}: reply of {} bytes exceeds the payload buffer",
                    self.qid,
                    r.len()
                );
                (-libc::EIO, &[])
            }
            // No reply (FORGET takes none, but never comes here) or a failure: EIO.
            _ => (-libc::EIO, &[]),
        };
        e.payload[..body.len()].copy_from_slice(body);
        finish(e, unique, error, body.len());
        Served::Commit(commit_id)
    }

    /// The disk read into entry `e`'s payload completed with `res` (bytes, or -errno): write
    /// the reply, or, when it read fewer bytes than the reply needs, serve the READ through
    /// `read_into` instead. Returns the commit id (none for a completion of no read).
    fn disk_read_done(&self, e: &mut Entry, res: i32) -> Option<u64> {
        let Some(p) = e.pending.take() else {
            log::error!("io_uring queue {}: a disk read for no request", self.qid);
            return None;
        };
        if usize::try_from(res).is_ok_and(|n| n >= p.read.reply_len) {
            finish(e, p.unique, 0, p.read.reply_len);
            return Some(p.commit_id);
        }
        if res < 0 {
            crate::fs::direct::report(
                crate::fs::direct::Trouble::Failed,
                format_args!(
                    "direct read of inode {} failed, read through the page cache: {}",
                    p.ino,
                    io::Error::from_raw_os_error(-res)
                ),
            );
        }
        drop(p.read);
        let reader = self
            .direct_read
            .as_ref()
            .expect("a disk read came from a reader");
        let (error, n) = self.copy_read(reader.as_ref(), e, p.ino, p.fh, p.offset, p.size);
        finish(e, p.unique, error, n);
        Some(p.commit_id)
    }

    /// Serve a READ by copying its bytes into entry `e`'s payload (`DirectRead::read_into`):
    /// the reply's (error, length).
    fn copy_read(
        &self,
        reader: &dyn DirectRead,
        e: &mut Entry,
        ino: u64,
        fh: u64,
        offset: u64,
        size: usize,
    ) -> (i32, usize) {
        let buf = &mut e.payload[..size];
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reader.read_into(ino, fh, offset, buf)
        })) {
            Ok(Ok(n)) => (0, n.min(size)),
            Ok(Err(errno)) => (-errno, 0),
            Err(_) => {
                log::error!("io_uring queue {}: read handler panicked", self.qid);
                (-libc::EIO, 0)
            }
        }
    }
}

/// What `serve` did with a request.
enum Served {
    /// Answered: commit it.
    Commit(u64),
    /// Its bytes are to be read from the disk first (submit this; `disk_read_done` answers).
    Reading(squeue::Entry),
}

/// Write the reply header of entry `e`, whose payload holds `body_len` bytes of reply body.
fn finish(e: &mut Entry, unique: u64, error: i32, body_len: usize) {
    let header = e.header.bytes();
    header[IN_OUT..IN_OUT + 4].copy_from_slice(&((OUT_HEADER + body_len) as u32).to_ne_bytes());
    header[IN_OUT + 4..IN_OUT + 8].copy_from_slice(&error.to_ne_bytes());
    header[IN_OUT + 8..IN_OUT + 16].copy_from_slice(&unique.to_ne_bytes());
    header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&(body_len as u32).to_ne_bytes());
}

/// Whether the request in an entry's header is served off its queue's CPU: a READ of at
/// least `OFF_CPU_READ` bytes (`fuse_read_in.size`, in `op_in`).
fn serve_off_cpu(header: &[u8]) -> bool {
    u32_at(header, OPCODE) == FUSE_READ && u32_at(header, OP_IN + 16) >= OFF_CPU_READ
}

/// The CPUs queue `qid`'s thread may run on: its own, or (`off_cpu`) every other one of `cpus`
/// possible CPUs; `None` where there is no other CPU or the set cannot name them.
fn queue_cpus(qid: usize, cpus: usize, off_cpu: bool) -> Option<rustix::thread::CpuSet> {
    use rustix::thread::CpuSet;
    if qid >= CpuSet::MAX_CPU || (off_cpu && cpus < 2) {
        return None;
    }
    let mut set = CpuSet::new();
    if off_cpu {
        (0..cpus.min(CpuSet::MAX_CPU))
            .filter(|&c| c != qid)
            .for_each(|c| set.set(c));
    } else {
        set.set(qid);
    }
    Some(set)
}

/// Run the calling thread on `cpu` only (a queue's requests come from tasks on that CPU).
fn pin_to_cpu(cpu: usize) {
    let Some(set) = queue_cpus(cpu, 1, false) else {
        return;
    };
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        log::debug!("io_uring queue {cpu}: cannot pin to CPU {cpu}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    /// A header holding a request with `opcode` whose `op_in` starts like `fuse_read_in`.
    fn header(opcode: u32, read_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[OPCODE..OPCODE + 4].copy_from_slice(&opcode.to_ne_bytes());
        h[OP_IN + 16..OP_IN + 20].copy_from_slice(&read_size.to_ne_bytes());
        h
    }

    #[test]
    fn readahead_sized_reads_are_served_off_the_callers_cpu() {
        assert!(serve_off_cpu(&header(FUSE_READ, 1 << 20)));
        assert!(serve_off_cpu(&header(FUSE_READ, OFF_CPU_READ)));
        assert!(!serve_off_cpu(&header(FUSE_READ, 4096)));
        assert!(!serve_off_cpu(&header(FUSE_READ, OFF_CPU_READ - 4096)));
        // FUSE_WRITE (16) of the same size: its data is in the payload, not copied out.
        assert!(!serve_off_cpu(&header(16, 1 << 20)));
    }

    #[test]
    fn a_queue_thread_moves_to_every_other_cpu_and_back() {
        let cpus = |set: rustix::thread::CpuSet| -> Vec<usize> {
            (0..8).filter(|&c| set.is_set(c)).collect()
        };
        assert_eq!(cpus(queue_cpus(0, 2, true).unwrap()), vec![1]);
        assert_eq!(cpus(queue_cpus(1, 4, true).unwrap()), vec![0, 2, 3]);
        assert_eq!(cpus(queue_cpus(1, 4, false).unwrap()), vec![1]);
        // One CPU: nowhere to go.
        assert!(queue_cpus(0, 1, true).is_none());
        assert_eq!(cpus(queue_cpus(0, 1, false).unwrap()), vec![0]);
    }

    #[test]
    fn loadavg_running_count() {
        assert_eq!(running_tasks(b"0.52 0.58 0.59 2/412 12345\n"), Some(2));
        assert_eq!(running_tasks(b"0.00 0.00 0.00 1/80 7"), Some(1));
        assert_eq!(running_tasks(b"garbage"), None);
    }

    #[test]
    fn status_names_the_transport() {
        let s = Status {
            granted: true,
            queues: 2,
            requests: 5,
            off_cpu_reads: 3,
            disk_reads: 1,
            failed: false,
        };
        assert_eq!(
            s.describe(),
            "io_uring (2 queues, 5 requests, 3 big reads off the caller's CPU, 1 read from the disk)"
        );
        let s = Status { failed: true, ..s };
        assert!(s.describe().starts_with("/dev/fuse"));
    }
}
