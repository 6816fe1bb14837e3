//! Weights by name in PyTorch's layouts: a CNN exported from PyTorch
//! (`scripts/torch_weights_fixture.py`, committed as `tests/data/torch_cnn.safetensors`)
//! loads into the equivalent dp-core model, which then gives PyTorch's logits and each
//! example's gradient norm as `torch.func` computed it; the channels-last flatten that would
//! silently scramble them is refused.

use candle_core::{DType, Device, Tensor};
use dp_core::layers::{
    ChannelsLast, Conv2d, Conv2dConfig, Flatten, GroupNorm, Linear, MaxPool2d, Relu,
};
use dp_core::weights::{
    load_weights, save_weights, weights_from_tensors, weights_to_tensors, Layout, Names,
    WeightFormat,
};
use dp_core::{per_example_gradients, CoreError, CrossEntropy, Init, Model, Sequential};
use std::collections::HashMap;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/torch_cnn.safetensors"
);

/// The fixture's `nn.Sequential`, layer for layer (PyTorch module indices in comments).
fn model(flatten: Flatten, seed: u64) -> Sequential {
    let dev = Device::Cpu;
    let mut init = Init::seeded(seed);
    Sequential::new(&dev)
        .push(ChannelsLast)
        .push(Conv2d::new(Conv2dConfig::new(2, 4, 3).padding(1), &mut init, &dev).unwrap()) // 0
        .push(Relu::default()) // 1
        .push(MaxPool2d::new(2, 2)) // 2
        .push(Conv2d::new(Conv2dConfig::new(4, 8, 3).groups(2), &mut init, &dev).unwrap()) // 3
        .push(GroupNorm::new(2, 8, &dev).unwrap()) // 4
        .push(Relu::default()) // 5
        .push(flatten) // 6
        .push(Linear::new(8 * 4 * 4, 10, true, &mut init, &dev).unwrap()) // 7
        .push(Relu::default()) // 8
        .push(Linear::new(10, 3, true, &mut init, &dev).unwrap()) // 9
}

fn torch_format() -> WeightFormat {
    let modules = ["0", "3", "4", "7", "9"].map(String::from).to_vec();
    WeightFormat::new(Layout::PyTorch, Names::Modules(modules))
}

/// The fixture split into the state_dict and the `io.*` reference tensors.
fn fixture() -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let all = candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap();
    all.into_iter().partition(|(k, _)| !k.starts_with("io."))
}

/// A tensor's values, flattened.
fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Every parameter's values, in model order.
fn values(m: &Sequential) -> Vec<Vec<f32>> {
    m.param_tensors().iter().map(flat).collect()
}

fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

#[test]
fn pytorch_weights_reproduce_pytorch_logits_and_per_example_norms() {
    let (weights, io) = fixture();
    let mut m = model(Flatten::channels_first(), 7);
    weights_from_tensors(&mut m, weights, &torch_format()).unwrap();
    let x = &io["io.x"];
    let logits = m.forward(x, false).unwrap();
    let ours = flat(&logits);
    let torch = flat(&io["io.logits"]);
    let err = max_rel_err(&ours, &torch);
    assert!(
        err < 1e-5,
        "logits differ from PyTorch's: max rel err {err:.2e}"
    );

    let y = io["io.y"].to_dtype(DType::U32).unwrap();
    let g = per_example_gradients(&mut m, x, &y, &CrossEntropy).unwrap();
    let norms: Vec<f32> = g
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    let torch: Vec<f32> = io["io.norms"].to_vec1().unwrap();
    let err = max_rel_err(&norms, &torch);
    assert!(
        err < 1e-4,
        "per-example norms differ from torch.func's: max rel err {err:.2e}"
    );
}

#[test]
fn the_channels_last_flatten_would_be_wrong_and_is_refused() {
    let (weights, io) = fixture();
    let mut m = model(Flatten::default(), 7);
    let err = weights_from_tensors(&mut m, weights.clone(), &torch_format()).unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidArgument(msg) if msg.contains("channels_first")),
        "{err}"
    );
    // What the refusal prevents: the same tensors, with the linear layer's columns in the
    // other order, give other logits (loaded here through dp-core's own layout).
    let mut ok = model(Flatten::channels_first(), 7);
    weights_from_tensors(&mut ok, weights, &torch_format()).unwrap();
    let mut wrong = model(Flatten::default(), 7);
    let ours = weights_to_tensors(&ok, &WeightFormat::default()).unwrap();
    weights_from_tensors(&mut wrong, ours, &WeightFormat::default()).unwrap();
    let x = &io["io.x"];
    let a = flat(&ok.forward(x, false).unwrap());
    let b = flat(&wrong.forward(x, false).unwrap());
    assert!(
        max_rel_err(&b, &a) > 1e-2,
        "the two flatten orders should disagree"
    );
}

