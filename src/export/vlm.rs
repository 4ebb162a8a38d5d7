//! Figures of a vision-language model's answers ([`Figure::VlmAnswer`], [`Figure::VlmCompare`]),
//! drawn by [`render::answers`]. A sidecar re-makes its figure: decoding is greedy, so the same
//! weights, image, question and specs give the same answers. The session's cached full answer
//! serves when it is the one the figure needs (the app exports what is on screen without
//! answering again); reduced runs resume from it, bit for bit equal to runs from scratch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{ExportSpec, Figure, MAX_FIGURE_PIXELS, encode, readable};
use crate::figures;
use crate::render::answers::{AnswerColumn, AnswerFigure, Mark, TextBlock, answer_scene};
use crate::render::{self, GroupStyle, HeatLook, Heatmap, Panel, PanelContent, TokenGroups};
use crate::session::RunSpec;
use crate::session::Session;
use crate::session::vlm::{DiffOp, Resume, Vlm, VlmFull, VlmRun};
use crate::{Cancel, Error, Result};

/// The answer token whose text-to-image map a [`Figure::VlmAnswer`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerToken {
    /// Of the reduced answer, else of the full one.
    pub reduced: bool,
    pub index: usize,
}

/// Most runs a compare figure holds (the compare view's).
pub const MAX_COMPARE_RUNS: usize = 4;

/// How `vlm` was loaded, as a sidecar records it.
pub fn load_options(vlm: &Vlm) -> serde_json::Value {
    serde_json::to_value(vlm.options).unwrap_or_default()
}

impl Figure {
    /// The figure with the session's load options recorded (VLM figures; others unchanged).
    pub(super) fn with_load(mut self, session: &Session) -> Self {
        if let (Figure::VlmAnswer { load, .. } | Figure::VlmCompare { load, .. }, Ok(vlm)) = (&mut self, session.vlm())
        {
            *load = load_options(vlm);
        }
        self
    }
}

/// What a sidecar's `weights_sha256` is the sha256 of (its `weights_digest`; absent: the file
/// bytes, as every sidecar made before the field existed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsDigest {
    /// The weight files' bytes: an encoder's weights file, or a VLM folder's one `.safetensors`
    /// file, or the lines "NAME SHA256" of its shards in name order. A VLM's reads every byte
    /// (14 GB for LLaVA-7B; once per process, see [`file_sha256`]).
    #[default]
    FileBytes,
    /// A VLM folder's `.safetensors` files, version 1, read in kilobytes: for each file in name
    /// order, its name, its byte size, its JSON header (every tensor's name, dtype, shape and
    /// offsets, and the metadata) and [`SAMPLE_BLOCKS`] blocks of [`SAMPLE_BYTES`] of its tensor
    /// data spaced evenly from the first byte to the last (all of it when smaller). A fine-tune
    /// of the same architecture changes the sampled blocks; a change confined to bytes between
    /// them is not seen.
    SafetensorsSampledV1,
}

impl WeightsDigest {
    pub fn is_file_bytes(&self) -> bool {
        *self == Self::FileBytes
    }
}

/// Blocks of tensor data [`WeightsDigest::SafetensorsSampledV1`] reads per file, and their size.
pub use crate::model::digest::{SAMPLE_BLOCKS, SAMPLE_BYTES};

/// Checksums already computed, by file, size and modification time: a 14 GB checkpoint is read
/// once per process, not once per export.
static SHA_MEMO: Mutex<Vec<(PathBuf, u64, std::time::SystemTime, String)>> = Mutex::new(Vec::new());

fn file_sha256(path: &Path) -> Result<String> {
    let cannot = |e: std::io::Error| Error::weights(path, format!("cannot read: {e}"));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().map_err(cannot)?);
    let memo = |m: &Vec<(PathBuf, u64, std::time::SystemTime, String)>| {
        m.iter().find(|(p, l, t, _)| (p, *l, *t) == (&key.0, key.1, key.2)).map(|e| e.3.clone())
    };
    if let Some(sha) = memo(&SHA_MEMO.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(sha);
    }
    let sha = crate::model::fetch::sha256_file(path).map_err(cannot)?;
    SHA_MEMO.lock().unwrap_or_else(|e| e.into_inner()).push((key.0, key.1, key.2, sha.clone()));
    Ok(sha)
}

