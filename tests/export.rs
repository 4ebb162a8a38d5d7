//! Figures for papers: SVG structure and colours, PNG size and DPI, sidecars that re-make a
//! figure byte for byte, and safe writes.

mod common;

use std::path::Path;

use common::{asset, grid_svg_and_png, hex, ok, tokenlens};
use tokenlens::Cancel;
use tokenlens::render::Colormap;

#[test]
fn an_attention_svg_has_one_cell_per_patch_in_the_colormap_colours() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("attn.svg");
    ok(tokenlens()
        .arg("export")
        .arg(asset("astronaut.png")) // square: every cell lies on the photo
        .args(["--view", "attention", "--view-layer", "5", "--colormap", "magma", "--out"])
        .arg(&svg_path));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let cells: Vec<_> = doc.descendants().filter(|n| n.attribute("class") == Some("cell")).collect();
    assert_eq!(cells.len(), 256, "one rectangle per patch");
    assert_eq!(doc.descendants().filter(|n| n.tag_name().name() == "image").count(), 1, "the photo, embedded once");
    assert!(doc.descendants().any(|n| n.attribute("class") == Some("colorbar")));
    assert!(doc.descendants().any(|n| n.tag_name().name() == "text"), "text stays text");

    // The colours are the colormap of the min-max normalised attention, computed here.
    let s = common::session();
    let input = s.open_image(&asset("astronaut.png")).unwrap();
    let full = s.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let values = &s.analysis_of(&full).unwrap().cls_attention[5];
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    for cell in &cells {
        let patch: usize = cell.attribute("data-patch").unwrap().parse().unwrap();
        let want = hex(Colormap::Magma.rgb((values[patch] - lo) / (hi - lo)));
        assert_eq!(cell.attribute("fill"), Some(want.as_str()), "patch {patch}");
    }
}

#[test]
fn a_tokens_svg_draws_each_group_once() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("tome.svg");
    ok(tokenlens()
        .arg("export")
        .arg(asset("chelsea.png"))
        .args(["--view", "tokens", "--reducer", "tome", "--remove", "0.889", "--out"])
        .arg(&svg_path));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let groups = doc.descendants().filter(|n| n.attribute("class") == Some("group")).count();
    assert_eq!(groups, 28, "88.9 % removed from 256 leaves 28 tokens, one path each");
    assert!(doc.descendants().any(|n| n.attribute("class") == Some("outline")));
}

/// Pixels per inch recorded in a PNG, and its width.
fn png_dpi_and_width(path: &Path) -> (Option<f64>, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let dpi = info.pixel_dims.map(|d| f64::from(d.xppu) * 0.0254);
    (dpi, info.width)
}

#[test]
fn png_size_follows_the_dpi_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let export = |dpi: u32, name: &str| {
        let path = dir.path().join(name);
        ok(tokenlens()
            .arg("export")
            .arg(asset("astronaut.png"))
            .args([
                "--view",
                "rollout",
                "--no-title",
                "--no-colorbar",
                "--dpi",
                &dpi.to_string(),
                "--width-in",
                "2",
                "--out",
            ])
            .arg(&path));
        png_dpi_and_width(&path)
    };
    let (dpi_a, width_a) = export(100, "a.png");
    let (dpi_b, width_b) = export(200, "b.png");
    assert!((dpi_a.unwrap() - 100.0).abs() < 0.5 && (dpi_b.unwrap() - 200.0).abs() < 0.5, "{dpi_a:?} {dpi_b:?}");
    // The photo is 2 in wide at each DPI (200 and 400 px), plus the same-looking margins.
    assert!((200..240).contains(&width_a), "{width_a}");
    assert!((400..460).contains(&width_b), "{width_b}");
}

