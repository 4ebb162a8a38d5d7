//! Perceptual colormaps for heatmaps.
//!
//! The ramps come from `colorous` (d3's exact tables, which are matplotlib's
//! viridis/magma/inferno and Google's turbo), so a tokenlens picture reads the
//! same as the matplotlib figures in papers. `Gray` is a plain linear black→white
//! ramp, for print or for checking that a pattern isn't a colormap artefact.
//!
//! Turbo is the one exception to `colorous`: its `TURBO` is d3's polynomial
//! approximation, which is visibly off the real map (t=0.5 gives #96fa4f, not
//! #a4fc3c), so the official 256-entry table (Google, Apache-2.0, as shipped
//! by matplotlib) is embedded below.

use std::fmt;
use std::str::FromStr;

/// Perceptual colormaps; serde/CLI names are lowercase ("viridis", "magma", "inferno", "turbo", "gray").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colormap {
    #[default]
    Viridis,
    Magma,
    Inferno,
    Turbo,
    Gray,
}

impl Colormap {
    /// Every colormap, in the order a UI should list them.
    pub const ALL: [Colormap; 5] =
        [Colormap::Viridis, Colormap::Magma, Colormap::Inferno, Colormap::Turbo, Colormap::Gray];

    /// The lowercase name used by serde and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Magma => "magma",
            Colormap::Inferno => "inferno",
            Colormap::Turbo => "turbo",
            Colormap::Gray => "gray",
        }
    }

    /// Colour at `t`, clamped to `[0, 1]`; NaN maps to 0.
    ///
    /// Quantised like matplotlib's 256-entry colormaps (entry `floor(t * 256)`),
    /// so values agree with matplotlib figures to within ±1 per channel.
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let gradient = match self {
            Colormap::Viridis => colorous::VIRIDIS,
            Colormap::Magma => colorous::MAGMA,
            Colormap::Inferno => colorous::INFERNO,
            Colormap::Turbo => {
                let c = TURBO[((t * 256.0) as usize).min(255)];
                return [(c >> 16) as u8, (c >> 8) as u8, c as u8];
            }
            Colormap::Gray => {
                let v = (t * 255.0).round() as u8;
                return [v, v, v];
            }
        };
        let index = ((t * 256.0) as usize).min(255);
        gradient.eval_rational(index, 256).as_array()
    }

    /// 256-entry lookup table (`lut[i] == rgb(i / 255)`), for colouring many pixels quickly.
    pub fn lut(self) -> [[u8; 3]; 256] {
        std::array::from_fn(|i| self.rgb(i as f32 / 255.0))
    }
}

