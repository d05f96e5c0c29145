//! Safe wrappers for the few process-wide C library calls pvrfs makes that `rustix` does not
//! offer (allocator tuning, signal masks). Every other system call goes through `rustix` or std;
//! `unsafe` outside this file is limited to memory maps, the FUSE-over-io_uring transport
//! (`fuse::uring`) and `pre_exec` hooks, each with its `SAFETY:` comment.

/// Return free heap pages to the system (glibc keeps them otherwise).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fix glibc's mmap threshold at `bytes`: allocations at least that big are mapped (and come
/// back zeroed from the kernel) instead of being carved from the heap and memset.
pub fn fix_mmap_threshold(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// A set of signals.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `signals` in the calling thread (threads started later inherit the mask), so that
/// only a thread waiting in [`wait_for_signal`] receives them.
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Undo [`block_signals`] in the calling thread.
pub fn unblock_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// End the process as `sig` would by default (so the parent sees "killed by SIGTERM", not an
/// exit code): restore the default action, unblock it in this thread and raise it.
pub fn die_of_signal(sig: i32) -> ! {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
    unblock_signals(&[sig]);
    // SAFETY: plain libc calls; `raise` delivers `sig` to this thread, whose default action
    // ends the process.
    unsafe {
        libc::raise(sig);
    }
    // A signal whose default is to be ignored (none of the ones we use) ends up here.
    std::process::exit(128 + sig)
}

/// Wait until one of `signals` (blocked beforehand with [`block_signals`]) arrives; returns it.
pub fn wait_for_signal(signals: &[i32]) -> Option<i32> {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal number into `sig`.
    (unsafe { libc::sigwait(&set, &mut sig) } == 0).then_some(sig)
}
