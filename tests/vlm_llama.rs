//! Our Llama decoder against transformers on a tiny random-weight `LlamaForCausalLM`
//! (`scripts/make_vlm_fixtures.py`): logits, hidden states, every layer's attention, rotary at
//! position-id gaps (as pruning leaves), greedy decoding, and the tokenizer.

mod common;

use common::{json_ints, json_tensor, max_diff};
use std::path::PathBuf;
use tokenlens::session::vlm::decode;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;
use tokenlens::model::llama::{KvCache, Llama, LlamaConfig};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vlm/llama")
}

fn load() -> (Llama, Value) {
    let json = serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    let cfg = LlamaConfig::from_hf(&json, "").unwrap();
    let weights = candle_core::safetensors::load(dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let model = Llama::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).unwrap();
    let r = serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap();
    (model, r)
}

#[test]
fn logits_hidden_states_and_attention_match_transformers() {
    let (model, r) = load();
    let ids = json_ints(&r["input_ids"]);
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    let (hidden, trace) =
        model.forward(&model.embed(&ids).unwrap(), &positions, &mut KvCache::default(), &layers, true).unwrap();
    let d = max_diff(&model.logits(&hidden).unwrap(), &json_tensor(&r["logits"]));
    assert!(d < 1e-4, "logits differ by {d}");
    // transformers' hidden_states: the embeddings, layer outputs, and the last one after the norm.
    let want = r["hidden_states"].as_array().unwrap();
    for (i, w) in want.iter().enumerate().take(want.len() - 1) {
        let d = max_diff(&trace.hidden_states[i], &json_tensor(w));
        assert!(d < 1e-4, "hidden state {i} differs by {d}");
    }
    for (l, w) in r["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(&trace.attentions[&l], &json_tensor(w));
        assert!(d < 1e-4, "layer {l} attention differs by {d}");
    }
}

#[test]
fn position_id_gaps_rotate_like_transformers() {
    let (model, r) = load();
    let ids = json_ints(&r["input_ids"]);
    let gap = &r["position_gap"];
    let positions = json_ints(&gap["position_ids"]);
    let (hidden, trace) =
        model.forward(&model.embed(&ids).unwrap(), &positions, &mut KvCache::default(), &[0, 1], false).unwrap();
    let d = max_diff(&model.logits(&hidden).unwrap(), &json_tensor(&gap["logits"]));
    assert!(d < 1e-4, "gapped logits differ by {d}");
    for (l, w) in gap["attentions"].as_array().unwrap().iter().enumerate() {
        let d = max_diff(&trace.attentions[&l], &json_tensor(w));
        assert!(d < 1e-4, "gapped layer {l} attention differs by {d}");
    }
}

#[test]
fn greedy_decoding_yields_the_same_tokens() {
    let (model, r) = load();
    let ids = json_ints(&r["input_ids"]);
    let g = &r["generate"];
    let want = json_ints(&g["generated_ids"]);
    // The VLM core's decoder loop, on a text-only prompt.
    let cancel = tokenlens::Cancel::default();
    let seq = decode::text_sequence(&model, &ids).unwrap();
    let mut prefill = decode::prefill(&model, seq, None, &[], Default::default(), 0, &cancel).unwrap();
    let mut streamed = Vec::new();
    let out = decode::generate(&model, &mut prefill, want.len(), &[], 0, &mut |t| streamed.push(t), &cancel).unwrap();
    assert_eq!(out.ids, want);
    assert_eq!(streamed, want);
    assert_eq!(prefill.cache.len(), ids.len() + want.len() - 1);
}

#[test]
fn the_tokenizer_gives_the_same_ids() {
    let (_, r) = load();
    let tok = tokenizers::Tokenizer::from_file(dir().join("tokenizer.json")).unwrap();
    let prompt = r["prompt"].as_str().unwrap();
    let ids = tok.encode(prompt, true).unwrap().get_ids().to_vec();
    assert_eq!(ids, json_ints(&r["input_ids"]));
}
