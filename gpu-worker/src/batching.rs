//! Dynamic batching, built from simple parts:
//! - one queue per model, owned behind a short-held mutex;
//! - a bounded admission semaphore: when `max_waiting` inputs are already queued, a new
//!   call fails at once (RESOURCE_EXHAUSTED) instead of growing an unbounded queue;
//! - a scheduler task, woken by a `Notify`, that starts a batch when it is full or when
//!   its oldest input has waited `max_wait`, skipping inputs whose caller went away or
//!   whose deadline passed. Right after a pass it waits a short grace (an eighth of that
//!   pass, at most [`BatchConfig::refill_grace`]) for the callers that pass answered to join those
//!   already waiting: callers in a loop send their next input at once, and a batch started
//!   before they do splits them over two uneven passes, for good;
//! - a model thread that owns the [`Model`] and runs one forward pass at a time, so
//!   the async runtime never blocks on compute. While it computes, the next batch fills;
//! - a watch on each forward pass: one that runs past `forward_deadline` (a model that
//!   loops or hangs) answers its callers and the queue at once, and the model refuses new
//!   inputs (UNAVAILABLE, so the gateway fails over) until that pass returns.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::models::{Model, ModelInput, Output};

/// Batching knobs of one model.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most inputs in one forward pass.
    pub max_batch_size: usize,
    /// Longest time the oldest queued input waits for a batch to fill.
    pub max_wait: Duration,
    /// Most inputs waiting for a forward pass; beyond it calls are refused at once.
    pub max_waiting: usize,
    /// Longest a forward pass may run before the model counts as stuck (not serving).
    pub forward_deadline: Duration,
    /// Longest a partial batch waits, right after a pass, for the callers that pass
    /// answered (the grace is an eighth of the pass, at most this; zero: no grace).
    pub refill_grace: Duration,
}

/// The answer for one input.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Probability of every label in label order, or the predicted values; and the
    /// model's named outputs.
    pub output: Output,
    /// Time from admission to the start of its forward pass.
    pub queue: Duration,
    /// Duration of its forward pass.
    pub compute: Duration,
    /// Inputs in its forward pass.
    pub batch_size: usize,
}

/// Why an input got no prediction.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The queue already holds `max_waiting` inputs.
    #[error("the model's queue is full ({waiting} inputs waiting); retry shortly")]
    QueueFull {
        /// Inputs waiting when the call was refused.
        waiting: usize,
    },
    /// One call carried more inputs than the queue can ever hold.
    #[error("at most {max} inputs per call, got {got}")]
    TooManyInputs {
        /// Inputs in the call.
        got: usize,
        /// The queue's capacity.
        max: usize,
    },
    /// The caller's deadline passed while the input waited.
    #[error("the deadline passed before the input was computed")]
    DeadlineExceeded,
    /// The forward pass failed.
    #[error("forward pass failed: {0}")]
    Model(String),
    /// The model thread is gone.
    #[error("the model is shutting down")]
    Closed,
    /// A forward pass has run past the model's deadline: the model is not serving until
    /// that pass returns.
    #[error(
        "the model is not serving: a forward pass has run {:.1} s, past its deadline of {:.1} s",
        running.as_secs_f64(),
        deadline.as_secs_f64()
    )]
    Stuck {
        /// How long the pass has run.
        running: Duration,
        /// The deadline it passed.
        deadline: Duration,
    },
}

type Reply = oneshot::Sender<Result<Prediction, BatchError>>;

