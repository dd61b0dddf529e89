//! The per-request batching driver: the batches a request's loaders start run inside the
//! request's own task, and start only once every resolver of the request is waiting.
//!
//! Its rules: **one batch per level** (a batch holds every key of its level however long
//! the resolvers took to get there, even when they yielded on the way), and **no timer**
//! (a batch starts as soon as the request can make no progress without it). With batches
//! spawned onto other worker threads after a fixed delay, a slow or preempted request
//! splits a level into several statements; and list resolution yields part-way through long
//! lists, so "the request returned Pending" does not yet mean "every resolver is waiting":
//! a request that woke itself is polled again first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

/// Where a request's loaders put the batches they start.
#[derive(Clone)]
pub struct BatchQueue(mpsc::UnboundedSender<BoxFuture<'static, ()>>);

impl BatchQueue {
    pub fn push(&self, batch: BoxFuture<'static, ()>) {
        // The driver outlives the request's loaders; a send can only fail after it returned.
        let _ = self.0.send(batch);
    }
}

/// Runs `work` (one request), running the batches it queues inside the same task.
pub async fn run_with_batches<T>(work: impl FnOnce(BatchQueue) -> BoxFuture<'static, T>) -> T {
    let (queue, spawned) = mpsc::unbounded_channel();
    Driver {
        work: work(BatchQueue(queue)),
        spawned,
        batches: FuturesUnordered::new(),
    }
    .await
}

struct Driver<T> {
    work: BoxFuture<'static, T>,
    spawned: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>,
    batches: FuturesUnordered<BoxFuture<'static, ()>>,
}

/// Forwards wake-ups, noting whether one happened (a future that wakes itself while being
/// polled wants to be polled again: it yielded, it is not waiting).
struct NotingWaker {
    inner: Waker,
    woken: AtomicBool,
}

impl Wake for NotingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.inner.wake_by_ref();
    }
}

impl<T> Future for Driver<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        /// Re-polls of a self-waking request before batches run anyway (and the task
        /// yields to the runtime), so tokio's cooperative budget can never make this spin.
        const MAX_REPOLLS: usize = 64;
        let noting = Arc::new(NotingWaker {
            inner: cx.waker().clone(),
            woken: AtomicBool::new(false),
        });
        let waker = Waker::from(noting.clone());
        let this = &mut *self;
        loop {
            let mut repolls = 0;
            loop {
                noting.woken.store(false, Ordering::Release);
                if let Poll::Ready(output) =
                    this.work.as_mut().poll(&mut Context::from_waker(&waker))
                {
                    return Poll::Ready(output);
                }
                repolls += 1;
                if !noting.woken.load(Ordering::Acquire) || repolls == MAX_REPOLLS {
                    break;
                }
            }
            while let Poll::Ready(Some(batch)) = this.spawned.poll_recv(cx) {
                this.batches.push(batch);
            }
            match this.batches.poll_next_unpin(cx) {
                // A batch finished: its results may let the request go on.
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use futures_util::FutureExt;
    use futures_util::future::join_all;
    use tokio::sync::oneshot;

    use super::*;

    /// A loader as DataLoader works with no delay: the first key of a batch queues the batch;
    /// keys that arrive before it runs join it.
    #[derive(Clone, Default)]
    struct Loader {
        state: Arc<Mutex<State>>,
    }

    #[derive(Default)]
    struct State {
        pending: Vec<(u32, oneshot::Sender<u32>)>,
        batches: Vec<Vec<u32>>,
    }

    impl Loader {
        async fn load(&self, queue: &BatchQueue, key: u32) -> u32 {
            let (tx, rx) = oneshot::channel();
            let first = {
                let mut state = self.state.lock().unwrap();
                state.pending.push((key, tx));
                state.pending.len() == 1
            };
            if first {
                let state = Arc::clone(&self.state);
                queue.push(
                    async move {
                        let pending = std::mem::take(&mut state.lock().unwrap().pending);
                        let mut keys: Vec<u32> = pending.iter().map(|(k, _)| *k).collect();
                        keys.sort_unstable();
                        state.lock().unwrap().batches.push(keys);
                        for (key, tx) in pending {
                            let _ = tx.send(key * 10);
                        }
                    }
                    .boxed(),
                );
            }
            rx.await.expect("the batch ran")
        }

        fn batches(&self) -> Vec<Vec<u32>> {
            self.state.lock().unwrap().batches.clone()
        }
    }

    /// Returns `Pending` once, waking itself at once, as `FuturesUnordered` does when it
    /// yields part-way through a long list.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    /// Twenty resolvers that yield a different number of times before each of two levels.
    async fn two_levels(loader: Loader) -> HashMap<u32, u32> {
        run_with_batches(move |queue| {
            async move {
                let resolvers = (0..20u32).map(|i| {
                    let (loader, queue) = (loader.clone(), queue.clone());
                    async move {
                        for _ in 0..i {
                            yield_once().await;
                        }
                        let parent = loader.load(&queue, i).await;
                        for _ in 0..(20 - i) {
                            yield_once().await;
                        }
                        (i, loader.load(&queue, 100 + parent).await)
                    }
                });
                join_all(resolvers).await.into_iter().collect()
            }
            .boxed()
        })
        .await
    }

    #[tokio::test]
    async fn one_batch_per_level_even_when_resolvers_yield() {
        let loader = Loader::default();
        let results = two_levels(loader.clone()).await;
        assert_eq!(results[&3], (100 + 30) * 10);
        let batches = loader.batches();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0], (0..20).collect::<Vec<_>>());
        assert_eq!(
            batches[1],
            (0..20).map(|i| 100 + i * 10).collect::<Vec<_>>()
        );
    }

    /// On a runtime without a timer, a batch that waited on one would panic.
    #[test]
    fn batches_wait_on_no_timer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime without time");
        let loader = Loader::default();
        runtime.block_on(two_levels(loader.clone()));
        assert_eq!(loader.batches().len(), 2);
    }
}
