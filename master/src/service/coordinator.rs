//! `ccsrp.v1.Coordinator`: the calls workers make.
//!
//! Log lines about a peer's calls (registrations, refusals, dropped results) quote client strings
//! through `ccsrp_proto::quote` and are rate-limited per peer ([`crate::peer_log`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccsrp_proto::quote::quote;
use ccsrp_proto::v1::coordinator_server::Coordinator;
use ccsrp_proto::v1::{
    HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, RegisterReply, RegisterRequest,
    ReportSummary, ResultBatch,
};
use tonic::{Request, Response, Status, Streaming};

use crate::job::{lease_reply, Job, Leased, Taken};
use crate::peer_log::{peer_of, show};
use crate::shutdown::Shutdown;

/// Longest long poll a worker may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The coordinator service of one job.
pub struct CoordinatorService {
    job: Arc<Job>,
    shutdown: Shutdown,
}

impl CoordinatorService {
    pub fn new(job: Arc<Job>, shutdown: Shutdown) -> CoordinatorService {
        CoordinatorService { job, shutdown }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let peer = peer_of(request.remote_addr());
        let req = request.into_inner();
        let log = self.job.peer_log();
        match self.job.register(&req) {
            Ok(reply) => {
                if log.allow(peer, "registration") {
                    tracing::info!(peer = %show(peer), worker_id = %quote(&req.worker_id), device = %quote(&req.device), threads = req.threads, "worker registered");
                }
                Ok(Response::new(reply))
            }
            Err(status) => {
                if log.allow(peer, "registration refused") {
                    tracing::warn!(peer = %show(peer), worker_id = %quote(&req.worker_id), reason = status.message(), "registration refused");
                }
                Err(status)
            }
        }
    }

    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let req = request.into_inner();
        let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        let until = tokio::time::Instant::now() + wait;
        // The worker counts as seen while it waits here.
        let poll_until = Instant::now() + wait;
        let mut shutdown = self.shutdown.clone();
        loop {
            let ready = self.job.work_ready();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self
                .job
                .try_lease(&req.worker_id, req.max_tasks, poll_until)?
            {
                Leased::NoWorkYet => {}
                done_or_tasks => return Ok(Response::new(lease_reply(done_or_tasks))),
            }
            if shutdown.is_triggered() {
                return Err(Status::unavailable("master is shutting down"));
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = tokio::time::sleep_until(until) => {
                    return Ok(Response::new(lease_reply(Leased::NoWorkYet)));
                }
                _ = shutdown.wait() => {
                    return Err(Status::unavailable("master is shutting down"));
                }
            }
        }
    }

    async fn report(
        &self,
        request: Request<Streaming<ResultBatch>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let peer = peer_of(request.remote_addr());
        let log = self.job.peer_log();
        let mut stream = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        let mut worker: Option<String> = None;
        let mut summary = ReportSummary::default();
        loop {
            let next = tokio::select! {
                m = stream.message() => m?,
                _ = shutdown.wait() => return Err(Status::unavailable("master is shutting down")),
            };
            let Some(batch) = next else {
                return Ok(Response::new(summary));
            };
            for result in &batch.results {
                let worker_id = worker.get_or_insert_with(|| result.worker_id.clone());
                match self.job.report(worker_id, result) {
                    Ok(Taken::Accepted) => summary.accepted += 1,
                    // Counted and logged by the job; absorbed like a result.
                    Ok(Taken::Failed(_)) => summary.accepted += 1,
                    Ok(Taken::Dropped(reason)) => {
                        summary.dropped += 1;
                        if log.allow(peer, "result dropped") {
                            tracing::warn!(peer = %show(peer), worker_id = %quote(worker_id), task_id = %quote(&result.task_id), attempt = result.attempt, reason = %reason, "result dropped");
                        }
                    }
                    Err(status) => {
                        if log.allow(peer, "result refused") {
                            tracing::warn!(peer = %show(peer), worker_id = %quote(worker_id), task_id = %quote(&result.task_id), code = ?status.code(), reason = status.message(), "result refused");
                        }
                        return Err(status);
                    }
                }
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let peer = peer_of(request.remote_addr());
        let req = request.into_inner();
        self.job
            .heartbeat(&req.worker_id, &req.task_ids)
            .map(Response::new)
            .inspect_err(|status| {
                if self.job.peer_log().allow(peer, "heartbeat refused") {
                    tracing::warn!(peer = %show(peer), worker_id = %quote(&req.worker_id), reason = status.message(), "heartbeat refused");
                }
            })
    }
}
