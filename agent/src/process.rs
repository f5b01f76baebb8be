//! Child process groups: a group killed on drop unless disarmed, for the shell step and the
//! `pg_dump`/`pg_restore` clients alike, so that no path (a panic, an attempt's future dropped
//! by its owner) leaves a child running.

use std::sync::atomic::{AtomicBool, Ordering};

/// The process group `sh` leads; killed on drop unless disarmed, so no path (a panic, the
/// attempt's future dropped by its owner) leaves it running.
pub(crate) struct ProcessGroup {
    pgid: libc::pid_t,
    armed: AtomicBool,
}

impl ProcessGroup {
    pub(crate) fn new(pid: u32) -> Self {
        Self {
            pgid: libc::pid_t::try_from(pid).expect("pids fit in pid_t"),
            armed: AtomicBool::new(true),
        }
    }

    /// Sends SIGKILL to every member; true when there was a member to kill.
    pub(crate) fn kill(&self) -> bool {
        // SAFETY: killpg only sends a signal. The group id is the pid of our own child, which
        // the kernel does not hand out again while the child is unreaped or the group has
        // members. Once `sh` is reaped and the group empty the call fails with ESRCH; the only
        // call that can come then is the one right after reaping, long before pids wrap.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) == 0 }
    }

    /// The group is dead and `sh` reaped: nothing left to kill, and its id may be reused.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            self.kill();
        }
    }
}