/// Decrements the in-flight gauge when an input is answered or dropped.
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Entry {
    input: ModelInput,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

struct ModelMetrics {
    queue_wait: Histogram,
    compute: Histogram,
    batch_size: Histogram,
    depth: IntGauge,
    in_flight: IntGauge,
    dropped_cancelled: IntCounter,
    dropped_deadline: IntCounter,
    stuck: IntGauge,
    stuck_total: IntCounter,
}

struct Shared {
    queue: Mutex<VecDeque<Entry>>,
    notify: Notify,
    /// Set when the model is unloaded: the scheduler finishes the queue, then stops (and
    /// with it the model thread, which frees the model).
    closed: std::sync::atomic::AtomicBool,
    /// When the forward pass that has run past its deadline started; `None` while the
    /// model is healthy.
    stuck: Mutex<Option<Instant>>,
    admission: Arc<Semaphore>,
    config: BatchConfig,
    metrics: ModelMetrics,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        // A panic while holding this lock cannot leave the deque half-updated.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Stuck` while a pass has run past the deadline.
    fn stuck(&self) -> Option<BatchError> {
        let since = (*self.stuck.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(BatchError::Stuck {
            running: since.elapsed(),
            deadline: self.config.forward_deadline,
        })
    }

    fn set_stuck(&self, since: Option<Instant>) {
        *self.stuck.lock().unwrap_or_else(|p| p.into_inner()) = since;
        self.metrics.stuck.set(i64::from(since.is_some()));
    }
}

struct Job {
    inputs: Vec<ModelInput>,
    reply: oneshot::Sender<(anyhow::Result<Vec<Output>>, Duration)>,
}

/// Cloneable async handle to one model's queue, scheduler and thread.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts the model thread and the scheduler task (call inside a Tokio runtime).
    /// Metrics carry `name` and `version`.
    pub fn start(
        name: &str,
        version: &str,
        model: Box<dyn Model>,
        config: BatchConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let config = BatchConfig {
            max_batch_size: config.max_batch_size.max(1),
            max_waiting: config.max_waiting.max(1),
            ..config
        };
        let (jobs_tx, jobs_rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || model_thread(model, jobs_rx))?;
        let labels = [name, version];
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(config.max_waiting)),
            notify: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            stuck: Mutex::new(None),
            admission: Arc::new(Semaphore::new(config.max_waiting)),
            config,
            metrics: ModelMetrics {
                queue_wait: metrics.queue_wait.with_label_values(&labels),
                compute: metrics.compute.with_label_values(&labels),
                batch_size: metrics.batch_size.with_label_values(&labels),
                depth: metrics.queue_depth.with_label_values(&labels),
                in_flight: metrics.in_flight.clone(),
                dropped_cancelled: metrics
                    .dropped
                    .with_label_values(&[name, version, "cancelled"]),
                dropped_deadline: metrics
                    .dropped
                    .with_label_values(&[name, version, "deadline"]),
                stuck: metrics.stuck.with_label_values(&labels),
                stuck_total: metrics.stuck_total.with_label_values(&labels),
            },
        });
        tokio::spawn(schedule(shared.clone(), jobs_tx));
        Ok(Self { shared })
    }

    /// Queues `inputs` (all or none) and returns one receiver per input, in order.
    /// Fails at once when they do not fit in the queue.
    pub fn submit(
        &self,
        inputs: Vec<ModelInput>,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<Result<Prediction, BatchError>>>, BatchError> {
        let shared = &self.shared;
        let max = shared.config.max_waiting;
        let n = inputs.len();
        if n > max {
            return Err(BatchError::TooManyInputs { got: n, max });
        }
        if let Some(stuck) = shared.stuck() {
            return Err(stuck);
        }
        let Ok(mut permit) = shared.admission.clone().try_acquire_many_owned(n as u32) else {
            return Err(BatchError::QueueFull {
                waiting: shared.queue().len(),
            });
        };
        let mut permits = Vec::with_capacity(n);
        for _ in 1..n {
            permits.extend(permit.split(1));
        }
        permits.push(permit);

        let now = Instant::now();
        let mut receivers = Vec::with_capacity(n);
        let mut queue = shared.queue();
        for (input, permit) in inputs.into_iter().zip(permits) {
            let (reply, rx) = oneshot::channel();
            shared.metrics.in_flight.inc();
            queue.push_back(Entry {
                input,
                enqueued: now,
                deadline,
                reply,
                _permit: permit,
                _in_flight: InFlight(shared.metrics.in_flight.clone()),
            });
            receivers.push(rx);
        }
        shared.metrics.depth.set(queue.len() as i64);
        drop(queue);
        shared.notify.notify_one();
        Ok(receivers)
    }

    /// Inputs waiting for a forward pass.
    pub fn waiting(&self) -> usize {
        self.shared.queue().len()
    }

    /// Whether a forward pass has run past the deadline (the model is not serving).
    pub fn is_stuck(&self) -> bool {
        self.shared.stuck().is_some()
    }

    /// Stops the model once what is queued is computed: the scheduler and the model thread
    /// end, and the model is freed. Call when no new input can arrive.
    pub fn close(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.notify.notify_one();
    }
}

