//! What of a file the page cache holds, and dropping it: for tests of how reads use the cache.

use std::os::fd::AsRawFd;
use std::path::Path;

/// How many pages of `path` are in the page cache (`mincore` of a fresh mapping).
pub fn cached_pages(path: &Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    if file.metadata().unwrap().len() == 0 {
        return 0;
    }
    // SAFETY: a read-only mapping of a file nobody truncates during the test.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let mut vec = vec![0u8; map.len().div_ceil(4096)];
    // SAFETY: the whole live mapping, one byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|b| *b & 1 == 1).count()
}

/// Drop the clean pages of `path` from the page cache (those mapped by a process stay).
pub fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}