#[test]
fn a_sidecar_re_makes_the_figure_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["fig.png", "fig.svg"] {
        let path = dir.path().join(name);
        ok(tokenlens()
            .arg("export")
            .arg(asset("coffee.png"))
            .args(["--view", "tokens", "--reducer", "random", "--param", "seed=7", "--tokens", "40", "--out"])
            .arg(&path)
            .arg("--force"));
        let sidecar = dir.path().join(format!("{name}.json"));
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
        for key in ["tokenlens_version", "model", "weights_sha256", "image_sha256", "figure", "colormap"] {
            assert!(spec.get(key).is_some(), "sidecar lacks {key}");
        }
        assert_eq!(spec["figure"]["run"]["reducer"]["seed"], 7);
        assert_eq!(spec["figure"]["view"]["name"], "tokens");
        let again = dir.path().join(format!("again.{}", &name[4..]));
        ok(tokenlens().arg("export").arg("--from").arg(&sidecar).arg("--out").arg(&again));
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap(), "{name} differs when re-made");
    }
}

#[test]
fn existing_files_need_force_and_unwritable_places_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fig.png");
    let args = |p: &Path| {
        let mut c = tokenlens();
        c.arg("export").arg(asset("coffee.png")).args(["--view", "rollout", "--out"]).arg(p);
        c
    };
    ok(&mut args(&path));
    let before = std::fs::read(&path).unwrap();
    let again = args(&path).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(&path).unwrap(), before, "the existing figure is untouched");

    // A folder marked read-only: refused with a message, nothing left behind.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let failed = args(&ro.join("fig.png")).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("read-only"), "{stderr}");
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // /proc refuses new files even for root: the error names the place, nothing is left.
    let nowhere = Path::new("/proc/tokenlens-test/fig.png");
    let failed = args(nowhere).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("tokenlens-test"), "{stderr}");
    assert!(!nowhere.exists());
}

#[test]
fn a_method_by_ratio_grid_embeds_the_photo_once() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("grid.svg");
    ok(tokenlens()
        .arg("figure")
        .arg(asset("chelsea.png"))
        .args(["--reducers", "tome,cls_topk,random", "--output-row", "--out"])
        .arg(&svg_path));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    // Every panel draws over one photo, embedded once and referenced by each panel; each of the
    // 1 full + 3 x 4 reduced saliency maps (the full model's once, not once per method) is one
    // image layer, not 50 176 rectangles.
    let images: Vec<_> = doc.descendants().filter(|n| n.tag_name().name() == "image").collect();
    let layers = images.iter().filter(|n| n.attribute("class") == Some("heat-layer")).count();
    assert_eq!((images.len() - layers, layers), (1, 13));
    assert!(doc.descendants().filter(|n| n.tag_name().name() == "use").count() >= 9);
    // (No-break spaces keep "66.7 %" together.)
    let labels: Vec<String> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .filter_map(|n| n.text())
        .map(|t| t.replace('\u{a0}', " "))
        .collect();
    // Column labels wrap in their narrow columns (a word is never cut): five columns at one
    // column's width, beside a thin colour bar, keep the full wording on three lines.
    for want in ["ToMe", "ClsTopK", "Random", "66.7 %", "(85 kept)", "94.4 %", "(14 kept)"] {
        assert!(labels.iter().any(|l| l.contains(want)), "missing label {want}: {labels:?}");
    }
    assert!(!labels.iter().any(|l| l.contains('…')), "{labels:?}");
    // The PNG of the same grid, and its sidecar re-makes it.
    let png_path = dir.path().join("grid.png");
    ok(tokenlens()
        .arg("figure")
        .arg(asset("chelsea.png"))
        .args(["--reducers", "tome,random", "--ratios", "0.667,0.889", "--out"])
        .arg(&png_path));
    let again = dir.path().join("again.png");
    ok(tokenlens().arg("export").arg("--from").arg(dir.path().join("grid.png.json")).arg("--out").arg(&again));
    assert_eq!(std::fs::read(&png_path).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn grid_columns_can_be_layers() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("layers.svg");
    ok(tokenlens()
        .arg("figure")
        .arg(asset("astronaut.png"))
        .args(["--reducers", "evit,cls_topk", "--layers", "2,8", "--ratios", "0.889", "--out"])
        .arg(&svg_path));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    assert!(text.contains("layer 2, 28 kept") && text.contains("layer 8, 28 kept"));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("layers.svg.json")).unwrap()).unwrap();
    assert_eq!(spec["figure"]["layers"], serde_json::json!([2, 8]));
    // A method without a layer cannot make layer columns.
    let bad = tokenlens()
        .arg("figure")
        .arg(asset("astronaut.png"))
        .args(["--reducers", "random", "--layers", "2,8", "--out"])
        .arg(dir.path().join("bad.svg"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("random has none"));
}