/// What the last pass leaves the next batch to wait for: `expected` inputs (those it
/// answered and those that waited through it), until `until`.
#[derive(Debug, Clone, Copy)]
struct Refill {
    expected: usize,
    until: Instant,
}

impl Refill {
    /// After a pass of `size` inputs that computed for `compute`, answered now, with
    /// `waiting` inputs queued; the grace at most `cap`.
    fn after(size: usize, waiting: usize, compute: Duration, cap: Duration) -> Self {
        Self {
            expected: size + waiting,
            until: Instant::now() + (compute / 8).min(cap),
        }
    }
}

/// When a batch of the `queued` inputs, the oldest enqueued at `oldest`, is due: at once
/// when full; else once the oldest has waited `max_wait` and either the last pass's
/// callers are back (as many inputs queued as it expects) or their grace is over.
fn due_at(config: &BatchConfig, queued: usize, oldest: Instant, refill: Option<Refill>) -> Instant {
    if queued >= config.max_batch_size {
        return oldest;
    }
    let waited = oldest + config.max_wait;
    match refill {
        Some(r) if queued < r.expected.min(config.max_batch_size) => waited.max(r.until),
        _ => waited,
    }
}

/// Waits until a batch is due, then takes up to `max_batch_size` live entries; `None` once
/// the batcher is closed and its queue empty.
async fn next_batch(shared: &Shared, refill: Option<Refill>) -> Option<Vec<Entry>> {
    let config = shared.config;
    loop {
        let due = {
            let mut queue = shared.queue();
            let closed = shared.closed.load(std::sync::atomic::Ordering::SeqCst);
            if queue.is_empty() && closed {
                return None;
            }
            match queue
                .front()
                .map(|e| due_at(&config, queue.len(), e.enqueued, refill.filter(|_| !closed)))
            {
                Some(due) if Instant::now() >= due => {
                    let batch = take_live(shared, &mut queue, config.max_batch_size);
                    shared.metrics.depth.set(queue.len() as i64);
                    if !batch.is_empty() {
                        return Some(batch);
                    }
                    continue;
                }
                other => other,
            }
        };
        match due {
            None => shared.notify.notified().await,
            Some(due) => {
                let _ = tokio::time::timeout_at(due.into(), shared.notify.notified()).await;
            }
        }
    }
}

/// Pops entries from the front, dropping those whose caller went away or whose deadline
/// passed, until `max` live ones are taken or the queue is empty. A batch holds only
/// inputs that batch with its first ([`ModelInput::batches_with`]: tensors of one shape);
/// the others keep their places for a later batch.
fn take_live(shared: &Shared, queue: &mut VecDeque<Entry>, max: usize) -> Vec<Entry> {
    let now = Instant::now();
    let mut batch: Vec<Entry> = Vec::with_capacity(max.min(queue.len()));
    let mut later = Vec::new();
    while batch.len() < max {
        let Some(entry) = queue.pop_front() else {
            break;
        };
        if entry.reply.is_closed() {
            shared.metrics.dropped_cancelled.inc();
        } else if entry.deadline.is_some_and(|d| d <= now) {
            shared.metrics.dropped_deadline.inc();
            let _ = entry.reply.send(Err(BatchError::DeadlineExceeded));
        } else if batch
            .first()
            .is_some_and(|first| !first.input.batches_with(&entry.input))
        {
            later.push(entry);
        } else {
            batch.push(entry);
        }
    }
    for entry in later.into_iter().rev() {
        queue.push_front(entry);
    }
    batch
}