/// The checksum of a VLM folder's weights, as `digest` says (a sidecar's `weights_sha256`).
pub fn weights_sha256(dir: &Path, digest: WeightsDigest) -> Result<String> {
    let files = crate::model::digest::safetensors_files(dir)?;
    match (files.as_slice(), digest) {
        (files, WeightsDigest::SafetensorsSampledV1) => crate::model::digest::sampled_sha256(files),
        ([one], WeightsDigest::FileBytes) => file_sha256(one),
        (shards, WeightsDigest::FileBytes) => {
            let mut lines = String::new();
            for f in shards {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                lines.push_str(&format!("{name} {}\n", file_sha256(f)?));
            }
            Ok(crate::model::fetch::sha256_hex(lines.as_bytes()))
        }
    }
}

/// Renders a VLM figure (the weights were checked by the caller).
pub(super) fn render(session: &Session, spec: &ExportSpec) -> Result<Vec<u8>> {
    let vlm = session.vlm()?;
    let cancel = Cancel::default();
    match &spec.figure {
        Figure::VlmAnswer { question, split_image, load, run, token } => {
            check_load(vlm, load)?;
            let full = full_run(session, spec, question, *split_image, run)?;
            let reduced = vlm.run(&full, run, Resume::FromCache, &mut |_| {}, &cancel)?;
            Draw { spec, vlm, full: &full }.answer(&reduced, *token)
        }
        Figure::VlmCompare { question, split_image, load, runs } => {
            check_load(vlm, load)?;
            let first = check_compare(spec, runs)?;
            let full = full_run(session, spec, question, *split_image, first)?;
            let runs = runs
                .iter()
                .map(|r| vlm.run(&full, r, Resume::FromCache, &mut |_| {}, &cancel))
                .collect::<Result<Vec<_>>>()?;
            Draw { spec, vlm, full: &full }.compare(&runs)
        }
        _ => unreachable!("only VLM figures are drawn here"),
    }
}

fn check_load(vlm: &Vlm, load: &serde_json::Value) -> Result<()> {
    let now = load_options(vlm);
    if *load == now {
        return Ok(());
    }
    Err(Error::Config {
        field: "load",
        reason: format!(
            "the figure was made with the model loaded as {load}, this session loaded it as {now}: load it the \
             same way (--quantize, --dtype) to re-make it"
        ),
    })
}

/// 1 to [`MAX_COMPARE_RUNS`] runs at one budget, answer length and view layer, and a figure
/// within [`MAX_FIGURE_PIXELS`]; the first run.
fn check_compare<'a>(spec: &ExportSpec, runs: &'a [RunSpec]) -> Result<&'a RunSpec> {
    let refuse = |reason: String| Error::Config { field: "figure", reason };
    let first = runs.first().ok_or_else(|| refuse("a compare figure needs at least one run".into()))?;
    if runs.len() > MAX_COMPARE_RUNS {
        return Err(refuse(format!("{} runs: a compare figure holds at most {MAX_COMPARE_RUNS}", runs.len())));
    }
    let shared = |r: &RunSpec| (r.budget, r.max_new_tokens, r.view_layer);
    if runs.iter().any(|r| shared(r) != shared(first)) {
        return Err(refuse("the runs of a compare figure share one budget, answer length and view layer".into()));
    }
    // The panels and about as much again for the text under them.
    let pixels = 2 * (runs.len() as u64 + 1) * u64::from(spec.panel_px).pow(2);
    if pixels > MAX_FIGURE_PIXELS {
        return Err(refuse(format!("{pixels} pixels are over the limit of {MAX_FIGURE_PIXELS}: use a smaller size")));
    }
    Ok(first)
}

/// The full run the figure compares with: the session's cached one if it is for this image,
/// split, question and answer length, else answered again (not cached).
fn full_run(session: &Session, spec: &ExportSpec, question: &str, split: bool, run: &RunSpec) -> Result<Arc<VlmFull>> {
    let bytes = std::fs::read(&spec.image).map_err(|e| Error::image(&spec.image, format!("cannot read: {e}")))?;
    let image = session.vlm_image(&bytes, &spec.image, split)?;
    if image.sha256 != spec.image_sha256 {
        return Err(Error::image(
            &spec.image,
            format!(
                "the file changed since the figure was made (sha256 {} expected)",
                super::short(&spec.image_sha256)
            ),
        ));
    }
    let full_spec = RunSpec { method: None, ..run.clone() };
    if let Ok(cached) = session.answered()
        && cached.image.sha256 == image.sha256
        && cached.image.tiles == image.tiles
        && cached.prompt.question == question
        && cached.run.spec == full_spec
    {
        return Ok(cached);
    }
    Ok(Arc::new(session.vlm()?.full(image, question, &full_spec, &mut |_| {}, &Cancel::default())?))
}

