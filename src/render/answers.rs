//! Answer figures (vision-language models): panels side by side under their headers (wrapped
//! onto two lines rather than cut), each drawn as [`scene::panel_scene_sized`] draws a single
//! panel (with its colour bar or token legend), text
//! under each column (that column's answer), and text across the figure under all of them (the
//! two answers with their token diff, log-probabilities). Answers are laid out token by token:
//! a token only in the full answer is red on a pink ground and struck through, one only in the
//! reduced answer green on a pale green ground, so the diff survives grey-scale printing.

use super::heat::{BACKGROUND, Frame, INK, MUTED_INK};
use super::scene::{self, Anchor, Item, MarkItem, Panel, Rect, Scene, TextItem};
use super::text;

/// How a token relates to the other answer of the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Same,
    /// Only in the full answer.
    Removed,
    /// Only in the reduced answer.
    Added,
}

/// One paragraph: a muted label, then tokens (each with the spacing it has in its answer).
#[derive(Debug, Clone, PartialEq)]
pub struct TextBlock {
    pub label: Option<String>,
    pub tokens: Vec<(String, Mark)>,
}

impl TextBlock {
    /// Plain text: a label alone, or a note.
    pub fn note(text: impl Into<String>) -> Self {
        Self { label: Some(text.into()), tokens: Vec::new() }
    }
}

/// A panel, its header and the text under it.
#[derive(Debug, Clone)]
pub struct AnswerColumn<'a> {
    pub header: Option<String>,
    pub panel: Panel<'a>,
    pub below: Vec<TextBlock>,
}

#[derive(Debug, Clone)]
pub struct AnswerFigure<'a> {
    pub title: Option<String>,
    pub columns: Vec<AnswerColumn<'a>>,
    /// Across the whole figure, under the columns.
    pub below: Vec<TextBlock>,
    /// Each panel's key: colour bar (maps) or kept / merged / dropped legend (tokens).
    pub key: bool,
    /// The token legend once for the figure, under the panels, instead of under each panel (a
    /// compare figure's columns all show tokens).
    pub shared_key: bool,
    /// Label size in px; `None`: sized for the panels.
    pub label_px: Option<f32>,
}

const REMOVED_INK: [u8; 3] = [170, 30, 30];
const REMOVED_GROUND: [u8; 3] = [252, 222, 222];
const ADDED_INK: [u8; 3] = [20, 110, 45];
const ADDED_GROUND: [u8; 3] = [214, 242, 219];

/// The figure as a scene; `panel_px` is each panel photo's longest side.
pub fn answer_scene(fig: &AnswerFigure, panel_px: u32) -> Scene {
    let label_px = fig.label_px.unwrap_or_else(|| super::heat::default_label_px(panel_px.saturating_mul(2)));
    let frame = Frame::with_label(label_px, fig.title.is_some());
    let (label_px, pad) = (frame.label_px, frame.pad);
    let panel_key = fig.key && !fig.shared_key;
    let panels: Vec<Scene> = fig
        .columns
        .iter()
        .map(|c| scene::panel_scene_sized(&c.panel, panel_px, panel_key, scene::OUTLINE_RGB, Some(label_px)))
        .collect();
    let width = panels.iter().map(|s| s.width).sum::<u32>().max(label_px as u32 * 12 + 2 * pad);
    let (header_px, headers) = headers(fig, &panels, label_px, pad);
    let header_lines = headers.iter().map(Vec::len).max().unwrap_or(0);
    let header_h =
        if header_lines > 0 { pad + (text::line_height(header_px) * header_lines as f32).ceil() as u32 } else { 0 };
    let top = frame.title_h;
    let mut panels_h = header_h + panels.iter().map(|s| s.height).max().unwrap_or(0);
    let mut items = Vec::new();
    // The shared key: one row of swatches across the figure, under the panels.
    if fig.key && fig.shared_key {
        let mut kinds: Vec<scene::LegendKind> = fig
            .columns
            .iter()
            .filter_map(|c| match &c.panel.content {
                scene::PanelContent::Tokens { groups, style, .. } => {
                    Some(scene::legend_kinds(*style, groups.stats().merged_groups > 0))
                }
                scene::PanelContent::Heat { .. } => None,
            })
            .flatten()
            .collect();
        kinds.sort();
        kinds.dedup();
        let key_top = (top + panels_h) as f32;
        let avail = width.saturating_sub(2 * pad) as f32;
        let (key, key_h) =
            scene::legend_key_items(&kinds, (pad as f32, key_top), label_px, avail, scene::OUTLINE_RGB, panel_px);
        items.extend(key);
        if key_h > 0 {
            panels_h += key_h + (label_px * 0.6).round() as u32;
        }
    }
    let (mut x, mut columns_text_h) = (0u32, 0u32);
    for ((column, sub), header) in fig.columns.iter().zip(&panels).zip(&headers) {
        for (i, line) in header.iter().enumerate() {
            let w = text::text_width(header_px, line);
            items.push(Item::Text(TextItem {
                text: line.clone(),
                left: (x as f32 + (sub.width as f32 - w) / 2.0).round(),
                top: (top + pad) as f32 + i as f32 * text::line_height(header_px),
                px: header_px,
                rgb: INK,
                anchor: Anchor::Middle,
                class: "column-title",
            }));
        }
        items.extend(sub.items.iter().cloned().map(|item| shifted(item, x, top + header_h)));
        let (left, max_w) = ((x + pad) as f32, sub.width.saturating_sub(2 * pad) as f32);
        let h = blocks(&mut items, &column.below, (left, (top + panels_h) as f32), max_w, label_px);
        columns_text_h = columns_text_h.max(h);
        x += sub.width;
    }
    let below_top = top + panels_h + columns_text_h;
    let avail = width.saturating_sub(2 * pad) as f32;
    let below_h = blocks(&mut items, &fig.below, (pad as f32, below_top as f32), avail, label_px);
    if let Some(title) = &fig.title {
        items.push(Item::Text(frame.title_item(title, width, pad, width.saturating_sub(2 * pad))));
    }
    let height = below_top + below_h + if below_h + columns_text_h > 0 { pad } else { 0 };
    Scene { width, height: height.max(1), background: BACKGROUND, items }
}

