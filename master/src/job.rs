//! [`Job`]: the state a master serves, the engine plus everything around it: the lease table, the
//! registered workers, the artifact store, and the signals the services wait on.
//!
//! All mutable state sits behind one `std::sync::Mutex` that is held only for bookkeeping (never
//! across an await or I/O): a result costs a map lookup, the engine's fold, and a few counters.
//! Checkpoint bytes are produced under the lock only when the state changed, and written outside
//! it by the checkpointer (see `server`).
//!
//! What peers can make the master hold is bounded: at most `runtime.max_workers` registrations
//! (RESOURCE_EXHAUSTED beyond), each forgotten when not seen (no lease, heartbeat or report) for
//! `FORGET_AFTER_LEASES` lease periods; client strings are quoted in status messages through
//! `ccsrp_proto::quote`, cut to a few hundred bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccsrp_proto::quote::{clip, quote};
use ccsrp_proto::v1::{self, LeaseState};
use tokio::sync::{broadcast, watch, Notify};
use tonic::Status;

use crate::artifact_store::ArtifactStore;
use crate::job_config::JobConfig;
use crate::lease::{LeaseTable, Stale};
use crate::outcome::NetworkRecord;
use crate::peer_log::PeerLog;
use crate::{wire, Engine, Phase, Steps, Told};

/// Shards a worker is remembered to hold (most recent first), for lease affinity.
const AFFINITY_SHARDS: usize = 4;

/// Most tasks one lease call may take.
pub const MAX_TASKS_PER_LEASE: u32 = 64;

/// Most task ids one heartbeat may name.
pub const MAX_HEARTBEAT_TASKS: usize = 4096;

/// Longest task id the master issues is far shorter; a longer one is refused, never echoed.
pub const MAX_TASK_ID_BYTES: usize = 256;

/// What the worker-facing settings of the job are (sent on registration).
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub name: String,
    pub backend: &'static str,
    /// The results' energy estimate (`[energy]`).
    pub energy: ccsrp_proto::energy::EnergyModel,
    pub dataset: v1::DatasetSpec,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub max_artifact_bytes: u64,
    /// An upload idle this long is cancelled.
    pub upload_idle: Duration,
    /// Uploads in progress at once, in total and per connection.
    pub max_uploads: u32,
    pub max_uploads_per_connection: u32,
    /// Workers registered at once.
    pub max_workers: u32,
    /// A worker unseen this long is forgotten.
    pub forget_workers_after: Duration,
    /// Fingerprint of the job file (checkpoints are tied to it).
    pub fingerprint: String,
    /// Failures of one task that fail the job.
    pub max_task_failures: u32,
    /// (outer iterations, generations per iteration), for the progress in steps.
    pub evolution: (u32, u32),
    /// The job file the job was read from, if any.
    pub job_file: Option<crate::job_config::JobFile>,
}

impl JobSettings {
    /// The settings of `config`.
    pub fn of(config: &JobConfig) -> JobSettings {
        let d = &config.data;
        JobSettings {
            name: config.job.name.clone(),
            backend: config.job.backend.as_str(),
            energy: config.energy,
            dataset: v1::DatasetSpec {
                kind: d.kind.clone(),
                data_dir: d.data_dir.clone(),
                eval_size: d.eval_size,
                eval_shards: d.eval_shards,
                val_size: d.val_size,
                train_limit: d.train_limit,
                test_limit: d.test_limit,
                seed: config.job.seed,
            },
            lease: config.runtime.lease(),
            heartbeat: config.runtime.heartbeat(),
            max_artifact_bytes: config.runtime.max_artifact_bytes(),
            upload_idle: config.runtime.upload_idle(),
            max_uploads: config.runtime.max_uploads,
            max_uploads_per_connection: config.runtime.max_uploads_per_connection,
            max_workers: config.runtime.max_workers,
            forget_workers_after: config.runtime.forget_workers_after(),
            fingerprint: config.fingerprint(),
            max_task_failures: config.runtime.max_task_failures,
            evolution: (config.evolution.iterations, config.evolution.generations),
            job_file: config.file.clone(),
        }
    }
}

#[derive(Debug)]
struct WorkerInfo {
    /// Seen until then: the last call, or the end of the long poll it is waiting in.
    seen_until: Instant,
    /// Has leased, heartbeaten or reported (a registration alone does not make a worker alive).
    active: bool,
    recent_shards: VecDeque<u32>,
}

impl WorkerInfo {
    fn seen(&mut self, until: Instant) {
        self.seen_until = self.seen_until.max(until);
        self.active = true;
    }
}