/// The run under which the full answer is most likely (ties: the first); none without a
/// log-probability. The app's compare view and its export mark the same run best.
pub fn best_run(runs: &[&VlmRun]) -> Option<usize> {
    let score = |r: &VlmRun| r.full_answer_logprob.unwrap_or(f64::NEG_INFINITY);
    (0..runs.len())
        .filter(|&i| runs[i].full_answer_logprob.is_some())
        .reduce(|best, i| if score(runs[i]) > score(runs[best]) { i } else { best })
}

/// Draws figures of one full run.
struct Draw<'a> {
    spec: &'a ExportSpec,
    vlm: &'a Vlm,
    full: &'a VlmFull,
}

/// The tokens of one side of a diff (`reduced`: the second answer's), in order, with marks.
pub fn side_of_diff(diff: &[DiffOp], reduced: bool) -> Vec<(usize, Mark)> {
    diff.iter()
        .filter_map(|op| match (*op, reduced) {
            (DiffOp::Same { a, .. }, false) => Some((a, Mark::Same)),
            (DiffOp::Same { b, .. }, true) => Some((b, Mark::Same)),
            (DiffOp::Removed { a }, false) => Some((a, Mark::Removed)),
            (DiffOp::Added { b }, true) => Some((b, Mark::Added)),
            _ => None,
        })
        .collect()
}

