//! Cold object data read straight from the disk (`O_DIRECT`), for bytes the daemon serves.
//!
//! Why: a READ the daemon answers from a cold object otherwise first fills the object's own
//! page cache (the prefetch of `fs::readonly` asks the kernel to read ahead, then the reply is
//! copied out of the mapping), so the same bytes are cached twice, in the object's pages and in
//! the mount's, and the daemon's threads spend as long allocating the object's pages as copying.
//! Read with `O_DIRECT` into an aligned buffer, the device writes the bytes where the kernel
//! copies the reply from: no page of the object is allocated, and a cold blob read through a
//! mount holds its size in memory once. Measured (cold 1 GiB, `--passthrough never`,
//! /dev/fuse, 12 rounds each): the daemon's CPU time 0.55-0.70 s → 0.27-0.47 s; the read
//! 0.84-1.27 s → 0.84-1.55 s, medians 1.08 s → 1.07 s: the reader's own kernel work, 0.8-0.9 s,
//! is the limit either way (docs/SEMANTICS.md, "Reads").
//!
//! Where: the `/dev/fuse` workers read into a per-thread aligned buffer ([`with_buffer`])
//! while the others serve the reader's next READs; an io_uring queue submits the read to its
//! ring, into the entry's payload (`fuse::uring`, `ReadOnlyFs::read_or_plan`), and serves other
//! requests meanwhile. Measured on io_uring (same run, 3 rounds): 0.93-1.25 s against
//! 0.82-1.02 s buffered, the daemon's CPU 0.25-0.43 s against 0.62-0.66 s.
//!
//! Model and invariants:
//! - only reads of at least [`DIRECT_MIN`] bytes whose pages are not all cached already
//!   ([`resident`]) go direct: warm objects keep being copied from their page cache, which is
//!   cheaper than asking the disk again;
//! - the offset, the length and the buffer's address must meet the file's direct-I/O alignment
//!   (`statx` `STATX_DIOALIGN`); a read that does not is served the buffered way;
//! - objects are immutable (store invariant), so direct and cached reads of one object see the
//!   same bytes;
//! - an object on a file system that refuses `O_DIRECT` (some FUSE and network file systems)
//!   is read the buffered way from then on; a direct read that fails or comes back short is
//!   served the buffered way; each kind of trouble is logged once ([`report`]).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Smallest read that goes direct. The kernel's readahead of a streaming reader asks for
/// 128 KiB up to 1 MiB at a time; a stray small read of a cold file is left to the page cache.
pub const DIRECT_MIN: usize = 128 << 10;

/// The largest read served from a thread's own aligned buffer ([`with_buffer`]): FUSE's
/// largest READ (max_pages 256).
pub const BUFFER_SIZE: usize = 1 << 20;

/// Whether cold reads may go direct at all (`PVRFS_DIRECT_READS=0` turns them off: for
/// measurement, and as a way out should a file system misbehave with O_DIRECT).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("PVRFS_DIRECT_READS").is_none_or(|v| v != "0"))
}

/// What went wrong with direct I/O, for [`report`].
#[derive(Debug, Clone, Copy)]
pub enum Trouble {
    /// The file system refused to open an object for direct I/O.
    Refused,
    /// A direct read failed (it is then read through the page cache).
    Failed,
}

/// Log a direct-I/O problem: the first of each kind at info (refused) or warn (failed), later
/// ones at debug. A store on a file system without O_DIRECT would otherwise log once per
/// object, a failing disk once per READ.
pub fn report(trouble: Trouble, what: std::fmt::Arguments) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static REFUSED: AtomicBool = AtomicBool::new(false);
    static FAILED: AtomicBool = AtomicBool::new(false);
    let (seen, level) = match trouble {
        Trouble::Refused => (&REFUSED, log::Level::Info),
        Trouble::Failed => (&FAILED, log::Level::Warn),
    };
    let level = if seen.swap(true, Relaxed) {
        log::Level::Debug
    } else {
        level
    };
    log::log!(level, "{what}");
}

/// An object file opened a second time, for direct I/O.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
    /// Alignment of file offsets and lengths.
    offset_align: u64,
    /// Alignment of the buffer's address.
    mem_align: usize,
}

impl DirectFile {
    /// Open `file` again with `O_DIRECT` (through `/proc/self/fd`: the store path is not needed
    /// and the same inode is opened). `Err` when the file system refuses direct I/O or does not
    /// say its alignment.
    pub fn reopen(file: &File) -> io::Result<DirectFile> {
        let st = rustix::fs::statx(
            file,
            "",
            rustix::fs::AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::DIOALIGN,
        )?;
        if st.stx_mask & rustix::fs::StatxFlags::DIOALIGN.bits() == 0
            || st.stx_dio_offset_align == 0
            || st.stx_dio_mem_align == 0
        {
            return Err(io::Error::other("the file system offers no direct I/O"));
        }
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        Ok(DirectFile {
            file: direct,
            offset_align: u64::from(st.stx_dio_offset_align),
            mem_align: st.stx_dio_mem_align as usize,
        })
    }

