//! The worker thread: it owns the [`Session`] (the model and its cached runs never touch the UI
//! thread), and answers jobs with events.
//!
//! Interactive jobs (open an image, a reduced run, a comparison) are served newest-first: a new
//! job of a kind replaces a queued one and cancels the running one. The drift curve is
//! background work done one point at a time between interactive jobs; a new request cancels the
//! point being computed (it is redone later), so moving a slider never waits for it.
//!
//! With a vision-language model the jobs are the full answer (per image and question), reduced
//! runs, and the ratio sweep (background, stepped like the drift curve); answer tokens stream
//! back one event each. The session holds every cached run; the worker only schedules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::export::{self, ExportSpec, Figure, Format};
use crate::model::ModelSource;
use crate::reduce::Budget;
use crate::session::vlm::{SweepPoint, VlmImage, VlmRun, VlmRunSpec};
use crate::session::{Analysis, ImageInput, RunResult, RunSpec, Session};
use crate::{Cancel, Error};

/// An image to open: a file, or bytes already in memory (the bundled sample).
#[derive(Clone)]
pub struct ImageSource {
    pub label: PathBuf,
    pub bytes: Option<Arc<[u8]>>,
}

pub enum Job {
    /// Open an image; `prompt` sets the labels a zero-shot model scores.
    Open { source: ImageSource, prompt: String },
    /// One reduced run; `id` lets the UI drop stale answers.
    Reduce { id: u64, spec: RunSpec },
    /// Several methods at one budget.
    Compare { id: u64, specs: Vec<RunSpec> },
    /// Output drift against the ratio, for the plot.
    Drift { id: u64, spec: RunSpec, ratios: Vec<f64> },
    /// Write a figure of the current image and its sidecar (VLM figures: of its current
    /// answer).
    Export { figure: Figure, look: Look, path: PathBuf, force: bool },
    /// A VLM's vision run and full answer for an image and a question (tokens stream as
    /// [`Event::VlmToken`] with this `id`).
    /// `split`: SmolVLM's image splitting.
    VlmFull { id: u64, source: ImageSource, question: String, spec: VlmRunSpec, split: bool },
    /// A reduced VLM run against the current full answer.
    VlmRun { id: u64, spec: VlmRunSpec },
    /// Several methods at one budget against the current full answer (no token stream).
    VlmCompare { id: u64, specs: Vec<VlmRunSpec> },
    /// The ratio sweep of a method: one reduced run per removed fraction (popped from the end).
    VlmSweep { id: u64, spec: VlmRunSpec, fractions: Vec<f64> },
}

/// How an exported figure looks (the rest of its spec comes from the worker's state).
pub use crate::export::Look;

/// One opened image, shared with the UI.
pub struct Opened {
    pub label: PathBuf,
    pub input: ImageInput,
    pub analysis: Analysis,
}

/// A VLM's full run of one image and question, shared with the UI.
pub struct VlmOpened {
    pub label: PathBuf,
    pub question: String,
    pub image: VlmImage,
    /// The image-token grid (rows, cols) and the tower's importance of each image token.
    pub grid: [usize; 2],
    pub saliency: Vec<f32>,
    /// Layers of the vision tower (for the layer slider of methods acting inside it).
    pub tower_layers: usize,
    /// Each image token covers a square of this many vision patches a side (SmolVLM: 4).
    pub patch_block: usize,
    pub prompt_tokens: usize,
    pub run: VlmRun,
}

