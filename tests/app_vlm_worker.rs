//! The app's worker with a tiny vision-language model (tests/fixtures/vlm): it says the model is
//! a VLM, streams every answer token before the answer itself, runs reduced runs and the ratio
//! sweep against the full answer, and reports a question that overflows the context as an
//! error without stopping.

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{asset, fixture};
use tokenlens::app::{Event, ImageSource, Job, OpenedImage, WorkerHandle};
use tokenlens::model::ModelSource;
use tokenlens::reduce::{Budget, Method, ReducerConfig};
use tokenlens::session::vlm::sweep_fractions;
use tokenlens::session::{Ask, RunResult, RunSpec};

thread_local! {
    /// Events this test thread has received from its current worker (see [`Gate::arm_after`]).
    static RECEIVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn next(worker: &WorkerHandle) -> Event {
    match worker.events.recv_timeout(Duration::from_secs(120)) {
        Ok(e) => {
            RECEIVED.with(|r| r.set(r.get() + 1));
            e
        }
        Err(RecvTimeoutError::Timeout) => panic!("the worker said nothing for 2 minutes"),
        Err(RecvTimeoutError::Disconnected) => panic!("the worker stopped"),
    }
}

/// The pieces streamed for request `id` and the last text so far, until `done` picks its
/// answer out of an event.
fn streamed_until<T>(worker: &WorkerHandle, id: u64, done: impl Fn(Event) -> Option<T>) -> ((Vec<String>, String), T) {
    let mut streamed = (Vec::new(), String::new());
    loop {
        match next(worker) {
            Event::Token { id: i, piece, text } if i == id => {
                streamed.0.push(piece);
                streamed.1 = text;
            }
            Event::Failed(e) => panic!("{e}"),
            event => {
                if let Some(answer) = done(event) {
                    return (streamed, answer);
                }
            }
        }
    }
}

/// Holds the worker thread once, right after the next event it sends (its `wake` call), until
/// released: a test can act while a job is known to be mid-way.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    armed: bool,
    released: bool,
    /// `wake` calls done: the worker calls it once after each event it sends.
    passed: usize,
}

impl Gate {
    /// The next `pass` blocks until `release`, once the worker has woken for every event this
    /// thread received (a `wake` still due for an event already read must not be the one held).
    fn arm_after_received(&self) {
        let received = RECEIVED.with(std::cell::Cell::get);
        let mut state = self.0.0.lock().unwrap();
        while state.passed < received {
            state = self.0.1.wait_timeout(state, Duration::from_secs(120)).unwrap().0;
        }
        state.armed = true;
        state.released = false;
    }

    fn release(&self) {
        self.0.0.lock().unwrap().released = true;
        self.0.1.notify_all();
    }

    /// Called by the worker after each event.
    fn pass(&self) {
        let mut state = self.0.0.lock().unwrap();
        if state.armed {
            state.armed = false;
            while !state.released {
                state = self.0.1.wait(state).unwrap();
            }
        }
        state.passed += 1;
        self.0.1.notify_all();
    }
}

fn spec() -> RunSpec {
    RunSpec {
        method: Some(Method::Vision(ReducerConfig::from_name("random").unwrap())),
        budget: Budget::RemoveFraction(0.5),
        max_new_tokens: 8,
        ..RunSpec::default()
    }
}

fn image() -> ImageSource {
    ImageSource { label: asset("chelsea.png"), bytes: None }
}

