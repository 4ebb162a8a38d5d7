//! The encoder views in exports (issue 16): the reduced model's maps as a figure source, a thin
//! colour bar at one column's width, legend swatches that keep their frame, and token grids
//! over the part of the canvas the patches read.

mod common;

use std::path::Path;

use common::{asset, grid_svg_and_png, hex, ok, tokenlens};
use tokenlens::Cancel;
use tokenlens::reduce::{Budget, ReducerConfig};
use tokenlens::render::{Colormap, Heatmap, Norm, Placement};
use tokenlens::session::{ImageInput, RunSpec};

fn svg(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn sidecar(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(tokenlens::export::sidecar_path(path)).unwrap()).unwrap()
}

/// The title, its lines joined.
fn title(doc: &roxmltree::Document) -> String {
    let lines: Vec<&str> =
        doc.descendants().filter(|n| n.attribute("class") == Some("title")).filter_map(|n| n.text()).collect();
    assert!(!lines.is_empty(), "a title");
    lines.join(" ")
}

/// Each heat cell's patch and fill.
fn cells(doc: &roxmltree::Document) -> Vec<(usize, String)> {
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("cell"))
        .map(|n| (n.attribute("data-patch").unwrap().parse().unwrap(), n.attribute("fill").unwrap().to_string()))
        .collect()
}

