//! Open and Export dialogs that never fail silently.
//!
//! The system dialog comes first (the desktop portal, else zenity, through rfd), on its own
//! thread so the window keeps drawing. Where neither can be shown (a tiling window manager, a
//! remote X session, a container), rfd returns "no file" just as if the user had cancelled;
//! [`FailureLog`] tells the two apart, and egui_file's in-app browser takes over, for the rest
//! of the session. Its top line is a path box: a typed or pasted path, then Enter. Its icons
//! (folder, file, up, refresh) are emoji that only egui's emoji fonts have: Cargo.toml turns on
//! egui's `monochrome_emoji_fonts`, without which they drew as empty boxes.
//!
//! # Design
//! Question: how to know that no system dialog was shown? rfd has no error result.
//! Decision: rfd logs an error through `log` when its last fallback, zenity, fails to start; a
//! logger records such errors per thread, and the dialog thread reads its own flag.
//! Trade-offs: this reads rfd's log text ("zenity"), pinned with rfd 0.17; if another logger
//! was installed first, a failure looks like a cancel (the unit test below checks the text).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError, channel};

use eframe::egui;

use crate::export::Figure;

/// What a dialog is for.
#[derive(Clone)]
pub enum Purpose {
    Open,
    Model,
    Export(Figure),
}

/// The system dialog's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Picked(PathBuf),
    Cancelled,
    /// No dialog could be shown (no portal, no zenity).
    Unavailable,
}

/// Which dialog picked a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picker {
    /// The system dialog: a save dialog there (GTK, the portal, zenity with rfd's
    /// `--confirm-overwrite`) has asked before returning an existing file.
    System,
    /// egui_file's browser, which asks nothing.
    InApp,
}

/// Whether to ask "replace?" before writing the figure `path` and its sidecar. `confirmed`: the
/// file a save dialog has already asked about (the system dialog asks about the file it returns;
/// the in-app browser about none). Replacing a figure replaces its sidecar with it, so a
/// confirmed figure is not asked about twice; a sidecar alone, or a path that differs from the
/// one confirmed (an extension added), is asked about once.
pub fn ask_before_replacing(path: &Path, confirmed: Option<&Path>) -> bool {
    let figure = path.exists();
    if figure && confirmed == Some(path) {
        return false;
    }
    figure || crate::export::sidecar_path(path).exists()
}

/// What the app learns from the dialogs this frame.
pub enum Outcome {
    Picked(Purpose, PathBuf, Picker),
    /// The system dialog could not be shown; the in-app browser is on screen instead.
    FellBack,
}

thread_local! {
    static SYSTEM_DIALOG_FAILED: Cell<bool> = const { Cell::new(false) };
}

/// Records, per thread, that rfd could not show any dialog.
struct FailureLog;

impl log::Log for FailureLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error && metadata.target().starts_with("rfd")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) && record.args().to_string().contains("zenity") {
            SYSTEM_DIALOG_FAILED.with(|f| f.set(true));
        }
    }

    fn flush(&self) {}
}

static FAILURE_LOG: FailureLog = FailureLog;

/// Runs an rfd dialog and says whether it was shown.
fn system_answer(pick: impl FnOnce() -> Option<PathBuf>) -> Answer {
    // Err: a logger is already installed (then failures look like cancels).
    if log::set_logger(&FAILURE_LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Error);
    }
    SYSTEM_DIALOG_FAILED.with(|f| f.set(false));
    let picked = pick();
    match picked {
        Some(path) => Answer::Picked(path),
        None if SYSTEM_DIALOG_FAILED.with(Cell::get) => Answer::Unavailable,
        None => Answer::Cancelled,
    }
}

/// A question for a dialog: what for, the folder to begin in, a file name to suggest.
#[derive(Clone)]
pub struct Request {
    pub purpose: Purpose,
    pub start: Option<PathBuf>,
    pub name: String,
}

/// The dialog on screen, if any, and whether the system dialog works here.
#[derive(Default)]
pub struct FileDialogs {
    system: Option<(Request, Receiver<Answer>)>,
    in_app: Option<(Purpose, egui_file::FileDialog)>,
    /// No system dialog could be shown this session: go straight to the in-app browser.
    pub system_unavailable: bool,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

impl FileDialogs {
    pub fn is_open(&self) -> bool {
        self.system.is_some() || self.in_app.is_some()
    }