#[test]
fn every_figure_size_is_checked_before_drawing() {
    let dir = tempfile::tempdir().unwrap();
    let fig = dir.path().join("fig.png");
    for (args, expect) in [
        (&["--dpi", "100000"][..], "a DPI is 1 to 2400"),
        (&["--dpi", "0"], "a DPI is 1 to 2400"),
        (&["--dpi", "300", "--width-in", "1000"], "300000 px; a panel is 16 to 8192 px"),
        (&["--dpi", "300", "--width-in", "inf"], "a width must be over 0 inches"),
        (&["--dpi", "300", "--width-in", "NaN"], "a width must be over 0 inches"),
        (&["--dpi", "300", "--width-in", "0"], "a width must be over 0 inches"),
        (&["--size", "100000"], "100000: a panel is 16 to 8192 px"),
        (&["--size", "0"], "0: a panel is 16 to 8192 px"),
        (&["--opacity", "NaN"], "opacity is 0 to 1"),
    ] {
        for cmd in [&["export", "--view", "rollout"][..], &["figure", "--reducers", "tome", "--ratios", "0.5"]] {
            let run = tokenlens().args(cmd).arg(asset("coffee.png")).args(args).arg("--out").arg(&fig).output();
            let run = run.unwrap();
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(!run.status.success() && stderr.contains(expect), "{cmd:?} {args:?}: {stderr}");
            assert!(!fig.exists());
        }
    }
    // A grid too big as a whole, though each panel is in range.
    let run = tokenlens()
        .args(["figure", "--ratios", "0.5,0.6,0.7,0.8", "--output-row", "--size", "4096"])
        .arg(asset("coffee.png"))
        .arg("--out")
        .arg(&fig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("over the limit of 268435456"), "{stderr}");

    // A tampered sidecar: its panel_px is refused before anything is drawn.
    ok(tokenlens().args(["export", "--view", "rollout"]).arg(asset("coffee.png")).arg("--out").arg(&fig));
    let sidecar = dir.path().join("fig.png.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    spec["panel_px"] = serde_json::json!(4_000_000_000u32);
    std::fs::write(&sidecar, spec.to_string()).unwrap();
    let run = tokenlens().arg("export").arg("--from").arg(&sidecar).arg("--out").arg(dir.path().join("b.png")).output();
    let stderr = String::from_utf8_lossy(&run.as_ref().unwrap().stderr).into_owned();
    assert!(!run.unwrap().status.success() && stderr.contains("4000000000: a panel is 16 to 8192 px"), "{stderr}");
}

#[test]
fn a_figure_and_its_sidecar_are_written_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let fig = dir.path().join("fig.png");
    // The sidecar cannot be put in place (a folder holds its name): no figure is left either.
    let blocked = dir.path().join("fig.png.json");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let run = tokenlens()
        .args(["export", "--view", "rollout", "--force"])
        .arg(asset("coffee.png"))
        .arg("--out")
        .arg(&fig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("fig.png.json"), "{stderr}");
    assert!(!fig.exists(), "the figure was left without its sidecar");
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["fig.png.json"], "temporary files were left");
}

/// One `<text>` of an SVG: class, text, font size, anchor x, anchor.
type SvgText = (String, String, f64, f64, String);

/// Every `<text>` of an SVG, and the SVG's width.
fn svg_texts(doc: &roxmltree::Document) -> (f64, Vec<SvgText>) {
    let width: f64 = doc.root_element().attribute("width").unwrap().parse().unwrap();
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            let num = |a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
            (
                n.attribute("class").unwrap_or_default().to_string(),
                n.text().unwrap_or_default().to_string(),
                num("font-size"),
                num("x"),
                n.attribute("text-anchor").unwrap_or("start").to_string(),
            )
        })
        .collect();
    (width, texts)
}