#[test]
fn the_worker_streams_answers_runs_the_sweep_and_survives_errors() {
    for model in ["llava", "idefics3"] {
        let gate = Gate::default();
        let held = gate.clone();
        RECEIVED.with(|r| r.set(0));
        let mut worker = WorkerHandle::spawn(ModelSource::File(fixture(&format!("vlm/{model}"))), move || held.pass());
        loop {
            match next(&worker) {
                Event::Ready { vlm: Some(info), .. } => {
                    assert_eq!((info.num_layers, info.context), (2, Some(64)), "{model}");
                    // The guard's estimate for the cost panel: the KV cache at the 64-token context.
                    let memory = info.memory.expect("the memory estimate");
                    assert_eq!((memory.format(), memory.kv_tokens), ("f32".to_string(), 64), "{model}");
                    break;
                }
                Event::Status(_) => {}
                Event::Failed(e) => panic!("{model}: {e}"),
                _ => panic!("{model}: an event before the model is ready"),
            }
        }

        // The full answer: its tokens stream in first, one event each.
        let question = "what is in the image?".to_string();
        let full_spec = RunSpec { method: None, ..spec() };
        worker.submit(Job::Open {
            id: 1,
            source: image(),
            ask: Ask { prompt: question, spec: full_spec, split: false },
        });
        let ((streamed, text), opened) = streamed_until(&worker, 1, |e| match e {
            Event::Opened { id: 1, image: OpenedImage::Answer(opened) } => Some(opened),
            _ => None,
        });
        assert_eq!(streamed, opened.run.answer.pieces, "{model}: streamed pieces");
        assert_eq!(text, opened.run.answer.text, "{model}: the answer so far, at the end");
        assert!(!streamed.is_empty());
        assert_eq!(opened.grid[0] * opened.grid[1], opened.saliency.len());

        // A slider move while a reduced run decodes: the worker is held right after the
        // run's first token (the gate in `wake`), the newer run is submitted, and the first is
        // cancelled mid-answer: it streams no further token and sends no result.
        gate.arm_after_received();
        worker.submit(Job::Run { id: 2, spec: spec() });
        loop {
            match next(&worker) {
                Event::Token { id: 2, .. } => break,
                Event::Failed(e) => panic!("{model}: {e}"),
                _ => {}
            }
        }
        let keep_more = RunSpec { budget: Budget::RemoveFraction(0.25), ..spec() };
        worker.submit(Job::Run { id: 3, spec: keep_more });
        gate.release();
        let mut streamed = Vec::new();
        let run = loop {
            match next(&worker) {
                Event::Token { id: 2, .. } => panic!("{model}: the superseded run went on decoding"),
                Event::Ran { id: 2, .. } => panic!("{model}: the superseded run sent its result"),
                Event::Token { id: 3, piece, .. } => streamed.push(piece),
                Event::Ran { id: 3, result: RunResult::Answer(run) } => break run,
                Event::Failed(e) => panic!("{model}: {e}"),
                _ => {}
            }
        };
        assert_eq!(streamed, run.answer.pieces, "{model}: streamed reduced pieces");
        assert!(run.full_answer_logprob.is_some());
        let n = opened.grid[0] * opened.grid[1];
        assert_eq!(run.keep, Budget::RemoveFraction(0.25).resolve(n).unwrap());
        // Left alone, the superseded run's answer is longer than the one token it streamed:
        // the cancellation cut real work short.
        worker.submit(Job::Run { id: 9, spec: spec() });
        let ((alone, _), _) = streamed_until(&worker, 9, |e| matches!(e, Event::Ran { id: 9, .. }).then_some(()));
        assert!(alone.len() > 1, "{model}: {alone:?}");

        // The sweep: one point per fraction, in the background.
        let fractions = sweep_fractions();
        worker.submit(Job::Sweep { id: 4, spec: spec(), fractions: fractions.clone() });
        let mut points = Vec::new();
        while points.len() < fractions.len() {
            match next(&worker) {
                Event::SweepPoint { id: 4, removed, result: RunResult::Answer(run) } => {
                    points.push(tokenlens::session::vlm::SweepPoint::of(removed, &run))
                }
                Event::Failed(e) => panic!("{model}: {e}"),
                _ => {}
            }
        }
        let zero = points.iter().find(|p| p.removed == 0.0).expect("the full model's point");
        assert!(!zero.changed, "{model}: nothing removed, the same answer");

        // A question far past the 64-token context: a clear error, and the worker goes on.
        let long = "please describe every detail of this picture ".repeat(8);
        worker.submit(Job::Open { id: 5, source: image(), ask: Ask { prompt: long, spec: spec(), split: false } });
        loop {
            match next(&worker) {
                Event::Failed(e) => {
                    assert!(e.contains("context of 64"), "{model}: {e}");
                    break;
                }
                Event::Opened { id: 5, .. } => panic!("{model}: the long question was answered"),
                _ => {}
            }
        }
        worker.submit(Job::Run { id: 6, spec: spec() });
        loop {
            match next(&worker) {
                Event::Ran { id: 6, result: RunResult::Answer(run) } => {
                    let half = Budget::RemoveFraction(0.5).resolve(n).unwrap();
                    assert_eq!((run.num_image_tokens, run.keep), (n, half), "{model}: against the last full run");
                    break;
                }
                Event::Failed(e) => panic!("{model}: {e}"),
                _ => {}
            }
        }
    }
}

#[test]
fn a_folder_without_its_tokenizer_says_so_to_every_job() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("vlm/llava")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tokenizer.json" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut worker = WorkerHandle::spawn(ModelSource::File(dir.path().to_path_buf()), || {});
    worker.submit(Job::Run { id: 1, spec: spec() });
    let mut failures = Vec::new();
    while failures.len() < 2 {
        match next(&worker) {
            Event::Failed(e) => failures.push(e),
            Event::Ready { .. } => panic!("loaded without a tokenizer"),
            _ => {}
        }
    }
    for e in failures {
        assert!(e.contains("could not be loaded") && e.contains("tokenizer.json"), "{e}");
    }
}

#[test]
fn the_default_answer_limit_is_fitted_to_the_context() {
    // The app's defaults (32 answer tokens) on the LLaVA fixture, whose prompt leaves fewer of
    // its 64 positions: the full run answers within the room left instead of failing.
    let mut worker = WorkerHandle::spawn(ModelSource::File(fixture("vlm/llava")), || {});
    let settings = tokenlens::app::VlmSettings::default();
    assert_eq!(settings.max_new_tokens, 32);
    let full_spec = RunSpec { method: None, ..settings.spec(Budget::default(), Default::default()) };
    let ask = Ask { prompt: settings.question, spec: full_spec, split: false };
    worker.submit(Job::Open { id: 1, source: image(), ask });
    let opened = loop {
        match next(&worker) {
            Event::Opened { id: 1, image: OpenedImage::Answer(opened) } => break opened,
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    };
    let fitted = opened.run.spec.max_new_tokens;
    assert!(fitted < 32, "{fitted}");
    assert_eq!(opened.prompt_tokens + fitted, 64, "the answer may use exactly the room the prompt leaves");
    assert!(opened.run.answer.ids.len() <= fitted);
}
