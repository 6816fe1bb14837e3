//! Process-wide CPU settings for training.

/// Keeps candle's element-wise thread pool from competing with the matrix products: call it
/// first thing in `main`, before any tensor operation and before starting threads.
///
/// candle runs element-wise ops on tensors of 64k elements or more on its own "barrier
/// pool", whose workers busy-wait for 25,000 iterations after each op before sleeping;
/// the matrix products (the `gemm` crate) and dp-core's kernels run on rayon's pool. With a
/// pool of each per core, the spinning workers take cores from the products: on the 2-core
/// benchmark machine candle's worker was once a third of all CPU time in an MLP DP step.
/// dp-core's layers and dp-optim's updates now use host kernels for f32 CPU tensors, so the
/// benchmark models no longer reach that pool (`bench_step` runs equally fast with and
/// without this call); your own candle ops on large tensors (a custom layer, loss or
/// metric) still do, and this call keeps them single-threaded on the caller. This sets
/// `CANDLE_NUM_THREADS=1` (element-wise ops on the calling thread) unless the variable is
/// already set, and returns the value in effect. It cannot change a pool candle has
/// already started.
///
/// The environment is process-global: calling this while other threads read it is a data
/// race in the C library, hence "before starting threads".
///
/// ```
/// let n = dp_core::configure_cpu_threads();
/// assert!(!n.is_empty());
/// ```
pub fn configure_cpu_threads() -> String {
    const VAR: &str = "CANDLE_NUM_THREADS";
    match std::env::var(VAR) {
        Ok(v) => v,
        Err(_) => {
            std::env::set_var(VAR, "1");
            "1".to_string()
        }
    }
}