impl Draw<'_> {
    fn grid(&self) -> (usize, usize) {
        self.full.vision.grid
    }

    /// Each answer token as it reads in the answer (its spacing included), line breaks as
    /// spaces: the growth of the decoded prefix, or the token decoded alone where the prefix
    /// itself changed (a multi-byte character completed).
    fn token_texts(&self, run: &VlmRun) -> Vec<String> {
        let ids = &run.answer.ids;
        let decode = |n: usize| self.vlm.tokenizer.decode(&ids[..n], true).unwrap_or_default();
        let mut prev = String::new();
        (0..ids.len())
            .map(|i| {
                let cur = decode(i + 1);
                let piece = match cur.strip_prefix(prev.as_str()) {
                    Some(grown) => grown.to_string(),
                    None => run.answer.pieces.get(i).cloned().unwrap_or_default(),
                };
                prev = cur;
                piece.replace(['\n', '\t', '\r'], " ")
            })
            .collect()
    }

    /// `run`'s answer as a paragraph: `label`, then its tokens marked as `marks` say.
    fn answer_block(&self, label: Option<String>, run: &VlmRun, marks: &[(usize, Mark)]) -> TextBlock {
        let texts = self.token_texts(run);
        let tokens = marks.iter().filter_map(|&(i, m)| Some((texts.get(i)?.clone(), m))).collect();
        TextBlock { label, tokens }
    }

    /// A column: `content` over the photo under `header` (with titles on), `below` under it.
    fn column<'p>(&'p self, content: PanelContent<'p>, header: String, below: Vec<TextBlock>) -> AnswerColumn<'p> {
        let panel = Panel {
            photo: &self.full.image.photo,
            place: figures::vlm_placement(&self.full.image),
            content,
            title: None,
        };
        AnswerColumn { header: self.spec.title.then_some(header), panel, below }
    }

    /// "model · image.png": a title never shows where the file lives.
    fn made_title(&self, what: &str) -> String {
        let image = self.spec.image.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.spec.title_text.clone().unwrap_or_else(|| format!("{} · {image}{what}", self.spec.model))
    }

    fn finish(&self, fig: AnswerFigure) -> Result<Vec<u8>> {
        let fig = AnswerFigure { title: self.spec.title.then(|| fig.title.clone()).flatten(), ..fig };
        let default_px = render::heat::default_label_px(self.spec.panel_px.saturating_mul(2));
        let scene = readable(self.spec, default_px, |px| {
            answer_scene(&AnswerFigure { label_px: Some(px), ..fig.clone() }, self.spec.panel_px)
        });
        encode(self.spec, &scene)
    }

    /// The note of `run`'s image tokens the grid leaves out, if the spec draws notes.
    fn off_grid(&self, run: &VlmRun) -> Option<String> {
        let note = figures::off_grid_note(self.grid(), run.num_image_tokens, &run.groups);
        note.filter(|_| self.spec.notes())
    }

    fn full_log_prob(&self) -> f64 {
        self.full.run.answer.logprobs.iter().map(|&v| f64::from(v)).sum()
    }

    /// The token grid, the text-to-image map of `token`, both answers with the diff.
    fn answer(&self, reduced: &VlmRun, token: AnswerToken) -> Result<Vec<u8>> {
        let s = self.spec;
        let (rows, cols) = self.grid();
        let (groups, style) = figures::vlm_token_groups(self.grid(), reduced);
        let looked = if token.reduced { reduced } else { &self.full.run };
        let side = if token.reduced { "reduced" } else { "full" };
        let attention = looked.answer.image_attention.get(token.index).ok_or_else(|| Error::Config {
            field: "token",
            reason: format!(
                "the {side} answer has {}: there is no token {}",
                crate::render::text::count(looked.answer.ids.len(), "token", "tokens"),
                token.index
            ),
        })?;
        let heat =
            Heatmap::new(rows, cols, attention.iter().take(rows * cols).map(|v| v.unwrap_or(f32::NAN)).collect());
        let look = HeatLook {
            norm: s.scale.norm(),
            colormap: s.colormap,
            opacity: s.opacity,
            smooth: false,
            grid_lines: false,
        };
        let piece = self.token_texts(looked).get(token.index).map_or_else(String::new, |t| t.trim().to_string());
        let layer = looked.spec.view_layer.unwrap_or(self.vlm.num_layers() / 2);
        let method = figures::vlm_run_title(reduced);
        let name = reduced.spec.method.as_ref().map_or("Full model", |m| m.label());
        let columns = vec![
            self.column(PanelContent::Tokens { groups: &groups, style, opacity: s.opacity }, name.into(), Vec::new()),
            self.column(PanelContent::Heat { heat: &heat, look }, format!("What “{piece}” looked at"), Vec::new()),
        ];
        let own = self.full_log_prob();
        let mut below = vec![
            TextBlock::note(format!(
                "Left: {method}; the image tokens left at the last decoder layer ({} of {}). Right: the attention of \
                 the {side} answer's token {} (“{piece}”) to each image token, decoder layer {layer}.",
                reduced.groups.len(),
                reduced.num_image_tokens,
                token.index
            )),
            TextBlock::note(format!("Q: {}", self.full.prompt.question)),
            self.answer_block(Some("Full model:".into()), &self.full.run, &side_of_diff(&reduced.diff, false)),
            self.answer_block(Some(format!("{method}:")), reduced, &side_of_diff(&reduced.diff, true)),
        ];
        if let Some(note) = self.off_grid(reduced) {
            below.push(TextBlock::note(note));
        }
        let verdict = if reduced.answer_changed { "the answer changed" } else { "the same answer" };
        below.push(TextBlock::note(match reduced.full_answer_logprob {
            Some(lp) => format!("{verdict}; log p(full answer) under it {lp:.3}, under the full model {own:.3}"),
            None => verdict.to_string(),
        }));
        let title = Some(self.made_title(""));
        self.finish(AnswerFigure { title, columns, below, key: s.colorbar, shared_key: false, label_px: None })
    }

    /// The full model and each run side by side: token grid, answer marked against the full one,
    /// the full answer's log-probability under it.
    fn compare(&self, runs: &[VlmRun]) -> Result<Vec<u8>> {
        let s = self.spec;
        let (rows, cols) = self.grid();
        let every = figures::every_patch_kept([rows, cols]);
        let groups: Vec<(TokenGroups, GroupStyle)> =
            runs.iter().map(|r| figures::vlm_token_groups(self.grid(), r)).collect();
        let own = self.full_log_prob();
        let full = &self.full.run;
        let all_same: Vec<(usize, Mark)> = (0..full.answer.ids.len()).map(|i| (i, Mark::Same)).collect();
        let mut columns = vec![self.column(
            PanelContent::Tokens { groups: &every, style: GroupStyle::KeptDropped, opacity: s.opacity },
            "Full model".into(),
            vec![self.answer_block(None, full, &all_same), TextBlock::note(format!("log p(answer) {own:.3}"))],
        )];
        // Best (ties all marked) only among two or more, as the app marks it.
        let best = best_run(&runs.iter().collect::<Vec<_>>()).and_then(|i| runs[i].full_answer_logprob);
        let best = best.filter(|_| runs.len() > 1 && s.revision >= 1);
        for (run, (groups, style)) in runs.iter().zip(&groups) {
            let label = run.spec.method.as_ref().map_or("Full model", |m| m.label());
            let verdict = match (run.removed_nothing(), run.answer_changed) {
                (true, _) => "removed nothing (its site is past the last layer)",
                (false, true) => "changed",
                (false, false) => "unchanged",
            };
            let lp = run.full_answer_logprob.map_or_else(String::new, |lp| format!("; log p(full) {lp:.3}"));
            let lp = if best.is_some() && run.full_answer_logprob == best { format!("{lp} · best") } else { lp };
            let mut below = vec![
                self.answer_block(None, run, &side_of_diff(&run.diff, true)),
                TextBlock::note(format!("{verdict}{lp}")),
            ];
            below.extend(self.off_grid(run).map(TextBlock::note));
            columns.push(self.column(
                PanelContent::Tokens { groups, style: *style, opacity: s.opacity },
                label.into(),
                below,
            ));
        }
        let budget = runs[0].spec.budget.describe(full.num_image_tokens);
        let best_note = if best.is_some() { "; best: the full answer most likely under it" } else { "" };
        let below = vec![TextBlock::note(format!(
            "Q: {} · Methods at {budget}; red, struck: only in the full answer; green: only in the method's{best_note}",
            self.full.prompt.question
        ))];
        let title = Some(self.made_title(&format!(" · {budget}")));
        // One legend for the figure (revision 2 on): every column shows tokens.
        let shared_key = s.revision >= 2;
        self.finish(AnswerFigure { title, columns, below, key: s.colorbar, shared_key, label_px: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A safetensors-shaped file: the header's length, the header, `data`.
    fn write(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn the_sampled_digest_sees_names_headers_and_sampled_data_and_the_file_digest_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        let header = r#"{"w":{"dtype":"F32","shape":[131072],"data_offsets":[0,524288]}}"#;
        let data: Vec<u8> = (0..524_288u32).map(|i| (i * 7 % 251) as u8).collect();
        let sampled = || weights_sha256(dir.path(), WeightsDigest::SafetensorsSampledV1).unwrap();
        write(&file, header, &data);
        let base = sampled();
        assert_eq!(sampled(), base, "stable");
        // The file digest is the sha256 of the bytes (independently: sha2 over the file).
        let bytes = std::fs::read(&file).unwrap();
        let want: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(weights_sha256(dir.path(), WeightsDigest::FileBytes).unwrap(), want);
        assert_ne!(base, want);

        // A byte in a sampled block (the first and the last of the data are) changes it ...
        for at in [0, data.len() - 1] {
            let mut changed = data.clone();
            changed[at] ^= 1;
            write(&file, header, &changed);
            assert_ne!(sampled(), base, "data byte {at}");
        }
        // ... one between blocks does not (documented), while the file digest sees it.
        let between = (SAMPLE_BYTES + (data.len() as u64 - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)) as usize / 2;
        let mut changed = data.clone();
        changed[between] ^= 1;
        write(&file, header, &changed);
        assert_eq!(sampled(), base, "byte {between} lies between sampled blocks");
        assert_ne!(weights_sha256(dir.path(), WeightsDigest::FileBytes).unwrap(), want);
        // The header (a dtype) and the file's name change it.
        write(&file, &header.replace("F32", "I32"), &data);
        assert_ne!(sampled(), base, "header");
        write(&file, header, &data);
        std::fs::rename(&file, dir.path().join("other.safetensors")).unwrap();
        assert_ne!(sampled(), base, "name");

        // A header length past the file is refused before anything is allocated.
        let mut bad = u64::MAX.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{}");
        std::fs::write(dir.path().join("other.safetensors"), bad).unwrap();
        let err = weights_sha256(dir.path(), WeightsDigest::SafetensorsSampledV1).unwrap_err().to_string();
        assert!(err.contains("header of"), "{err}");
    }
}
