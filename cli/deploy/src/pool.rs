//! The one bounded-parallel runner every command uses: at most N nodes at a time.

use std::sync::Arc;

pub(crate) fn runtime(parallel: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(parallel.clamp(1, 64) + 2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` over `items` on blocking threads, at most `parallel` at once, keeping their order.
pub(crate) fn parallel_map<I, O, F>(
    rt: &tokio::runtime::Runtime,
    parallel: usize,
    items: Vec<I>,
    f: F,
) -> Vec<O>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(I) -> O + Send + Sync + Clone + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    rt.block_on(async {
        let mut handles = Vec::new();
        for item in items {
            let (sem, f) = (sem.clone(), f.clone());
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                tokio::task::spawn_blocking(move || f(item))
                    .await
                    .expect("worker")
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("worker"));
        }
        out
    })
}
