//! The weights on transparent huge pages (2 MiB) instead of 4 KiB pages,
//! on request (`TIDINGS_HUGE_PAGES=1`).
//!
//! Decoding one sequence reads every weight from memory once per token:
//! about 1 GB for the default Qwen2.5-Coder-1.5B Q4_K_M, a quarter of a
//! million 4 KiB pages, each a TLB miss (a two-dimensional page walk in a
//! virtual machine); on 2 MiB pages it is 500. Linux gives anonymous memory
//! huge pages where its mode (`/sys/kernel/mm/transparent_hugepage/enabled`)
//! is `always`, or `madvise`, the common default, and the range was advised
//! with `MADV_HUGEPAGE`; otherwise never.
//!
//! Off by default, as measured on the 2-core VM of BENCHMARKS.md: the
//! 1.5B model's one-sequence decode gets faster (2 threads, six
//! alternating pairs: 27.5 -> 28.7 tokens/s; one thread: 13.8 -> 16.3), but
//! the batched decoding of a pipeline run does not (its products are bound
//! by arithmetic, not memory: 76.6 against 76.4 generated tokens/s on 16
//! NTREX articles), and loading takes about 7 s instead of 3.5 s, the
//! kernel zeroing every fresh 2 MiB page. Worth it for one-sequence
//! decoding (`batch-sequences = 1`, a single long generation on
//! `workers = 1`).
//!
//! glibc's allocator advises all its memory when its tunable
//! `glibc.malloc.hugetlb=1` is set, and reads tunables only when a process
//! starts. So [`restart_with_huge_pages`], first thing in `main`, runs the
//! binary again in the same process (`exec`, same PID, arguments and
//! standard streams) with the tunable added, and the restarted process puts
//! `GLIBC_TUNABLES` back as it was, so that programs it starts (pip) see
//! the user's environment.
//!
//! Why this and not our own code: a global allocator that advises each
//! large block can reach only the whole huge pages inside that block, not
//! the heap memory that smaller blocks touched first and the weights reuse
//! later: it covered 74% of the 1.5B run's memory against the tunable's
//! 99%, and gave 1% where the tunable gave 9.5% (one-sequence decode, four
//! alternating runs).
//! Collapsing the pages after loading (`MADV_COLLAPSE`) needs Linux 6.1
//! and copies every page once more.

/// Set in the restarted process: `1` and the original value of
/// `GLIBC_TUNABLES`, or `0` where it was unset.
const RESTARTED: &str = "TIDINGS_RESTARTED_WITH";

/// The variable that asks for huge pages (`1`).
pub const SWITCH: &str = "TIDINGS_HUGE_PAGES";

/// glibc's tunable that advises all the allocator's memory onto huge pages.
const TUNABLE: &str = "glibc.malloc.hugetlb=1";

static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process's allocator puts its memory on huge pages (the
/// tunable was set, by [`restart_with_huge_pages`] or by the user).
pub fn on() -> bool {
    ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Restarts the process with [`TUNABLE`] (see the module documentation)
/// where `TIDINGS_HUGE_PAGES=1`, unless `GLIBC_TUNABLES` sets
/// `glibc.malloc.hugetlb` already, this is not Linux with glibc, the
/// kernel's transparent huge pages are `never`, or the process runs with
/// elevated privileges (where glibc ignores tunables).
/// In the restarted process, restores `GLIBC_TUNABLES`. Call it
/// before any other thread starts; where `exec` fails, the process goes on
/// without huge pages.
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        if let Some(before) = std::env::var_os(RESTARTED) {
            std::env::remove_var(RESTARTED);
            let before = before.to_string_lossy().into_owned();
            match before.strip_prefix('1') {
                Some(value) => std::env::set_var("GLIBC_TUNABLES", value),
                None => std::env::remove_var("GLIBC_TUNABLES"),
            }
            ON.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let current = std::env::var("GLIBC_TUNABLES").ok();
        if let Some(t) = current
            .as_deref()
            .filter(|t| t.contains("glibc.malloc.hugetlb="))
        {
            // The user's own choice (1: advised pages, 2: hugetlbfs pages).
            let on = !t.contains("glibc.malloc.hugetlb=0");
            ON.store(on, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        // SAFETY: getauxval reads the process's auxiliary vector.
        let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
        if secure || std::env::var_os(SWITCH).is_none_or(|v| v != "1") {
            return;
        }
        // Where the kernel gives no transparent huge pages, the tunable
        // would change nothing and `tidings bench` would say "on".
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if mode.is_ok_and(|m| m.contains("[never]")) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let tunables = match &current {
            Some(t) if !t.is_empty() => format!("{t}:{TUNABLE}"),
            _ => TUNABLE.to_string(),
        };
        let before = match &current {
            Some(t) => format!("1{t}"),
            None => "0".to_string(),
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(argv0) = args.next() {
            command.arg0(argv0);
        }
        // `exec` returns only if it failed: go on as we are.
        let _ = command
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(RESTARTED, before)
            .exec();
    }
}
