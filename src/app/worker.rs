//! The worker thread: it owns the [`Session`] (the model never touches the UI thread) and
//! answers jobs with events. A new job cancels the one running, so stale work is dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::model::ModelSource;
use crate::session::{Analysis, ImageInput, Session};
use crate::{Cancel, Error};

/// An image to analyse: a file, or bytes already in memory (the bundled sample).
pub enum Job {
    Analyze {
        label: PathBuf,
        bytes: Option<Arc<[u8]>>,
    },
}

/// One analysed image, shared with the UI.
pub struct Analyzed {
    pub label: PathBuf,
    pub input: ImageInput,
    pub analysis: Analysis,
}

pub enum Event {
    Status(String),
    ModelReady { id: String },
    Analyzed(Arc<Analyzed>),
    Failed(String),
}

pub struct WorkerHandle {
    jobs: Sender<(Job, Cancel)>,
    pub events: Receiver<Event>,
    cancel: Cancel,
}

impl WorkerHandle {
    /// Starts the worker; it loads the model first. `wake` asks the UI to repaint.
    pub fn spawn(model: ModelSource, wake: impl Fn() + Send + 'static) -> Self {
        let (jobs, job_rx) = channel::<(Job, Cancel)>();
        let (event_tx, events) = channel();
        std::thread::Builder::new()
            .name("tokenlens-worker".into())
            .spawn(move || {
                let send = |event| {
                    event_tx.send(event).ok(); // Err only when the UI has closed
                    wake();
                };
                let session =
                    match Session::load(&model, &mut |line| send(Event::Status(line.into()))) {
                        Ok(s) => {
                            send(Event::ModelReady {
                                id: s.model.id.clone(),
                            });
                            Some(s)
                        }
                        Err(e) => {
                            send(Event::Failed(format!("the model could not be loaded: {e}")));
                            None
                        }
                    };
                while let Ok(mut next) = job_rx.recv() {
                    // Sliders and drops can queue several jobs; only the newest matters.
                    while let Ok(newer) = job_rx.try_recv() {
                        next = newer;
                    }
                    let (job, cancel) = next;
                    let Some(session) = &session else {
                        send(Event::Failed(
                            "no model is loaded (see the message above)".into(),
                        ));
                        continue;
                    };
                    match run(session, job, &cancel) {
                        Ok(done) => send(Event::Analyzed(Arc::new(done))),
                        Err(Error::Cancelled) => {}
                        Err(e) => send(Event::Failed(e.to_string())),
                    }
                }
            })
            .expect("spawning the worker thread");
        Self {
            jobs,
            events,
            cancel: Cancel::default(),
        }
    }

    /// Cancels the running job and queues `job`.
    pub fn submit(&mut self, job: Job) {
        self.cancel.cancel();
        self.cancel = Cancel::default();
        self.jobs.send((job, self.cancel.clone())).ok(); // Err only if the worker has exited
    }
}

fn run(session: &Session, job: Job, cancel: &Cancel) -> crate::Result<Analyzed> {
    match job {
        Job::Analyze { label, bytes } => {
            let input = match bytes {
                Some(bytes) => session.image_from_bytes(&bytes, &label)?,
                None => session.open_image(&label)?,
            };
            let analysis = session.analyze(&input.prepared, cancel)?;
            Ok(Analyzed {
                label,
                input,
                analysis,
            })
        }
    }
}