/// Google's Turbo colormap, 256 entries as 0xRRGGBB (matplotlib's `_turbo_data`).
#[rustfmt::skip]
const TURBO: [u32; 256] = [
    0x30123b, 0x321543, 0x33184a, 0x341b51, 0x351e58, 0x36215f, 0x372466, 0x38276d,
    0x392a73, 0x3a2d79, 0x3b2f80, 0x3c3286, 0x3d358b, 0x3e3891, 0x3f3b97, 0x3f3e9c,
    0x4040a2, 0x4143a7, 0x4146ac, 0x4249b1, 0x424bb5, 0x434eba, 0x4451bf, 0x4454c3,
    0x4456c7, 0x4559cb, 0x455ccf, 0x455ed3, 0x4661d6, 0x4664da, 0x4666dd, 0x4669e0,
    0x466be3, 0x476ee6, 0x4771e9, 0x4773eb, 0x4776ee, 0x4778f0, 0x477bf2, 0x467df4,
    0x4680f6, 0x4682f8, 0x4685fa, 0x4687fb, 0x458afc, 0x458cfd, 0x448ffe, 0x4391fe,
    0x4294ff, 0x4196ff, 0x4099ff, 0x3e9bfe, 0x3d9efe, 0x3ba0fd, 0x3aa3fc, 0x38a5fb,
    0x37a8fa, 0x35abf8, 0x33adf7, 0x31aff5, 0x2fb2f4, 0x2eb4f2, 0x2cb7f0, 0x2ab9ee,
    0x28bceb, 0x27bee9, 0x25c0e7, 0x23c3e4, 0x22c5e2, 0x20c7df, 0x1fc9dd, 0x1ecbda,
    0x1ccdd8, 0x1bd0d5, 0x1ad2d2, 0x1ad4d0, 0x19d5cd, 0x18d7ca, 0x18d9c8, 0x18dbc5,
    0x18ddc2, 0x18dec0, 0x18e0bd, 0x19e2bb, 0x19e3b9, 0x1ae4b6, 0x1ce6b4, 0x1de7b2,
    0x1fe9af, 0x20eaac, 0x22ebaa, 0x25eca7, 0x27eea4, 0x2aefa1, 0x2cf09e, 0x2ff19b,
    0x32f298, 0x35f394, 0x38f491, 0x3cf58e, 0x3ff68a, 0x43f787, 0x46f884, 0x4af880,
    0x4ef97d, 0x52fa7a, 0x55fa76, 0x59fb73, 0x5dfc6f, 0x61fc6c, 0x65fd69, 0x69fd66,
    0x6dfe62, 0x71fe5f, 0x75fe5c, 0x79fe59, 0x7dff56, 0x80ff53, 0x84ff51, 0x88ff4e,
    0x8bff4b, 0x8fff49, 0x92ff47, 0x96fe44, 0x99fe42, 0x9cfe40, 0x9ffd3f, 0xa1fd3d,
    0xa4fc3c, 0xa7fc3a, 0xa9fb39, 0xacfb38, 0xaffa37, 0xb1f936, 0xb4f836, 0xb7f735,
    0xb9f635, 0xbcf534, 0xbef434, 0xc1f334, 0xc3f134, 0xc6f034, 0xc8ef34, 0xcbed34,
    0xcdec34, 0xd0ea34, 0xd2e935, 0xd4e735, 0xd7e535, 0xd9e436, 0xdbe236, 0xdde037,
    0xdfdf37, 0xe1dd37, 0xe3db38, 0xe5d938, 0xe7d739, 0xe9d539, 0xebd339, 0xecd13a,
    0xeecf3a, 0xefcd3a, 0xf1cb3a, 0xf2c93a, 0xf4c73a, 0xf5c53a, 0xf6c33a, 0xf7c13a,
    0xf8be39, 0xf9bc39, 0xfaba39, 0xfbb838, 0xfbb637, 0xfcb336, 0xfcb136, 0xfdae35,
    0xfdac34, 0xfea933, 0xfea732, 0xfea431, 0xfea130, 0xfe9e2f, 0xfe9b2d, 0xfe992c,
    0xfe962b, 0xfe932a, 0xfe9029, 0xfd8d27, 0xfd8a26, 0xfc8725, 0xfc8423, 0xfb8122,
    0xfb7e21, 0xfa7b1f, 0xf9781e, 0xf9751d, 0xf8721c, 0xf76f1a, 0xf66c19, 0xf56918,
    0xf46617, 0xf36315, 0xf26014, 0xf15d13, 0xf05b12, 0xef5811, 0xed5510, 0xec530f,
    0xeb500e, 0xea4e0d, 0xe84b0c, 0xe7490c, 0xe5470b, 0xe4450a, 0xe2430a, 0xe14109,
    0xdf3f08, 0xdd3d08, 0xdc3b07, 0xda3907, 0xd83706, 0xd63506, 0xd43305, 0xd23105,
    0xd02f05, 0xce2d04, 0xcc2b04, 0xca2a04, 0xc82803, 0xc52603, 0xc32503, 0xc12302,
    0xbe2102, 0xbc2002, 0xb91e02, 0xb71d02, 0xb41b01, 0xb21a01, 0xaf1801, 0xac1701,
    0xa91601, 0xa71401, 0xa41301, 0xa11201, 0x9e1001, 0x9b0f01, 0x980e01, 0x950d01,
    0x920b01, 0x8e0a01, 0x8b0902, 0x880802, 0x850702, 0x810602, 0x7e0502, 0x7a0403,
];