/// The column headers' size and lines: at the header size on at most two lines if every header
/// fits so, else with long words hyphenated ("Sparse-" "VLM"), else at the label size on up to
/// three lines (never under the figure's smallest text), rather than cut with "…".
fn headers(fig: &AnswerFigure, panels: &[Scene], label_px: f32, pad: u32) -> (f32, Vec<Vec<String>>) {
    type Wrap = fn(f32, &str, f32, usize) -> Vec<String>;
    let header_px = label_px * 1.15;
    let tries: [(f32, Wrap, usize); 3] =
        [(header_px, text::wrap, 2), (header_px, text::wrap_hyphenated, 2), (label_px, text::wrap_hyphenated, 3)];
    let lay = |(px, wrap, lines): (f32, Wrap, usize)| -> Vec<Vec<String>> {
        fig.columns
            .iter()
            .zip(panels)
            .map(|(c, sub)| {
                let avail = sub.width.saturating_sub(2 * pad) as f32 / 1.25; // room for a wider font
                c.header.as_ref().map_or_else(Vec::new, |h| wrap(px, h, avail, lines))
            })
            .collect()
    };
    let cut = |h: &[Vec<String>]| h.iter().flatten().any(|l| l.ends_with('…'));
    for t in &tries[..2] {
        let h = lay(*t);
        if !cut(&h) {
            return (t.0, h);
        }
    }
    (label_px, lay(tries[2]))
}

/// `blocks` laid out one under the other from (`left`, `top`), each line at most `max_w` wide;
/// returns the height they take.
fn blocks(items: &mut Vec<Item>, blocks: &[TextBlock], (left, top): (f32, f32), max_w: f32, px: f32) -> u32 {
    let mut y = top;
    for block in blocks {
        y += flow(items, block, (left, y), max_w, px) + px * 0.3;
    }
    (y - top).ceil() as u32
}

/// One token or word placed on a line.
struct Placed {
    line: usize,
    x: f32,
    text: String,
    mark: Option<Mark>,
}

