//! The tensor-op path (candle's ops, which a GPU runs) against the same transformers references
//! the fused CPU kernels are checked on. Here, on the CPU, the fused kernels are turned off for
//! this test binary; in a `cuda` build on a machine with a GPU, the `auto` device is that GPU and
//! these run there (with the VLM tests that load through the session).

mod common;

use common::references::{check_hf_encoder, check_idefics3_logits_and_greedy, check_llava_logits_and_attention};

fn tensor_ops() {
    tokenlens::model::kernels::set_fused(false);
}

#[test]
fn encoders_match_transformers_on_tensor_ops() {
    tensor_ops();
    for name in ["vit", "vit_model", "deit", "deit_distilled", "dinov2"] {
        check_hf_encoder(name);
    }
}

#[test]
fn llava_matches_transformers_on_tensor_ops() {
    tensor_ops();
    check_llava_logits_and_attention();
}

#[test]
fn smolvlm_matches_transformers_on_tensor_ops() {
    tensor_ops();
    check_idefics3_logits_and_greedy();
}

/// Half-precision linear weights (a GPU's `--dtype f16|bf16`): LLaVA's logits and every layer's
/// attention within 1e-2 of f32 on the same device. The CPU refuses them (no fast half matmul).
#[test]
fn half_precision_stays_within_1e_2_of_f32_on_a_gpu() {
    use candle_core::Device;
    use tokenlens::model::llama::KvCache;
    use tokenlens::model::llava::Llava;
    use tokenlens::model::quant::{DTypeChoice, Linears, LoadOptions};
    tensor_ops();
    let device = tokenlens::model::quant::DeviceChoice::Auto.resolve().unwrap();
    let at = |dtype| LoadOptions { dtype, ..LoadOptions::default() };
    if device.is_cpu() {
        for dtype in [DTypeChoice::F16, DTypeChoice::Bf16] {
            let err = Linears::for_options(&at(dtype)).unwrap_err().to_string();
            assert!(err.contains("not computed on the CPU"), "{err}");
        }
        return;
    }
    let dir = common::fixture("vlm/llava");
    let r = common::references::vlm_reference("llava");
    let ids = common::json_ints(&r["input_ids"]);
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let run = |dtype| {
        let model = Llava::load_with(&dir, &Linears::for_options(&at(dtype)).unwrap()).unwrap();
        let embeds = model.merge(&ids, &common::references::llava_image_tokens(&model)).unwrap();
        let layers: Vec<usize> = (0..model.lm.num_layers()).collect();
        let (hidden, trace) = model.lm.forward(&embeds, &positions, &mut KvCache::default(), &layers, false).unwrap();
        let logits = model.lm.logits(&hidden).unwrap().to_device(&Device::Cpu).unwrap();
        (logits, trace.attentions)
    };
    let (logits, attn) = run(DTypeChoice::F32);
    // Measured on an H200 (this fixture's random weights make attention peaked): see the README.
    for (dtype, attn_bound, logit_bound) in [(DTypeChoice::F16, 1e-2, 5e-2), (DTypeChoice::Bf16, 5e-2, 0.3)] {
        let (l, a) = run(dtype);
        let dl = common::max_diff(&l, &logits);
        let da = attn.iter().map(|(layer, want)| common::max_diff(&a[layer], want)).fold(0f32, f32::max);
        eprintln!("{dtype}: logits differ from f32 by {dl}, attention by {da}");
        assert!(da < attn_bound, "{dtype}: attention differs from f32 by {da}");
        assert!(dl < logit_bound, "{dtype}: logits differ from f32 by {dl}");
    }
}

/// A language-side method's ratio change resumed from the cached full prefill equals the run from
/// layer 0 on the tensor-op path too (ids, log-probabilities, rows per layer).
#[test]
fn resumed_runs_equal_runs_from_scratch_on_tensor_ops() {
    use tokenlens::Cancel;
    use tokenlens::reduce::llm::LlmReducerConfig;
    use tokenlens::reduce::{Budget, Method};
    use tokenlens::session::RunSpec;
    use tokenlens::session::vlm::Resume;
    tensor_ops();
    for name in ["idefics3_deep", "llava"] {
        let (vlm, full) = common::vlm_full(name);
        let layers = vlm.num_layers();
        for mut cfg in LlmReducerConfig::defaults() {
            if let Some(l) = cfg.layer(layers) {
                cfg.set_layer(l.min(layers - 1).max(1), layers);
            }
            let what = format!("{name} {}", cfg.name());
            let s =
                RunSpec { method: Some(Method::Llm(cfg)), budget: Budget::RemoveFraction(0.5), ..common::vlm_spec() };
            let resumed = vlm.run(&full, &s, Resume::FromCache, &mut |_| {}, &Cancel::default()).unwrap();
            let scratch = vlm.run(&full, &s, Resume::FromScratch, &mut |_| {}, &Cancel::default()).unwrap();
            assert_eq!(resumed.answer, scratch.answer, "{what}");
            assert_eq!(resumed.image_rows_per_layer, scratch.image_rows_per_layer, "{what}");
        }
    }
}