/// The smallest text in points with the figure printed `width_in` wide.
fn smallest_pt(width: f64, texts: &[SvgText], width_in: f64) -> f64 {
    texts.iter().map(|t| t.2 * width_in * 72.0 / width).fold(f64::INFINITY, f64::min)
}

#[test]
fn a_compare_grid_reads_at_one_column_with_swatches_and_no_path() {
    let (_dir, svg_path, png_path) = grid_svg_and_png(&["--output-row"]);
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let (width, texts) = svg_texts(&doc);
    // Every label at least 6 pt with the figure one column (3.25 in) wide.
    let pt = smallest_pt(width, &texts, 3.25);
    assert!(pt >= 6.0, "smallest text {pt:.2} pt at one column: {texts:?}");

    // The title names the image by its file name and stays on the canvas, even in a font 25 %
    // wider than the one it was laid out with.
    let title = texts.iter().find(|t| t.0 == "title").expect("a title");
    assert!(title.1.contains("chelsea.png") && !title.1.contains('/'), "{title:?}");
    let w = f64::from(tokenlens::render::text::text_width(title.2 as f32, &title.1)) * 1.25;
    assert_eq!(title.4, "middle");
    assert!(title.3 - w / 2.0 >= 0.0 && title.3 + w / 2.0 <= width, "{title:?} in {width}");

    // Swatches for what the token panels draw: ToMe merges, ClsTopK keeps and drops.
    let swatches: Vec<_> = doc.descendants().filter(|n| n.attribute("class") == Some("swatch")).collect();
    let kinds: Vec<&str> = swatches.iter().map(|n| n.attribute("data-kind").unwrap()).collect();
    assert_eq!(kinds, ["kept", "merged", "dropped"]);
    let col: Vec<String> = texts.iter().filter(|t| t.0 == "col-label").map(|t| t.1.replace('\u{a0}', " ")).collect();
    assert_eq!(col, ["full model", "75.0 % removed", "(64 kept)"], "wrapped at spaces, no word cut");
    let words: Vec<&str> = texts.iter().filter(|t| t.0 == "legend-key").map(|t| t.1.as_str()).collect();
    assert_eq!(words, kinds);
    // What the token panels leave out is said under the key, as the app's legend says it:
    // DINOv2's CLS token has no place on the photo.
    let note: Vec<&str> = texts.iter().filter(|t| t.0 == "note").map(|t| t.1.as_str()).collect();
    assert_eq!(note.join(" "), "Not drawn: the CLS token, which every method keeps.");
    // The PNG draws each swatch's fill where the SVG puts it.
    let png = image::open(&png_path).unwrap().to_rgb8();
    assert_eq!(f64::from(png.width()), width);
    for sw in &swatches {
        let t = sw.attribute("transform").unwrap();
        let (x, y) = t.trim_start_matches("translate(").trim_end_matches(')').split_once(',').unwrap();
        let (x, y): (u32, u32) = (x.parse().unwrap(), y.parse().unwrap());
        let fill = sw.children().find(|n| n.has_tag_name("rect")).unwrap();
        let side: u32 = fill.attribute("width").unwrap().parse().unwrap();
        assert!(side >= 8, "a swatch {side} px wide");
        let centre = png.get_pixel(x + side / 2, y + side / 2).0;
        assert_eq!(hex(centre), fill.attribute("fill").unwrap(), "{:?}", sw.attribute("data-kind"));
    }

    // The full model's column holds its grid (every patch kept) and its output, once each.
    let col0: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("panel") && n.attribute("data-col") == Some("0"))
        .collect();
    let rows: Vec<&str> = col0.iter().map(|n| n.attribute("data-row").unwrap()).collect();
    assert_eq!(rows, ["0", "1"]);
    let kept = col0[0].descendants().filter(|n| n.attribute("data-kind") == Some("kept")).count();
    assert_eq!(kept, 256, "the full model keeps every patch");
    assert!(col0[1].descendants().any(|n| n.attribute("class") == Some("heat-layer")));
}

