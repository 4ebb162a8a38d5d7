//! One budget unit for every method: how many visual (patch-derived) tokens survive.
//!
//! The field's presets keep 1/3, 2/9, 1/9 and 1/18 of the tokens (66.7 / 77.8 / 88.9 / 94.4 %
//! removed; LLaVA-1.5's 576 -> 192 / 128 / 64 / 32). A fraction within half a percentage point
//! of a preset snaps to it, so "0.667" and "2/3" give the same count.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Removed fractions of the shared presets.
pub const PRESETS_REMOVED: [f64; 4] = [2.0 / 3.0, 7.0 / 9.0, 8.0 / 9.0, 17.0 / 18.0];
const SNAP: f64 = 0.005;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Keep this many visual tokens.
    Keep(usize),
    /// Keep this fraction of the visual tokens.
    KeepFraction(f64),
    /// Remove this fraction of the visual tokens.
    RemoveFraction(f64),
}

impl Default for Budget {
    fn default() -> Self {
        Budget::RemoveFraction(PRESETS_REMOVED[0])
    }
}

impl Budget {
    /// The removed fraction this budget asks for, snapped to a preset when close to one.
    pub fn removed_fraction(&self, num_tokens: usize) -> f64 {
        let raw = match *self {
            Budget::Keep(k) => 1.0 - k as f64 / num_tokens.max(1) as f64,
            Budget::KeepFraction(f) => 1.0 - f,
            Budget::RemoveFraction(f) => f,
        };
        PRESETS_REMOVED.iter().copied().find(|p| (p - raw).abs() < SNAP).unwrap_or(raw)
    }

    /// Visual tokens to keep out of `num_tokens`. An explicit count is taken as given; fractions
    /// (after snapping) round to the nearest count, and at least one token survives.
    pub fn resolve(&self, num_tokens: usize) -> Result<usize> {
        let bad = |reason: String| Err(Error::Config { field: "budget", reason });
        match *self {
            Budget::Keep(k) if k == 0 || k > num_tokens => {
                bad(format!("keep {k} tokens: must be between 1 and {num_tokens}"))
            }
            Budget::Keep(k) => Ok(k),
            Budget::KeepFraction(f) | Budget::RemoveFraction(f) if !(0.0..=1.0).contains(&f) => {
                bad(format!("fraction {f} is outside 0..1"))
            }
            _ => {
                let keep = ((1.0 - self.removed_fraction(num_tokens)) * num_tokens as f64).round();
                Ok((keep as usize).clamp(1, num_tokens))
            }
        }
    }

    /// Parses `85`, `0.333` (keep fraction is never guessed: a bare fraction is *removed*),
    /// `66.7%` (removed), or `keep:0.25` / `remove:0.75` / `tokens:64`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let t = text.trim();
        let num = |s: &str| s.trim().parse::<f64>().map_err(|_| format!("`{text}` is not a budget"));
        if let Some(rest) = t.strip_prefix("keep:") {
            return Ok(Budget::KeepFraction(num(rest)?));
        }
        if let Some(rest) = t.strip_prefix("remove:") {
            return Ok(Budget::RemoveFraction(num(rest)?));
        }
        if let Some(rest) = t.strip_prefix("tokens:") {
            return rest.trim().parse().map(Budget::Keep).map_err(|_| format!("`{text}` is not a token count"));
        }
        if let Some(pct) = t.strip_suffix('%') {
            return Ok(Budget::RemoveFraction(num(pct)? / 100.0));
        }
        if let Ok(k) = t.parse::<usize>() {
            return Ok(Budget::Keep(k));
        }
        Ok(Budget::RemoveFraction(num(t)?))
    }

    /// "66.7 % removed (85 of 256 kept)": the requested fraction (a preset reads as itself) and
    /// the count it resolves to.
    pub fn describe(&self, num_tokens: usize) -> String {
        match self.resolve(num_tokens) {
            Ok(k) => {
                let removed = match self {
                    Budget::Keep(_) => 1.0 - k as f64 / num_tokens as f64,
                    _ => self.removed_fraction(num_tokens),
                };
                format!("{:.1} % removed ({k} of {num_tokens} kept)", 100.0 * removed)
            }
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_give_the_papers_counts() {
        // LLaVA-1.5: 576 -> 192 / 128 / 64 / 32.
        let counts: Vec<usize> =
            PRESETS_REMOVED.iter().map(|&f| Budget::RemoveFraction(f).resolve(576).unwrap()).collect();
        assert_eq!(counts, [192, 128, 64, 32]);
        // DINOv2 at 224 px: 256 patches.
        let counts: Vec<usize> =
            PRESETS_REMOVED.iter().map(|&f| Budget::RemoveFraction(f).resolve(256).unwrap()).collect();
        assert_eq!(counts, [85, 57, 28, 14]);
    }

    #[test]
    fn near_preset_fractions_snap() {
        assert_eq!(Budget::RemoveFraction(0.667).resolve(576).unwrap(), 192);
        assert_eq!(Budget::KeepFraction(0.111).resolve(576).unwrap(), 64);
        assert_eq!(Budget::RemoveFraction(0.5).resolve(256).unwrap(), 128);
    }

    #[test]
    fn parsing_and_limits() {
        assert_eq!(Budget::parse("64").unwrap(), Budget::Keep(64));
        assert_eq!(Budget::parse("88.9%").unwrap(), Budget::RemoveFraction(0.889));
        assert_eq!(Budget::parse("keep:0.25").unwrap(), Budget::KeepFraction(0.25));
        assert!(Budget::Keep(0).resolve(256).is_err());
        assert!(Budget::Keep(257).resolve(256).is_err());
        assert!(Budget::RemoveFraction(1.5).resolve(256).is_err());
        assert_eq!(Budget::RemoveFraction(0.0).resolve(256).unwrap(), 256);
        assert_eq!(Budget::RemoveFraction(1.0).resolve(256).unwrap(), 1);
    }
}