pub enum Event {
    Status(String),
    /// A vision-language model is loaded (the app switches to its VLM mode).
    VlmReady {
        id: String,
        num_layers: usize,
        context: Option<usize>,
        /// The folder's image-splitting setting (SmolVLM's `do_image_splitting`).
        split_image: bool,
        /// The memory guard's estimate for the model (weights, dtype, KV cache).
        memory: Option<crate::model::memory::Estimate>,
        /// What the model offers a method (the pickers grey out what it refuses).
        capabilities: crate::reduce::Capabilities,
    },
    /// One answer token of the VLM request `id` (full or reduced), decoded on its own, and the
    /// answer so far decoded whole (what a reader sees, spaces and all).
    VlmToken {
        id: u64,
        piece: String,
        text: String,
    },
    VlmOpened {
        id: u64,
        opened: Arc<VlmOpened>,
    },
    VlmReduced {
        id: u64,
        run: Arc<VlmRun>,
    },
    VlmCompared {
        id: u64,
        runs: Vec<Arc<VlmRun>>,
    },
    VlmSweepPoint {
        id: u64,
        point: SweepPoint,
    },
    /// The sweep `id` stopped on an error (sent after the error itself).
    VlmSweepStopped {
        id: u64,
    },
    ModelReady {
        id: String,
        /// The model scores prompt labels (CLIP, SigLIP).
        takes_prompt: bool,
    },
    Opened(Arc<Opened>),
    Reduced {
        id: u64,
        result: Arc<RunResult>,
    },
    Compared {
        id: u64,
        results: Vec<Arc<RunResult>>,
    },
    /// One more point of the drift curve: (removed fraction, saliency L1).
    DriftPoint {
        id: u64,
        removed: f64,
        l1: f64,
    },
    /// A figure was written (figure path, sidecar path).
    Exported(PathBuf, PathBuf),
    Failed(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Reduce,
    Compare,
}

/// A job, its cancel token, and the token for background work from now on.
type Message = (Job, Cancel, Cancel);

pub struct WorkerHandle {
    jobs: Sender<Message>,
    pub events: Receiver<Event>,
    cancels: [Cancel; 3],
    /// Cancels the running step of background work (the drift curve) when anything is asked.
    background: Cancel,
}

impl WorkerHandle {
    /// Starts the worker; it loads the model first. `wake` asks the UI to repaint.
    pub fn spawn(model: ModelSource, wake: impl Fn() + Send + 'static) -> Self {
        let (jobs, job_rx) = channel::<Message>();
        let (event_tx, events) = channel();
        std::thread::Builder::new()
            .name("tokenlens-worker".into())
            .spawn(move || Worker::new(model, event_tx, wake).serve(job_rx))
            .expect("spawning the worker thread");
        Self { jobs, events, cancels: Default::default(), background: Cancel::default() }
    }

    /// Queues `job`, cancelling the running job of the same kind (its answer is stale now).
    pub fn submit(&mut self, job: Job) {
        let slot = match &job {
            Job::Open { .. } | Job::VlmFull { .. } => Some(Kind::Open),
            Job::Reduce { .. } | Job::VlmRun { .. } => Some(Kind::Reduce),
            Job::Compare { .. } | Job::VlmCompare { .. } => Some(Kind::Compare),
            Job::Drift { .. } | Job::Export { .. } | Job::VlmSweep { .. } => None,
        };
        let cancel = match slot {
            Some(kind) => {
                let c = &mut self.cancels[kind as usize];
                c.cancel();
                *c = Cancel::default();
                c.clone()
            }
            None => Cancel::default(),
        };
        // Whatever was asked comes before the background step running now.
        self.background.cancel();
        self.background = Cancel::default();
        self.jobs.send((job, cancel, self.background.clone())).ok(); // Err only if the worker has exited
    }
}

struct Worker<W: Fn()> {
    session: Option<Session>,
    /// The VLM ratio sweep to do.
    sweep: Option<SweepWork>,
    events: Sender<Event>,
    wake: W,
    queued: [Option<(Job, Cancel)>; 3],
    drift: Option<DriftWork>,
    /// The current image and its checksum, for export sidecars.
    source: Option<(ImageSource, String)>,
    exports: Vec<(Job, Cancel)>,
    /// The token background steps run with (replaced with every message).
    background: Cancel,
    /// Why no model is loaded, repeated to every job that needs one.
    unloaded: String,
}

struct SweepWork {
    id: u64,
    spec: VlmRunSpec,
    fractions: Vec<f64>,
}

struct DriftWork {
    id: u64,
    spec: RunSpec,
    ratios: Vec<f64>,
}

impl<W: Fn()> Worker<W> {
    fn new(model: ModelSource, events: Sender<Event>, wake: W) -> Self {
        let mut worker = Self {
            session: None,
            sweep: None,
            events,
            wake,
            queued: Default::default(),
            drift: None,
            source: None,
            exports: Vec::new(),
            background: Cancel::default(),
            unloaded: "no model is loaded".into(),
        };
        match Session::load(&model, &mut |line| worker_say(&worker.events, &worker.wake, line)) {
            Ok(s) => {
                worker.send(match s.vlm() {
                    Ok(vlm) => Event::VlmReady {
                        id: s.id.clone(),
                        num_layers: vlm.num_layers(),
                        context: vlm.arch.lm().cfg.max_position_embeddings,
                        split_image: vlm.split_image,
                        memory: vlm.memory_estimate(),
                        capabilities: s.capabilities(),
                    },
                    Err(_) => Event::ModelReady { id: s.id.clone(), takes_prompt: s.takes_prompt() },
                });
                worker.session = Some(s);
            }
            Err(e) => worker.load_failed(&e),
        }
        worker
    }