#[test]
fn title_font_scale_map_scale_and_dpi_are_options_a_sidecar_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("rollout.svg");
    ok(tokenlens()
        .arg("export")
        .arg(asset("astronaut.png"))
        .args(["--view", "rollout", "--title", "Rollout of the astronaut", "--font-scale", "1.5"])
        .args(["--scale", "log", "--out"])
        .arg(&svg_path));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let (width, texts) = svg_texts(&doc);
    let title = texts.iter().find(|t| t.0 == "title").unwrap();
    assert_eq!(title.1, "Rollout of the astronaut");
    let pt = smallest_pt(width, &texts, 3.25);
    assert!(pt >= 9.0, "1.5 x 6 pt, got {pt:.2}");
    assert_eq!(texts.iter().find(|t| t.0 == "norm").unwrap().1, "log");
    // A log bar's ticks are evenly spaced on the bar and geometric in value.
    let values: Vec<f64> = texts.iter().filter(|t| t.0 == "tick").map(|t| t.1.parse().unwrap()).collect();
    assert!(values.len() >= 3, "{values:?}");
    let ratios: Vec<f64> = values.windows(2).map(|w| w[1] / w[0]).collect();
    assert!(ratios.iter().all(|r| (r / ratios[0] - 1.0).abs() < 0.05 && *r > 1.0), "{values:?}");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rollout.svg.json")).unwrap()).unwrap();
    assert_eq!(sidecar["font_scale"], 1.5);
    assert_eq!(sidecar["scale"], "log");
    assert_eq!(sidecar["title_text"], "Rollout of the astronaut");
    let again = dir.path().join("again.svg");
    ok(tokenlens().arg("export").arg("--from").arg(dir.path().join("rollout.svg.json")).arg("--out").arg(&again));
    assert_eq!(std::fs::read(&svg_path).unwrap(), std::fs::read(&again).unwrap());

    // At a DPI the figure's own print size counts: 6 pt at 300 DPI is 25 px.
    let dpi_path = dir.path().join("dpi.svg");
    ok(tokenlens()
        .arg("export")
        .arg(asset("astronaut.png"))
        .args(["--view", "rollout", "--dpi", "300", "--width-in", "1", "--out"])
        .arg(&dpi_path));
    let doc_text = std::fs::read_to_string(&dpi_path).unwrap();
    let (_, texts) = svg_texts(&roxmltree::Document::parse(&doc_text).unwrap());
    let smallest = texts.iter().map(|t| t.2).fold(f64::INFINITY, f64::min);
    assert!(smallest >= 6.0 * 300.0 / 72.0, "{smallest} px at 300 DPI");

    let bad = tokenlens()
        .args(["export", "--view", "rollout", "--font-scale", "0"])
        .arg(asset("astronaut.png"))
        .arg("--out")
        .arg(dir.path().join("bad.svg"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("a font scale is 0.25 to 4"));
}

