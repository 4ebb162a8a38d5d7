//! The worker thread: it owns the [`Session`] (the model and its cached runs never touch the UI
//! thread), and answers jobs with events.
//!
//! One job set for every model: open an image, run a spec, compare specs, sweep a spec over
//! ratios, export a figure. Interactive jobs (open, run, compare) are served newest-first: a new
//! job of a kind replaces a queued one and cancels the running one. The sweep (an encoder's
//! drift curve, a VLM's answer over ratios) is background work done one point at a time between
//! interactive jobs; a new request cancels the point being computed (it is redone later), so
//! moving a slider never waits for it. A VLM's answer tokens stream back one event each. The
//! session decides what a job means for its model and holds every cached run; the worker only
//! schedules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use crate::export::{self, ExportSpec, Figure, Format};
use crate::model::ModelSource;
use crate::reduce::Budget;
use crate::session::vlm::{VlmImage, VlmRun};
use crate::session::{Analysis, Ask, ImageInput, RunResult, RunSpec, Session};
use crate::{Cancel, Error};

/// An image to open: a file, or bytes already in memory (the bundled sample).
#[derive(Clone)]
pub struct ImageSource {
    pub label: PathBuf,
    pub bytes: Option<Arc<[u8]>>,
}

pub enum Job {
    /// Open an image: an encoder's full run, or a VLM's full answer (its tokens stream as
    /// [`Event::Token`] with this `id`). `ask`: the prompt (zero-shot labels or the question),
    /// the answer limit and view layer, SmolVLM's image splitting.
    Open { id: u64, source: ImageSource, ask: Ask },
    /// One run of the open image; `id` lets the UI drop stale answers (a VLM's tokens stream).
    Run { id: u64, spec: RunSpec },
    /// Several methods at one budget (no token stream).
    Compare { id: u64, specs: Vec<RunSpec> },
    /// `spec` at each removed fraction (popped from the end), in the background: the encoder's
    /// drift curve, the VLM's answer over ratios.
    Sweep { id: u64, spec: RunSpec, fractions: Vec<f64> },
    /// Write a figure of the current image and its sidecar (VLM figures: of its current
    /// answer).
    Export { figure: Figure, look: Look, path: PathBuf, force: bool },
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

/// An opened image as the UI gets it.
#[derive(Clone)]
pub enum OpenedImage {
    Encoder(Arc<Opened>),
    Answer(Arc<VlmOpened>),
}

/// What a loaded vision-language model offers the UI.
#[derive(Clone)]
pub struct VlmInfo {
    pub num_layers: usize,
    pub context: Option<usize>,
    /// The folder's image-splitting setting (SmolVLM's `do_image_splitting`).
    pub split_image: bool,
    /// The memory guard's estimate for the model (weights, dtype, KV cache).
    pub memory: Option<crate::model::memory::Estimate>,
    /// What the model offers a method (the pickers grey out what it refuses).
    pub capabilities: crate::reduce::Capabilities,
}

pub enum Event {
    Status(String),
    /// The model is loaded: an encoder (`vlm` None), or a vision-language model (the app
    /// switches to its VLM mode).
    Ready {
        id: String,
        /// The model scores prompt labels (CLIP, SigLIP).
        takes_prompt: bool,
        vlm: Option<VlmInfo>,
    },
    /// One answer token of the VLM request `id` (open or run), decoded on its own, and the
    /// answer so far decoded whole (what a reader sees, spaces and all).
    Token {
        id: u64,
        piece: String,
        text: String,
    },
    Opened {
        id: u64,
        image: OpenedImage,
    },
    Ran {
        id: u64,
        result: RunResult,
    },
    Compared {
        id: u64,
        results: Vec<RunResult>,
    },
    /// One more point of the sweep `id`: the run at `removed`.
    SweepPoint {
        id: u64,
        removed: f64,
        result: RunResult,
    },
    /// The sweep `id` stopped on an error (sent after the error itself).
    SweepStopped {
        id: u64,
    },
    /// A figure was written (figure path, sidecar path).
    Exported(PathBuf, PathBuf),
    Failed(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Run,
    Compare,
}

/// A job, its cancel token, and the token for background work from now on.
type Message = (Job, Cancel, Cancel);

pub struct WorkerHandle {
    jobs: Sender<Message>,
    pub events: Receiver<Event>,
    cancels: [Cancel; 3],
    /// Cancels the running step of background work (the sweep) when anything is asked.
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
        let cancel = match kind(&job) {
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

/// The slot of an interactive job (None: background work and exports).
fn kind(job: &Job) -> Option<Kind> {
    match job {
        Job::Open { .. } => Some(Kind::Open),
        Job::Run { .. } => Some(Kind::Run),
        Job::Compare { .. } => Some(Kind::Compare),
        Job::Sweep { .. } | Job::Export { .. } => None,
    }
}

struct Worker<W: Fn()> {
    session: Option<Session>,
    events: Sender<Event>,
    wake: W,
    queued: [Option<(Job, Cancel)>; 3],
    sweep: Option<SweepWork>,
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
    spec: RunSpec,
    fractions: Vec<f64>,
}

impl<W: Fn()> Worker<W> {
    fn new(model: ModelSource, events: Sender<Event>, wake: W) -> Self {
        let mut worker = Self {
            session: None,
            events,
            wake,
            queued: Default::default(),
            sweep: None,
            source: None,
            exports: Vec::new(),
            background: Cancel::default(),
            unloaded: "no model is loaded".into(),
        };
        match Session::load(&model, &mut |line| worker_say(&worker.events, &worker.wake, line)) {
            Ok(s) => {
                let vlm = s.vlm().ok().map(|vlm| VlmInfo {
                    num_layers: vlm.num_layers(),
                    context: vlm.arch.lm().cfg.max_position_embeddings,
                    split_image: vlm.split_image,
                    memory: vlm.memory_estimate(),
                    capabilities: s.capabilities(),
                });
                worker.send(Event::Ready { id: s.id.clone(), takes_prompt: s.takes_prompt(), vlm });
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
            let idle = self.queued.iter().all(Option::is_none) && self.sweep.is_none() && self.exports.is_empty();
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
            } else if let Err(e) = self.sweep_step() {
                let id = self.sweep.take().map(|w| w.id);
                self.send(Event::Failed(format!("ratio sweep: {e}")));
                id.into_iter().for_each(|id| self.send(Event::SweepStopped { id }));
            }
        }
    }

    fn enqueue(&mut self, job: Job, cancel: Cancel) {
        match (kind(&job), job) {
            (_, Job::Sweep { id, spec, fractions }) => self.sweep = Some(SweepWork { id, spec, fractions }),
            (Some(kind), job) => {
                if kind == Kind::Open {
                    self.sweep = None; // a new image makes the sweep meaningless
                }
                self.queued[kind as usize] = Some((job, cancel));
            }
            (None, job) => self.exports.push((job, cancel)),
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

    /// The session and a sender of request `id`'s answer tokens (a VLM's; encoders send none).
    fn session_streaming(&mut self, id: u64) -> crate::Result<(&mut Session, impl FnMut(u32) + '_)> {
        let Self { session, events, wake, unloaded, .. } = self;
        let session = session.as_mut().ok_or_else(|| Error::NotReady(unloaded.clone()))?;
        // The stream holds its own handle on the tokenizer: the session is borrowed mutably.
        let tokenizer = session.vlm().ok().map(|v| v.tokenizer.clone());
        Ok((session, stream(events, &*wake, id, tokenizer)))
    }

    fn run(&mut self, job: Job, cancel: &Cancel) -> crate::Result<()> {
        match job {
            Job::Open { id, source, ask } => self.open(id, source, &ask, cancel)?,
            Job::Run { id, spec } => {
                let result = {
                    let (session, mut on_token) = self.session_streaming(id)?;
                    session.run(&spec, &mut on_token, cancel)?
                };
                self.send(Event::Ran { id, result });
            }
            Job::Compare { id, specs } => {
                let session = self.session.as_mut().ok_or_else(|| Error::NotReady(self.unloaded.clone()))?;
                let results =
                    specs.iter().map(|spec| session.run(spec, &mut |_| {}, cancel)).collect::<crate::Result<_>>()?;
                self.send(Event::Compared { id, results });
            }
            Job::Export { figure, look, path, force } => {
                let (figure_path, sidecar) = self.export(figure, look, &path, force)?;
                self.send(Event::Exported(figure_path, sidecar));
            }
            Job::Sweep { .. } => unreachable!("background work is stepped, not run"),
        }
        Ok(())
    }

    fn open(&mut self, id: u64, source: ImageSource, ask: &Ask, cancel: &Cancel) -> crate::Result<()> {
        let read =
            || std::fs::read(&source.label).map_err(|e| Error::image(&source.label, format!("cannot read: {e}")));
        let bytes: Arc<[u8]> = match &source.bytes {
            Some(bytes) => bytes.clone(),
            None => read()?.into(),
        };
        let opened = {
            let (session, mut on_token) = self.session_streaming(id)?;
            session.open_bytes(&bytes, &source.label, ask, &mut on_token, cancel)?
        };
        let image = match opened {
            crate::session::Opened::Encoder { input, analysis } => {
                self.source = Some((source.clone(), input.sha256.clone()));
                OpenedImage::Encoder(Arc::new(Opened { label: source.label, input, analysis }))
            }
            crate::session::Opened::Answer(full) => {
                // Exports name the image this answer is about.
                self.source = Some((source.clone(), full.image.sha256.clone()));
                OpenedImage::Answer(Arc::new(VlmOpened {
                    label: source.label,
                    question: ask.prompt.clone(),
                    image: full.image.clone(),
                    grid: [full.vision.grid.0, full.vision.grid.1],
                    saliency: full.vision.saliency.clone(),
                    tower_layers: full.vision.context().num_layers,
                    patch_block: full.vision.patch_block,
                    prompt_tokens: full.prompt.ids.len(),
                    run: full.run.clone(),
                }))
            }
        };
        self.send(Event::Opened { id, image });
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

    /// One point of the sweep: the run at the next removed fraction.
    fn sweep_step(&mut self) -> crate::Result<()> {
        let Some(work) = self.sweep.as_mut() else { return Ok(()) };
        let Some(removed) = work.fractions.pop() else {
            self.sweep = None;
            return Ok(());
        };
        let (id, spec) = (work.id, RunSpec { budget: Budget::RemoveFraction(removed), ..work.spec.clone() });
        let background = self.background.clone();
        let session = self.session.as_mut().ok_or_else(|| Error::NotReady(self.unloaded.clone()))?;
        match session.run(&spec, &mut |_| {}, &background) {
            Ok(result) => self.send(Event::SweepPoint { id, removed, result }),
            // Interrupted for an interactive job: this point is computed later.
            Err(Error::Cancelled) => self.sweep.iter_mut().for_each(|w| w.fractions.push(removed)),
            // A ratio this method cannot reach on this model (ToMe on few blocks): no point.
            Err(Error::Config { field: "budget", .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Sends each answer token of request `id` as it comes, with the answer so far (nothing
/// without a tokenizer: an encoder answers no tokens).
fn stream<'a>(
    events: &'a Sender<Event>,
    wake: &'a impl Fn(),
    id: u64,
    tokenizer: Option<Arc<tokenizers::Tokenizer>>,
) -> impl FnMut(u32) + 'a {
    let mut ids = Vec::new();
    move |token| {
        let Some(tokenizer) = &tokenizer else { return };
        ids.push(token);
        let piece = tokenizer.decode(&[token], false).unwrap_or_default();
        let text = tokenizer.decode(&ids, true).unwrap_or_default().trim().to_string();
        events.send(Event::Token { id, piece, text }).ok();
        wake();
    }
}

fn worker_say(events: &Sender<Event>, wake: &impl Fn(), line: &str) {
    events.send(Event::Status(line.into())).ok();
    wake();
}