    fn load_failed(&mut self, e: &Error) {
        self.unloaded = format!("the model could not be loaded: {e}");
        self.send(Event::Failed(self.unloaded.clone()));
    }

    fn send(&self, event: Event) {
        self.events.send(event).ok(); // Err only when the UI has closed
        (self.wake)();
    }

    fn serve(mut self, jobs: Receiver<Message>) {
        loop {
            // Block only when there is nothing at all to do.
            let idle = self.queued.iter().all(Option::is_none)
                && self.drift.is_none()
                && self.sweep.is_none()
                && self.exports.is_empty();
            let next = if idle {
                match jobs.recv() {
                    Ok(j) => Some(j),
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => Some(j),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            if let Some((job, cancel, background)) = next {
                self.background = background;
                self.enqueue(job, cancel);
                continue; // drain everything queued before working
            }
            if let Some((job, cancel)) = self.take_next() {
                if let Err(e) = self.run(job, &cancel)
                    && !matches!(e, Error::Cancelled)
                {
                    self.send(Event::Failed(e.to_string()));
                }
            } else if self.drift.is_some() {
                if let Err(e) = self.drift_step() {
                    self.drift = None;
                    self.send(Event::Failed(format!("drift curve: {e}")));
                }
            } else if let Err(e) = self.sweep_step() {
                let id = self.sweep.take().map(|w| w.id);
                self.send(Event::Failed(format!("ratio sweep: {e}")));
                id.into_iter().for_each(|id| self.send(Event::VlmSweepStopped { id }));
            }
        }
    }

    fn enqueue(&mut self, job: Job, cancel: Cancel) {
        match job {
            Job::Drift { id, spec, ratios } => self.drift = Some(DriftWork { id, spec, ratios }),
            Job::Open { .. } => {
                self.drift = None; // a new image makes the curve meaningless
                self.queued[Kind::Open as usize] = Some((job, cancel));
            }
            Job::Reduce { .. } => self.queued[Kind::Reduce as usize] = Some((job, cancel)),
            Job::Compare { .. } | Job::VlmCompare { .. } => self.queued[Kind::Compare as usize] = Some((job, cancel)),
            Job::Export { .. } => self.exports.push((job, cancel)),
            Job::VlmFull { .. } => {
                self.sweep = None; // its full answer is about to change
                self.queued[Kind::Open as usize] = Some((job, cancel));
            }
            Job::VlmRun { .. } => self.queued[Kind::Reduce as usize] = Some((job, cancel)),
            Job::VlmSweep { id, spec, fractions } => self.sweep = Some(SweepWork { id, spec, fractions }),
        }
    }

    /// Opening first (later jobs need its full run), then the slider's run, then comparisons,
    /// then exports (asked for once, never superseded).
    fn take_next(&mut self) -> Option<(Job, Cancel)> {
        self.queued
            .iter_mut()
            .find_map(Option::take)
            .or_else(|| (!self.exports.is_empty()).then(|| self.exports.remove(0)))
    }

    fn session(&self) -> crate::Result<&Session> {
        self.session.as_ref().ok_or_else(|| Error::NotReady(self.unloaded.clone()))
    }

    fn session_mut(&mut self) -> crate::Result<&mut Session> {
        self.session.as_mut().ok_or_else(|| Error::NotReady(self.unloaded.clone()))
    }

    fn run(&mut self, job: Job, cancel: &Cancel) -> crate::Result<()> {
        match job {
            // The app asks for an encoder run before it knows the model is a VLM: nothing to do.
            Job::Open { .. } if self.session.as_ref().is_some_and(Session::is_vlm) => {}
            Job::VlmFull { id, source, question, spec, split } => {
                self.answer_full(id, source, &question, &spec, split, cancel)?
            }
            Job::VlmRun { id, spec } => {
                let session = self.session()?;
                let run = session.answer_reduced(&spec, &mut self.streamer(id, session.vlm()?), cancel)?;
                self.send(Event::VlmReduced { id, run: Arc::new(run) });
            }
            Job::Open { source, prompt } => {
                let session = self.session_mut()?;
                session.set_prompt(&prompt);
                let input = match &source.bytes {
                    Some(bytes) => session.image_from_bytes(bytes, &source.label)?,
                    None => session.open_image(&source.label)?,
                };
                let analysis = session.open(&input, cancel)?;
                self.source = Some((source.clone(), input.sha256.clone()));
                self.send(Event::Opened(Arc::new(Opened { label: source.label, input, analysis })));
            }
            Job::Reduce { id, spec } => {
                let result = self.session_mut()?.reduce(&spec, cancel)?;
                self.send(Event::Reduced { id, result });
            }
            Job::Compare { id, specs } => {
                let session = self.session_mut()?;
                let results = specs.iter().map(|spec| session.reduce(spec, cancel)).collect::<crate::Result<_>>()?;
                self.send(Event::Compared { id, results });
            }
            Job::VlmCompare { id, specs } => {
                let session = self.session()?;
                let runs = specs
                    .iter()
                    .map(|spec| session.answer_reduced(spec, &mut |_| {}, cancel).map(Arc::new))
                    .collect::<crate::Result<_>>()?;
                self.send(Event::VlmCompared { id, runs });
            }
            Job::Export { figure, look, path, force } => {
                let (figure_path, sidecar) = self.export(figure, look, &path, force)?;
                self.send(Event::Exported(figure_path, sidecar));
            }
            Job::Drift { .. } | Job::VlmSweep { .. } => unreachable!("background work is stepped, not run"),
        }
        Ok(())
    }

    fn export(&self, figure: Figure, look: Look, path: &Path, force: bool) -> crate::Result<(PathBuf, PathBuf)> {
        let session = self.session()?;
        let (source, sha) = self.source.as_ref().ok_or_else(|| Error::NotReady("no image is open".into()))?;
        // A figure must be re-makeable from its sidecar, so the image must be a file: the
        // bundled sample is written beside the figure.
        let image = match &source.bytes {
            None => source.label.clone(),
            Some(bytes) => {
                let copy = path
                    .with_file_name(format!("{}-image.png", path.file_stem().unwrap_or_default().to_string_lossy()));
                if std::fs::read(&copy).ok().as_deref() != Some(&bytes[..]) {
                    crate::atomic::write_atomic(&copy, bytes).map_err(|e| Error::Render(e.to_string()))?;
                }
                copy
            }
        };
        let spec = ExportSpec::new(session, &image, sha, figure, Format::from_path(path)?).with_look(&look)?;
        let bytes = export::render(session, &spec)?;
        let sidecar = export::write(path, &bytes, &spec, force)?;
        Ok((path.to_path_buf(), sidecar))
    }

    fn drift_step(&mut self) -> crate::Result<()> {
        let Some(work) = self.drift.as_mut() else { return Ok(()) };
        let Some(removed) = work.ratios.pop() else {
            self.drift = None;
            return Ok(());
        };
        let (id, mut spec) = (work.id, work.spec.clone());
        spec.budget = Budget::RemoveFraction(removed);
        let background = self.background.clone();
        match self.session_mut()?.reduce(&spec, &background) {
            Ok(result) => self.send(Event::DriftPoint { id, removed, l1: result.fidelity.output_l1 }),
            // Interrupted for an interactive job: this point is computed later.
            Err(Error::Cancelled) => self.drift.iter_mut().for_each(|w| w.ratios.push(removed)),
            // A ratio this method cannot reach on this model (ToMe on few blocks): no point.
            Err(Error::Config { field: "budget", .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Sends each answer token of request `id` as it comes, with the answer so far.
    fn streamer<'a>(&'a self, id: u64, vlm: &'a crate::session::vlm::Vlm) -> impl FnMut(u32) + 'a {
        stream(&self.events, &self.wake, id, &vlm.tokenizer)
    }

    fn answer_full(
        &mut self,
        id: u64,
        source: ImageSource,
        question: &str,
        spec: &VlmRunSpec,
        split: bool,
        cancel: &Cancel,
    ) -> crate::Result<()> {
        let read =
            || std::fs::read(&source.label).map_err(|e| Error::image(&source.label, format!("cannot read: {e}")));
        let bytes = match &source.bytes {
            Some(bytes) => bytes.clone(),
            None => read()?.into(),
        };
        let Self { session, events, wake, unloaded, .. } = self;
        let session = session.as_mut().ok_or_else(|| Error::NotReady(unloaded.clone()))?;
        let image = session.vlm_image(&bytes, &source.label, split)?;
        // The token stream holds its own handle on the tokenizer: the session is borrowed mutably.
        let tokenizer = session.vlm()?.tokenizer.clone();
        let full = session.answer(image, question, spec, &mut stream(events, &*wake, id, &tokenizer), cancel)?;
        let grid = [full.vision.grid.0, full.vision.grid.1];
        // Exports name the image this answer is about.
        self.source = Some((source.clone(), full.image.sha256.clone()));
        let opened = VlmOpened {
            label: source.label,
            question: question.into(),
            image: full.image.clone(),
            grid,
            saliency: full.vision.saliency.clone(),
            tower_layers: full.vision.context().num_layers,
            patch_block: full.vision.patch_block,
            prompt_tokens: full.prompt.ids.len(),
            run: full.run.clone(),
        };
        self.send(Event::VlmOpened { id, opened: Arc::new(opened) });
        Ok(())
    }

    /// One point of the ratio sweep (the core's sweep over one fraction).
    fn sweep_step(&mut self) -> crate::Result<()> {
        let Some(work) = self.sweep.as_mut() else { return Ok(()) };
        let Some(removed) = work.fractions.pop() else {
            self.sweep = None;
            return Ok(());
        };
        let (id, spec) = (work.id, work.spec.clone());
        let swept = self.session()?.answer_sweep(&spec, &[removed], &self.background.clone());
        match swept {
            Ok(points) => points.into_iter().for_each(|point| self.send(Event::VlmSweepPoint { id, point })),
            Err(Error::Cancelled) => self.sweep.iter_mut().for_each(|w| w.fractions.push(removed)),
            Err(Error::Config { field: "budget", .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Sends each answer token of request `id` as it comes, with the answer so far.
fn stream<'a>(
    events: &'a Sender<Event>,
    wake: &'a impl Fn(),
    id: u64,
    tokenizer: &'a tokenizers::Tokenizer,
) -> impl FnMut(u32) + 'a {
    let mut ids = Vec::new();
    move |token| {
        ids.push(token);
        let piece = tokenizer.decode(&[token], false).unwrap_or_default();
        let text = tokenizer.decode(&ids, true).unwrap_or_default().trim().to_string();
        events.send(Event::VlmToken { id, piece, text }).ok();
        wake();
    }
}

fn worker_say(events: &Sender<Event>, wake: &impl Fn(), line: &str) {
    events.send(Event::Status(line.into())).ok();
    wake();
}
