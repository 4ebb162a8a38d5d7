//! Reads the default model's weights out of its ONNX file.
//!
//! Only the few protobuf messages we need are declared (field numbers from `onnx.proto3`), and
//! `prost` decodes them; unknown fields are skipped. This avoids a `protoc` build dependency.
//!
//! # Naming exporter weights
//! PyTorch's exporter names most initializers after the module (`backbone.encoder.layer.0.
//! norm1.weight`), but the 72 linear weights of the encoder become `onnx::MatMul_1966`, stored
//! `[in, out]`. Each feeds a `MatMul` whose output is consumed by an `Add` with the layer's named
//! bias (`...query.bias`), so the weight is `...query.weight`, transposed to the Hugging Face
//! `[out, in]` layout. The position table is split into a CLS row `[1, 1, d]` and a patch table
//! `[1, g*g, d]`, both unnamed; they are recognised by shape and rejoined as
//! `backbone.embeddings.position_embeddings`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

const ONNX_FLOAT: i32 = 1;
const ONNX_EXTERNAL: i32 = 1;

/// A float initializer, decoded.
struct Initializer {
    dims: Vec<usize>,
    values: Vec<f32>,
}

/// Decodes an ONNX model file and returns its float weights under Hugging Face names.
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::weights(path, format!("cannot read: {e}")))?;
    weights_from_bytes(&bytes).map_err(|reason| Error::weights(path, reason))
}

fn weights_from_bytes(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    use prost::Message;
    let model = ModelProto::decode(bytes)
        .map_err(|e| format!("not a readable ONNX file ({e}); it may be truncated or corrupt: fetch it again"))?;
    let graph = model.graph.ok_or("the ONNX file has no graph")?;
    if graph.initializer.is_empty() {
        return Err("the ONNX file holds no weights".into());
    }

    let mut inits = HashMap::new();
    // Integer initializers are shape constants: no weights among them.
    for t in graph.initializer.iter().filter(|t| t.data_type == ONNX_FLOAT) {
        inits.insert(t.name.clone(), decode_initializer(t)?);
    }
    let mut named: HashMap<String, Tensor> = HashMap::new();
    let to_tensor = |init: &Initializer| {
        Tensor::from_slice(&init.values, init.dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())
    };

    // Which node consumes each value, to walk from a MatMul to its bias Add.
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for node in &graph.node {
        for input in &node.input {
            consumers.entry(input.as_str()).or_default().push(node);
        }
    }
    let mut renamed = 0usize;
    for node in graph.node.iter().filter(|n| n.op_type == "MatMul") {
        let Some(weight_name) = node.input.get(1).filter(|n| inits.contains_key(n.as_str())) else {
            continue; // activation x activation (attention scores)
        };
        let output = node.output.first().ok_or_else(|| format!("MatMul {} has no output", node.name))?;
        let bias_name = consumers
            .get(output.as_str())
            .into_iter()
            .flatten()
            .filter(|n| n.op_type == "Add")
            .flat_map(|n| n.input.iter())
            .find(|i| i.ends_with(".bias") && inits.contains_key(i.as_str()))
            .ok_or_else(|| format!("MatMul {} has no bias Add to name its weight after", node.name))?;
        let name = format!("{}.weight", bias_name.trim_end_matches(".bias"));
        let w = to_tensor(&inits[weight_name])?.t().and_then(|w| w.contiguous()).map_err(|e| e.to_string())?;
        named.insert(name, w);
        renamed += 1;
    }
    if renamed == 0 {
        return Err("no MatMul weights found: this is not the expected ViT export".into());
    }

    let mut cls_pos = None;
    let mut patch_pos = None;
    for (name, init) in &inits {
        if !name.starts_with("onnx::") {
            named.insert(name.clone(), to_tensor(init)?);
        } else if let [1, n, _] = init.dims[..] {
            let side = (n as f64).sqrt() as usize;
            if n == 1 {
                cls_pos = Some(init);
            } else if side * side == n {
                patch_pos = Some(init);
            }
        }
    }
    let (Some(cls_pos), Some(patch_pos)) = (cls_pos, patch_pos) else {
        return Err("position embeddings (CLS row and patch table) not found".into());
    };
    let pos = Tensor::cat(&[to_tensor(cls_pos)?, to_tensor(patch_pos)?], 1).map_err(|e| e.to_string())?;
    named.insert("backbone.embeddings.position_embeddings".into(), pos);
    Ok(named)
}

fn decode_initializer(t: &TensorProto) -> std::result::Result<Initializer, String> {
    if t.data_location == ONNX_EXTERNAL {
        return Err(format!("weight {} is stored outside the file (external data is not supported)", t.name));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("weight {} has a negative dimension", t.name))?;
    // Checked: the dimensions come from the file, and a product that wraps would pass the
    // length checks below with the wrong shape.
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(4).map(|_| n))
        .ok_or_else(|| format!("weight {} has an impossible shape {dims:?} (its size overflows)", t.name))?;
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != count * 4 {
            return Err(format!(
                "weight {} has {} bytes, expected {} for shape {dims:?}; the file is truncated or corrupt",
                t.name,
                t.raw_data.len(),
                count * 4
            ));
        }
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != count {
        return Err(format!("weight {} holds {} values, expected {count}", t.name, values.len()));
    }
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("weight {} holds a non-finite value at index {bad}", t.name));
    }
    Ok(Initializer { dims, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn weight(name: &str, dims: Vec<i64>, values: &[f32]) -> TensorProto {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorProto { dims, data_type: ONNX_FLOAT, name: name.into(), raw_data, ..Default::default() }
    }

    fn node(op: &str, input: &[&str], output: &[&str]) -> NodeProto {
        NodeProto {
            input: input.iter().map(|s| s.to_string()).collect(),
            output: output.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_0"),
            op_type: op.into(),
        }
    }

    fn model(node: Vec<NodeProto>, initializer: Vec<TensorProto>) -> Vec<u8> {
        ModelProto { graph: Some(GraphProto { node, initializer }) }.encode_to_vec()
    }

    #[test]
    fn a_matmul_without_an_output_is_an_error() {
        let bytes = model(
            vec![node("MatMul", &["x", "onnx::MatMul_1"], &[])],
            vec![weight("onnx::MatMul_1", vec![1, 1], &[1.0])],
        );
        let err = weights_from_bytes(&bytes).unwrap_err();
        assert!(err.contains("MatMul_0 has no output"), "{err}");
    }

    #[test]
    fn a_shape_whose_size_wraps_is_refused() {
        // 7 * 0x6db6db6db6db6db7 = 1 (mod 2^64): unchecked, the product says "one value" and
        // a 4-byte tensor would pass as a [7, 7.9e18] weight.
        let t = weight("w", vec![7, 0x6db6_db6d_b6db_6db7], &[1.0]);
        let err = decode_initializer(&t).err().unwrap();
        assert!(err.contains("overflows"), "{err}");
        let ok = decode_initializer(&weight("w", vec![2, 1], &[1.0, 2.0])).unwrap();
        assert_eq!((ok.dims, ok.values), (vec![2, 1], vec![1.0, 2.0]));
    }
}
