//! An answer as a row of tokens, each hoverable and clickable, marked by the diff against the
//! other answer (removed: red, struck; added: green).

use eframe::egui;
use egui::{Color32, RichText};

use crate::session::vlm::VlmRun;

// How a token relates to the other answer (drawn: removed struck through in red, added in
// green), and one side of a diff: shared with the exported figures.
pub use crate::export::vlm::side_of_diff;
pub use crate::render::answers::Mark;

/// An answer token: of the full answer or of the reduced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub reduced: bool,
    pub index: usize,
}

/// A token as shown: line breaks and tabs made visible, an empty piece as a middle dot.
pub fn shown_piece(piece: &str) -> String {
    let s = piece.replace('\n', "\\n").replace('\t', "\\t");
    if s.is_empty() { "·".into() } else { s }
}

/// One answer's tokens, each hoverable and clickable, coloured by its diff mark.
pub fn tokens_ui(
    ui: &mut egui::Ui,
    run: &VlmRun,
    marks: &[(usize, Mark)],
    reduced: bool,
    picked: Option<Pick>,
    hovered: &mut Option<Pick>,
    clicked: &mut Option<Pick>,
) {
    let pieces = &run.answer.pieces;
    if pieces.is_empty() {
        ui.label(RichText::new("(empty answer)").weak());
        return;
    }
    let red = ui.visuals().error_fg_color;
    let green = Color32::from_rgb(60, 200, 90);
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(2.0, 2.0);
        for &(index, mark) in marks {
            let Some(piece) = pieces.get(index) else { continue };
            let me = Pick { reduced, index };
            let mut text = RichText::new(shown_piece(piece)).monospace();
            text = match mark {
                Mark::Same => text,
                Mark::Removed => text.color(red).strikethrough(),
                Mark::Added => text.color(green),
            };
            if picked == Some(me) {
                text = text.background_color(ui.visuals().selection.bg_fill);
            }
            let lp = run.answer.logprobs.get(index).copied().unwrap_or(f32::NAN);
            let response = ui
                .add(egui::Label::new(text).sense(egui::Sense::click()))
                .on_hover_text(format!("token {index}: {piece:?}, log p {lp:.3}"));
            if response.hovered() {
                *hovered = Some(me);
            }
            if response.clicked() {
                *clicked = Some(me);
            }
        }
        if run.answer.stopped_at_eos {
            ui.label(RichText::new("(end)").weak()).on_hover_text("the model ended its answer");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::vlm::diff_tokens;

    #[test]
    fn each_side_shows_its_own_tokens_marked() {
        // full: the cat sat · reduced: the dog sat down
        let diff = diff_tokens(&[1, 2, 3], &[1, 4, 3, 5]);
        assert_eq!(side_of_diff(&diff, false), vec![(0, Mark::Same), (1, Mark::Removed), (2, Mark::Same)]);
        assert_eq!(
            side_of_diff(&diff, true),
            vec![(0, Mark::Same), (1, Mark::Added), (2, Mark::Same), (3, Mark::Added)]
        );
    }

    #[test]
    fn pieces_stay_visible() {
        assert_eq!(shown_piece("\n"), "\\n");
        assert_eq!(shown_piece(""), "·");
        assert_eq!(shown_piece(" cat"), " cat");
    }
}