#[test]
fn saving_in_pytorch_layout_gives_back_the_pytorch_file() {
    let (weights, _) = fixture();
    let mut m = model(Flatten::channels_first(), 7);
    weights_from_tensors(&mut m, weights.clone(), &torch_format()).unwrap();
    let path = std::env::temp_dir().join(format!(
        "dp-core-weights-{}.safetensors",
        std::process::id()
    ));
    save_weights(&m, &path, &torch_format()).unwrap();
    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(back.len(), weights.len());
    for (name, t) in &weights {
        let u = &back[name];
        assert_eq!(u.dims(), t.dims(), "{name}");
        assert_eq!(flat(u), flat(t), "{name}");
    }
}

#[test]
fn dp_core_names_skip_parameter_free_layers() {
    // Inserting a ReLU renames nothing: names count the layers that have parameters.
    let dev = Device::Cpu;
    let mut init = Init::seeded(0);
    let a = Sequential::new(&dev)
        .push(Linear::new(3, 4, true, &mut init, &dev).unwrap())
        .push(Linear::new(4, 2, true, &mut init, &dev).unwrap());
    let mut init = Init::seeded(1);
    let mut b = Sequential::new(&dev)
        .push(Linear::new(3, 4, true, &mut init, &dev).unwrap())
        .push(Relu::default())
        .push(Linear::new(4, 2, true, &mut init, &dev).unwrap());
    let names: Vec<String> = b.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    let path =
        std::env::temp_dir().join(format!("dp-core-names-{}.safetensors", std::process::id()));
    save_weights(&a, &path, &WeightFormat::default()).unwrap();
    load_weights(&mut b, &path, &WeightFormat::default()).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(values(&a), values(&b));
}

#[test]
fn mismatched_files_are_refused_and_change_nothing() {
    let (weights, _) = fixture();
    let fmt = torch_format();
    let mut m = model(Flatten::channels_first(), 7);
    let before = values(&m);
    let unchanged = |m: &Sequential| assert_eq!(values(m), before);
    // A missing tensor.
    let mut w = weights.clone();
    w.remove("7.bias");
    let e = weights_from_tensors(&mut m, w, &fmt).unwrap_err();
    assert!(e.to_string().contains("7.bias"), "{e}");
    unchanged(&m);
    // An extra tensor (e.g. BatchNorm running statistics).
    let mut w = weights.clone();
    w.insert(
        "4.running_mean".into(),
        Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = weights_from_tensors(&mut m, w, &fmt).unwrap_err();
    assert!(e.to_string().contains("4.running_mean"), "{e}");
    unchanged(&m);
    // A wrong shape, reported in PyTorch's layout.
    let mut w = weights.clone();
    w.insert(
        "3.weight".into(),
        Tensor::zeros((8, 4, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = weights_from_tensors(&mut m, w, &fmt).unwrap_err();
    assert!(e.to_string().contains("[8, 2, 3, 3]"), "{e}");
    unchanged(&m);
    // An integer tensor where a parameter belongs.
    let mut w = weights.clone();
    w.insert(
        "9.bias".into(),
        Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap(),
    );
    assert!(weights_from_tensors(&mut m, w, &fmt).is_err());
    unchanged(&m);
    // A module list of the wrong length.
    let short = WeightFormat::new(Layout::PyTorch, Names::Modules(vec!["0".into()]));
    let e = weights_from_tensors(&mut m, weights.clone(), &short).unwrap_err();
    assert!(
        e.to_string().contains("5 layers that have parameters"),
        "{e}"
    );
    unchanged(&m);
    // A file that is not safetensors.
    let path =
        std::env::temp_dir().join(format!("dp-core-torn-{}.safetensors", std::process::id()));
    std::fs::write(&path, b"torn").unwrap();
    let e = load_weights(&mut m, &path, &fmt).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(matches!(e, CoreError::InvalidArgument(_)), "{e}");
    unchanged(&m);
}
