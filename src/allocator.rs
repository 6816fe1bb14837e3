//! The allocator setting of dp-lab's binaries and examples, which use mimalloc.
//!
//! A training step allocates and frees the same large activation and per-example buffers
//! every step. By default mimalloc purges freed pages a second after they are freed, so the
//! next step takes them back as fresh, zeroed pages from the OS: page faults and page
//! clearing, most of all in steps with many large buffers such as BAM's two passes.
//! A training process reaches its peak footprint in the first step and stays there, so
//! keeping freed pages costs no more memory than that peak.
//!
//! Library users choose their own allocator and settings; nothing in the libraries calls
//! this.

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_t` in the mimalloc v3 header
/// that `libmimalloc-sys` 0.1.49 builds; `libmimalloc-sys` does not export the constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// The option's default in that version (`src/options.c`): purge 1000 ms after a free.
const DEFAULT_PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// Tells mimalloc never to return freed pages to the OS. Call it first thing in `main` of a
/// binary whose `#[global_allocator]` is `mimalloc::MiMalloc`; with another allocator it
/// changes nothing. Returns whether the option was set: `false` (and no change) when the
/// option at the expected index does not hold the purge delay's default — the user set
/// `MIMALLOC_PURGE_DELAY` (which is then kept), or a `libmimalloc-sys` numbers its options
/// differently.
///
/// ```
/// // An example's `main` starts with:
/// let _ = dp_lab::allocator::keep_freed_pages();
/// ```
pub fn keep_freed_pages() -> bool {
    // SAFETY: mi_option_get/mi_option_set read and write one entry of mimalloc's option
    // table; called at the start of `main`, before the threads that allocate are spawned.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) != DEFAULT_PURGE_DELAY_MS {
            return false;
        }
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    true
}