async fn schedule(shared: Arc<Shared>, jobs: mpsc::Sender<Job>) {
    let mut refill = None;
    while let Some(batch) = next_batch(&shared, refill.take()).await {
        let started = Instant::now();
        let mut inputs = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for entry in batch {
            // Dropping the permit here frees a queue slot: the input is no longer waiting.
            let Entry {
                input,
                enqueued,
                reply,
                _in_flight,
                ..
            } = entry;
            let queued = started.duration_since(enqueued);
            shared.metrics.queue_wait.observe(queued.as_secs_f64());
            inputs.push(input);
            waiting.push((reply, queued, _in_flight));
        }
        let size = inputs.len();
        shared.metrics.batch_size.observe(size as f64);

        let (done_tx, done_rx) = oneshot::channel();
        let pass = async {
            match jobs
                .send(Job {
                    inputs,
                    reply: done_tx,
                })
                .await
            {
                Ok(()) => done_rx.await.map_err(|_| BatchError::Closed),
                Err(_) => Err(BatchError::Closed),
            }
        };
        tokio::pin!(pass);
        let deadline = shared.config.forward_deadline;
        let outcome = match tokio::time::timeout(deadline, &mut pass).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The pass may never return (a model that loops): its callers and the
                // queue are answered now, new inputs are refused until it does.
                shared.set_stuck(Some(started));
                shared.metrics.stuck_total.inc();
                let error = shared.stuck().unwrap_or(BatchError::Closed);
                tracing::error!(
                    deadline_ms = deadline.as_millis() as u64,
                    batch = size,
                    "a forward pass ran past its deadline: the model is not serving until it returns"
                );
                for (reply, _, _in_flight) in waiting {
                    let _ = reply.send(Err(error.clone()));
                }
                let queued: Vec<Entry> = shared.queue().drain(..).collect();
                shared.metrics.depth.set(0);
                for entry in queued {
                    let _ = entry.reply.send(Err(error.clone()));
                }
                let _ = pass.await;
                shared.set_stuck(None);
                tracing::warn!(
                    ran_ms = started.elapsed().as_millis() as u64,
                    "the forward pass that ran past its deadline returned: serving again"
                );
                continue;
            }
        };
        let (outputs, compute) = match outcome {
            Ok((Ok(out), compute)) if out.len() == size => (Ok(out), compute),
            Ok((Ok(out), compute)) => (
                Err(BatchError::Model(format!(
                    "{} outputs for {size} inputs",
                    out.len()
                ))),
                compute,
            ),
            Ok((Err(e), compute)) => (Err(BatchError::Model(format!("{e:#}"))), compute),
            Err(e) => (Err(e), Duration::ZERO),
        };
        shared.metrics.compute.observe(compute.as_secs_f64());
        refill = Some(Refill::after(
            size,
            shared.queue().len(),
            compute,
            shared.config.refill_grace,
        ));
        match outputs {
            Ok(out) => {
                for ((reply, queue, _in_flight), output) in waiting.into_iter().zip(out) {
                    let _ = reply.send(Ok(Prediction {
                        output,
                        queue,
                        compute,
                        batch_size: size,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = size, "batch failed");
                for (reply, _, _in_flight) in waiting {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn model_thread(mut model: Box<dyn Model>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(&job.inputs)))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the forward pass panicked")));
        let _ = job.reply.send((result, started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns each input's first feature as the probability of label 0, and records
    /// batch sizes; optionally sleeps to keep a batch busy.
    struct Echo {
        sizes: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl Model for Echo {
        fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
            self.sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(inputs.len());
            std::thread::sleep(self.delay);
            Ok(inputs
                .iter()
                .map(|i| match i {
                    ModelInput::Features(f) => vec![f[0], 1.0 - f[0]],
                    ModelInput::Tokens(_) => vec![0.5, 0.5],
                    ModelInput::Tensors(t) => vec![t[0].shape[1] as f32, 0.0],
                })
                .map(Output::from)
                .collect())
        }
    }

    fn batcher(config: BatchConfig, delay: Duration) -> (Batcher, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let metrics = Metrics::new().expect("metrics");
        let echo = Echo {
            sizes: sizes.clone(),
            delay,
        };
        let b = Batcher::start("echo", "1", Box::new(echo), config, &metrics).expect("start");
        (b, sizes)
    }

    /// The refill grace's cap the tests run with (the worker's default).
    const GRACE: Duration = Duration::from_millis(10);

    fn input(x: f32) -> ModelInput {
        ModelInput::Features(vec![x])
    }

    #[tokio::test]
    async fn full_batch_runs_without_waiting_and_keeps_order() {
        let (b, sizes) = batcher(
            BatchConfig {
                max_batch_size: 4,
                max_wait: Duration::from_secs(30),
                max_waiting: 16,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            Duration::ZERO,
        );
        let rxs = b
            .submit((0..4).map(|i| input(i as f32 / 10.0)).collect(), None)
            .expect("admitted");
        for (i, rx) in rxs.into_iter().enumerate() {
            let p = rx.await.expect("answered").expect("ok");
            assert_eq!(p.output.row[0], i as f32 / 10.0);
            assert_eq!(p.batch_size, 4);
        }
        assert_eq!(*sizes.lock().expect("lock"), vec![4]);
    }

    #[tokio::test]
    async fn partial_batch_runs_after_max_wait() {
        let (b, _) = batcher(
            BatchConfig {
                max_batch_size: 8,
                max_wait: Duration::from_millis(20),
                max_waiting: 16,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            Duration::ZERO,
        );
        let rx = b.submit(vec![input(0.3)], None).expect("admitted");
        let p = tokio::time::timeout(Duration::from_secs(5), rx.into_iter().next().expect("rx"))
            .await
            .expect("not stuck")
            .expect("answered")
            .expect("ok");
        assert_eq!(p.batch_size, 1);
        assert!(p.queue >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once_and_frees_slots() {
        let (b, _) = batcher(
            BatchConfig {
                max_batch_size: 8,
                max_wait: Duration::from_millis(200),
                max_waiting: 3,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            Duration::ZERO,
        );
        let first = b.submit(vec![input(0.1), input(0.2)], None).expect("fits");
        assert!(matches!(
            b.submit(vec![input(0.3), input(0.4)], None),
            Err(BatchError::QueueFull { waiting: 2 })
        ));
        assert!(matches!(
            b.submit(vec![input(0.0); 4], None),
            Err(BatchError::TooManyInputs { got: 4, max: 3 })
        ));
        for rx in first {
            rx.await.expect("answered").expect("ok");
        }
        assert!(b.submit(vec![input(0.5); 3], None).is_ok());
    }

    /// A pass that outlasts the deadline answers its inputs and the queue with `Stuck`,
    /// the model refuses new inputs while it runs, and serves again once it returns.
    #[tokio::test]
    async fn a_pass_past_the_forward_deadline_stops_the_model_until_it_returns() {
        let (b, _) = batcher(
            BatchConfig {
                max_batch_size: 1,
                max_wait: Duration::ZERO,
                max_waiting: 16,
                forward_deadline: Duration::from_millis(100),
                refill_grace: GRACE,
            },
            Duration::from_millis(600),
        );
        let started = Instant::now();
        let first = b.submit(vec![input(0.1)], None).expect("admitted");
        let queued = b.submit(vec![input(0.2)], None).expect("admitted");
        for rx in first.into_iter().chain(queued) {
            let answer = rx.await.expect("answered");
            assert!(
                matches!(answer, Err(BatchError::Stuck { .. })),
                "{answer:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(b.is_stuck());
        assert!(matches!(
            b.submit(vec![input(0.3)], None),
            Err(BatchError::Stuck { .. })
        ));
        // The pass returns after 600 ms; then the model serves (each pass now takes 600 ms
        // too, past the deadline again, so only the refusal is over).
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!b.is_stuck());
        assert!(b.submit(vec![input(0.4)], None).is_ok());
    }

    #[tokio::test]
    async fn cancelled_and_expired_inputs_are_not_computed() {
        let (b, sizes) = batcher(
            BatchConfig {
                max_batch_size: 8,
                max_wait: Duration::from_millis(50),
                max_waiting: 16,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            Duration::ZERO,
        );
        let cancelled = b.submit(vec![input(0.1)], None).expect("admitted");
        drop(cancelled);
        let expired = b
            .submit(vec![input(0.2)], Some(Instant::now()))
            .expect("admitted");
        let live = b.submit(vec![input(0.3)], None).expect("admitted");
        let p = live
            .into_iter()
            .next()
            .expect("rx")
            .await
            .expect("answered")
            .expect("ok");
        assert_eq!(p.batch_size, 1);
        let e = expired
            .into_iter()
            .next()
            .expect("rx")
            .await
            .expect("answered");
        assert!(matches!(e, Err(BatchError::DeadlineExceeded)));
        assert_eq!(*sizes.lock().expect("lock"), vec![1]);
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn a_partial_batch_waits_for_the_last_pass_callers_only_within_the_grace() {
        let config = BatchConfig {
            max_batch_size: 8,
            max_wait: Duration::ZERO,
            max_waiting: 64,
            forward_deadline: Duration::from_secs(60),
            refill_grace: GRACE,
        };
        let oldest = Instant::now();
        let until = oldest + Duration::from_millis(5);
        let refill = Some(Refill { expected: 6, until });
        // Full: at once, whatever the last pass answered.
        assert_eq!(due_at(&config, 8, oldest, refill), oldest);
        // Fewer than the last pass expects: until the grace ends.
        assert_eq!(due_at(&config, 5, oldest, refill), until);
        // As many as it expects (or no pass before): at once.
        assert_eq!(due_at(&config, 6, oldest, refill), oldest);
        assert_eq!(due_at(&config, 1, oldest, None), oldest);
        // A last pass larger than a batch waits only for a full batch.
        let big = Some(Refill {
            expected: 40,
            until,
        });
        assert_eq!(due_at(&config, 7, oldest, big), until);
        // max_wait still applies when it ends later than the grace.
        let patient = BatchConfig {
            max_wait: Duration::from_millis(20),
            ..config
        };
        assert_eq!(
            due_at(&patient, 5, oldest, refill),
            oldest + Duration::from_millis(20)
        );
        // The grace is an eighth of the pass, capped.
        let r = Refill::after(3, 2, Duration::from_millis(8), GRACE);
        assert_eq!(r.expected, 5);
        assert!(r.until <= Instant::now() + Duration::from_millis(1));
        let r = Refill::after(3, 0, Duration::from_secs(10), GRACE);
        assert!(r.until <= Instant::now() + GRACE);
        // Zero turns the grace off.
        let r = Refill::after(3, 0, Duration::from_secs(10), Duration::ZERO);
        assert!(r.until <= Instant::now());
    }

    /// Callers in a loop that come back a little apart after a pass still share one batch,
    /// instead of the first to return starting a pass of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_in_a_loop_keep_their_batch_together() {
        let (b, sizes) = batcher(
            BatchConfig {
                max_batch_size: 8,
                max_wait: Duration::ZERO,
                max_waiting: 64,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            // An eighth of this is past the grace's cap: the callers have all of it.
            Duration::from_millis(120),
        );
        let callers: Vec<_> = (0..8u64)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        let rx = b.submit(vec![input(0.5)], None).expect("admitted");
                        rx.into_iter()
                            .next()
                            .expect("rx")
                            .await
                            .expect("answered")
                            .expect("ok");
                        // Half the callers think for a millisecond before their next input.
                        if i % 2 == 1 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                })
            })
            .collect();
        for c in callers {
            c.await.expect("caller");
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        // The first batch may start before every caller has submitted, splitting them
        // (and the last then holds those the split left behind); every pass between waits
        // for the callers the last one answered to join those waiting, and is full.
        let between = &sizes[1..sizes.len() - 1];
        assert!(
            !between.is_empty() && between.iter().all(|&n| n == 8),
            "{sizes:?}"
        );
    }

    #[tokio::test]
    async fn tensors_of_other_shapes_wait_for_a_batch_of_their_own() {
        let (b, sizes) = batcher(
            BatchConfig {
                max_batch_size: 8,
                max_wait: Duration::from_millis(20),
                max_waiting: 16,
                forward_deadline: Duration::from_secs(60),
                refill_grace: GRACE,
            },
            Duration::ZERO,
        );
        let sequence = |len: i64| {
            ModelInput::Tensors(vec![inferencehub_proto::pb::Tensor {
                name: "ids".into(),
                datatype: "INT64".into(),
                shape: vec![1, len],
                raw_contents: vec![0; 8 * len as usize],
                bytes_contents: Vec::new(),
            }])
        };
        let rxs = b
            .submit(
                vec![
                    sequence(3),
                    sequence(5),
                    sequence(3),
                    sequence(5),
                    sequence(3),
                ],
                None,
            )
            .expect("admitted");
        let mut seen = Vec::new();
        for rx in rxs {
            let p = rx.await.expect("answered").expect("ok");
            seen.push((p.output.row[0], p.batch_size));
        }
        // In input order, each computed only with inputs of its own length.
        assert_eq!(seen, [(3.0, 3), (5.0, 2), (3.0, 3), (5.0, 2), (3.0, 3)]);
        let mut sizes = sizes.lock().expect("lock").clone();
        sizes.sort_unstable();
        assert_eq!(sizes, [2, 3]);
    }
}
