//! `ccsrp.v1.Progress`: status, a live event stream and the per-layer fronts.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ccsrp_proto::v1::progress_server::Progress;
use ccsrp_proto::v1::{
    EventsRequest, FrontsReply, FrontsRequest, JobEvent, JobStatus, StatusRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::job::{unix_ms, Job};
use crate::shutdown::Shutdown;

/// Progress ticks are coalesced to at most one event per this interval.
const TICK: Duration = Duration::from_millis(250);

/// The progress service of one job.
pub struct ProgressService {
    job: Arc<Job>,
    shutdown: Shutdown,
}

impl ProgressService {
    pub fn new(job: Arc<Job>, shutdown: Shutdown) -> ProgressService {
        ProgressService { job, shutdown }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Progress for ProgressService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<JobStatus>, Status> {
        Ok(Response::new(self.job.status()))
    }

    type EventsStream = EventStream;

    async fn events(&self, _: Request<EventsRequest>) -> Result<Response<EventStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let job = self.job.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let (mut ticks, mut notable) = job.subscribe();
            let mut seq = 0u64;
            let mut send = |message: String| {
                seq += 1;
                let status = job.status();
                let done = status.done || status.failed;
                let event = JobEvent {
                    seq,
                    unix_ms: unix_ms(),
                    message,
                    status: Some(status),
                };
                (event, done)
            };
            let (first, mut done) = send("subscribed".into());
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while !done {
                let message = tokio::select! {
                    n = notable.recv() => match n {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(k)) => format!("{k} events skipped"),
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    changed = ticks.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        tokio::time::sleep(TICK).await;
                        "progress".to_string()
                    }
                    _ = shutdown.wait() => break,
                };
                let (event, now_done) = send(message);
                done = now_done;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fronts(&self, _: Request<FrontsRequest>) -> Result<Response<FrontsReply>, Status> {
        Ok(Response::new(self.job.fronts()))
    }
}