impl fmt::Display for Colormap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A colormap name that isn't one of [`Colormap::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown colormap '{0}' (valid: viridis, magma, inferno, turbo, gray)")]
pub struct UnknownColormap(pub String);

impl FromStr for Colormap {
    type Err = UnknownColormap;

    /// Case-insensitive; "grey" is accepted as well as "gray".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        if lower == "grey" {
            return Ok(Colormap::Gray);
        }
        Colormap::ALL.into_iter().find(|c| c.name() == lower).ok_or_else(|| UnknownColormap(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: [u8; 3]) -> String {
        format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
    }

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 1)
    }

    #[test]
    fn reference_values_match_matplotlib() {
        // Exact end points.
        assert_eq!(hex(Colormap::Viridis.rgb(0.0)), "#440154");
        assert_eq!(hex(Colormap::Viridis.rgb(1.0)), "#fde725");
        assert_eq!(hex(Colormap::Magma.rgb(0.0)), "#000004");
        assert_eq!(hex(Colormap::Magma.rgb(1.0)), "#fcfdbf");
        assert_eq!(hex(Colormap::Inferno.rgb(0.0)), "#000004");
        assert_eq!(hex(Colormap::Inferno.rgb(1.0)), "#fcffa4");
        // Interior points, matplotlib 3.10 `colormaps[name](t)` rounded to u8, within ±1.
        let cases: [(Colormap, f32, [u8; 3]); 11] = [
            (Colormap::Viridis, 0.5, [0x21, 0x91, 0x8c]),
            (Colormap::Viridis, 0.25, [0x3b, 0x52, 0x8b]),
            (Colormap::Viridis, 0.75, [0x5e, 0xc9, 0x62]),
            (Colormap::Magma, 0.5, [0xb7, 0x37, 0x79]),
            (Colormap::Inferno, 0.5, [0xbc, 0x37, 0x54]),
            (Colormap::Turbo, 0.0, [0x30, 0x12, 0x3b]),
            (Colormap::Turbo, 0.5, [0xa4, 0xfc, 0x3c]),
            (Colormap::Turbo, 1.0, [0x7a, 0x04, 0x03]),
            (Colormap::Viridis, 0.3, [0x35, 0x5f, 0x8d]),
            (Colormap::Magma, 0.8, [0xfe, 0x9f, 0x6d]),
            (Colormap::Turbo, 0.2, [0x3e, 0x9b, 0xfe]),
        ];
        for (cm, t, want) in cases {
            let got = cm.rgb(t);
            assert!(close(got, want), "{cm}({t}) = {} want {}", hex(got), hex(want));
        }
    }

    #[test]
    fn clamps_and_nan() {
        for cm in Colormap::ALL {
            assert_eq!(cm.rgb(f32::NAN), cm.rgb(0.0));
            assert_eq!(cm.rgb(-3.0), cm.rgb(0.0));
            assert_eq!(cm.rgb(7.0), cm.rgb(1.0));
            assert_eq!(cm.lut()[0], cm.rgb(0.0));
            assert_eq!(cm.lut()[255], cm.rgb(1.0));
        }
        assert_eq!(Colormap::Gray.rgb(0.0), [0, 0, 0]);
        assert_eq!(Colormap::Gray.rgb(1.0), [255, 255, 255]);
    }

    #[test]
    fn names_round_trip() {
        for cm in Colormap::ALL {
            assert_eq!(cm.name().parse::<Colormap>(), Ok(cm));
            assert_eq!(cm.name().to_uppercase().parse::<Colormap>(), Ok(cm));
            let json = serde_json::to_string(&cm).unwrap();
            assert_eq!(json, format!("\"{}\"", cm.name()));
            assert_eq!(serde_json::from_str::<Colormap>(&json).unwrap(), cm);
        }
        assert_eq!("Grey".parse::<Colormap>(), Ok(Colormap::Gray));
        let err = "jet".parse::<Colormap>().unwrap_err().to_string();
        for cm in Colormap::ALL {
            assert!(err.contains(cm.name()), "{err}");
        }
        assert!(err.contains("jet"));
    }
}