#[test]
fn a_compare_grid_of_reduced_attention_reads_at_one_column_with_both_colour_bars() {
    // The app's compare view on the default model showing attention: each method's reduced
    // model beside the full model's, the outputs under them, one column (3.25 in) wide.
    use tokenlens::export::{self, ExportSpec, Figure, Format, Look, MapScale, MapSource, View};
    use tokenlens::reduce::{Budget, ReducerConfig};
    let session = common::session();
    let image = asset("chelsea.png");
    let sha = session.open_image(&image).unwrap().sha256;
    let methods = ["tome", "evit"].map(|m| ReducerConfig::from_name(m).unwrap()).to_vec();
    let figure = Figure::Grid {
        methods,
        budgets: vec![Budget::RemoveFraction(0.75)],
        layers: Vec::new(),
        output_row: true,
        fill: Default::default(),
        positions: Default::default(),
        view: View::Attention { layer: 11, head: None },
        source: MapSource::Reduced,
    };
    let look = Look { scale: MapScale::Log, panel_px: 256, ..Look::default() };
    let spec = ExportSpec::new(session, &image, &sha, figure, Format::Svg).with_look(&look).unwrap();
    let svg = String::from_utf8(export::render(session, &spec).unwrap()).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let (width, texts) = svg_texts(&doc);
    let pt = smallest_pt(width, &texts, 3.25);
    assert!(pt >= 6.0, "smallest text {pt:.2} pt at one column: {texts:?}");
    // Two bars: the maps' shared log scale and the outputs' fixed range, their names on lines
    // of their own, on the canvas.
    let names: Vec<&SvgText> = texts.iter().filter(|t| t.0 == "norm").collect();
    let words: Vec<&str> = names.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(words, ["maps: log scale, shared", "saliency, fixed range"]);
    // The maps' log bar is labelled in the maps' own units, from the smallest value it shows up
    // to the largest (it printed their log10: "-3.000", "-1.500", "0.000").
    let bar = doc.descendants().find(|n| n.attribute("class") == Some("colorbar")).unwrap();
    let ticks: Vec<f64> = bar
        .descendants()
        .filter(|n| n.attribute("class") == Some("tick"))
        .map(|n| n.text().unwrap().parse().unwrap_or_else(|e| panic!("{:?}: {e}", n.text())))
        .collect();
    assert!(ticks.len() >= 2 && ticks.iter().all(|&t| t > 0.0 && t <= 1.0), "attention in 0..1: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] > w[0] * 1.5), "log-spaced, increasing: {ticks:?}");
    let tops: Vec<f64> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("norm"))
        .map(|n| n.attribute("y").unwrap().parse().unwrap())
        .collect();
    assert!(tops[1] - tops[0] >= names[0].2, "the names overlap: {tops:?} {names:?}");
    for t in &names {
        let w = f64::from(tokenlens::render::text::text_width(t.2 as f32, &t.1));
        assert!(t.3 - w >= 0.0 && t.3 <= width, "{t:?} off the canvas ({width})");
    }
    // The panels have no titles: the note says what the maps are and where they come from.
    let note: Vec<&str> = texts.iter().filter(|t| t.0 == "note").map(|t| t.1.as_str()).collect();
    let note = note.join(" ");
    assert!(note.starts_with("Maps: CLS attention, layer 11, mean of heads;"), "{note}");
    assert!(note.contains("each method's own reduced model's"), "{note}");
    let bars = doc.descendants().filter(|n| n.attribute("class") == Some("colorbar")).count();
    assert_eq!(bars, 2);
    // The full model's column and each method's map and output.
    let panels = doc.descendants().filter(|n| n.attribute("class") == Some("panel")).count();
    assert_eq!(panels, 2 + 2 * 2, "the full model's map and output, then each method's");
    let col: Vec<&str> = texts.iter().filter(|t| t.0 == "col-label").map(|t| t.1.as_str()).collect();
    assert_eq!(col.first(), Some(&"full model"));
    // Its sidecar records the source and re-makes it.
    let again = export::render(session, &spec).unwrap();
    assert!(again == svg.as_bytes());
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!((json["figure"]["source"].as_str(), json["revision"].as_u64()), (Some("reduced"), Some(2)));
}

