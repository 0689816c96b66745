//! Running a whole forward pass on the rayon pool with the pool's other threads awake.
//!
//! A pass is a chain of short parallel steps (per layer: four products, attention, two
//! LayerNorms). Between two steps, a thread that finished its share first waits a few tens
//! of microseconds in rayon's idle loop, then sleeps; the next step starts on the pass's
//! own thread alone until the sleeper is woken, which on a virtual machine takes tens of
//! microseconds, step after step. [`pass`] keeps the other threads polling the pool for
//! work until the pass returns (as ONNX Runtime's intra-op pool spins), so each step is
//! shared from its first task; a poller that finds no work for a millisecond sleeps again.
//!
//! Passes from outside the pool (a model's thread) take turns, first come first served.
//! Left to rayon, two callers' passes interleave on the pool's threads: a thread waiting
//! in one pass's step runs the other's work nested on its stack, and one caller's pass
//! could wait through all of another's, pass after pass (two callers of 1.5 ms passes on
//! two threads: one waited up to 46 ms, through 18–29 of the other's, with or without the
//! pollers; `docs/benchmarks.md`, "Two models, one pool"). A pass uses every
//! thread, so running them one at a time costs no throughput and bounds each wait by the
//! passes queued ahead of it.
//!
//! [`build_compute_pool`] makes the pool, its threads pinned to CPUs where [`Pinning`] says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a poller goes on finding no work before it leaves the pass to rayon's own idle
/// loop (where it sleeps): far longer than the gaps between a pass's steps (microseconds
/// to a few hundred), so it only ends the polling through a long serial stretch — and it
/// bounds any wait that a poller, running nested inside another caller's task, could add.
const MAX_IDLE: Duration = Duration::from_millis(1);

/// Runs `f` on the rayon pool (on the calling thread when it is one of the pool's), with
/// every other thread of the pool polling for work until `f` returns or unwinds: the
/// parallel steps inside `f` start on all threads at once rather than waking them step by
/// step.
///
/// A polling thread runs whatever work it finds (another caller's too, as a thread waiting
/// in rayon's `join` does) and offers its core to any other runnable thread between polls;
/// once `f` is over, or after a millisecond without finding work, it goes back to rayon's
/// own idle loop, and sleeps there. On a pool of one thread `f` simply runs.
///
/// Called from outside the pool, it first waits for its turn (see the module's doc); from
/// inside (a pass within a pass), it runs at once.
pub fn pass<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let _turn = rayon::current_thread_index()
        .is_none()
        .then(|| TURNS.take());
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        // Spawned before any of `f`'s jobs: rayon's thieves take a deque's oldest job first,
        // so the pollers go to other threads before any of the pass's own work can, and the
        // pass's thread never waits on a poller of its own. Wherever a poller does end up
        // nested, it lets go of its thread once it has found no work for `MAX_IDLE`.
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| {
                let mut idle_since = None;
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle_since = None;
                        continue;
                    }
                    if idle_since.get_or_insert_with(Instant::now).elapsed() > MAX_IDLE {
                        return;
                    }
                    std::thread::yield_now();
                }
            });
        }
        // Set on return and on unwinding alike: the scope waits for the pollers, and a
        // panic inside `f` must end them too, or the scope would never return.
        let _release = Release(&done);
        f()
    })
}

/// Sets its flag when dropped.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The turns of passes started from outside the pool: a ticket lock (a plain mutex lets a
/// caller that has just finished a pass take the pool again before a waiting one wakes).
struct Turns {
    /// The next ticket to hand out, and the ticket whose turn it is.
    tickets: Mutex<(u64, u64)>,
    turned: Condvar,
}

static TURNS: Turns = Turns {
    tickets: Mutex::new((0, 0)),
    turned: Condvar::new(),
};

impl Turns {
    /// Waits for the caller's turn; the turn passes on when the guard drops (on unwinding
    /// too). A panic elsewhere cannot poison the count: it is updated in single steps.
    fn take(&'static self) -> Turn {
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = tickets.0;
        tickets.0 += 1;
        while tickets.1 != ticket {
            tickets = self
                .turned
                .wait(tickets)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Turn(self)
    }
}

/// A caller's turn on the pool; the next one's when dropped.
struct Turn(&'static Turns);

impl Drop for Turn {
    fn drop(&mut self) {
        let mut tickets = self
            .0
            .tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tickets.1 += 1;
        drop(tickets);
        self.0.turned.notify_all();
    }
}

/// Whether the compute pool's threads are pinned, each to a CPU of its own.
///
/// Left free, the two threads of a pass can land on one CPU: the thread a pass wakes
/// starts where its waker ran, and the kernel's balancer is slow to move a thread that ran
/// a moment ago (it counts as cache-hot), so for tens of milliseconds one thread waits on
/// the other's CPU while the other CPU idles (seen on a 2-core virtual machine: a pool
/// thread waiting 25 ms in the run queue within a 70 ms stretch, `/proc/<pid>/task/<tid>/schedstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Pinned when the pool has exactly one thread per CPU the process may run on (and
    /// more than one): the pool then owns those CPUs anyway. A pool smaller than the CPU
    /// set (a cgroup's CPU quota below the CPUs it may use, a `--threads` below the cores)
    /// stays free, so two such processes never pile onto the same CPUs.
    Auto,
    /// Thread `i` pinned to the `i`-th CPU the process may run on (modulo their count).
    On,
    /// Never pinned.
    Off,
}

/// The CPU each of a pool's `threads` threads is pinned to under `pinning`, given the CPUs
/// the process may run on (`allowed`, in order); empty when the pool stays free.
pub fn pool_cpus(threads: usize, allowed: &[usize], pinning: Pinning) -> Vec<usize> {
    let pinned = match pinning {
        Pinning::Auto => threads > 1 && threads == allowed.len(),
        Pinning::On => !allowed.is_empty(),
        Pinning::Off => false,
    };
    if !pinned {
        return Vec::new();
    }
    (0..threads).map(|i| allowed[i % allowed.len()]).collect()
}

/// Builds rayon's global pool: `threads` threads named `compute-N`, pinned as
/// [`pool_cpus`] says for the CPUs the calling thread may run on. Returns those CPUs
/// (empty when the threads run free); a thread the system refuses to pin runs free.
pub fn build_compute_pool(
    threads: usize,
    pinning: Pinning,
) -> Result<Vec<usize>, rayon::ThreadPoolBuildError> {
    let cpus = pool_cpus(threads, &allowed_cpus(), pinning);
    let plan = cpus.clone();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("compute-{i}"))
        .start_handler(move |i| {
            if let Some(&cpu) = plan.get(i) {
                pin_current_thread(cpu);
            }
        })
        .build_global()?;
    Ok(cpus)
}

/// The CPUs the calling thread may run on (its affinity mask), in order; empty where the
/// mask cannot be read.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the call writes at most its size
    // into it; pid 0 is the calling thread; CPU_ISSET reads within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Elsewhere the mask is not read: the pool stays free.
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pins the calling thread to `cpu`; false where the system refuses (a CPU outside the
/// process's cgroup, a sandbox that forbids the call).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn pin_current_thread(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set and `cpu` is inside it (checked
    // above); the call reads the set's size from it; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Elsewhere threads are not pinned.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> bool {
    false
}
