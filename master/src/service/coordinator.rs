//! `ccsrp.v1.Coordinator`: the calls workers make.

use std::sync::Arc;
use std::time::Duration;

use ccsrp_proto::v1::coordinator_server::Coordinator;
use ccsrp_proto::v1::{
    HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, RegisterReply, RegisterRequest,
    ReportSummary, ResultBatch,
};
use tonic::{Request, Response, Status, Streaming};

use crate::job::{lease_reply, Job, Leased, Taken};
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
        let req = request.into_inner();
        match self.job.register(&req) {
            Ok(reply) => Ok(Response::new(reply)),
            Err(status) => {
                tracing::warn!(worker_id = %req.worker_id, reason = status.message(), "registration refused");
                Err(status)
            }
        }
    }

    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let req = request.into_inner();
        let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        let until = tokio::time::Instant::now() + wait;
        let mut shutdown = self.shutdown.clone();
        loop {
            let ready = self.job.work_ready();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self.job.try_lease(&req.worker_id, req.max_tasks)? {
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
                    Ok(Taken::Dropped(reason)) => {
                        summary.dropped += 1;
                        tracing::warn!(worker_id = %worker_id, task_id = %result.task_id, attempt = result.attempt, reason = %reason, "result dropped");
                    }
                    Err(status) => {
                        tracing::warn!(worker_id = %worker_id, task_id = %result.task_id, code = ?status.code(), reason = status.message(), "result refused");
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
        let req = request.into_inner();
        self.job
            .heartbeat(&req.worker_id, &req.task_ids)
            .map(Response::new)
    }
}
