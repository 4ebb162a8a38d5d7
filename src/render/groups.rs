//! A reducer's token groups on the image grid, how they are drawn (merged, fused, dropped), and
//! their legend: the data [`super::tokens`] hands to the scene, shared by the scene and the SVG
//! back-end.

use std::collections::HashMap;

use super::text::count;

/// Which group each patch of the grid belongs to (`None` = dropped), row-major.
///
/// Built with [`TokenGroups::from_groups`], which rejects a patch listed in two
/// groups. A `group_of_patch` shorter than `rows * cols` (possible only by
/// building the struct by hand) is treated as dropped past its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGroups {
    pub rows: usize,
    pub cols: usize,
    pub group_of_patch: Vec<Option<u32>>,
}

/// Why a reducer's groups don't describe a partition of the grid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenGroupsError {
    #[error("patch {patch} is in group {first} and in group {second}; a patch belongs to at most one token")]
    Overlap { patch: u32, first: u32, second: u32 },
    #[error("group {group} lists patch {patch}, but a {rows}x{cols} grid has patches 0..{}", rows * cols)]
    OutOfRange { group: u32, patch: u32, rows: usize, cols: usize },
}

/// Counts for the legend: every patch of the grid is kept (a singleton
/// group), part of a merged group, or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenStats {
    /// Singleton groups.
    pub kept: usize,
    /// Groups of two or more patches, and how many patches they hold.
    pub merged_groups: usize,
    pub merged_patches: usize,
    pub dropped: usize,
    /// `rows * cols`.
    pub total: usize,
}

impl TokenGroups {
    /// `groups[i]` lists the patches that token `i` stands for; its group id is `i`.
    /// Empty groups are allowed (they cover nothing); a patch listed twice in
    /// the same group counts once.
    ///
    /// # Errors
    /// A patch index `>= rows * cols`, or a patch in two different groups (a
    /// reducer bug: each patch ends up in at most one token).
    pub fn from_groups(rows: usize, cols: usize, groups: &[Vec<u32>]) -> Result<Self, TokenGroupsError> {
        let mut group_of_patch = vec![None; rows * cols];
        for (g, patches) in groups.iter().enumerate() {
            let g = g as u32;
            for &patch in patches {
                let slot = group_of_patch.get_mut(patch as usize).ok_or(TokenGroupsError::OutOfRange {
                    group: g,
                    patch,
                    rows,
                    cols,
                })?;
                match *slot {
                    Some(first) if first != g => {
                        return Err(TokenGroupsError::Overlap { patch, first, second: g });
                    }
                    _ => *slot = Some(g),
                }
            }
        }
        Ok(TokenGroups { rows, cols, group_of_patch })
    }

    /// Pruning only: each kept patch is its own token, the rest are dropped.
    ///
    /// # Errors
    /// As [`from_groups`](Self::from_groups) (a repeated index is an overlap).
    pub fn from_kept(rows: usize, cols: usize, kept: &[u32]) -> Result<Self, TokenGroupsError> {
        let groups: Vec<Vec<u32>> = kept.iter().map(|&p| vec![p]).collect();
        Self::from_groups(rows, cols, &groups)
    }

    /// The group of the patch at (`row`, `col`); `None` if dropped or off the grid.
    pub fn group(&self, row: usize, col: usize) -> Option<u32> {
        if row < self.rows && col < self.cols {
            self.group_of_patch.get(row * self.cols + col).copied().flatten()
        } else {
            None
        }
    }

    /// Kept / merged / dropped counts over the `rows * cols` patches.
    pub fn stats(&self) -> TokenStats {
        let total = self.rows * self.cols;
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        let mut dropped = 0;
        for i in 0..total {
            match self.group_of_patch.get(i).copied().flatten() {
                Some(g) => *sizes.entry(g).or_default() += 1,
                None => dropped += 1,
            }
        }
        let kept = sizes.values().filter(|&&n| n == 1).count();
        let merged_groups = sizes.len() - kept;
        TokenStats { kept, merged_groups, merged_patches: total - dropped - kept, dropped, total }
    }
}

/// How groups are drawn by [`tokens_overlay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStyle {
    /// Pruning: kept patches shown as the photo, outlined; dropped patches
    /// faded (the photo blended 75% towards #202020), so what survives pops
    /// out. A multi-patch group is a fused token (EViT): tinted and hatched.
    #[default]
    KeptDropped,
    /// Merging: each multi-patch group tinted with the mean photo colour of
    /// its pixels at the fill opacity and outlined by group boundaries (ToMe's
    /// visualisation, photo kept visible); singletons show the photo; dropped
    /// patches faded as in `KeptDropped`.
    MergeGroups,
}

/// The fill opacity of merged groups unless told (the app's default opacity).
pub const DEFAULT_FILL_OPACITY: f32 = 0.6;

/// Fused groups are hatched: a diagonal stripe `HATCH_WIDTH` of every
/// `HATCH_PERIOD` px (at 512 px), the outline colour blended in at `HATCH_ALPHA`.
pub(crate) const HATCH_PERIOD: u32 = 8;

pub(crate) const HATCH_WIDTH: u32 = 2;

pub(crate) const HATCH_ALPHA: f32 = 0.6;

/// What dropped patches fade towards, and how far.
pub(crate) const FADE_RGB: [u8; 3] = [0x20, 0x20, 0x20];

pub(crate) const FADE: f32 = 0.75;

/// The legend in decreasing length: "kept N · merged M groups (P patches) ·
/// dropped D of T patches" (the merged part left out when nothing was merged),
/// then a compact "kept N · merged M (P) · dropped D/T".
/// Multi-patch groups are "fused" under [`GroupStyle::KeptDropped`] (EViT).
pub(crate) fn legend_lines(s: &TokenStats, style: GroupStyle) -> [String; 2] {
    let word = match style {
        GroupStyle::MergeGroups => "merged",
        GroupStyle::KeptDropped => "fused",
    };
    let (long_merged, short_merged) = if s.merged_groups > 0 {
        (
            format!(
                " · {word} {} ({})",
                count(s.merged_groups, "group", "groups"),
                count(s.merged_patches, "patch", "patches")
            ),
            format!(" · {word} {} ({})", s.merged_groups, s.merged_patches),
        )
    } else {
        Default::default()
    };
    [
        format!("kept {}{long_merged} · dropped {} of {} patches", s.kept, s.dropped, s.total),
        format!("kept {}{short_merged} · dropped {}/{}", s.kept, s.dropped, s.total),
    ]
}