/// `export --source reduced` draws the reduced run's own attention (the colours of its
/// min-max map, computed here), says so in the title as the app does, records the source in
/// the sidecar and re-makes the figure from it byte for byte; the full model's export says
/// where its map comes from too and keeps the sidecar as before (no `source` field).
#[test]
fn the_reduced_model_source_exports_with_its_title_and_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let (reduced, full) = (dir.path().join("reduced.svg"), dir.path().join("full.svg"));
    let attention = ["--view", "attention", "--view-layer", "11"];
    ok(tokenlens()
        .arg("export")
        .arg(asset("chelsea.png"))
        .args(attention)
        .args(["--source", "reduced", "--reducer", "tome", "--remove", "0.667", "--out"])
        .arg(&reduced));
    ok(tokenlens().arg("export").arg(asset("chelsea.png")).args(attention).arg("--out").arg(&full));

    let (rtext, ftext) = (svg(&reduced), svg(&full));
    let (rdoc, fdoc) = (roxmltree::Document::parse(&rtext).unwrap(), roxmltree::Document::parse(&ftext).unwrap());
    assert_eq!(title(&rdoc), "CLS attention, layer 11, mean of heads (reduced: ToMe, 67 % removed)");
    assert_eq!(title(&fdoc), "CLS attention, layer 11, mean of heads (full model)");
    // Each line stays on the canvas even in a font 25 % wider (an SVG viewer without Ubuntu):
    // centred over the photo, the long first line ran off the left edge.
    let width: f64 = rdoc.root_element().attribute("width").unwrap().parse().unwrap();
    for line in rdoc.descendants().filter(|n| n.attribute("class") == Some("title")) {
        let num = |a: &str| line.attribute(a).unwrap().parse::<f64>().unwrap();
        let w = f64::from(tokenlens::render::text::text_width(num("font-size") as f32, line.text().unwrap())) * 1.25;
        assert!(num("x") - w / 2.0 >= 0.0 && num("x") + w / 2.0 <= width, "{:?} in {width}", line.text());
    }

    let side = sidecar(&reduced);
    assert_eq!(side["figure"]["source"], "reduced", "{side}");
    assert!(sidecar(&full)["figure"].get("source").is_none(), "the full model's sidecar is as before");

    // The cells are the reduced run's map, not the full model's.
    let s = common::session();
    let input = s.open_image(&asset("chelsea.png")).unwrap();
    let full_run = s.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let spec: RunSpec = serde_json::from_value(side["figure"]["run"].clone()).unwrap();
    let run = s.run_against(&full_run, &spec, &Cancel::default()).unwrap();
    let values = &run.maps.as_ref().expect("ToMe changes every block").get().unwrap().cls_attention[11];
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (rcells, fcells) = (cells(&rdoc), cells(&fdoc));
    // The cells on the photo (the letterbox's padding rows are not drawn).
    assert_eq!(rcells.len(), 16 * 12);
    assert_eq!(rcells.iter().map(|c| c.0).collect::<Vec<_>>(), fcells.iter().map(|c| c.0).collect::<Vec<_>>());
    for (patch, fill) in &rcells {
        assert_eq!(*fill, hex(Colormap::Viridis.rgb((values[*patch] - lo) / (hi - lo))), "patch {patch}");
    }
    let differ = rcells.iter().zip(&fcells).filter(|(a, b)| a.1 != b.1).count();
    assert!(differ > rcells.len() / 2, "only {differ} of {} cells differ from the full model's", rcells.len());

    // Re-made from the sidecar, byte for byte.
    let again = dir.path().join("again.svg");
    ok(tokenlens().arg("export").arg("--from").arg(tokenlens::export::sidecar_path(&reduced)).arg("--out").arg(&again));
    assert_eq!(std::fs::read(&reduced).unwrap(), std::fs::read(&again).unwrap());

    // The reduced model's map needs a run, and only maps have a source.
    for (args, says) in [
        (&["--view", "attention", "--source", "reduced"][..], "needs a method"),
        (&["--view", "tokens", "--reducer", "tome", "--source", "reduced"][..], "--source applies to"),
    ] {
        let out = tokenlens()
            .arg("export")
            .arg(asset("chelsea.png"))
            .args(args)
            .arg("--out")
            .arg(dir.path().join("bad.svg"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
}

/// The colour bar's stripes' left edge and width, and the SVG's width.
fn bar_geometry(doc: &roxmltree::Document) -> (f64, f64, f64) {
    let width: f64 = doc.root_element().attribute("width").unwrap().parse().unwrap();
    let bar = doc.descendants().find(|n| n.attribute("class") == Some("colorbar")).expect("a colour bar");
    let stripe = bar.descendants().find(|n| n.has_tag_name("rect")).unwrap();
    let num = |a: &str| stripe.attribute(a).unwrap().parse::<f64>().unwrap();
    (num("x"), num("width"), width)
}

/// At one column's width (3.25 in, text at least 6 pt) the colour bar is a thin bar with
/// ticks: the bar itself at most 2 % of the figure's width, everything right of the photo
/// (bar, ticks, labels, margins) at most 17 %; the norm name goes under the bar instead of
/// widening it. Before: about a fifth of a panel and more than a quarter of a compare grid.
#[test]
fn the_colour_bar_is_narrow_at_one_column() {
    let dir = tempfile::tempdir().unwrap();
    let panel = dir.path().join("p99.svg");
    ok(tokenlens()
        .arg("export")
        .arg(asset("chelsea.png"))
        .args(["--view", "attention", "--scale", "p99", "--out"])
        .arg(&panel));
    let grid = dir.path().join("grid.svg");
    ok(tokenlens()
        .arg("figure")
        .arg(asset("chelsea.png"))
        .args(["--reducers", "tome,cls_topk", "--ratios", "0.75", "--output-row", "--out"])
        .arg(&grid));
    for path in [&panel, &grid] {
        let text = svg(path);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let (x, bar_w, width) = bar_geometry(&doc);
        assert!(bar_w / width <= 0.02, "{path:?}: the bar is {:.1} % of the width", 100.0 * bar_w / width);
        let column = (width - x) / width;
        assert!(column <= 0.17, "{path:?}: the colour bar's column is {:.1} % of the width", 100.0 * column);
        // The norm name is under the bar, right-aligned to its labels, inside the figure.
        let norm = doc.descendants().find(|n| n.attribute("class") == Some("norm")).unwrap();
        assert_eq!(norm.attribute("text-anchor"), Some("end"));
        let nx: f64 = norm.attribute("x").unwrap().parse().unwrap();
        assert!(nx <= width, "{path:?}: the norm name ends at {nx} of {width}");
        eprintln!("{path:?}: bar {:.1} %, column {:.1} %", 100.0 * bar_w / width, 100.0 * column);
    }
}

/// The legend's swatches keep a frame as wide as the white outline inside it (a 1 px frame
/// beside it read as a stray line after the swatch once the figure was scaled down, and an
/// SVG's crisp edges dropped it on one side); the PNG draws the frame where the SVG does.
#[test]
fn legend_swatches_keep_a_solid_frame() {
    let (_dir, svg_path, png_path) = grid_svg_and_png(&[]);
    let text = svg(&svg_path);
    let doc = roxmltree::Document::parse(&text).unwrap();
    let png = image::open(&png_path).unwrap().to_rgb8();
    for sw in doc.descendants().filter(|n| n.attribute("class") == Some("swatch")) {
        let kind = sw.attribute("data-kind").unwrap();
        let frame = sw.children().find(|n| n.attribute("class") == Some("frame")).expect("a frame");
        let fw: f64 = frame.attribute("stroke-width").unwrap().parse().unwrap();
        assert!(fw >= 2.0, "{kind}: a {fw} px frame");
        if kind != "dropped" {
            let outline = sw.children().filter(|n| n.has_tag_name("rect")).nth(1).unwrap();
            let ow: f64 = outline.attribute("stroke-width").unwrap().parse().unwrap();
            assert!(fw >= ow, "{kind}: a {fw} px frame beside a {ow} px outline");
        }
        let t = sw.attribute("transform").unwrap();
        let (x, y) = t.trim_start_matches("translate(").trim_end_matches(')').split_once(',').unwrap();
        let (x, y): (u32, u32) = (x.parse().unwrap(), y.parse().unwrap());
        let side: u32 =
            sw.children().find(|n| n.has_tag_name("rect")).unwrap().attribute("width").unwrap().parse().unwrap();
        let frame_rgb = png.get_pixel(x, y + side / 2).0;
        for k in 0..fw as u32 {
            assert_eq!(png.get_pixel(x + k, y + side / 2).0, frame_rgb, "{kind}: left frame, px {k}");
            assert_eq!(png.get_pixel(x + side - 1 - k, y + side / 2).0, frame_rgb, "{kind}: right frame, px {k}");
        }
    }
}

/// SigLIP's 14 px patches into a 384 px canvas read 27 patches (378 px): the grid lies over
/// those, and the 6 px the model never read stay the photo's own, untinted.
#[test]
fn a_grid_covers_the_pixels_the_patches_read() {
    let place = Placement::full(384, 384);
    let read = place.read_by_grid((384, 384), [27, 27]);
    assert_eq!((read.x0, read.y0, read.x1, read.y1), (0.0, 0.0, 378.0, 378.0));
    // A letterbox of a wide photo: the unread part is at the canvas's bottom and right.
    let wide = Placement::letterbox(768, 384).read_by_grid((384, 384), [27, 27]);
    assert_eq!((wide.x0, wide.x1), (0.0, 756.0));
    assert_eq!((wide.y0, wide.y1), (-192.0, 564.0));
    // A patch that divides the canvas: all of it.
    assert_eq!(Placement::full(224, 224).read_by_grid((224, 224), [16, 16]), Placement::full(224, 224));

    let grey = image::RgbImage::from_pixel(384, 384, image::Rgb([128, 128, 128]));
    let prepared = tokenlens::model::preprocess::prepare(&grey, 384, &candle_core::Device::Cpu).unwrap();
    let input = ImageInput { photo: grey.clone(), prepared, sha256: String::new() };
    let values: Vec<f32> = (0..27 * 27).map(|i| (i % 7) as f32).collect();
    let body = tokenlens::figures::grid_map_body(&input, [27, 27], &values, Colormap::Viridis, Norm::MinMax, 1.0, 384);
    assert_eq!(body.dimensions(), (384, 384));
    for (x, y) in [(380, 100), (100, 381), (383, 383), (379, 0)] {
        assert_eq!(body.get_pixel(x, y).0, [128; 3], "({x}, {y}) was never read: the photo's own");
    }
    for (x, y) in [(377, 100), (100, 377), (0, 0)] {
        assert_ne!(body.get_pixel(x, y).0, [128; 3], "({x}, {y}) is under a patch");
    }
    // The last cell is 14 px wide, as the others.
    let last = |x: u32| body.get_pixel(x, 5).0;
    assert_eq!(last(364), last(377));
    assert_ne!(last(363), last(364));
}

/// Why ToMe's compare panel looked close to the full model's (issue 16): it is its reduced
/// model's own map, on the scale shared with the full model's, and differs from it in the
/// merged groups; the pruning methods the compare view opens with (ClsTopK, DivPrune, Random)
/// prune after the last block, so their reduced model's attention is the full model's own.
/// Each map on its own min-max scale (the single view) shifts every colour as well: ToMe's
/// largest value is 7 % under the full model's.
#[test]
fn compare_maps_are_each_reduced_models_own_on_one_scale() {
    let s = common::session();
    let input = s.open_image(&asset("chelsea.png")).unwrap();
    let full = s.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let analysis = s.analysis_of(&full).unwrap();
    let layer = 11;
    let run = |name: &str| {
        let spec = RunSpec::vision(ReducerConfig::from_name(name).unwrap(), Budget::default());
        s.run_against(&full, &spec, &Cancel::default()).unwrap()
    };
    let full_map = &analysis.cls_attention[layer];
    for name in ["cls_topk", "divprune", "random"] {
        let r = run(name);
        assert!(r.maps.is_none(), "{name} acts after the last block: no block of its own");
    }
    let tome = run("tome");
    let tome_map = &tome.maps.as_ref().expect("ToMe merges in every block").get().unwrap().cls_attention[layer];
    // On one scale over both (the compare view's), as colours.
    let all: Vec<f32> = full_map.iter().chain(tome_map).copied().collect();
    let (lo, hi) = Norm::MinMax.resolve(&Heatmap::new(1, all.len(), all));
    let unit = |v: f32| Norm::MinMax.unit(v, lo, hi);
    let moved: Vec<f32> = full_map.iter().zip(tome_map).map(|(&f, &t)| (unit(f) - unit(t)).abs()).collect();
    let visibly = moved.iter().filter(|&&d| d > 0.05).count() as f64 / moved.len() as f64;
    let colours = |v: &[f32]| v.iter().map(|&x| Colormap::Viridis.rgb(unit(x))).collect::<Vec<_>>();
    let (cf, ct) = (colours(full_map), colours(tome_map));
    let differ = cf.iter().zip(&ct).filter(|(a, b)| a != b).count() as f64 / cf.len() as f64;
    eprintln!(
        "ToMe vs full, shared scale: {:.1} % of cells change colour, {:.1} % by over 5 % of the scale",
        100.0 * differ,
        100.0 * visibly
    );
    assert!(differ > 0.5 && visibly > 0.1, "{differ} {visibly}");
}

/// The in-app file browser (egui_file) draws its folder, file, up and refresh icons and its
/// title icons with these glyphs; egui's fonts must have every one (they drew as boxes).
#[test]
fn the_file_browser_icons_are_in_the_fonts() {
    let ctx = egui::Context::default();
    let _ = ctx.run_ui(egui::RawInput::default(), |_| {});
    let font = egui::FontId::proportional(14.0);
    for icon in ['📁', '📂', '💾', '⬆', '⟲', '🗀', '🗋'] {
        assert!(ctx.fonts_mut(|f| f.has_glyph(&font, icon)), "{icon} (U+{:04X}) is not in the fonts", icon as u32);
    }
}