    /// The in-app browser is on screen.
    pub fn in_app_open(&self) -> bool {
        self.in_app.is_some()
    }

    /// Asks for a path: the system dialog, or the in-app browser where there is none.
    /// `start` is a folder to begin in; `name` a file name to suggest when saving.
    pub fn ask(&mut self, request: Request) {
        if self.is_open() {
            return;
        }
        if self.system_unavailable {
            return self.ask_in_app(request);
        }
        let (tx, rx) = channel();
        let Request { purpose: kind, start, name: name_owned } = request.clone();
        std::thread::spawn(move || {
            let answer = system_answer(|| {
                let mut dialog = rfd::FileDialog::new();
                if let Some(dir) = &start {
                    dialog = dialog.set_directory(dir);
                }
                match kind {
                    Purpose::Open => dialog.add_filter("Images", &IMAGE_EXTENSIONS).pick_file(),
                    Purpose::Model => dialog.pick_folder(),
                    Purpose::Export(_) => dialog
                        .add_filter("SVG (vector)", &["svg"])
                        .add_filter("PNG", &["png"])
                        .set_file_name(name_owned)
                        .save_file(),
                }
            });
            tx.send(answer).ok(); // Err only if the app has closed
        });
        self.system = Some((request, rx));
    }

    /// Shows the in-app browser.
    pub fn ask_in_app(&mut self, request: Request) {
        let Request { purpose, start, name } = request;
        let mut dialog = match purpose {
            Purpose::Open => egui_file::FileDialog::open_file().title("Open an image (PNG or JPEG)").show_files_filter(
                Box::new(|p: &Path| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
                }),
            ),
            Purpose::Model => egui_file::FileDialog::select_folder().title("Open a Hugging Face model folder"),
            Purpose::Export(_) => {
                egui_file::FileDialog::save_file().title("Export as .svg or .png").default_filename(name)
            }
        };
        if let Some(dir) = start.or_else(|| std::env::current_dir().ok()) {
            dialog = dialog.initial_path(dir);
        }
        dialog = dialog.id(egui::Id::unique("tokenlens-file-browser")).default_size([620.0, 460.0]).show_rename(false);
        dialog.open();
        self.in_app = Some((purpose, dialog));
    }

    /// Polls the system dialog and draws the in-app browser; returns what happened.
    pub fn ui(&mut self, ctx: &egui::Context) -> Option<Outcome> {
        if let Some((_, rx)) = &self.system {
            let answer = match rx.try_recv() {
                Ok(answer) => Some(answer),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Answer::Cancelled),
            };
            ctx.request_repaint_after(std::time::Duration::from_millis(200)); // to see its answer
            if let Some(answer) = answer {
                let (request, _) = self.system.take().expect("checked above");
                match answer {
                    Answer::Picked(path) => return Some(Outcome::Picked(request.purpose, path, Picker::System)),
                    Answer::Cancelled => return None,
                    Answer::Unavailable => {
                        self.system_unavailable = true;
                        self.ask_in_app(request);
                        return Some(Outcome::FellBack);
                    }
                }
            }
        }
        let (_, dialog) = self.in_app.as_mut()?;
        dialog.show(ctx);
        match dialog.state() {
            egui_file::State::Open => None,
            egui_file::State::Selected => {
                let (purpose, dialog) = self.in_app.take().expect("checked above");
                dialog.path().map(|p| Outcome::Picked(purpose, p.to_path_buf(), Picker::InApp))
            }
            egui_file::State::Cancelled | egui_file::State::Closed => {
                self.in_app = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialog_that_could_not_be_shown_is_not_a_cancel() {
        assert_eq!(system_answer(|| Some(PathBuf::from("/a.png"))), Answer::Picked("/a.png".into()));
        assert_eq!(system_answer(|| None), Answer::Cancelled);
        // What rfd 0.17 logs when the portal failed and zenity could not start.
        let failed = || {
            log::error!(target: "rfd::backend::xdg_desktop_portal", "Failed to pick file with zenity: not found");
            None
        };
        assert_eq!(system_answer(failed), Answer::Unavailable);
        // Only this thread's dialog counts.
        assert_eq!(system_answer(|| None), Answer::Cancelled);
    }
}