/// The compare grid exports the metrics the compare view shows (issue 16): with `metrics` on,
/// each method's Pearson r, L1, IoU and cosines under its panels, one value per budget, the best
/// of the methods at each budget in green and underlined; the values are the runs' own
/// (computed here through the session), the sidecar records the switch and re-makes the figure,
/// and the text still reads at one column. Off, there is no table.
#[test]
fn a_compare_grid_exports_its_metrics_row() {
    use tokenlens::export::{self, ExportSpec, Figure, Format, Look, MapSource, View};
    use tokenlens::figures::{METRICS, metric_text};
    use tokenlens::reduce::{Budget, ReducerConfig};
    use tokenlens::session::RunSpec;
    let session = common::session();
    let image = asset("chelsea.png");
    let input = session.open_image(&image).unwrap();
    let names = ["tome", "cls_topk"];
    let budgets = [Budget::RemoveFraction(0.5), Budget::RemoveFraction(0.75)];
    let figure = Figure::Grid {
        methods: names.map(|m| ReducerConfig::from_name(m).unwrap()).to_vec(),
        budgets: budgets.to_vec(),
        layers: Vec::new(),
        output_row: false,
        fill: Default::default(),
        positions: Default::default(),
        view: View::Tokens,
        source: MapSource::Full,
    };
    let spec = |metrics: bool| {
        let look = Look { panel_px: 192, metrics, ..Look::default() };
        ExportSpec::new(session, &image, &input.sha256, figure.clone(), Format::Svg).with_look(&look).unwrap()
    };
    let (with, without) = (spec(true), spec(false));
    let svg = String::from_utf8(export::render(session, &with).unwrap()).unwrap();
    let plain = String::from_utf8(export::render(session, &without).unwrap()).unwrap();
    assert!(!plain.contains("table-"), "no metrics unless asked");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let (width, texts) = svg_texts(&doc);
    assert!(smallest_pt(width, &texts, 3.25) >= 6.0, "reads at one column");

    // The runs, independently.
    let full = session.full_run(&input.prepared.pixels, &Cancel::default()).unwrap();
    let fid: Vec<Vec<_>> = names
        .iter()
        .map(|m| {
            budgets
                .iter()
                .map(|&b| {
                    let spec = RunSpec::vision(ReducerConfig::from_name(m).unwrap(), b);
                    session.run_against(&full, &spec, &Cancel::default()).unwrap().fidelity
                })
                .collect()
        })
        .collect();
    let shown: Vec<_> = METRICS.iter().filter(|m| fid.iter().flatten().any(|f| (m.get)(f).is_finite())).collect();
    let table_names: Vec<&str> = texts.iter().filter(|t| t.0 == "table-name").map(|t| t.1.as_str()).collect();
    let want: Vec<&str> = names.iter().flat_map(|_| shown.iter().map(|m| m.name)).collect();
    assert_eq!(table_names, want, "each method's metrics, in the app's order");
    // Values in reading order: method, metric, column (the full model's column blank).
    let values: Vec<(&str, bool)> = texts
        .iter()
        .filter(|t| t.0 == "table-value" || t.0 == "table-best")
        .map(|t| (t.1.as_str(), t.0 == "table-best"))
        .collect();
    let mut k = 0;
    for (mi, row) in fid.iter().enumerate() {
        for m in &shown {
            for (c, f) in row.iter().enumerate() {
                let v = (m.get)(f);
                if !v.is_finite() {
                    continue;
                }
                let other = (m.get)(&fid[1 - mi][c]);
                let best = !other.is_finite() || if m.higher_is_better { v >= other } else { v <= other };
                assert_eq!(values[k], (metric_text(v).as_str(), best), "{} {} column {c}", names[mi], m.name);
                k += 1;
            }
        }
    }
    assert_eq!(k, values.len());
    let bests = values.iter().filter(|v| v.1).count();
    let underlines = doc.descendants().filter(|n| n.attribute("class") == Some("underline")).count();
    assert!(bests >= shown.len() * budgets.len() && underlines == bests, "{bests} best, {underlines} underlined");
    // The note says what green means.
    let note: String = texts.iter().filter(|t| t.0 == "note").map(|t| t.1.clone()).collect::<Vec<_>>().join(" ");
    assert!(note.contains("in green, underlined"), "{note}");

    // The sidecar records the switch (and leaves it out when off) and re-makes the figure.
    let json = serde_json::to_value(&with).unwrap();
    assert_eq!(json["metrics"], true);
    assert!(serde_json::to_value(&without).unwrap().get("metrics").is_none());
    let back: ExportSpec = serde_json::from_value(json).unwrap();
    assert!(export::render(session, &back).unwrap() == svg.as_bytes());
    // And the PNG draws it too: taller than without.
    let png = |s: &ExportSpec| {
        let s = ExportSpec { format: Format::Png, ..s.clone() };
        image::load_from_memory(&export::render(session, &s).unwrap()).unwrap()
    };
    assert!(png(&with).height() > png(&without).height());
}