struct State {
    engine: Engine,
    leases: LeaseTable,
    workers: HashMap<Arc<str>, WorkerInfo>,
    /// Changed since the last checkpoint was encoded.
    dirty: bool,
    /// (phase, iteration, generation) at the last event.
    position: (Phase, u32, u32),
    /// The dense network's test point, once seen.
    dense: Option<v1::NetworkPoint>,
    /// Failures reported per task since this master started (the reasons, oldest first).
    failures: HashMap<crate::WorkId, Vec<String>>,
    /// Set when one task failed `max_task_failures` times: the job is over, unfinished.
    failed: Option<JobFailure>,
    /// When the current phase began (as this master saw it), and the wall time of each phase so
    /// far, in order of first appearance.
    phase_since: Instant,
    phase_seconds: Vec<(&'static str, f64)>,
    /// The first and the last step boundary this master saw (time, steps done), for the estimate
    /// of the time left.
    first_boundary: Option<(Instant, u32)>,
    last_boundary: Option<(Instant, u32)>,
}

impl State {
    /// Marks a registered worker seen at `now`; NOT_REGISTERED (FAILED_PRECONDITION) for one
    /// this master does not know.
    fn mark_seen(&mut self, worker_id: &str, now: Instant) -> Result<(), Status> {
        match self.workers.get_mut(worker_id) {
            Some(info) => {
                info.seen(now);
                Ok(())
            }
            None => Err(not_registered(worker_id)),
        }
    }
}

/// Why a job failed: one task failed `runtime.max_task_failures` times (written to `failed.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobFailure {
    pub task_id: String,
    /// What each failing worker said, oldest first (quoted, cut short).
    pub reasons: Vec<String>,
}

impl JobFailure {
    /// The reasons without repeats, in the order first given.
    pub fn distinct_reasons(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for r in &self.reasons {
            if !seen.contains(&r.as_str()) {
                seen.push(r);
            }
        }
        seen
    }
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task {} failed {} times; last reason: {}",
            self.task_id,
            self.reasons.len(),
            self.reasons.last().map_or("none given", String::as_str)
        )
    }
}

/// A worker's failure reason as kept and shown: as sent when it is short, printable text (the
/// worker quotes it already), else quoted and cut by the master.
fn failure_reason(reason: &str) -> String {
    if reason.len() <= 2 * ccsrp_proto::quote::QUOTE_BYTES && !reason.chars().any(char::is_control)
    {
        reason.to_string()
    } else {
        quote(reason)
    }
}

/// How a result was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Accepted,
    /// A failure report, counted; `Some` when it failed the job.
    Failed(Option<JobFailure>),
    /// Stale result, dropped (logged by the caller with the reason).
    Dropped(Stale),
}

/// The answer to a lease call that found no task.
#[derive(Debug)]
pub enum Leased {
    Tasks(Vec<v1::Task>),
    NoWorkYet,
    JobDone,
}

/// A served job.
pub struct Job {
    settings: JobSettings,
    state: Mutex<State>,
    store: ArtifactStore,
    /// Woken when tasks become ready (new items, expired leases) or the job ends.
    work_ready: Notify,
    /// Bumped on every accepted result, for progress streams.
    progress: watch::Sender<u64>,
    /// Notable happenings (phase, generation, iteration changes), for `Events`.
    events: broadcast::Sender<String>,
    accepted: AtomicU64,
    dropped: AtomicU64,
    /// Rate limits of log lines about what peers do.
    peer_log: Arc<PeerLog>,
    /// When this master started serving the job.
    started: Instant,
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Pretraining => "training dense",
        Phase::Adversarial => "adversarial set",
        Phase::Evolving => "coevolution",
        Phase::FineTuning => "fine-tuning",
        Phase::Testing => "testing",
        Phase::Done => "done",
    }
}

fn network_point(r: &NetworkRecord) -> v1::NetworkPoint {
    let kept: Vec<u32> = r.kept_filters.iter().map(|k| k.len() as u32).collect();
    v1::NetworkPoint {
        iteration: r.iteration,
        test_samples: r.test.samples,
        clean_correct: r.test.clean,
        fgsm_correct: r.test.fgsm,
        pgd_correct: r.test.pgd,
        val_samples: r.validation.samples,
        val_clean_correct: r.validation.clean,
        val_fgsm_correct: r.validation.fgsm,
        val_pgd_correct: r.validation.pgd,
        macs: r.macs,
        parameters: ccsrp_proto::cost::parameters(&r.description, &kept).unwrap_or(0),
        kept,
        model: r.model.0.clone(),
        val_clean_percent: percent(r.validation.clean, r.validation.samples),
        val_fgsm_percent: percent(r.validation.fgsm, r.validation.samples),
        val_pgd_percent: percent(r.validation.pgd, r.validation.samples),
        clean_percent: percent(r.test.clean, r.test.samples),
        fgsm_percent: percent(r.test.fgsm, r.test.samples),
        pgd_percent: percent(r.test.pgd, r.test.samples),
    }
}