/// Places `block` token by token, wrapping before a token that would pass `max_w` (its leading
/// space dropped there; a token wider than a line is cut with "…"); consecutive tokens of one
/// mark on one line become one text item, over their ground. Returns the height used.
fn flow(items: &mut Vec<Item>, block: &TextBlock, (left, top): (f32, f32), max_w: f32, px: f32) -> f32 {
    let line_h = text::line_height(px) * 1.2;
    let mut placed: Vec<Placed> = Vec::new();
    let (mut line, mut x) = (0usize, 0f32);
    // A space between the label and the answer, unless its first token brings one.
    let spaced = block.tokens.first().is_some_and(|(t, _)| !t.starts_with(char::is_whitespace));
    let label = block.label.as_ref().map(|l| if spaced { format!("{l} ") } else { l.clone() });
    let words = label.iter().flat_map(|l| l.split_inclusive(' ')).map(|w| (w.to_string(), None));
    let tokens = block.tokens.iter().map(|(t, m)| (t.clone(), Some(*m)));
    for (mut token, mark) in words.chain(tokens) {
        let mut w = text::text_width(px, &token);
        if x > 0.0 && x + w > max_w {
            (line, x) = (line + 1, 0.0);
            token = token.trim_start().to_string();
            w = text::text_width(px, &token);
        }
        if w > max_w {
            token = text::fit_text(px, &token, max_w);
            w = text::text_width(px, &token);
        }
        match placed.last_mut() {
            Some(p) if p.line == line && p.mark == mark => p.text.push_str(&token),
            _ => placed.push(Placed { line, x, text: token, mark }),
        }
        x += w;
    }
    let mut strikes = Vec::new();
    for p in &placed {
        // SVG collapses leading spaces: the text starts where its first visible glyph does.
        let lead = text::text_width(px, &p.text[..p.text.len() - p.text.trim_start().len()]);
        let trimmed = p.text.trim();
        let (x0, y0) = (left + p.x + lead, top + p.line as f32 * line_h);
        let w = text::text_width(px, trimmed);
        let rect = |y0: f32, y1: f32| Rect {
            x0: (x0 - px * 0.08).floor() as i64,
            y0: y0.floor() as i64,
            x1: (x0 + w + px * 0.08).ceil() as i64,
            y1: y1.ceil() as i64,
        };
        let ground = |rgb, class| Item::Mark(MarkItem { rect: rect(y0, y0 + text::line_height(px)), rgb, class });
        let rgb = match p.mark {
            None => MUTED_INK,
            Some(Mark::Same) => INK,
            Some(Mark::Removed) => {
                items.push(ground(REMOVED_GROUND, "removed"));
                let mid = y0 + text::ascent(px) - text::digit_height(px) * 0.4;
                let thick = (px / 14.0).max(1.0);
                strikes.push(Item::Mark(MarkItem { rect: rect(mid, mid + thick), rgb: REMOVED_INK, class: "strike" }));
                REMOVED_INK
            }
            Some(Mark::Added) => {
                items.push(ground(ADDED_GROUND, "added"));
                ADDED_INK
            }
        };
        if trimmed.is_empty() {
            continue;
        }
        let class = match p.mark {
            None => "answer-label",
            Some(Mark::Same) => "answer",
            Some(Mark::Removed) => "answer-removed",
            Some(Mark::Added) => "answer-added",
        };
        items.push(Item::Text(TextItem {
            text: trimmed.to_string(),
            left: x0.round(),
            top: y0.round(),
            px,
            rgb,
            anchor: Anchor::Start,
            class,
        }));
    }
    items.extend(strikes);
    match placed.last() {
        Some(p) => (p.line + 1) as f32 * line_h,
        None => 0.0,
    }
}

/// `item` moved right by `dx` and down by `dy`.
fn shifted(mut item: Item, dx: u32, dy: u32) -> Item {
    let move_rect = |r: &mut Rect| {
        (r.x0, r.x1, r.y0, r.y1) =
            (r.x0 + i64::from(dx), r.x1 + i64::from(dx), r.y0 + i64::from(dy), r.y1 + i64::from(dy));
    };
    let move_text = |t: &mut TextItem| {
        t.left += dx as f32;
        t.top += dy as f32;
    };
    match &mut item {
        Item::Panel(p) => {
            p.x += dx;
            p.y += dy;
        }
        Item::Text(t) => move_text(t),
        Item::ColorBar(b) => {
            move_rect(&mut b.rect);
            b.ticks.iter_mut().for_each(|t| *t += dy);
            b.labels.iter_mut().for_each(move_text);
        }
        Item::Swatch(s) => move_rect(&mut s.rect),
        Item::Mark(m) => move_rect(&mut m.rect),
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &[Item]) -> Vec<(String, &'static str)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Text(t) => Some((t.text.clone(), t.class)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tokens_of_one_mark_join_and_wrap_before_a_token_that_does_not_fit() {
        let block = TextBlock {
            label: Some("Full model:".into()),
            tokens: vec![
                (" a".into(), Mark::Same),
                (" cat".into(), Mark::Same),
                (" sleeping".into(), Mark::Removed),
                (" on".into(), Mark::Same),
            ],
        };
        let mut items = Vec::new();
        let px = 20.0;
        let h = flow(&mut items, &block, (10.0, 0.0), 10_000.0, px);
        assert_eq!(
            texts(&items),
            vec![
                ("Full model:".to_string(), "answer-label"),
                ("a cat".to_string(), "answer"),
                ("sleeping".to_string(), "answer-removed"),
                ("on".to_string(), "answer")
            ]
        );
        assert!((h - text::line_height(px) * 1.2).abs() < 1e-3, "one line");
        // The removed token has its ground and its strike.
        let classes: Vec<&str> =
            items.iter().filter_map(|i| if let Item::Mark(m) = i { Some(m.class) } else { None }).collect();
        assert_eq!(classes, vec!["removed", "strike"]);
        // Narrow: "sleeping" moves to the next line without its space.
        let mut narrow = Vec::new();
        let w = text::text_width(px, "Full model: a cat");
        let h = flow(&mut narrow, &block, (0.0, 0.0), w + 1.0, px);
        assert!(h > 1.5 * text::line_height(px), "wrapped");
        let sleeping = narrow.iter().find_map(|i| match i {
            Item::Text(t) if t.text == "sleeping" => Some(t.left),
            _ => None,
        });
        assert_eq!(sleeping, Some(0.0), "at the start of the second line");
    }
}