    /// How to read the bytes `range` of the file into the start of `buf`: the file offset and
    /// the length to ask for (`range`'s, rounded up to the alignment: a direct read returns
    /// fewer bytes at the end of the file). `None` when the read does not meet the alignment or
    /// does not fit `buf`: the caller reads it another way.
    pub fn plan(&self, range: &std::ops::Range<usize>, buf: &[u8]) -> Option<(u64, usize)> {
        let offset = range.start as u64;
        let want = (range.len() as u64).next_multiple_of(self.offset_align) as usize;
        if want > buf.len()
            || offset % self.offset_align != 0
            || (buf.as_ptr() as usize) % self.mem_align != 0
        {
            return None;
        }
        Some((offset, want))
    }

    /// The descriptor opened with `O_DIRECT` (for reads submitted elsewhere, e.g. an io_uring),
    /// with [`plan`](Self::plan)'s offset and length.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Read the bytes `range` of the file into the start of `buf`; how many. `Ok(None)` when
    /// [`plan`](Self::plan) refuses, or when the file holds fewer bytes than `range` (a short
    /// READ reply would end the file for the reader): the caller reads it another way.
    pub fn read_range(
        &self,
        range: std::ops::Range<usize>,
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        let Some((offset, want)) = self.plan(&range, buf) else {
            return Ok(None);
        };
        let buf = &mut buf[..want];
        let mut done = 0;
        while done < want {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            done += n;
            // A direct read is short only at the end of the file.
            if n == 0 || (done as u64) % self.offset_align != 0 {
                break;
            }
        }
        if done < range.len() {
            return Ok(None);
        }
        Ok(Some(range.len()))
    }
}

/// Whether every page of `map[range]` is in the page cache (`mincore` of a shared file mapping
/// answers for the file's pages, mapped into this process or not).
pub fn resident(map: &[u8], range: std::ops::Range<usize>) -> bool {
    let page = rustix::param::page_size();
    let start = range.start / page * page;
    let end = range.end.min(map.len());
    if start >= end {
        return true;
    }
    let pages = (end - start).div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: [start, end) lies inside the live mapping `map` (start is page-aligned, as the
    // mapping's base is); `vec` has one byte per page of it.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(start) as *mut libc::c_void,
            end - start,
            vec.as_mut_ptr(),
        )
    };
    rc == 0 && vec.iter().all(|b| b & 1 == 1)
}

/// A page-aligned buffer of [`BUFFER_SIZE`] bytes.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

thread_local! {
    static BUFFER: RefCell<Vec<Page>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's page-aligned buffer of BUFFER_SIZE bytes (allocated on first use).
pub fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|b| {
        let mut pages = b.borrow_mut();
        if pages.is_empty() {
            pages.reserve_exact(BUFFER_SIZE / 4096);
            pages.extend((0..BUFFER_SIZE / 4096).map(|_| Page([0; 4096])));
        }
        // SAFETY: `pages` is BUFFER_SIZE initialised bytes, exclusively borrowed.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), BUFFER_SIZE) };
        f(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::{resident, with_buffer, DirectFile};
    use std::io::Write;

    /// A file of `len` patterned bytes in the temp directory (where that is tmpfs, it may
    /// refuse O_DIRECT: the test says so and skips).
    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len as u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        f.as_file().sync_all().unwrap();
        (f, bytes)
    }

    #[test]
    fn direct_reads_give_the_bytes_up_to_an_unaligned_end_and_refuse_odd_offsets() {
        let (f, bytes) = file_of(300_000);
        let dio = match DirectFile::reopen(f.as_file()) {
            Ok(d) => d,
            Err(e) => return eprintln!("NOTE: skipped: no direct I/O here ({e})"),
        };
        with_buffer(|buf| {
            assert_eq!(dio.read_range(0..300_000, buf).unwrap(), Some(300_000));
            assert!(buf[..300_000] == bytes[..]);
            assert_eq!(dio.read_range(4096..8192, buf).unwrap(), Some(4096));
            assert!(buf[..4096] == bytes[4096..8192]);
            // The range past what the file holds: short, so refused (a short READ reply would
            // end the file for the reader).
            assert_eq!(dio.read_range(262_144..400_000, buf).unwrap(), None);
            // An offset off the device's alignment, or a buffer that cannot hold the range.
            assert_eq!(dio.read_range(1..4097, buf).unwrap(), None);
            assert_eq!(dio.read_range(0..(2 << 20), buf).unwrap(), None);
            // A misaligned buffer.
            assert_eq!(dio.read_range(0..4096, &mut buf[1..8193]).unwrap(), None);
        });
    }

    #[test]
    fn resident_tells_whether_every_page_of_a_range_is_cached() {
        let (f, _) = file_of(64 << 10);
        let file = f.as_file();
        // SAFETY: a read-only mapping of a file only this test writes (before mapping).
        let map = unsafe { memmap2::Mmap::map(file).unwrap() };
        std::fs::read(f.path()).unwrap();
        assert!(resident(&map, 0..(64 << 10)));
        assert!(resident(&map, 5..6), "a range inside one cached page");
        assert!(resident(&map, 100..100), "an empty range");
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
        if resident(&map, 0..4096) {
            return eprintln!("NOTE: skipped: the page cache of the file cannot be dropped");
        }
        assert!(!resident(&map, 0..(64 << 10)));
        assert!(!resident(&map, 4095..4097), "a range across two pages");
    }
}
