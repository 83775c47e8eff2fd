//! Scheduling priority of the image pipeline's threads. Streaming an image keeps both cores of
//! a small machine busy (fetch, hash, decode, write); the agent API must still answer the
//! conductor at once. The pipeline threads therefore run at a lower priority (nice 10): they
//! take every cycle the API does not need, and yield as soon as it does.
#![allow(unsafe_code)]

/// The calling thread's priority, lowered until this guard drops (threads of a pool are
/// reused, so the old priority comes back).
pub struct Lowered {
    tid: libc::id_t,
    previous: libc::c_int,
}

const BACKGROUND_NICE: libc::c_int = 10;

/// Lower the calling thread's priority to nice 10 (or leave it if it is already lower).
pub fn lower_current_thread() -> Lowered {
    // SAFETY: gettid has no preconditions and only returns the caller's thread id.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: plain syscalls on our own thread id; on Linux PRIO_PROCESS with a thread id
    // applies to that thread only. getpriority's -1 is also a valid nice value, and an error
    // there only means we restore 0, the default.
    let previous = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if previous < BACKGROUND_NICE {
        // SAFETY: as above; failure (e.g. a seccomp filter) leaves the priority unchanged.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) };
    }
    Lowered { tid, previous }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if self.previous < BACKGROUND_NICE {
            // Raising the priority back needs CAP_SYS_NICE (the agent runs as root); without it
            // the thread simply stays nicer.
            // SAFETY: as in lower_current_thread.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid, self.previous) };
        }
    }
}

/// Put the calling thread in the idle I/O class for the rest of its life (dedicated threads
/// only): its disk reads wait for the others', the image write's first (where the disk's
/// scheduler knows classes: BFQ; the others ignore it). Peer sharing's disk reads run so.
pub fn idle_io_current_thread() {
    // SAFETY: gettid has no preconditions and only returns the caller's thread id.
    let tid = unsafe { libc::gettid() };
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set takes three integers; with IOPRIO_WHO_PROCESS and a thread id it
    // applies to that thread alone. Failure (an old kernel) leaves the default class.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
}