/// `value` rounded to `decimals` decimal places (for numbers people read; scripts read counts).
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `count / samples` in percent, rounded to 0.01 (0 when there are no samples).
pub fn percent(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        round_to(100.0 * count as f64 / samples as f64, 2)
    }
}

/// Each layer's representative in the engine's current generation.
fn generation_best(engine: &Engine) -> Vec<v1::LayerBest> {
    engine
        .fronts()
        .into_iter()
        .filter_map(|f| {
            let best = f.members.iter().find(|m| m.id == f.representative)?;
            let fit = &best.fitness;
            Some(v1::LayerBest {
                layer: f.layer,
                kept: best.mask.kept(),
                filters: best.mask.filters,
                clean: fit.clean,
                adversarial: fit.adversarial,
                samples: fit.samples,
                macs: fit.macs,
                clean_percent: percent(fit.clean, fit.samples),
                adversarial_percent: percent(fit.adversarial, fit.samples),
            })
        })
        .collect()
}

/// Milliseconds since the Unix epoch (for event time stamps).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Job {
    /// A job serving `engine` (fresh or resumed): every outstanding item is queued for leasing.
    pub fn new(settings: JobSettings, mut engine: Engine, store: ArtifactStore) -> Job {
        let mut leases = LeaseTable::new(settings.lease);
        for item in engine.outstanding() {
            leases.add(item);
        }
        for item in engine.ask() {
            leases.add(item);
        }
        let p = engine.progress();
        let (events, _) = broadcast::channel(256);
        Job {
            settings,
            state: Mutex::new(State {
                engine,
                leases,
                workers: HashMap::new(),
                dirty: false,
                position: (p.phase, p.iteration, p.generation),
                dense: p
                    .best
                    .as_ref()
                    .filter(|b| b.iteration == 0)
                    .map(network_point),
                failures: HashMap::new(),
                failed: None,
                phase_since: Instant::now(),
                phase_seconds: Vec::new(),
                first_boundary: None,
                last_boundary: None,
            }),
            store,
            work_ready: Notify::new(),
            progress: watch::channel(0).0,
            events,
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            peer_log: Arc::new(PeerLog::default()),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    /// The rate limits of log lines about peers (shared with the token check).
    pub fn peer_log(&self) -> &Arc<PeerLog> {
        &self.peer_log
    }

    /// Handles a registration: checks protocol version, backend and worker id, and that a new
    /// worker fits under `runtime.max_workers` (after forgetting the workers not seen lately).
    pub fn register(&self, req: &v1::RegisterRequest) -> Result<v1::RegisterReply, Status> {
        if req.protocol_version != ccsrp_proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol_version {}: this master speaks ccsrp.v1 protocol version {}",
                req.protocol_version,
                ccsrp_proto::PROTOCOL_VERSION
            )));
        }
        if req.backend != self.settings.backend {
            return Err(Status::failed_precondition(format!(
                "backend {}: this job is pinned to backend {:?} (results must not depend on the worker)",
                quote(&req.backend),
                self.settings.backend
            )));
        }
        let worker = parse_worker_id(&req.worker_id)?;
        let now = Instant::now();
        let mut st = self.lock();
        let max = self.settings.max_workers as usize;
        if !st.workers.contains_key(&worker) && st.workers.len() >= max {
            let forgotten = self.forget_stale_locked(&mut st, now);
            if forgotten > 0 {
                tracing::info!(forgotten, "workers not seen lately forgotten");
            }
            if st.workers.len() >= max {
                return Err(Status::resource_exhausted(format!(
                    "{} workers are registered, the most this master takes (runtime.max_workers = {max}); a worker not seen for {} s is forgotten: retry later",
                    st.workers.len(),
                    self.settings.forget_workers_after.as_secs_f64()
                )));
            }
        }
        st.workers.insert(
            worker,
            WorkerInfo {
                seen_until: now,
                active: false,
                recent_shards: VecDeque::new(),
            },
        );
        drop(st);
        Ok(v1::RegisterReply {
            protocol_version: ccsrp_proto::PROTOCOL_VERSION,
            job_name: self.settings.name.clone(),
            backend: self.settings.backend.to_string(),
            dataset: Some(self.settings.dataset.clone()),
            lease_ms: self.settings.lease.as_millis() as u64,
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
        })
    }

    /// Leases up to `max_tasks` tasks to a registered worker without waiting; the worker counts as
    /// seen until `poll_until` (the end of the long poll it waits in).
    pub fn try_lease(
        &self,
        worker_id: &str,
        max_tasks: u32,
        poll_until: Instant,
    ) -> Result<Leased, Status> {
        let now = Instant::now();
        let max = max_tasks.clamp(1, MAX_TASKS_PER_LEASE) as usize;
        let lease_ms = self.settings.lease.as_millis() as u64;
        let mut st = self.lock();
        let st = &mut *st;
        if st.engine.is_done() || st.failed.is_some() {
            return Ok(Leased::JobDone);
        }
        let Some(worker) = st.workers.get_key_value(worker_id).map(|(k, _)| k.clone()) else {
            return Err(not_registered(worker_id));
        };
        let Some(info) = st.workers.get_mut(worker_id) else {
            return Err(not_registered(worker_id));
        };
        info.seen(now.max(poll_until));
        let affinity: Vec<u32> = info.recent_shards.iter().copied().collect();
        let grants = st.leases.lease(&worker, max, &affinity, now);
        if grants.is_empty() {
            return Ok(Leased::NoWorkYet);
        }
        let mut tasks = Vec::with_capacity(grants.len());
        for g in &grants {
            if let Some(shard) = crate::lease::shard_of(&g.item.kind) {
                if !info.recent_shards.contains(&shard) {
                    info.recent_shards.push_front(shard);
                    info.recent_shards.truncate(AFFINITY_SHARDS);
                }
            }
            tasks.push(wire::task(&g.item, g.attempt, lease_ms));
        }
        Ok(Leased::Tasks(tasks))
    }

    /// A future that resolves when tasks may have become ready; create it before [`Job::try_lease`]
    /// so that no wake-up is missed.
    pub fn work_ready(&self) -> tokio::sync::futures::Notified<'_> {
        self.work_ready.notified()
    }

    /// Folds one result in. Stale results are dropped (Ok(Dropped)); malformed ones are
    /// INVALID_ARGUMENT, ones naming artifacts the store lacks FAILED_PRECONDITION; neither
    /// changes the job.
    pub fn report(&self, worker_id: &str, result: &v1::TaskResult) -> Result<Taken, Status> {
        if result.worker_id != worker_id {
            return Err(Status::invalid_argument(format!(
                "task {}: result names worker {}, the stream belongs to {}",
                quote(&result.task_id),
                quote(&result.worker_id),
                quote(worker_id)
            )));
        }
        if result.task_id.len() > MAX_TASK_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "task_id {}: longer than any task id this master issues ({MAX_TASK_ID_BYTES} bytes)",
                quote(&result.task_id)
            )));
        }
        if let Some(v1::task_result::Outcome::Failed(failure)) = &result.outcome {
            return self.report_failure(worker_id, result, &failure.reason);
        }
        let work = wire::work_result(result)
            .map_err(|e| Status::invalid_argument(clip(&e.to_string())))?;
        for name in wire::referenced_artifacts(&work.output) {
            if !self.store.contains(name) {
                return Err(Status::failed_precondition(format!(
                    "task {}: artifact {name} is not in the master's store: upload it with PutArtifact before reporting",
                    result.task_id
                )));
            }
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.mark_seen(worker_id, now)?;
        if let Err(stale) = st.leases.check_result(worker_id, &work.id, result.attempt) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(Taken::Dropped(stale));
        }
        let id = work.id.clone();
        match st.engine.tell(work) {
            Ok(Told::Accepted) => {}
            Ok(Told::Duplicate) => {
                st.leases.complete(&id);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(Taken::Dropped(Stale::Duplicate));
            }
            Err(e) => return Err(Status::invalid_argument(clip(&e.to_string()))),
        }
        st.leases.complete(&id);
        let new_items = st.engine.ask();
        let woke = !new_items.is_empty() || st.engine.is_done();
        for item in new_items {
            st.leases.add(item);
        }
        st.dirty = true;
        let position = st.engine.position();
        let moved = position != st.position;
        if moved {
            self.note_move_locked(st, position, now);
        }
        st.position = position;
        if moved && st.dense.is_none() {
            st.dense = st
                .engine
                .best()
                .filter(|b| b.iteration == 0)
                .map(network_point);
        }
        drop(guard);
        let (phase, iteration, generation) = position;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if woke {
            self.work_ready.notify_waiters();
        }
        if moved {
            let msg = if phase == Phase::Done {
                "job done".to_string()
            } else {
                format!(
                    "{}: iteration {iteration} generation {generation}",
                    phase_name(phase)
                )
            };
            tracing::info!(
                phase = phase_name(phase),
                iteration,
                generation,
                "job progressed"
            );
            let _ = self.events.send(msg);
        }
        self.progress.send_modify(|n| *n += 1);
        Ok(Taken::Accepted)
    }

    /// Counts a worker's failure of the task it holds and re-queues the task at once; the
    /// `max_task_failures`-th failure of one task fails the job. A failure of a task the worker
    /// no longer holds is dropped like a late result.
    fn report_failure(
        &self,
        worker_id: &str,
        result: &v1::TaskResult,
        reason: &str,
    ) -> Result<Taken, Status> {
        let id = crate::WorkId(result.task_id.clone());
        let reason = failure_reason(reason);
        let now = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.mark_seen(worker_id, now)?;
        if st.failed.is_some() {
            return Ok(Taken::Failed(None));
        }
        if let Err(stale) = st.leases.check_result(worker_id, &id, result.attempt) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(Taken::Dropped(stale));
        }
        st.leases.release(&id);
        let reasons = st.failures.entry(id.clone()).or_default();
        reasons.push(reason.clone());
        let count = reasons.len();
        let failed = (count >= self.settings.max_task_failures as usize).then(|| JobFailure {
            task_id: id.0.clone(),
            reasons: reasons.clone(),
        });
        st.failed.clone_from(&failed);
        drop(guard);
        tracing::warn!(task_id = %id, worker_id = %quote(worker_id), failures = count, reason = %reason, "task failed on a worker");
        let message = match &failed {
            Some(f) => {
                tracing::error!(failure = %f, "job failed");
                format!("job failed: {f}")
            }
            None => format!(
                "task {id} failed ({count} of {}): {reason}",
                self.settings.max_task_failures
            ),
        };
        self.work_ready.notify_waiters();
        let _ = self.events.send(message);
        self.progress.send_modify(|n| *n += 1);
        Ok(Taken::Failed(failed))
    }

    /// Books the wall time of the phase that ended and the step boundary crossed when the engine
    /// moves from `st.position` to `position`.
    fn note_move_locked(&self, st: &mut State, position: (Phase, u32, u32), now: Instant) {
        let before = st.position.0;
        if position.0 != before {
            let seconds = now.saturating_duration_since(st.phase_since).as_secs_f64();
            let name = phase_name(before);
            match st.phase_seconds.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s += seconds,
                None => st.phase_seconds.push((name, seconds)),
            }
            st.phase_since = now;
        }
        let steps = self.steps_of(position);
        if st.last_boundary.is_none_or(|(_, done)| done != steps.done) {
            st.first_boundary.get_or_insert((now, steps.done));
            st.last_boundary = Some((now, steps.done));
        }
    }

    fn steps_of(&self, (phase, iteration, generation): (Phase, u32, u32)) -> Steps {
        let evo = &self.settings.evolution;
        Steps::of(phase, iteration, generation, evo.0, evo.1)
    }

    /// Wall time of each phase so far as this master saw it (seconds, in order of first
    /// appearance; the phase in progress included). A resumed job counts from the restart.
    pub fn phase_seconds(&self) -> Vec<(String, f64)> {
        let st = self.lock();
        let mut out: Vec<(String, f64)> = st
            .phase_seconds
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect();
        let current = st.position.0;
        if current != Phase::Done {
            let name = phase_name(current);
            let seconds = st.phase_since.elapsed().as_secs_f64();
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => *s += seconds,
                None => out.push((name.to_string(), seconds)),
            }
        }
        out
    }

    /// Seconds since this master started serving the job.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Why the job failed, once it did.
    pub fn failure(&self) -> Option<JobFailure> {
        self.lock().failed.clone()
    }

    /// Extends the worker's leases of `task_ids`; returns those it no longer holds.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        task_ids: &[String],
    ) -> Result<v1::HeartbeatReply, Status> {
        if task_ids.len() > MAX_HEARTBEAT_TASKS {
            return Err(Status::invalid_argument(format!(
                "task_ids: {} ids, at most {MAX_HEARTBEAT_TASKS} per heartbeat",
                task_ids.len()
            )));
        }
        if let Some(long) = task_ids.iter().find(|id| id.len() > MAX_TASK_ID_BYTES) {
            return Err(Status::invalid_argument(format!(
                "task_ids: {}: longer than any task id this master issues ({MAX_TASK_ID_BYTES} bytes)",
                quote(long)
            )));
        }
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        st.mark_seen(worker_id, now)?;
        let lost_task_ids = task_ids
            .iter()
            .filter(|id| {
                !st.leases
                    .extend(worker_id, &crate::WorkId((*id).clone()), now)
            })
            .cloned()
            .collect();
        Ok(v1::HeartbeatReply {
            lost_task_ids,
            job_done: st.engine.is_done() || st.failed.is_some(),
        })
    }

    /// Re-queues every expired lease (waking waiting workers) and returns the next deadline.
    pub fn expire_leases(&self) -> Option<Instant> {
        let mut st = self.lock();
        let expired = st.leases.expire(Instant::now());
        let next = st.leases.next_deadline();
        drop(st);
        for (task_id, worker_id) in &expired {
            tracing::warn!(task_id = %task_id, worker_id = %worker_id, "lease expired: task re-issued");
        }
        if !expired.is_empty() {
            self.work_ready.notify_waiters();
        }
        next
    }

    /// Forgets every registration not seen for `runtime.lease_seconds` x
    /// [`crate::job_config::FORGET_AFTER_LEASES`] at `now`; returns how many.
    pub fn forget_stale_workers(&self, now: Instant) -> usize {
        let mut st = self.lock();
        self.forget_stale_locked(&mut st, now)
    }

    fn forget_stale_locked(&self, st: &mut State, now: Instant) -> usize {
        let before = st.workers.len();
        let after = self.settings.forget_workers_after;
        st.workers
            .retain(|_, w| now.saturating_duration_since(w.seen_until) <= after);
        before - st.workers.len()
    }

    /// Workers registered now (alive or not yet forgotten).
    pub fn registered_workers(&self) -> usize {
        self.lock().workers.len()
    }

    /// Workers alive at `now`: leased, heartbeaten or reported within a lease period (a worker
    /// waiting in a long poll counts until the poll ends).
    pub fn workers_alive(&self, now: Instant) -> usize {
        let st = self.lock();
        self.alive_locked(&st, now)
    }

    fn alive_locked(&self, st: &State, now: Instant) -> usize {
        st.workers
            .values()
            .filter(|w| {
                w.active && now.saturating_duration_since(w.seen_until) <= self.settings.lease
            })
            .count()
    }

    /// Whether the engine reached its answer.
    pub fn is_done(&self) -> bool {
        self.lock().engine.is_done()
    }

    /// Whether the job is over: done, or failed.
    pub fn is_over(&self) -> bool {
        let st = self.lock();
        st.engine.is_done() || st.failed.is_some()
    }

    /// Wakes every long poll (on shutdown).
    pub fn wake_all(&self) {
        self.work_ready.notify_waiters();
    }

    /// A snapshot of the job's progress.
    pub fn status(&self) -> v1::JobStatus {
        let now = Instant::now();
        let st = self.lock();
        let p = st.engine.progress();
        let evo = &st.engine.spec().config.evolution;
        let alive = self.alive_locked(&st, now);
        let steps = self.steps_of((p.phase, p.iteration, p.generation));
        let remaining_seconds = match (st.first_boundary, st.last_boundary) {
            (Some((t0, d0)), Some((t1, d1))) if d1 > d0 && p.phase != Phase::Done => {
                let per_step = t1.saturating_duration_since(t0).as_secs_f64() / f64::from(d1 - d0);
                Some(per_step * f64::from(steps.total - steps.done))
            }
            _ if p.phase == Phase::Done => Some(0.0),
            _ => None,
        };
        v1::JobStatus {
            job_name: self.settings.name.clone(),
            phase: if st.failed.is_some() {
                "failed"
            } else {
                phase_name(p.phase)
            }
            .to_string(),
            iteration: p.iteration,
            iterations: evo.iterations,
            generation: p.generation,
            generations: evo.generations,
            tasks_done: p.items_done,
            tasks_pending: p.items_outstanding,
            tasks_leased: st.leases.leased() as u64,
            workers_alive: alive as u32,
            done: p.phase == Phase::Done,
            dense: st
                .engine
                .outcome()
                .map(|o| network_point(&o.dense))
                .or_else(|| st.dense.clone()),
            best: p
                .best
                .as_ref()
                .filter(|b| b.iteration > 0)
                .map(network_point),
            results_accepted: self.accepted.load(Ordering::Relaxed),
            results_dropped: self.dropped.load(Ordering::Relaxed),
            failed: st.failed.is_some(),
            failed_task: st
                .failed
                .as_ref()
                .map(|f| f.task_id.clone())
                .unwrap_or_default(),
            failure_reasons: st
                .failed
                .as_ref()
                .map(|f| f.reasons.clone())
                .unwrap_or_default(),
            steps_done: steps.done,
            steps_total: steps.total,
            percent_done: round_to(steps.percent(), 1),
            generation_best: generation_best(&st.engine),
            elapsed_seconds: round_to(self.started.elapsed().as_secs_f64(), 1),
            remaining_seconds: remaining_seconds.map(|s| round_to(s, 0)),
        }
    }

    /// The per-layer first fronts of the current generation.
    pub fn fronts(&self) -> v1::FrontsReply {
        let st = self.lock();
        let fronts = st.engine.fronts();
        let (iteration, generation) = fronts
            .first()
            .map_or((0, 0), |f| (f.iteration, f.generation));
        v1::FrontsReply {
            iteration,
            generation,
            layers: fronts
                .into_iter()
                .map(|f| v1::LayerFront {
                    layer: f.layer,
                    points: f
                        .members
                        .iter()
                        .map(|m| v1::FrontPoint {
                            mask: Some(m.mask.clone()),
                            clean: m.fitness.clean,
                            adversarial: m.fitness.adversarial,
                            samples: m.fitness.samples,
                            macs: m.fitness.macs,
                            representative: m.id == f.representative,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Subscribes to progress ticks (one per accepted result) and notable events.
    pub fn subscribe(&self) -> (watch::Receiver<u64>, broadcast::Receiver<String>) {
        (self.progress.subscribe(), self.events.subscribe())
    }

    /// The checkpoint bytes if the state changed since the last call.
    pub fn checkpoint_if_dirty(
        &self,
    ) -> Option<Result<Vec<u8>, crate::checkpoint::CheckpointError>> {
        let mut st = self.lock();
        if !st.dirty {
            return None;
        }
        st.dirty = false;
        Some(crate::checkpoint::encode(
            &self.settings.fingerprint,
            &st.engine,
        ))
    }

    /// Runs `f` on the engine (for writing results at the end).
    pub fn with_engine<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        f(&self.lock().engine)
    }
}

fn not_registered(worker_id: &str) -> Status {
    Status::failed_precondition(format!(
        "worker {} is not registered (the master may have restarted, or forgot a worker it did not see for a while): call Register first",
        quote(worker_id)
    ))
}

/// Checks a worker id is a UUID in its canonical text (lowercase, hyphenated), the form every
/// later call must repeat byte for byte.
pub fn parse_worker_id(id: &str) -> Result<Arc<str>, Status> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(Arc::from(id)),
        Ok(u) => Err(Status::invalid_argument(format!(
            "worker_id {}: expected the canonical lowercase hyphenated UUID text ({})",
            quote(id),
            u.hyphenated()
        ))),
        Err(e) => Err(Status::invalid_argument(clip(&format!(
            "worker_id {}: expected a UUID: {e}",
            quote(id)
        )))),
    }
}

/// Turns a lease answer into the wire reply.
pub fn lease_reply(leased: Leased) -> v1::LeaseReply {
    match leased {
        Leased::Tasks(tasks) => v1::LeaseReply {
            state: LeaseState::Tasks as i32,
            tasks,
        },
        Leased::NoWorkYet => v1::LeaseReply {
            state: LeaseState::NoWorkYet as i32,
            tasks: vec![],
        },
        Leased::JobDone => v1::LeaseReply {
            state: LeaseState::JobDone as i32,
            tasks: vec![],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DenseModel, JobSpec};

    fn job(runtime: &str) -> (Job, tempfile::TempDir) {
        let config = JobConfig::parse(&format!("[runtime]\n{runtime}\n"), "test job").unwrap();
        let engine = Engine::new(JobSpec {
            seed: 1,
            config: config.engine_config(),
            dense: DenseModel::Train,
            eval_samples: 64,
            eval_shards: 2,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        (Job::new(JobSettings::of(&config), engine, store), dir)
    }

    fn register(job: &Job, id: &str) -> Result<v1::RegisterReply, Status> {
        job.register(&v1::RegisterRequest {
            worker_id: id.into(),
            protocol_version: ccsrp_proto::PROTOCOL_VERSION,
            backend: "cpu".into(),
            ..Default::default()
        })
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
    }

    #[test]
    fn registrations_alone_are_not_alive_and_unseen_ones_are_forgotten() {
        let (job, _dir) = job("lease_seconds = 10\nheartbeat_seconds = 1");
        let flood = ids(200);
        for id in &flood {
            register(&job, id).unwrap();
        }
        let now = Instant::now();
        assert_eq!(job.registered_workers(), 200);
        assert_eq!(
            job.workers_alive(now),
            0,
            "a registration alone is not a live worker"
        );
        // One real worker leases: it is alive, and seen until the end of its long poll.
        let real = &flood[0];
        job.try_lease(real, 1, now + Duration::from_secs(30))
            .unwrap();
        assert_eq!(job.workers_alive(now), 1);
        // Three lease periods (30 s) later the flood is forgotten; the poller still counts.
        assert_eq!(job.forget_stale_workers(now + Duration::from_secs(31)), 199);
        assert_eq!(job.registered_workers(), 1);
        assert_eq!(job.forget_stale_workers(now + Duration::from_secs(61)), 1);
        assert_eq!(job.registered_workers(), 0);
        // A forgotten worker is told to register again.
        let err = job.heartbeat(real, &[]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("Register"), "{}", err.message());
    }

    #[test]
    fn registrations_beyond_max_workers_are_resource_exhausted() {
        let (job, _dir) = job("max_workers = 3");
        let workers = ids(4);
        for id in &workers[..3] {
            register(&job, id).unwrap();
        }
        let err = register(&job, &workers[3]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("runtime.max_workers = 3"),
            "{}",
            err.message()
        );
        // Registering again under a known id is not a new worker.
        register(&job, &workers[0]).unwrap();
        assert_eq!(job.registered_workers(), 3);
    }

    fn failure(worker: &str, task: &v1::Task, reason: &str) -> v1::TaskResult {
        v1::TaskResult {
            worker_id: worker.into(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            outcome: Some(v1::task_result::Outcome::Failed(v1::TaskFailure {
                reason: reason.into(),
            })),
        }
    }

    fn lease_one(job: &Job, worker: &str) -> v1::Task {
        match job.try_lease(worker, 1, Instant::now()).unwrap() {
            Leased::Tasks(mut tasks) => tasks.remove(0),
            other => panic!("expected a task, got {other:?}"),
        }
    }

    #[test]
    fn a_task_failing_max_task_failures_times_fails_the_job_and_a_restart_resets_the_counts() {
        let (job, dir) = job("max_task_failures = 3");
        let workers = ids(2);
        for w in &workers {
            register(&job, w).unwrap();
        }
        // A failure re-queues the task at once (no lease expiry to wait for).
        let first = lease_one(&job, &workers[0]);
        let taken = job
            .report(&workers[0], &failure(&workers[0], &first, "no data"))
            .unwrap();
        assert_eq!(taken, Taken::Failed(None));
        assert!(!job.is_over());
        let second = lease_one(&job, &workers[1]);
        assert_eq!(second.task_id, first.task_id);
        assert_eq!(second.attempt, first.attempt + 1);
        // A failure of an attempt the worker no longer holds is late: not counted.
        let late = job
            .report(&workers[0], &failure(&workers[0], &first, "late"))
            .unwrap();
        assert!(matches!(late, Taken::Dropped(_)), "{late:?}");
        job.report(&workers[1], &failure(&workers[1], &second, "no data"))
            .unwrap();
        let third = lease_one(&job, &workers[0]);
        let huge = "\u{1}".repeat(1 << 20);
        let Taken::Failed(Some(failed)) = job
            .report(&workers[0], &failure(&workers[0], &third, &huge))
            .unwrap()
        else {
            panic!("the third failure fails the job");
        };
        assert_eq!(failed.task_id, first.task_id);
        assert_eq!(failed.reasons.len(), 3);
        assert!(failed.reasons[2].len() < 1024, "reasons are cut short");
        assert!(job.is_over());
        assert!(matches!(
            job.try_lease(&workers[1], 1, Instant::now()).unwrap(),
            Leased::JobDone
        ));
        assert!(job.heartbeat(&workers[1], &[]).unwrap().job_done);
        let status = job.status();
        assert!(status.failed && !status.done, "{status:?}");
        assert_eq!(status.phase, "failed");
        assert_eq!(status.failed_task, first.task_id);
        assert_eq!(status.failure_reasons[0], "no data");

        // The checkpoint does not hold the failure: a restarted master leases the task again.
        let bytes =
            crate::checkpoint::encode(&job.settings().fingerprint, &job.lock().engine).unwrap();
        let path = dir.path().join("checkpoint");
        crate::checkpoint::write(&path, &bytes).unwrap();
        let engine = crate::checkpoint::read(&path, &job.settings().fingerprint)
            .unwrap()
            .unwrap();
        let store = ArtifactStore::open(&dir.path().join("store2")).unwrap();
        let resumed = Job::new(job.settings().clone(), engine, store);
        register(&resumed, &workers[0]).unwrap();
        assert!(!resumed.is_over());
        assert!(!resumed.status().failed);
        assert_eq!(lease_one(&resumed, &workers[0]).task_id, first.task_id);
    }

    #[test]
    fn huge_client_strings_come_back_short() {
        let (job, _dir) = job("");
        let big = "x".repeat(3 << 20);
        let refusals = [
            register(&job, &big).unwrap_err(),
            job.register(&v1::RegisterRequest {
                worker_id: ids(1).remove(0),
                protocol_version: ccsrp_proto::PROTOCOL_VERSION,
                backend: big.clone(),
                ..Default::default()
            })
            .unwrap_err(),
            job.try_lease(&big, 1, Instant::now()).unwrap_err(),
            job.heartbeat(&big, &[]).unwrap_err(),
            job.heartbeat(&ids(1)[0], std::slice::from_ref(&big))
                .unwrap_err(),
            job.heartbeat(&ids(1)[0], &vec!["t".to_string(); MAX_HEARTBEAT_TASKS + 1])
                .unwrap_err(),
            job.report(
                &big,
                &v1::TaskResult {
                    worker_id: big.clone(),
                    task_id: big.clone(),
                    ..Default::default()
                },
            )
            .unwrap_err(),
            job.report(
                "w",
                &v1::TaskResult {
                    worker_id: "w".into(),
                    task_id: big.clone(),
                    ..Default::default()
                },
            )
            .unwrap_err(),
        ];
        for status in refusals {
            assert!(
                status.message().len() < 1024,
                "{} bytes: {}",
                status.message().len(),
                &status.message()[..300]
            );
        }
    }
}
